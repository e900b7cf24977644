"""A callback for the preemption test's Slurm job (on its PYTHONPATH): it pauses the job's
processes at one batch of its first run, so that the signal the test sends finds them all
outside a collective (Lightning issue 21406)."""

import os
import time
from typing import Any

import pytorch_lightning as pl


class PauseOnce(pl.Callback):
    """In the first run of a job only, at one training batch, print a marker and sleep on
    every process: a signal sent then finds them all outside a collective."""

    def __init__(self, epoch: int, batch: int, seconds: float) -> None:
        self.epoch, self.batch, self.seconds = epoch, batch, seconds

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        first_run = os.environ.get("SLURM_RESTART_COUNT", "0") == "0"
        if first_run and (trainer.current_epoch, args[-1]) == (self.epoch, self.batch):
            print("paused", flush=True)
            time.sleep(self.seconds)
