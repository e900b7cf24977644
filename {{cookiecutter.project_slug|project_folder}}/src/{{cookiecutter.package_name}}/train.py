"""Training: fit, then test the best checkpoint. ``--help`` lists every setting.

Every run reads ``configs/default.yaml`` of this package first; ``--config my.yaml`` and flags
such as ``--trainer.max_epochs 10`` change what they name. ``resolve`` and ``train`` are the
same steps for other code.
"""

import json
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from jsonargparse import ArgumentParser, Namespace
from pytorch_lightning.callbacks import EarlyStopping
from pytorch_lightning.cli import LightningCLI
from pytorch_lightning.plugins import CheckpointIO

{% if cookiecutter.model == "backbone" and cookiecutter.dataset == "image_folder" -%}
from .data import MAX_AUTO_SIDE, ImageDataModule
from .model import DATA_FACTS, ImageClassifier
from .nets import network_class
{% else -%}
from .data import ImageDataModule
from .model import DATA_FACTS, ImageClassifier
{% endif -%}
from .support.checkpoints import AtomicCheckpointIO, read_checkpoint
from .support.errors import ConfigError, DatasetError, UserError, exit_in_one_line
from .support.files import write_file
from .support.process import configure_process, default_precision
from .training.callbacks import BestCheckpoint, ResumeLoaders, SaveRunInfo, ValidateAtStepLimit
from .training.length import check_length
from .training.resume import check_resume
from .training.runs import continue_run, newest_last, place_logs, run_folder

DEFAULT_CONFIG = Path(__file__).parent / "configs" / "default.yaml"


class TrainCLI(LightningCLI):
    """LightningCLI over ``configs/default.yaml``, with a resume flag, the best-model checkpoint
    and early stopping as settings, and the data module's facts passed on to the model."""

    def __init__(
        self,
        args: list[str] | Namespace | None = None,
        callbacks: Iterable[pl.Callback] = (),
        parse_only: bool = False,
    ) -> None:
        """``args``: command-line arguments, or a config (``resolve(...).config``).
        ``callbacks``: objects added to the project's own. ``parse_only``: stop once the
        arguments are resolved."""
        self.parse_only = parse_only
        super().__init__(
            ImageClassifier,
            ImageDataModule,
            args=args,
            run=False,
            auto_configure_optimizers=False,
            save_config_callback=SaveRunInfo,
            parser_kwargs={
                "default_config_files": [str(DEFAULT_CONFIG)],
                # A command line ends in jsonargparse's usage message, a config in ConfigError.
                "exit_on_error": not parse_only and not isinstance(args, Namespace),
            },
            # Only what depends on this machine; the config file holds every other default.
            trainer_defaults={
                "precision": default_precision(),
                # A live progress bar in a terminal; one line per epoch in logs and batch jobs.
                "enable_progress_bar": sys.stderr.isatty(),
                # Fixes to Lightning's loop, not choices: always on, whatever the config's
                # trainer.callbacks list (Lightning runs them after it).
                "callbacks": [ValidateAtStepLimit(), ResumeLoaders(), *callbacks],
            },
        )

    def parse_arguments(self, parser: ArgumentParser, args: Any) -> None:
        try:
            super().parse_arguments(parser, args)
        except Exception as error:  # with exit_on_error off: jsonargparse's ArgumentError
            raise ConfigError(" ".join(str(error).split())) from None

    def add_arguments_to_parser(self, parser: ArgumentParser) -> None:
        parser.add_argument(
            "--ckpt_path",
            type=str | None,
            default=None,
            help="Checkpoint to resume fitting from, or `last`: the newest last.ckpt of the runs.",
        )
        parser.add_lightning_class_args(BestCheckpoint, "checkpoint")
        parser.add_lightning_class_args(EarlyStopping, "early_stopping")
        for fact in DATA_FACTS:
            parser.link_arguments(
                "data", f"model.{fact}", compute_fn=data_fact(fact), apply_on="instantiate"
            )
{%- if cookiecutter.model == "backbone" and cookiecutter.dataset == "image_folder" %}
        parser.link_arguments("model.net", "data.auto_max_side", compute_fn=auto_max_side)
{%- endif %}

    def before_instantiate_classes(self) -> None:
        """Keep the logs under the root folder, name checkpoints by the monitored metric, and
        resume in the run folder of the checkpoint."""
        if self.parse_only:
            return
        config = self.config
        check_length(config.trainer, config.model.scheduler)
        # The config's logger writes under the default root folder; with another
        # --trainer.default_root_dir its logs move along, as Lightning's own default logger's do.
        default_root = self.parser.get_defaults().trainer.default_root_dir
        place_logs(config.trainer, config.trainer.default_root_dir, only_from=default_root)
        if config.checkpoint.filename is None:
            metric = config.checkpoint.monitor
            name = metric.replace("/", "_")
            # Lightning fills in the epoch and the metric's value: epoch02-val_acc0.9912.ckpt
            config.checkpoint.filename = "epoch{epoch:02d}-" + name + "{" + metric + ":.4f}"
            config.checkpoint.auto_insert_metric_name = False
        if config.ckpt_path == "last":
            config.ckpt_path = str(newest_last(config.trainer))
            print(f"resuming from {config.ckpt_path}")
        if config.ckpt_path:
            continue_run(config.trainer, Path(config.ckpt_path))

    def instantiate_trainer(self, **kwargs: Any) -> pl.Trainer:
        """The trainer, writing checkpoints whole (unless the config names another way)."""
        plugins = list(self._get(self.config_init, "trainer").get("plugins") or [])
        if not any(isinstance(plugin, CheckpointIO) for plugin in plugins):
            plugins.append(AtomicCheckpointIO())
        return super().instantiate_trainer(plugins=plugins, **kwargs)

    def instantiate_classes(self) -> None:
        if self.parse_only:
            return
        try:
            super().instantiate_classes()
        except ValueError as error:  # jsonargparse wraps errors raised while linking
            if isinstance(error.__cause__, UserError):
                raise error.__cause__ from None
            raise


