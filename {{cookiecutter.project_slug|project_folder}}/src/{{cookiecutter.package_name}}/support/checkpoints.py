"""Checkpoints: read as plain data from local files, checked against this project and run,
found by name, and written whole.

Nothing here imports training code: train, predict, export and serve all use it.
"""

import json
import math
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from jsonargparse import Namespace
from pytorch_lightning.plugins import TorchCheckpointIO

from .. import nets
from ..model import DATA_FACTS
from .errors import CheckpointError
from .files import replaced

LAST = "last.ckpt"
# A fit resumes only with the same data shape, network and optimization as it started with.
RESUME_MUST_MATCH = ("class_names", "channels", "image_size", "net", "optimizer", "scheduler")


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


def network_class(path: str | Path, checkpoint: dict[str, Any]) -> tuple[type, dict[str, Any]]:
    """The class of nets.py and its settings that the checkpoint's model was built with.

    Refuses a checkpoint of another model, or one that names a network outside nets.py: only
    this project's own classes are built from a checkpoint, so a crafted one cannot make
    loading import other code.
    """
    hparams = checkpoint.get("hyper_parameters", {})
    missing = [name for name in (*DATA_FACTS, "net") if name not in hparams]
    if missing:
        raise CheckpointError(
            f"{path} holds a different model than this project's (no {', '.join(missing)})"
        )
    net = hparams["net"]
    class_path = str(net.get("class_path", "")) if isinstance(net, dict) else ""
    module, _, name = class_path.rpartition(".")
    found = getattr(nets, name, None)
    if module != nets.__name__ or not isinstance(found, type):
        raise CheckpointError(f"{path} names the network {class_path!r}, which is not in {module}")
    return found, dict(net.get("init_args", {}))


def check_resume(
    path: str | Path,
    checkpoint: dict[str, Any],
    hparams: dict[str, Any],
    trainer: pl.Trainer,
    datamodule: pl.LightningDataModule,
) -> None:
    """Refuse, in one line, to resume a fit from a checkpoint made for another network, other
    data, another optimizer or schedule, or a schedule of another length. Called before the
    fit, so that a refused resume changes nothing in the run folder."""
    network_class(path, checkpoint)
    saved = checkpoint.get("hyper_parameters", {})
    for name in RESUME_MUST_MATCH:
        if plain(saved.get(name)) != plain(hparams.get(name)):
            raise CheckpointError(
                f"the checkpoint was trained with {name} {plain(saved.get(name))}, this run has "
                f"{plain(hparams.get(name))}: resume with the same settings, or start a new run"
            )
    saved_steps, planned = checkpoint.get("schedule_steps"), planned_steps(trainer, datamodule)
    if None not in (saved_steps, planned) and saved_steps != planned:
        raise CheckpointError(
            f"the checkpoint's learning-rate schedule spans {saved_steps} steps, this run plans "
            f"{planned}: resume with the same --trainer.max_epochs, batch size and data, "
            "or start a new run"
        )


def plain(value: Any) -> Any:
    """The value as JSON would carry it (tuples as lists, paths as strings), so values from
    YAML and from checkpoints compare alike."""
    return json.loads(json.dumps(value, default=str))


def planned_steps(trainer: pl.Trainer, datamodule: pl.LightningDataModule) -> int | None:
    """The optimizer steps this fit will plan its schedule over, computed before the fit as
    Lightning's ``estimated_stepping_batches`` will during it (None where it cannot be)."""
    if trainer.max_epochs == -1:
        return trainer.max_steps
    datamodule.setup("fit")
    loader = datamodule.train_dataloader()
    processes = trainer.num_nodes * trainer.num_devices
    if processes == 1:
        batches = len(loader)
    elif loader.batch_size is None:
        return None
    else:  # Lightning's DistributedSampler gives each process an equal share, padded
        share = math.ceil(len(loader.dataset) / processes)
        batches = share // loader.batch_size if loader.drop_last else -(-share // loader.batch_size)
    limit = trainer.limit_train_batches
    batches = min(batches, limit) if isinstance(limit, int) else int(batches * limit)
    steps = math.ceil(batches / trainer.accumulate_grad_batches) * max(trainer.max_epochs, 1)
    return steps if trainer.max_steps == -1 else min(steps, trainer.max_steps)


def runs_folder(trainer: Namespace) -> tuple[Path, int]:
    """Where the configured logger keeps its runs, and how deep below it each run's folder is.
    ``--ckpt_path last`` looks there only: never in the search's trials, for one."""
    logger = trainer.logger
    if logger is True:  # Lightning's default logger
        return Path(trainer.default_root_dir, "lightning_logs"), 1
    if not isinstance(logger, Namespace):
        return Path(trainer.default_root_dir), 0
    args = logger.init_args
    tracking = str(args.get("tracking_uri") or "")
    if tracking.startswith("file:"):  # MLflow: <store>/<experiment>/<run>
        return Path(tracking.removeprefix("file:")), 2
    name = args.get("name") or args.get("project") or "lightning_logs"
    return Path(args.get("save_dir") or trainer.default_root_dir, name), 1


def newest_last(runs: Path, depth: int) -> Path:
    """The most recently written ``last.ckpt`` of the runs in ``runs``: in
    ``runs/<run>/checkpoints/`` (``depth`` levels of run folders, 0 for ``runs/checkpoints/``).
    """
    found = list(runs.glob("/".join(["*"] * depth + ["checkpoints", LAST])))
    if not found:
        raise CheckpointError(f"no run in {runs} has a {LAST} to resume: train without --ckpt_path")
    return max(found, key=lambda path: path.stat().st_mtime)


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
