"""Reading checkpoints safely: as plain data, never as code, and with one-line errors."""

from pathlib import Path
from typing import Any

import torch

from . import nets
from .callbacks import LastCheckpoint
from .errors import CheckpointError
from .model import DATA_FACTS, ImageClassifier

# `--ckpt_path last` resumes the newest of these under the runs folder.
LAST = LastCheckpoint.CHECKPOINT_NAME_LAST + LastCheckpoint.FILE_EXTENSION


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


def check_model_hparams(path: str | Path, hparams: dict[str, Any]) -> None:
    """Refuse a checkpoint of another model, or one whose network is not a class of nets.py.

    Only classes of this project's nets.py are built from a checkpoint, so a crafted one
    cannot make loading import other code.
    """
    missing = [name for name in (*DATA_FACTS, "net") if name not in hparams]
    if missing:
        raise CheckpointError(
            f"{path} holds a different model than {ImageClassifier.__name__} of this project "
            f"(no {', '.join(missing)})"
        )
    net = hparams["net"]
    class_path = str(net.get("class_path", "")) if isinstance(net, dict) else ""
    module, _, name = class_path.rpartition(".")
    if module != nets.__name__ or not isinstance(getattr(nets, name, None), type):
        raise CheckpointError(
            f"{path} names the network {class_path!r}, which is not in {nets.__name__}"
        )


def load_classifier(path: str | Path) -> ImageClassifier:
    """Load a checkpoint written by training, with a clear error for anything else."""
    check_model_hparams(path, read_checkpoint(path).get("hyper_parameters", {}))
    try:
        return ImageClassifier.load_from_checkpoint(path, map_location="cpu", weights_only=True)
    except (KeyError, RuntimeError, TypeError, ValueError) as error:
        reason = str(error).strip().splitlines()[0]
        raise CheckpointError(f"{path} does not fit this project's model: {reason}") from error


def newest_last_checkpoint(runs_dir: str | Path) -> Path:
    """The most recently written ``last.ckpt`` of any run under ``runs_dir``."""
    found = list(Path(runs_dir).glob(f"**/{LAST}"))
    if not found:
        raise CheckpointError(f"no {LAST} under {runs_dir} to resume: train without --ckpt_path")
    return max(found, key=lambda path: path.stat().st_mtime)
