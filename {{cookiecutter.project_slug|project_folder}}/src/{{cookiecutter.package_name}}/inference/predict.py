"""Predict: a checkpoint and images (or the test split) to a CSV.

--input is an image or a folder of images (searched recursively); without it, the test split
of the data module the checkpoint was trained on, built again from the arguments the
checkpoint recorded. Images are converted to what the model was trained on: its channel count
and image size, both read from the checkpoint.
"""

import argparse
import csv
import io
from argparse import ArgumentError
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from jsonargparse.typing import NonNegativeInt, PositiveInt
from pytorch_lightning.callbacks import BasePredictionWriter
from pytorch_lightning.cli import instantiate_module
from pytorch_lightning.utilities import rank_zero_only
from torch.utils.data import DataLoader

from ..data import ImageDataModule
from ..support.errors import DatasetError, ImageError, exit_in_one_line, one_line
from ..support.files import check_output, write_file
from ..support.images import IMAGE_SUFFIXES, ImageFiles
from ..support.process import configure_process, default_precision
from .classifier import load_classifier


class PredictionCSVWriter(BasePredictionWriter):
    """Write one CSV row per input, in input order: source, class index and name, confidence.

    The source is the file an image came from, or ``test/<index>`` for the data module's test
    split. Under DDP each process predicts a share of the inputs; rank 0 gathers the rows and
    writes the file, whole, when prediction ends.
    """

    COLUMNS = ("source", "class_index", "class_name", "confidence")

    def __init__(self, output: Path, sources: Sequence[str]) -> None:
        super().__init__(write_interval="batch")
        self.output, self.sources = output, sources
        self.rows: list[tuple] = []

    def write_on_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        prediction: dict,
        indices: list[int],
        *args: Any,
    ) -> None:
        names = pl_module.hparams.class_names
        classes, confidences = prediction["class_index"].tolist(), prediction["confidence"].tolist()
        for index, class_index, confidence in zip(indices, classes, confidences, strict=True):
            row = (self.sources[index], class_index, names[class_index], f"{confidence:.6f}")
            self.rows.append((index, row))

    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        shares = [self.rows]
        if trainer.world_size > 1:
            shares = [[] for _ in range(trainer.world_size)]
            torch.distributed.all_gather_object(shares, self.rows)
        if trainer.is_global_zero:
            table = io.StringIO()
            writer = csv.writer(table)
            writer.writerow(self.COLUMNS)
            writer.writerows(row for _, row in sorted(row for share in shares for row in share))
            write_file(self.output, table.getvalue())


def test_split_loader(checkpoint: dict[str, Any]) -> DataLoader:
    """The test split of the data module, built again with the arguments of the training run
    that the checkpoint recorded (rule 2 of the data contract in data.py)."""
    saved = checkpoint.get("datamodule_hyper_parameters")
    if saved is None:
        raise DatasetError(
            "the checkpoint does not record its data module's arguments (rule 2 of the data "
            "contract: __init__ calls self.save_hyperparameters()): give --input"
        )
    arguments = {key: value for key, value in saved.items() if not key.startswith("_")}
    try:  # typed as training typed them (a dataclass from a dict, say), by the same parser
        datamodule = instantiate_module(ImageDataModule, arguments)
    except (TypeError, ValueError, ArgumentError) as error:
        raise DatasetError(
            f"the checkpoint was trained on another data module ({one_line(error)}): give --input"
        ) from error
    datamodule.prepare_data()
    datamodule.setup("test")
    return datamodule.test_dataloader()


def image_paths(path: Path) -> list[Path]:
    """``path`` itself if it is a file, else the image files under the folder, sorted."""
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise ImageError(f"input {path} does not exist")
    # Folders named like images are searched, not read; a broken link is named when read.
    found = (p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    paths = sorted(p for p in found if p.is_file() or p.is_symlink())
    if not paths:
        raise ImageError(f"folder {path} holds no image files ({', '.join(IMAGE_SUFFIXES)})")
    return paths


def predict(
    ckpt_path: Path,
    input_path: Path | None,
    output: Path,
    batch_size: int = 256,
    accelerator: str = "auto",
    devices: int = 1,
    num_workers: int = 0,
) -> Path:
    """Write predictions for ``input_path`` (None: the test split) to ``output``; return it."""
    check_output(output, inputs={"the checkpoint": [ckpt_path]})
    model, checkpoint = load_classifier(ckpt_path)
    if input_path is None:
        loader = test_split_loader(checkpoint)
        sources = [f"test/{index}" for index in range(len(loader.dataset))]
    else:
        paths = image_paths(input_path)
        check_output(output, inputs={"one of the input images": paths})
        channels, image_size = model.hparams.channels, tuple(model.hparams.image_size)
        sources = [str(path) for path in paths]
        files = ImageFiles(paths, sources, channels, image_size)
        loader = DataLoader(files, batch_size=batch_size, num_workers=num_workers)
    trainer = pl.Trainer(
        accelerator=accelerator,
        devices=devices,
        precision=default_precision(),
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        callbacks=[PredictionCSVWriter(output, sources)],
    )
    trainer.predict(model, dataloaders=loader, return_predictions=False)
    return output


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ckpt_path", type=Path, required=True, help="checkpoint from training")
    parser.add_argument(
        "--input",
        dest="input_path",
        type=Path,
        help="an image or a folder of images; the data module's test split if left out",
    )
    parser.add_argument("--output", type=Path, default=Path("predictions.csv"))
    parser.add_argument(
        "--batch_size", type=PositiveInt, default=256, help="images per batch with --input"
    )
    parser.add_argument(
        "--num_workers", type=NonNegativeInt, default=0, help="processes decoding --input images"
    )
    parser.add_argument("--accelerator", default="auto", help="auto, cpu, gpu, ...")
    parser.add_argument(
        "--devices", type=PositiveInt, default=1, help="devices to spread over (DDP); one CSV"
    )
    args = parser.parse_args(argv)
    configure_process()
    with exit_in_one_line():
        output = predict(**vars(args))
    rank_zero_only(print)(f"wrote {output}")


if __name__ == "__main__":
    main()
