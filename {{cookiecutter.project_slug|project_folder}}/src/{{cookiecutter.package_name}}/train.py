"""Train entry point: fit, then test the best checkpoint. ``--help`` lists every flag."""

import json
import os
import sys
from pathlib import Path

from jsonargparse import ArgumentParser
from pytorch_lightning.callbacks import EarlyStopping, ModelCheckpoint
from pytorch_lightning.cli import LightningCLI
from pytorch_lightning.utilities.exceptions import SIGTERMException

from .callbacks import EpochSummary, LastCheckpoint, SaveRunInfo, StopOnNonFiniteLoss
from .data import ImageDataModule
from .errors import UserError
from .hardware import trainer_defaults
from .model import DATA_FACTS, ImageClassifier
from .report import TestReport


class TrainCLI(LightningCLI):
    """LightningCLI with a resume flag, configurable best-model checkpoint and early stopping,
    and the data module's facts about its data passed on to the model."""

    def add_arguments_to_parser(self, parser: ArgumentParser) -> None:
        parser.add_argument(
            "--ckpt_path", type=str | None, default=None, help="Checkpoint to resume fitting from."
        )
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "checkpoint.monitor": "val/acc",
                "checkpoint.mode": "max",
                "checkpoint.filename": "epoch{epoch:02d}-val_acc{val/acc:.4f}",
                "checkpoint.auto_insert_metric_name": False,
            }
        )
        parser.add_lightning_class_args(EarlyStopping, "early_stopping")
        parser.set_defaults(
            {
                "early_stopping.monitor": "val/acc",
                "early_stopping.mode": "max",
                "early_stopping.patience": 3,
            }
        )
        for fact in DATA_FACTS:
            parser.link_arguments(f"data.{fact}", f"model.{fact}", apply_on="instantiate")


def train(args: list[str] | None = None) -> TrainCLI:
    """Parse ``args`` (default: the command line), fit, test the best checkpoint."""
    # MLflow 3 refuses its file store unless asked; with the MLflow logger, runs are plain
    # files under logs/ unless the config points it at a tracking server.
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    cli = TrainCLI(
        ImageClassifier,
        ImageDataModule,
        args=args,
        run=False,
        auto_configure_optimizers=False,
        seed_everything_default=42,
        save_config_callback=SaveRunInfo,
        save_config_kwargs={"overwrite": True},
        trainer_defaults={
            **trainer_defaults(),
            "max_epochs": 5,
            "default_root_dir": "logs",
            # A live progress bar in a terminal; one line per epoch in CI logs and batch jobs.
            "enable_progress_bar": sys.stderr.isatty(),
            "callbacks": [LastCheckpoint(), StopOnNonFiniteLoss(), EpochSummary(), TestReport()],
        },
    )
    trainer = cli.trainer
    trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=cli.config.ckpt_path)
    # Empty when no checkpoint was written (e.g. --trainer.fast_dev_run): test the last weights.
    best = cli.config_init["checkpoint"].best_model_path or None
    results = trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path=best)
    # Every rank must ask for log_dir: the property broadcasts rank 0's answer.
    run_dir = trainer.log_dir or trainer.default_root_dir
    if trainer.is_global_zero:
        summary = {"best_checkpoint": best, **results[0]}
        Path(run_dir, "test_metrics.json").write_text(json.dumps(summary, indent=2) + "\n")
    return cli


def main() -> None:
    try:
        train()
    except UserError as error:
        sys.exit(f"error: {error}")
    except SIGTERMException:
        sys.exit("stopped by SIGTERM; last.ckpt in the run's checkpoints folder resumes the fit")


if __name__ == "__main__":
    main()
