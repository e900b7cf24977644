"""Train entry point: fit, then test the best checkpoint. ``--help`` lists every flag."""

import gc
import json
import os
import sys
from pathlib import Path

from jsonargparse import ArgumentParser, Namespace
from pytorch_lightning.callbacks import EarlyStopping
from pytorch_lightning.cli import LightningCLI
from pytorch_lightning.utilities.exceptions import MisconfigurationException, SIGTERMException

from .callbacks import (
    BestCheckpoint,
    EpochSummary,
    LastCheckpoint,
    SaveRunInfo,
    StopOnNonFiniteLoss,
)
from .checkpoints import check_model_hparams, newest_last_checkpoint, read_checkpoint
from .data import ImageDataModule
from .errors import UserError
from .hardware import close_process_group, trainer_defaults
from .model import DATA_FACTS, ImageClassifier
from .report import TestReport

# Runs, checkpoints and logs go here unless --trainer.default_root_dir says otherwise.
DEFAULT_ROOT_DIR = "logs"


class TrainCLI(LightningCLI):
    """LightningCLI with a resume flag, configurable best-model checkpoint and early stopping,
    and the data module's facts about its data passed on to the model."""

    def add_arguments_to_parser(self, parser: ArgumentParser) -> None:
        parser.add_argument(
            "--ckpt_path",
            type=str | None,
            default=None,
            help="Checkpoint to resume fitting from, or `last`: the newest last.ckpt of the runs.",
        )
        parser.add_lightning_class_args(BestCheckpoint, "checkpoint")
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
                "early_stopping.patience": {{ 8 if cookiecutter.dataset == "image_folder" else 3 }},
            }
        )
        for fact in DATA_FACTS:
            parser.link_arguments(f"data.{fact}", f"model.{fact}", apply_on="instantiate")

    def before_instantiate_classes(self) -> None:
        """Keep the logs under the root folder, check the checkpoint to resume before anything
        is built, and resume in its run folder."""
        trainer, logger = self.config.trainer, self.config.trainer.logger
        # The config's logger writes under the default root folder; with another
        # --trainer.default_root_dir its logs move along, as Lightning's own default logger's do.
        if (
            trainer.default_root_dir != DEFAULT_ROOT_DIR
            and isinstance(logger, Namespace)
            and logger.init_args.get("save_dir") == DEFAULT_ROOT_DIR
        ):
            logger.init_args.save_dir = trainer.default_root_dir
        ckpt_path = self.config.ckpt_path
        if ckpt_path is None:
            return
        if ckpt_path == "last":
            ckpt_path = str(newest_last_checkpoint(self.config.trainer.default_root_dir))
            print(f"resuming from {ckpt_path}")
        check_model_hparams(ckpt_path, read_checkpoint(ckpt_path).get("hyper_parameters", {}))
        self.config.ckpt_path = ckpt_path
        continue_run_folder(self.config.trainer.logger, Path(ckpt_path))


def continue_run_folder(logger: Namespace | bool | None, ckpt_path: Path) -> None:
    """Point a TensorBoard or CSV logger at the version folder that holds ``ckpt_path``, so
    that a resumed run keeps its best checkpoint, metrics and results together."""
    if not isinstance(logger, Namespace) or "version" not in logger.init_args:
        return
    run_dir = ckpt_path.resolve().parent.parent  # <save_dir>/<name>/<version>/checkpoints/
    logged_to = Path(logger.init_args.save_dir, logger.init_args.name or "").resolve()
    if run_dir.parent == logged_to:
        logger.init_args.version = run_dir.name


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
            "max_epochs": {{ 30 if cookiecutter.dataset == "image_folder" else 3 }},
            "default_root_dir": DEFAULT_ROOT_DIR,
            # configs/default.yaml chooses the logger; without a config, CSV files per run.
            "logger": {
                "class_path": "pytorch_lightning.loggers.CSVLogger",
                "init_args": {"save_dir": DEFAULT_ROOT_DIR, "name": "runs"},
            },
            # A live progress bar in a terminal; one line per epoch in CI logs and batch jobs.
            "enable_progress_bar": sys.stderr.isatty(),
            "callbacks": [LastCheckpoint(), StopOnNonFiniteLoss(), EpochSummary(), TestReport()],
        },
    )
    trainer = cli.trainer
    trainer.fit(
        cli.model, datamodule=cli.datamodule, ckpt_path=cli.config.ckpt_path, weights_only=True
    )
    # Empty when no checkpoint was written (e.g. --trainer.fast_dev_run): test the last weights.
    best = cli.config_init["checkpoint"].best_model_path or None
    results = trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path=best, weights_only=True)
    # Every rank must ask for log_dir: the property broadcasts rank 0's answer.
    run_dir = trainer.log_dir or trainer.default_root_dir
    if trainer.is_global_zero:
        summary = {"best_checkpoint": best, **results[0]}
        Path(run_dir, "test_metrics.json").write_text(json.dumps(summary, indent=2) + "\n")
    return cli


def main() -> None:
    # The objects of the imports (torch, Lightning, ...) live as long as the run; frozen, the
    # cyclic garbage collector stops walking them every few thousand allocations of a step.
    gc.freeze()
    try:
        train()
    except (UserError, MisconfigurationException) as error:
        # Lightning's own configuration errors (e.g. a GPU asked for where there is none)
        # are already worded for the user.
        sys.exit(f"error: {str(error).strip().splitlines()[0]}")
    except SIGTERMException:
        sys.exit("stopped by SIGTERM")
    finally:
        close_process_group()


if __name__ == "__main__":
    main()
