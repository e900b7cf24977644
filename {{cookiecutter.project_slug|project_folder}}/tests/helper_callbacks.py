"""Callbacks the tests inject into real fits (by class path) to interrupt or observe them."""

import math
import time

import pytorch_lightning as pl


class PauseForSignal(pl.Callback):
    """At one batch of one stage, print a marker and wait until the trainer receives SIGTERM.

    ``stage`` is "train", "validate" (not the sanity check) or "test"; ``epoch`` counts from 0.
    """

    def __init__(self, epoch: int, batch: int, stage: str = "train") -> None:
        self.epoch = epoch
        self.batch = batch
        self.stage = stage

    def _pause_at(self, trainer: pl.Trainer, stage: str, batch_idx: int) -> None:
        if (stage, trainer.current_epoch, batch_idx) == (self.stage, self.epoch, self.batch):
            print("waiting for SIGTERM", flush=True)
            deadline = time.monotonic() + 60
            while not trainer.received_sigterm and time.monotonic() < deadline:
                time.sleep(0.01)

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: object,
        batch: object,
        batch_idx: int,
    ) -> None:
        self._pause_at(trainer, "train", batch_idx)

    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: object,
        batch: object,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if not trainer.sanity_checking:
            self._pause_at(trainer, "validate", batch_idx)

    def on_test_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: object,
        batch: object,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._pause_at(trainer, "test", batch_idx)


class EpochMetrics(pl.Callback):
    """Keep the metrics of every validation epoch."""

    def __init__(self) -> None:
        self.history: list[dict[str, float]] = []

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            metrics = trainer.callback_metrics.items()
            self.history.append({name: float(value) for name, value in metrics})


class StepValues(pl.Callback):
    """Keep the training loss and the learning rate of every step, by global step."""

    def __init__(self) -> None:
        self.values: dict[int, tuple[float, float]] = {}

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: object, batch_idx: int
    ) -> None:
        self.lr = trainer.optimizers[0].param_groups[0]["lr"]

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: dict,
        batch: object,
        batch_idx: int,
    ) -> None:
        # The batch's optimizer step is done: it was step global_step - 1.
        self.values[trainer.global_step - 1] = (float(outputs["loss"]), self.lr)


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
