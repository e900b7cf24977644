"""The project's own training callbacks; the stock ones come from pytorch_lightning.callbacks."""

import json
import math
import platform
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.cli import SaveConfigCallback
from pytorch_lightning.trainer.states import TrainerFn
from pytorch_lightning.utilities import rank_zero_info, rank_zero_only
from pytorch_lightning.utilities.exceptions import SIGTERMException

from .. import TEMPLATE_VERSION
from ..support.errors import NonFiniteLossError
from ..support.files import write_file
from .runs import LAST, run_folder

PACKAGES = ("torch", "torchvision", "pytorch-lightning", "torchmetrics", "jsonargparse")


class StopOnNonFiniteLoss(pl.Callback):
    """Stop before a NaN or infinite loss is backpropagated into the weights."""

    def on_before_backward(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: torch.Tensor
    ) -> None:
        # Read as a Python float, the cheapest check on a CPU; on a GPU any check of the value
        # waits for the step's computation.
        value = loss.item()
        if not math.isfinite(value):
            raise NonFiniteLossError(
                f"the training loss became {value} at step {trainer.global_step}: "
                "lower the learning rate or check the input data"
            )


class ValidateAtStepLimit(pl.Callback):
    """End a fit that reaches ``max_steps`` inside an epoch as an epoch end would: validation,
    then the epoch-end callbacks (early stopping, ``last.ckpt``) with its metrics.

    Lightning validates a fit that stops early when asked through ``trainer.should_stop`` (as
    its ``max_time`` timer and early stopping ask), but not one that reaches its step limit
    mid-epoch: early stopping would then ask for a metric no validation produced.
    """

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if 0 <= trainer.max_steps <= trainer.global_step:
            trainer.should_stop = True


class ResumeLoaders(pl.Callback):
    """Hand a resumed fit's training loaders the state its checkpoint saved for them.

    Lightning loads that state only when it makes the loaders after restoring the checkpoint;
    the schedule's ``trainer.estimated_stepping_batches`` makes them before, and the state is
    dropped (pytorch-lightning issue #20550). Here it is loaded as training starts, and the
    loaders start again from it.
    """

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        loop = trainer.fit_loop
        if loop.restarting and loop._combined_loader_states_to_load and loop._data_fetcher:
            loop._load_combined_loader_states()
            iter(loop._data_fetcher)


class BestCheckpoint(ModelCheckpoint):
    """The best-model checkpoint, remembering the best of a run across a resume.

    Lightning restores the best score only when the resumed fit writes to the same folder. A
    logger that starts a new run folder on resume (W&B, MLflow, a requeued SLURM job) would
    otherwise make it forget the best model of the interrupted part and test a worse one.
    """

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        best = state_dict.get("best_model_path")
        if best and Path(best).is_file() and state_dict.get("dirpath") != self.dirpath:
            self.best_model_score = state_dict["best_model_score"]
            self.best_k_models = {
                path: score
                for path, score in state_dict.get("best_k_models", {}).items()
                if Path(path).is_file()
            }
            self.kth_best_model_path = state_dict.get("kth_best_model_path", "")
            self.kth_value = state_dict.get("kth_value", self.kth_value)


