"""Resuming a fit: refused in one line, before the fit writes anything, unless it continues
the same run: the same network, data shape and optimization, and a schedule of the same span."""

import json
from typing import Any

import pytorch_lightning as pl

from ..model import schedule_basis
from ..support.errors import CheckpointError

# A fit resumes only with the same data shape, network and optimization as it started with.
MUST_MATCH = ("class_names", "channels", "image_size", "net", "optimizer", "scheduler")


def check_resume(
    checkpoint: dict[str, Any],
    hparams: dict[str, Any],
    trainer: pl.Trainer,
    datamodule: pl.LightningDataModule,
) -> None:
    """Refuse to resume from a checkpoint made for another network, other data, another
    optimizer or schedule, or a schedule planned over another number of steps; the message
    names the first setting that differs."""
    saved = checkpoint.get("hyper_parameters", {})
    for name in MUST_MATCH:
        if name not in saved:
            raise CheckpointError(
                f"the checkpoint records no {name}: it was not written by this project's training"
            )
        if difference := first_difference(name, plain(saved[name]), plain(hparams.get(name))):
            key, was, now = difference
            raise CheckpointError(
                f"the checkpoint was trained with {key} {was}, this run has {now}: resume with "
                "the same settings, or start a new run"
            )
    planned = checkpoint.get("schedule_basis")
    if planned is None:
        return
    datamodule.setup("fit")
    for key, now in schedule_basis(trainer, datamodule).items():
        if planned.get(key) != now:
            raise CheckpointError(
                f"the checkpoint's learning-rate schedule was planned for {key} "
                f"{planned.get(key)}, this run has {now}: resume with the same trainer settings, "
                "batch size and data, or start a new run"
            )


def first_difference(key: str, was: Any, now: Any) -> tuple[str, Any, Any] | None:
    """The dotted key of the first value that differs between two settings, and both values
    (a setting that is a class with arguments on one side only differs in its class_path)."""
    if was == now:
        return None
    if isinstance(was, dict) or isinstance(now, dict):
        was, now = was if isinstance(was, dict) else {}, now if isinstance(now, dict) else {}
        for name in [*was, *(name for name in now if name not in was)]:
            found = first_difference(f"{key}.{name}", was.get(name), now.get(name))
            if found:
                return found
    return key, was, now


def plain(value: Any) -> Any:
    """The value as JSON would carry it (tuples as lists, paths as strings), so values from
    YAML and from checkpoints compare alike."""
    return json.loads(json.dumps(value, default=str))
