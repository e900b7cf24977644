"""Checkpoint files: read as plain data from local files only, and written whole."""

from pathlib import Path
from typing import Any

import torch
from pytorch_lightning.plugins import TorchCheckpointIO

from .errors import CheckpointError
from .files import replaced


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint as plain data: never code, whatever the torch version or settings.

    ``weights_only=True`` is passed explicitly: torch's environment switches (such as
    ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD``) only change the default, never an explicit choice.
    """
    if "://" in str(path):
        raise CheckpointError(f"{path} is not a local file: download the checkpoint first")
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for files it cannot parse
        raise CheckpointError(
            f"{path} is not a PyTorch checkpoint holding only tensors and plain values"
        ) from error
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise CheckpointError(f"{path} is not a Lightning checkpoint (it has no state_dict)")
    return checkpoint


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes every checkpoint whole or not at all, and reads it as plain data.

    Lightning writes to a temporary folder and moves the file; across file systems (logs on a
    cluster's scratch disk or a mounted volume) that move is a copy, and a kill during it
    leaves a truncated checkpoint. Here the file is written beside its target and renamed over
    it (``files.replaced``): after a kill, a power cut or a full disk the target is the old
    file or the complete new one. A checkpoint read before the fit (to check it) is handed to
    Lightning as it is, not read a second time.
    """

    def __init__(self) -> None:
        self.read_ahead: dict[str, dict[str, Any]] = {}

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None
    ) -> None:
        with replaced(Path(path)) as file:
            torch.save(checkpoint, file)

    def load_checkpoint(
        self, path: str | Path, map_location: Any = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        return self.read_ahead.pop(str(path), None) or read_checkpoint(path)
