"""Train entry point: fit, then test the best checkpoint. ``--help`` lists every flag."""

import json
{%- if cookiecutter.logger == "mlflow" %}
import os
{%- endif %}
import sys
from pathlib import Path

from jsonargparse import ArgumentParser
from pytorch_lightning.callbacks import EarlyStopping{% if cookiecutter.logger != "none" %}, LearningRateMonitor{% endif %}, ModelCheckpoint
from pytorch_lightning.cli import LightningCLI
from pytorch_lightning.utilities.exceptions import SIGTERMException

from .callbacks import (
    EpochSummary,
    LastCheckpoint,
    NonFiniteLossError,
    SaveRunInfo,
    StopOnNonFiniteLoss,
)
from .data import DatasetError, ImageDataModule
from .hardware import trainer_defaults
from .model import ImageClassifier
from .report import TestReport


class TrainCLI(LightningCLI):
    """LightningCLI with a resume flag and configurable best-model checkpoint and early stopping."""

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


def train(args: list[str] | None = None) -> TrainCLI:
    """Parse ``args`` (default: the command line), fit, test the best checkpoint."""
{%- if cookiecutter.logger == "mlflow" %}
    # MLflow 3 refuses its file store unless asked; it keeps runs in plain files under logs/.
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
{%- endif %}
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
{%- if cookiecutter.logger == "tensorboard" %}
            "logger": {
                "class_path": "pytorch_lightning.loggers.TensorBoardLogger",
                "init_args": {"save_dir": "logs", "name": "mnist"},
            },
{%- elif cookiecutter.logger == "csv" %}
            "logger": {
                "class_path": "pytorch_lightning.loggers.CSVLogger",
                "init_args": {"save_dir": "logs", "name": "mnist"},
            },
{%- elif cookiecutter.logger == "wandb" %}
            # Offline (files only) with WANDB_MODE=offline; online after `wandb login`.
            "logger": {
                "class_path": "pytorch_lightning.loggers.WandbLogger",
                "init_args": {"save_dir": "logs", "project": {{ cookiecutter.project_slug | quoted }}},
            },
{%- elif cookiecutter.logger == "mlflow" %}
            "logger": {
                "class_path": "pytorch_lightning.loggers.MLFlowLogger",
                "init_args": {"experiment_name": "mnist", "tracking_uri": "file:logs/mlruns"},
            },
{%- else %}
            "logger": False,
{%- endif %}
            "callbacks": [
                LastCheckpoint(),
                StopOnNonFiniteLoss(),
                EpochSummary(),
                TestReport(),
{%- if cookiecutter.logger != "none" %}
                LearningRateMonitor(logging_interval="epoch"),
{%- endif %}
            ],
        },
    )
    trainer = cli.trainer
    trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=cli.config.ckpt_path)
    # Empty when no checkpoint was written (e.g. --trainer.fast_dev_run): test the last weights.
    best = cli.config_init["checkpoint"].best_model_path or None
    results = trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path=best)
    log_dir = trainer.log_dir  # every rank must ask: the property broadcasts rank 0's answer
    if trainer.is_global_zero:
        summary = {"best_checkpoint": best, **results[0]}
        Path(log_dir, "test_metrics.json").write_text(json.dumps(summary, indent=2) + "\n")
    return cli


def main() -> None:
    try:
        train()
    except (DatasetError, NonFiniteLossError) as error:
        sys.exit(f"error: {error}")
    except SIGTERMException:
        sys.exit("stopped by SIGTERM; last.ckpt in the run's checkpoints folder resumes the fit")


if __name__ == "__main__":
    main()