def data_fact(name: str) -> Any:
    """Read one fact off the data module, or say which rule of the data contract it breaks."""

    def fact_of(datamodule: pl.LightningDataModule) -> Any:
        if not hasattr(datamodule, name):
            raise DatasetError(
                f"{type(datamodule).__name__} has no {name} once __init__ returns: the data "
                f"contract (data.py) asks for {', '.join(DATA_FACTS)} as attributes set by then"
            )
        return getattr(datamodule, name)

    return fact_of


{% if cookiecutter.model == "backbone" and cookiecutter.dataset == "image_folder" -%}
def auto_max_side(net: Namespace) -> int:
    """The longest side ``image_size: auto`` picks for the network of the config: the input
    size a pretrained backbone was trained at (timm's pretrained_cfg), else the data's own."""
    try:
        net_class = network_class(net.class_path)
    except ValueError:  # not a network of nets.py: building the model says so
        return MAX_AUTO_SIDE
    if not hasattr(net_class, "preferred_side"):
        return MAX_AUTO_SIDE
    return net_class.preferred_side(**net.get("init_args", Namespace()).as_dict())


{% endif -%}
def resolve(args: list[str] | Namespace) -> TrainCLI:
    """The complete config ``train`` would run with these arguments (``.config``), and its
    parser (``.parser``), without building anything."""
    return TrainCLI(args, parse_only=True)


def train(
    args: list[str] | Namespace | None = None, callbacks: Iterable[pl.Callback] = ()
) -> TrainCLI:
    """Fit with ``args`` (default: the command line), then test the best checkpoint."""
    # MLflow 3 refuses its file store unless asked; with the MLflow logger, runs are plain
    # files under logs/ unless the config points it at a tracking server.
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    cli = TrainCLI(args, callbacks)
    trainer, model, datamodule = cli.trainer, cli.model, cli.datamodule
    ckpt_path = cli.config.ckpt_path
    if ckpt_path:  # checked before the fit writes anything into the run folder
        checkpoint = read_checkpoint(ckpt_path)
        check_resume(checkpoint, dict(model.hparams), trainer, datamodule)
        if isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO):
            trainer.strategy.checkpoint_io.read_ahead[ckpt_path] = checkpoint
    trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    # Empty when no checkpoint was written (e.g. --trainer.fast_dev_run): test the last weights.
    best = cli.config_init["checkpoint"].best_model_path or None
    results = trainer.test(model, datamodule=datamodule, ckpt_path=best, weights_only=True)
    run_dir = run_folder(trainer)
    if trainer.is_global_zero:
        summary = {"best_checkpoint": best, **results[0]}
        write_file(run_dir / "test_metrics.json", json.dumps(summary, indent=2) + "\n")
    return cli


def main(argv: list[str] | None = None) -> None:
    configure_process()
    with exit_in_one_line():
        train(argv)


if __name__ == "__main__":
    main()