class LastCheckpoint(ModelCheckpoint):
    """Keep ``checkpoints/last.ckpt`` at the latest epoch end, every ``every_minutes`` of
    training, and where a stop signal ends the fit, for ``--ckpt_path`` to resume.

    Ctrl-C or SIGTERM (a scheduler's stop) during a training step or the fit's validation
    saves ``last.ckpt`` there: its training loader's position and random numbers included, so
    a resumed fit goes on with the same batches and ends with the same weights as an
    uninterrupted one (a stop during validation validates again). During the sanity check
    nothing is trained yet; during the final test ``last.ckpt`` is left alone, so it always
    holds the latest training state. A kill that leaves no time to save (SIGKILL, a power cut)
    loses at most ``every_minutes`` of training. Errors never write it: a crash, a bad argument
    or a diverged loss is not worth resuming. (A callback of its own because ``save_last`` of
    the best-model checkpoint only refreshes ``last.ckpt`` in epochs that also improve the
    best model, and Lightning's ``train_time_interval`` would replace the epoch-end saves.)
    """

    def __init__(self, every_minutes: float | None = 30.0) -> None:
        """
        Args:
            every_minutes: Minutes of training between saves inside an epoch; None: only at
                epoch ends and stops.
        """
        name = LAST.removesuffix(self.FILE_EXTENSION)
        super().__init__(
            filename=name,
            monitor=None,
            save_top_k=1,
            enable_version_counter=False,
            # At the epoch's very end, after its validation and the best-model checkpoint.
            save_on_train_epoch_end=True,
        )
        self.every_seconds = every_minutes * 60 if every_minutes else None
        self.last_save = time.monotonic()
        self.in_validation = False

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.last_save = time.monotonic()

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if self.every_seconds is None or not self.dirpath:
            return
        # Every process saves together: process 0's clock decides.
        due = trainer.strategy.broadcast(time.monotonic() - self.last_save >= self.every_seconds)
        if due:
            trainer.save_checkpoint(Path(self.dirpath, LAST), weights_only=False)
            self.last_save = time.monotonic()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        self.last_save = time.monotonic()

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.in_validation = trainer.state.fn == TrainerFn.FITTING and not trainer.sanity_checking

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.in_validation = False  # its metrics are complete: checkpoints from now on keep them

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        if not self.in_validation:
            return
        # Saved during the fit's validation (a stop signal, or Lightning's SLURM checkpoint on
        # SIGUSR1): recorded as a validation stopped in its first batch, which Lightning
        # resumes by validating again, whole. As it is, Lightning would resume it as validated,
        # with no metrics for early stopping or the best model.
        progress = checkpoint["loops"]["fit_loop"]["epoch_loop.val_loop.batch_progress"]
        done = progress["total"]["completed"] - progress["current"]["completed"]
        progress["total"] = {
            "ready": done + 1,
            "started": done + 1,
            "processed": done,
            "completed": done,
        }
        progress["current"] = {"ready": 1, "started": 1, "processed": 0, "completed": 0}
        progress["is_last_batch"] = False

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        if not isinstance(exception, KeyboardInterrupt | SIGTERMException):
            return
        path = Path(self.dirpath or ".", LAST)
        fitting = trainer.state.fn == TrainerFn.FITTING and not trainer.sanity_checking
        if fitting and trainer.global_step > 0 and self.dirpath:
            trainer.save_checkpoint(path, weights_only=False)
        if path.is_file():
            rank_zero_info(f"Interrupted; resume with --ckpt_path {path} (or --ckpt_path last)")
        else:
            rank_zero_info("Interrupted before the first training step; there is nothing to resume")


class SaveRunInfo(SaveConfigCallback):
    """Save the resolved config and the template and package versions in the run folder,
    and send both to the experiment loggers."""

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        run_dir = run_folder(trainer)
        if self.already_saved or not trainer.is_global_zero:
            return
        versions = {
            "lightning-template": TEMPLATE_VERSION,
            "python": platform.python_version(),
            **{package: version(package) for package in PACKAGES},
        }
        write_file(run_dir / self.config_filename, self.parser.dump(self.config, skip_none=False))
        write_file(run_dir / "versions.json", json.dumps(versions, indent=2) + "\n")
        for logger in trainer.loggers:
            logger.log_hyperparams({"config": self.config.as_dict(), "versions": versions})
        self.already_saved = True


class EpochSummary(pl.Callback):
    """Print one line of metrics per epoch when no progress bar is shown."""

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.progress_bar_callback is None:
            metrics = sorted(trainer.callback_metrics.items())
            values = " ".join(f"{name}={float(value):.4f}" for name, value in metrics)
            epoch = f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs}"
            rank_zero_only(print)(f"{epoch} {values}")
