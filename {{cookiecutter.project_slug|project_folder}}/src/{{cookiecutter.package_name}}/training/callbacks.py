"""The project's own training callbacks; the stock ones come from pytorch_lightning.callbacks."""

import json
import math
import platform
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
    """Keep ``checkpoints/last.ckpt`` at the latest epoch end, or where training was interrupted.

    Ctrl-C or SIGTERM (a scheduler's stop) during a training step saves a mid-epoch
    ``last.ckpt`` that ``--ckpt_path`` resumes. During validation or the sanity check they
    save nothing new: ``last.ckpt`` stays at the previous epoch end, and resuming repeats the
    interrupted epoch (Lightning cannot resume half a validation run). During the final test
    they leave it alone too, so it always holds the latest training state. Errors never write
    it: a crash, a bad argument or a diverged loss is not worth resuming. (A callback of its
    own because ``save_last`` of the best-model checkpoint only refreshes ``last.ckpt`` in
    epochs that also improve the best model.)
    """

    def __init__(self) -> None:
        name = LAST.removesuffix(self.FILE_EXTENSION)
        super().__init__(
            filename=name,
            monitor=None,
            save_top_k=1,
            enable_version_counter=False,
            # At the epoch's very end, after its validation and the best-model checkpoint.
            save_on_train_epoch_end=True,
        )

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        if not isinstance(exception, KeyboardInterrupt | SIGTERMException):
            return
        path = Path(self.dirpath or ".", LAST)
        fitting = trainer.state.fn == TrainerFn.FITTING
        if fitting and trainer.training and trainer.global_step > 0 and self.dirpath:
            trainer.save_checkpoint(path, weights_only=False)
        if path.is_file():
            rank_zero_info(f"Interrupted; resume with --ckpt_path {path} (or --ckpt_path last)")
        else:
            rank_zero_info("Interrupted before the first epoch ended; there is nothing to resume")


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
