"""Callbacks of this project; the stock ones come from pytorch_lightning.callbacks."""

import csv
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import BasePredictionWriter


class PredictionCSVWriter(BasePredictionWriter):
    """Write one CSV row per predicted input: source, predicted class, confidence.

    Rows go to ``<output>.partial`` while predicting, which is renamed to ``output`` only
    when prediction finishes, so an interrupted run never leaves a CSV that looks complete.
    """

    def __init__(self, output: str | Path) -> None:
        super().__init__(write_interval="batch")
        self.output = Path(output)
        self.partial = self.output.with_name(self.output.name + ".partial")

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.output.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.partial.open("w", newline="")
        self._writer = csv.writer(self._file)
        self._writer.writerow(["source", "predicted", "confidence"])

    def write_on_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        prediction: dict[str, Any],
        batch_indices: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        rows = zip(
            prediction["source"],
            prediction["predicted"].tolist(),
            prediction["confidence"].tolist(),
            strict=True,
        )
        self._writer.writerows((source, label, f"{conf:.6f}") for source, label, conf in rows)

    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._file.close()
        self.partial.replace(self.output)
