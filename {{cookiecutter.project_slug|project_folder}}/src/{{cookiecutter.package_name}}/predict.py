"""Predict entry point: a checkpoint and images (or the test split) to a CSV.

--input is an image or a folder of images (searched recursively); without it, the test split
of the data module the checkpoint was trained on. Images are converted to what the model was
trained on: its channel count and image size, both read from the checkpoint.
"""

import argparse
import sys
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.utilities import rank_zero_only
from torch.utils.data import DataLoader

from .callbacks import PredictionCSVWriter
from .checkpoints import load_classifier, read_checkpoint
from .data import ImageDataModule
from .errors import ConfigError, UserError
from .hardware import close_process_group, trainer_defaults
from .images import ImageFiles, image_paths


def test_split_loader(checkpoint: dict[str, Any], batch_size: int) -> DataLoader:
    """The test split of the data module as the checkpoint's training run configured it."""
    saved = checkpoint.get("datamodule_hyper_parameters", {})
    arguments = {key: value for key, value in saved.items() if not key.startswith("_")}
    datamodule = ImageDataModule(**{**arguments, "batch_size": batch_size})
    datamodule.prepare_data()
    datamodule.setup("test")
    return datamodule.test_dataloader()


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
    if output.is_dir():
        raise ConfigError(f"--output {output} is a folder: give a file name in it")
    model = load_classifier(ckpt_path)
    if input_path is None:
        loader = test_split_loader(read_checkpoint(ckpt_path), batch_size)
    else:
        channels, image_size = model.hparams.channels, tuple(model.hparams.image_size)
        files = ImageFiles(image_paths(input_path), channels, image_size)
        loader = DataLoader(files, batch_size=batch_size, num_workers=num_workers)
    trainer = pl.Trainer(
        **{**trainer_defaults(), "accelerator": accelerator, "devices": devices},
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        callbacks=[PredictionCSVWriter(output)],
    )
    trainer.predict(model, dataloaders=loader, return_predictions=False)
    return output


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ckpt_path", type=Path, required=True, help="checkpoint from training")
    parser.add_argument(
        "--input",
        type=Path,
        help="an image or a folder of images; the data module's test split if left out",
    )
    parser.add_argument("--output", type=Path, default=Path("predictions.csv"))
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--num_workers", type=int, default=0, help="processes decoding images")
    parser.add_argument("--accelerator", default="auto", help="auto, cpu, gpu, ...")
    parser.add_argument(
        "--devices", type=int, default=1, help="devices to spread over (DDP); one CSV either way"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        output = predict(
            args.ckpt_path,
            args.input,
            args.output,
            args.batch_size,
            args.accelerator,
            args.devices,
            args.num_workers,
        )
    except UserError as error:
        sys.exit(f"error: {error}")
    finally:
        close_process_group()
    rank_zero_only(print)(f"wrote {output}")


if __name__ == "__main__":
    main()
