"""The length of a fit, checked before anything is written."""

from typing import Any

from jsonargparse import Namespace

from ..support.errors import ConfigError


def check_length(trainer: Namespace, scheduler: Any) -> None:
    """Refuse, before anything is written, a fit that trains nothing, or one without end whose
    schedule is planned over the run's steps."""
    for name in ("max_epochs", "max_steps"):
        if trainer.get(name) == 0:
            raise ConfigError(
                f"--trainer.{name} 0 trains nothing: give a positive number (-1: no limit)"
            )
    max_time = trainer.get("max_time")  # "DD:HH:MM:SS" or {"hours": ..., ...}
    values = max_time.values() if isinstance(max_time, dict) else [str(max_time).strip("0:")]
    if max_time is not None and not any(values):
        raise ConfigError(
            f"--trainer.max_time {max_time} trains nothing: give a positive time (DD:HH:MM:SS)"
        )
    unbounded = trainer.get("max_epochs") == -1 and trainer.get("max_steps") in (-1, None)
    if unbounded and scheduler is not None:
        raise ConfigError(
            "--trainer.max_epochs -1 has no end, but the learning-rate schedule spans the run's "
            "steps: set --trainer.max_epochs or --trainer.max_steps, or --model.scheduler null"
        )
