"""A callback the benchmark adds to the baked project's trainer to time its fit."""

import json
import time
from pathlib import Path

import pytorch_lightning as pl


class FitTimer(pl.Callback):
    """Record the fit's wall time and the validation accuracy after each epoch."""

    def __init__(self, output: str) -> None:
        self.output = Path(output)
        self.epochs: list[dict[str, float]] = []

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.start = time.perf_counter()

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            accuracy = float(trainer.callback_metrics["val/acc"])
            self.epochs.append({"seconds": time.perf_counter() - self.start, "val_acc": accuracy})

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero:
            fit_seconds = time.perf_counter() - self.start
            self.output.write_text(json.dumps({"fit_seconds": fit_seconds, "epochs": self.epochs}))
