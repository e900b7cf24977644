"""Callbacks the tests inject into real fits (by class path) to interrupt or observe them."""

import math
import time

import pytorch_lightning as pl


class PauseForSignal(pl.Callback):
    """At one training batch, print a marker and wait until the trainer receives SIGTERM."""

    def __init__(self, epoch: int, batch: int) -> None:
        self.epoch = epoch
        self.batch = batch

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: object,
        batch: object,
        batch_idx: int,
    ) -> None:
        if (trainer.current_epoch, batch_idx) == (self.epoch, self.batch):
            print("waiting for SIGTERM", flush=True)
            deadline = time.monotonic() + 60
            while not trainer.received_sigterm and time.monotonic() < deadline:
                time.sleep(0.01)


class EpochMetrics(pl.Callback):
    """Keep the metrics of every validation epoch."""

    def __init__(self) -> None:
        self.history: list[dict[str, float]] = []

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            metrics = trainer.callback_metrics.items()
            self.history.append({name: float(value) for name, value in metrics})


class PoisonWeights(pl.Callback):
    """Turn every weight into NaN at one global step, as a diverging fit would."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: object, batch_idx: int
    ) -> None:
        if trainer.global_step == self.step:
            for parameter in pl_module.parameters():
                parameter.data.fill_(math.nan)


class FailAtTrainStart(pl.Callback):
    """Raise as training starts, as a bug in a user's code would."""

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        raise RuntimeError("failing on purpose")
