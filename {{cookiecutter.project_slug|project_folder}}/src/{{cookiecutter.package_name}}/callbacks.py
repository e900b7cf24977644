"""Callbacks of this project; the stock ones come from pytorch_lightning.callbacks."""

import csv
import json
import math
import platform
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import BasePredictionWriter, ModelCheckpoint
from pytorch_lightning.cli import SaveConfigCallback
from pytorch_lightning.trainer.states import TrainerFn
from pytorch_lightning.utilities import rank_zero_info, rank_zero_only
from pytorch_lightning.utilities.exceptions import SIGTERMException

from . import TEMPLATE_VERSION
from .errors import NonFiniteLossError

PACKAGES = ("torch", "torchvision", "pytorch-lightning", "torchmetrics", "jsonargparse")


class PredictionCSVWriter(BasePredictionWriter):
    """Write one CSV row per input, in input order: source, class index and name, confidence.

    The source is the file an image came from, or ``test/<index>`` for the data module's test
    split. Each process writes its share to a part file; when prediction ends, rank 0 merges
    them by input index (dropping the repeats a distributed sampler pads with) into
    ``output``. Nothing is written under the name ``output`` until the file is complete, and
    a failed prediction leaves no part file behind.
    """

    COLUMNS = ("source", "class_index", "class_name", "confidence")

    def __init__(self, output: str | Path) -> None:
        super().__init__(write_interval="batch")
        self.output = Path(output)

    def _part(self, rank: int) -> Path:
        return self.output.with_name(f"{self.output.name}.rank{rank}.partial")

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.output.parent.mkdir(parents=True, exist_ok=True)
        self.class_names = pl_module.hparams.class_names
        self._file = self._part(trainer.global_rank).open("w", newline="")
        self._writer = csv.writer(self._file)

    def write_on_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        prediction: dict[str, Any],
        batch_indices: list[int],
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        _, targets = batch
        # Data-set splits come with labels, and are named by index; image files by their paths.
        sources = [f"test/{i}" for i in batch_indices] if torch.is_tensor(targets) else targets
        rows = zip(
            batch_indices,
            sources,
            prediction["class_index"].tolist(),
            prediction["confidence"].tolist(),
            strict=True,
        )
        self._writer.writerows(
            (i, source, index, self.class_names[index], f"{confidence:.6f}")
            for i, source, index, confidence in rows
        )

    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._file.close()
        trainer.strategy.barrier()
        if trainer.is_global_zero:
            self._merge_parts(trainer.world_size)
        trainer.strategy.barrier()

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        if hasattr(self, "_file"):
            self._file.close()
        for part in self.output.parent.glob(f"{self.output.name}.*partial"):
            part.unlink(missing_ok=True)

    def _merge_parts(self, world_size: int) -> None:
        rows: dict[int, list[str]] = {}
        for rank in range(world_size):
            with self._part(rank).open(newline="") as part:
                rows.update((int(index), row) for index, *row in csv.reader(part))
            self._part(rank).unlink()
        merged = self.output.with_name(self.output.name + ".partial")
        with merged.open("w", newline="") as file:
            writer = csv.writer(file)
            writer.writerow(self.COLUMNS)
            writer.writerows(rows[index] for index in sorted(rows))
        merged.replace(self.output)


class StopOnNonFiniteLoss(pl.Callback):
    """Stop before a NaN or infinite loss is backpropagated into the weights."""

    def on_before_backward(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: torch.Tensor
    ) -> None:
        # As a Python float: a fifth of the cost of torch.isfinite per step on a CPU.
        value = loss.item()
        if not math.isfinite(value):
            raise NonFiniteLossError(
                f"the training loss became {value} at step {trainer.global_step}: "
                "lower --model.lr or check the input data"
            )


class BestCheckpoint(ModelCheckpoint):
    """The best-model checkpoint, remembering the best of a run across a resume.

    Lightning restores the best score only when the resumed fit writes to the same folder. A
    logger that starts a new run folder on resume (W&B, MLflow) would otherwise make it forget
    the best model of the interrupted part and test a worse one.
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
        super().__init__(filename="last", monitor=None, save_top_k=1, enable_version_counter=False)

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        if not isinstance(exception, KeyboardInterrupt | SIGTERMException):
            return
        path = Path(self.dirpath or ".", self.CHECKPOINT_NAME_LAST + self.FILE_EXTENSION)
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
        first_call = not self.already_saved
        super().setup(trainer, pl_module, stage)
        log_dir = trainer.log_dir  # every rank must ask: the property broadcasts rank 0's answer
        if first_call and trainer.is_global_zero:
            versions = {
                "lightning-template": TEMPLATE_VERSION,
                "python": platform.python_version(),
                **{package: version(package) for package in PACKAGES},
            }
            Path(log_dir, "versions.json").write_text(json.dumps(versions, indent=2) + "\n")
            for logger in trainer.loggers:
                logger.log_hyperparams({"config": self.config.as_dict(), "versions": versions})


class EpochSummary(pl.Callback):
    """Print one line of metrics per epoch when no progress bar is shown."""

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.progress_bar_callback is None:
            metrics = sorted(trainer.callback_metrics.items())
            values = " ".join(f"{name}={float(value):.4f}" for name, value in metrics)
            epoch = f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs}"
            rank_zero_only(print)(f"{epoch} {values}")
