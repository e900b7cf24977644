"""The LightningModule: loss, metrics, optimizer and the train/val/test/predict steps."""

from collections.abc import Callable, Sequence
from typing import Any, Literal

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.trainer.states import TrainerFn
from torch import Tensor, nn
from torch.optim import AdamW, Optimizer
from torch.optim.lr_scheduler import CosineAnnealingLR, LRScheduler, OneCycleLR
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

from .errors import CheckpointError, ConfigError
from .nets import ConvNet

# Builds a network from (in_channels, num_classes, image_size); in a config, a class path of
# nets.py with its own init args, e.g. `net: {class_path: ...nets.MLP, init_args: {...}}`.
NetFactory = Callable[[int, int, tuple[int, int]], nn.Module]

# What the data module tells the model about its data (linked by train.py, kept in checkpoints).
DATA_FACTS = ("class_names", "channels", "image_size", "mean", "std")


class ImageClassifier(pl.LightningModule):
    """Classifies images into the data module's classes.

    Takes images as pixel values (uint8, or floats on the same 0-255 scale) and normalizes
    them itself, so exported and served models need no constants beside them. Every
    hyperparameter is a plain value, so checkpoints load with torch's weights-only loading.
    """

    def __init__(
        self,
        class_names: Sequence[str],
        channels: int,
        image_size: tuple[int, int],
        mean: Sequence[float],
        std: Sequence[float],
        net: NetFactory = ConvNet,
        lr: float = 1e-2,
        weight_decay: float = 1e-4,
        schedule: Literal["one_cycle", "cosine"] = "one_cycle",
    ) -> None:
        """
        Args:
            class_names: Names of the classes, in label order (from the data module).
            channels: Channels of the input images (from the data module).
            image_size: Height and width of the input images (from the data module).
            mean: Per-channel pixel mean of the training images, 0-255 scale (from the data module).
            std: Per-channel pixel standard deviation, 0-255 scale (from the data module).
            net: The network: a class of nets.py and its own settings.
            lr: Peak learning rate of AdamW.
            weight_decay: AdamW's decoupled weight decay.
            schedule: The learning rate over the run, stepped every batch: ``one_cycle`` rises
                to ``lr`` over the first 30 % of the steps, then anneals along a cosine
                (OneCycleLR); ``cosine`` starts at ``lr`` and anneals (CosineAnnealingLR).
        """
        super().__init__()
        self.save_hyperparameters()
        if lr <= 0 or weight_decay < 0:
            raise ConfigError(
                f"--model.lr must be above 0 and --model.weight_decay at least 0, "
                f"not {lr} and {weight_decay}"
            )
        if not len(mean) == len(std) == channels:
            raise ValueError(f"mean and std need one value per channel ({channels}): {mean}, {std}")
        self.input_shape = (channels, *image_size)
        self.register_buffer("pixel_mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)
        self.net = net(channels, len(class_names), tuple(image_size))
        # NHWC weights let cuDNN and oneDNN pick their faster convolution kernels.
        self.net.to(memory_format=torch.channels_last)
        metrics = MetricCollection(
            {
                "acc": MulticlassAccuracy(num_classes=len(class_names), average="micro"),
                "f1": MulticlassF1Score(num_classes=len(class_names), average="macro"),
            }
        )
        self.val_metrics = metrics.clone(prefix="val/")
        self.test_metrics = metrics.clone(prefix="test/")

    def forward(self, images: Tensor) -> Tensor:
        """Class logits for a batch of images of shape (N, channels, height, width)."""
        if tuple(images.shape[1:]) != self.input_shape:
            raise ValueError(
                f"expected images of shape (N, {', '.join(map(str, self.input_shape))}), "
                f"got {tuple(images.shape)}"
            )
        return self.net((images.float() - self.pixel_mean) / self.pixel_std)

    def _step(
        self, batch: tuple[Tensor, Tensor], metrics: MetricCollection
    ) -> tuple[Tensor, Tensor]:
        images, labels = batch
        logits = self(images)
        metrics.update(logits, labels)
        return F.cross_entropy(logits, labels), logits

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        # Only the loss: accuracy on batches the weights are still moving on says little, and
        # computing it every step costs several percent of a CPU run. Validation measures.
        images, labels = batch
        loss = F.cross_entropy(self(images), labels)
        if self._loggers_write_this_step():
            self.log("train/loss", loss, prog_bar=True)
            # Here rather than by LearningRateMonitor, which fails when no logger is set.
            self.log("train/lr", self.optimizers().param_groups[0]["lr"])
        return loss

    def _loggers_write_this_step(self) -> bool:
        """Whether Lightning sends this step's values to the loggers: every
        ``--trainer.log_every_n_steps`` steps.

        Values logged in the other steps would never reach a logger, and each ``self.log``
        call costs about half a millisecond of Python: 5 % of a small model's CPU step.
        """
        every = self.trainer.log_every_n_steps
        return every > 0 and (self.global_step + 1) % every == 0

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        loss, _ = self._step(batch, self.val_metrics)
        self.log("val/loss", loss, sync_dist=True)
        self.log_dict(self.val_metrics, prog_bar=True)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        loss, logits = self._step(batch, self.test_metrics)
        self.log("test/loss", loss, sync_dist=True)
        self.log_dict(self.test_metrics)
        return logits  # for callbacks that look at the predictions, such as TestReport

    def predict_step(self, batch: tuple[Tensor, Any], batch_idx: int) -> dict[str, Tensor]:
        images, _ = batch
        confidence, class_index = self(images).float().softmax(dim=1).max(dim=1)
        return {"class_index": class_index.cpu(), "confidence": confidence.cpu()}

    def configure_optimizers(self) -> dict:
        optimizer, scheduler = self.optimizer_and_schedule(self.trainer.estimated_stepping_batches)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }

    def optimizer_and_schedule(self, total_steps: int) -> tuple[Optimizer, LRScheduler]:
        """AdamW and its learning-rate schedule over ``total_steps`` optimizer steps."""
        hparams = self.hparams
        optimizer = AdamW(self.parameters(), lr=hparams.lr, weight_decay=hparams.weight_decay)
        if hparams.schedule == "cosine":
            return optimizer, CosineAnnealingLR(optimizer, T_max=total_steps)
        return optimizer, OneCycleLR(optimizer, max_lr=hparams.lr, total_steps=total_steps)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # The learning-rate schedule spans this many steps; a resumed fit must plan the same.
        checkpoint["schedule_steps"] = self.trainer.estimated_stepping_batches

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse, in one line, to resume a fit from a checkpoint made for another network,
        other data or another schedule length."""
        if self._trainer is None or self.trainer.state.fn != TrainerFn.FITTING:
            return  # loading weights to predict, test or export: the checkpoint built this model
        saved = checkpoint.get("hyper_parameters", {})
        for name in ("class_names", "channels", "image_size", "net"):
            if name in saved and plain(saved[name]) != plain(self.hparams[name]):
                raise CheckpointError(
                    f"the checkpoint was trained with {name} {plain(saved[name])}, "
                    f"this run has {plain(self.hparams[name])}"
                )
        planned, steps = checkpoint.get("schedule_steps"), self.trainer.estimated_stepping_batches
        if planned is not None and planned != steps:
            raise CheckpointError(
                f"the checkpoint's learning-rate schedule spans {planned} steps, this run plans "
                f"{steps}: resume with the same --trainer.max_epochs, batch size and data, or "
                "start a new run"
            )


def plain(value: Any) -> Any:
    """Tuples as lists, recursively, so values from YAML and from checkpoints compare alike."""
    if isinstance(value, tuple | list):
        return [plain(item) for item in value]
    if isinstance(value, dict):
        return {key: plain(item) for key, item in value.items()}
    return value
