"""Where a run writes: its own folder, the configured logger's files, and the runs that
``--ckpt_path last`` looks through. The one place that knows where each logger keeps its runs."""

from pathlib import Path

import pytorch_lightning as pl
from jsonargparse import Namespace

from ..support.errors import CheckpointError

LAST = "last.ckpt"


def run_folder(trainer: pl.Trainer) -> Path:
    """The run's folder: the logger's version folder, or the root folder without a logger.
    Every process of a DDP run must ask, since ``log_dir`` broadcasts rank 0's answer."""
    return Path(trainer.log_dir or trainer.default_root_dir)


def place_logs(trainer: Namespace, folder: str, only_from: str | None = None) -> None:
    """Make the configured logger write under ``folder``: its ``save_dir``, or MLflow's file
    store ``<folder>/mlruns``. With ``only_from``, only a logger that wrote under that folder."""
    logger = trainer.logger
    if not isinstance(logger, Namespace):
        return
    args = logger.init_args
    if "save_dir" in args and only_from in (None, args.save_dir):
        args.save_dir = folder
    store = str(args.get("tracking_uri") or "")
    if store.startswith("file:") and only_from in (None, str(Path(store[5:]).parent)):
        args.tracking_uri = f"file:{Path(folder, 'mlruns')}"


def runs_folder(trainer: Namespace) -> tuple[Path, int]:
    """Where the configured logger keeps its runs, and how deep below it each run's folder is."""
    logger = trainer.logger
    if logger is True:  # Lightning's default logger
        return Path(trainer.default_root_dir, "lightning_logs"), 1
    if not isinstance(logger, Namespace):
        return Path(trainer.default_root_dir), 0
    args = logger.init_args
    store = str(args.get("tracking_uri") or "")
    if store.startswith("file:"):  # MLflow: <store>/<experiment>/<run>
        return Path(store[5:]), 2
    name = args.get("name") or args.get("project") or "lightning_logs"
    return Path(args.get("save_dir") or trainer.default_root_dir, name), 1


def newest_last(trainer: Namespace) -> Path:
    """The most recently written ``last.ckpt`` of the configured logger's runs: only there, so
    that runs kept elsewhere under the root folder are never taken for one of its own."""
    runs, depth = runs_folder(trainer)
    found = list(runs.glob("/".join(["*"] * depth + ["checkpoints", LAST])))
    if not found:
        raise CheckpointError(f"no run in {runs} has a {LAST} to resume: train without --ckpt_path")
    return max(found, key=lambda path: path.stat().st_mtime)


def continue_run(trainer: Namespace, ckpt_path: Path) -> None:
    """Point a TensorBoard or CSV logger at the version folder that holds ``ckpt_path``, so
    that a resumed run keeps its best checkpoint, metrics and results together."""
    logger = trainer.logger
    if not isinstance(logger, Namespace) or "version" not in logger.init_args:
        return
    run_dir = ckpt_path.resolve().parent.parent  # <save_dir>/<name>/<version>/checkpoints/
    runs = Path(logger.init_args.save_dir, logger.init_args.name or "").resolve()
    if run_dir.parent == runs:
        logger.init_args.version = run_dir.name
