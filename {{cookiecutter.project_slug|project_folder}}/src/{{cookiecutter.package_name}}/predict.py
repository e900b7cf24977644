"""Predict entry point: a checkpoint and images (or the test split) to a CSV.

--input is one PNG/JPG image, a folder of them, or a data folder as training uses it (its
10k test split). Images are read as 8-bit grayscale and resized to 28x28; like the training
images, objects should be light on a dark background.
"""

import argparse
import sys
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_only

from .callbacks import PredictionCSVWriter
from .data import DatasetError, ImageDataModule, raw_folder
from .hardware import trainer_defaults
from .model import ImageClassifier


class CheckpointError(RuntimeError):
    """A checkpoint that is missing or cannot serve this model."""


def load_classifier(path: Path) -> ImageClassifier:
    """Load a checkpoint written by training, with a clear error for anything else."""
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        checkpoint = torch.load(path, map_location="cpu")
    except Exception as error:  # torch raises several types for files it cannot parse
        raise CheckpointError(f"{path} is not a PyTorch checkpoint file") from error
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise CheckpointError(f"{path} is not a Lightning checkpoint (it has no state_dict)")
    try:
        return ImageClassifier.load_from_checkpoint(path, map_location="cpu")
    except (KeyError, RuntimeError, TypeError) as error:
        raise CheckpointError(
            f"{path} holds a different model than {ImageClassifier.__name__} of this project"
        ) from error


def predict(
    ckpt_path: Path,
    input_path: Path,
    output: Path,
    batch_size: int = 256,
    accelerator: str = "auto",
    devices: int = 1,
) -> Path:
    """Write predictions for ``input_path`` to ``output`` and return its path."""
    model = load_classifier(ckpt_path)
    if raw_folder(input_path).is_dir():
        datamodule = ImageDataModule(data_dir=str(input_path), batch_size=batch_size)
    else:
        datamodule = ImageDataModule(predict_path=str(input_path), batch_size=batch_size)
    trainer = pl.Trainer(
        **{**trainer_defaults(), "accelerator": accelerator, "devices": devices},
        logger=False,
        enable_checkpointing=False,
        callbacks=[PredictionCSVWriter(output)],
    )
    trainer.predict(model, datamodule=datamodule, return_predictions=False)
    return output


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ckpt_path", type=Path, required=True, help="checkpoint from training")
    parser.add_argument(
        "--input",
        type=Path,
        required=True,
        help="an image, a folder of PNG/JPG images, or a data folder (its test split)",
    )
    parser.add_argument("--output", type=Path, default=Path("predictions.csv"))
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--accelerator", default="auto", help="auto, cpu, gpu, ...")
    parser.add_argument(
        "--devices", type=int, default=1, help="devices to spread over (DDP); one CSV either way"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        output = predict(
            args.ckpt_path, args.input, args.output, args.batch_size, args.accelerator, args.devices
        )
    except (CheckpointError, DatasetError) as error:
        sys.exit(f"error: {error}")
    rank_zero_only(print)(f"wrote {output}")


if __name__ == "__main__":
    main()
