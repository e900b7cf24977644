"""The LightningModule: loss, metrics, the optimizer and its schedule, and the steps."""

import inspect
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from typing import Any, Protocol

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler
from torchmetrics import MeanMetric, MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

from .support.errors import ConfigError, one_line
from .support.process import require_compiler

# What the data module tells the model about its data (linked by train.py, kept in checkpoints).
DATA_FACTS = ("class_names", "channels", "image_size", "mean", "std")

# Builds a network from (in_channels, num_classes, image_size); in a config, a class path of
# nets.py with its own init args, e.g. `net: {class_path: ...nets.MLP, init_args: {...}}`.
NetFactory = Callable[[int, int, tuple[int, int]], nn.Module]
# An optimizer class of torch.optim with its settings, e.g. `{class_path: torch.optim.SGD,
# init_args: {lr: 0.1, momentum: 0.9}}`; it gets the parameters.
OptimizerFactory = Callable[[Iterable[nn.Parameter]], Optimizer]


class ScheduleFactory(Protocol):
    """A scheduler class of torch.optim.lr_scheduler with its settings, stepped after every
    optimizer step. Its span (``total_steps``, ``T_max`` or ``total_iters``, whichever it
    takes) is not set in the config: it is the run's number of optimizer steps."""

    def __call__(
        self, optimizer: Optimizer, /, *, total_steps: int, T_max: int, total_iters: int
    ) -> LRScheduler: ...


SPAN_ARGUMENTS = ("total_steps", "T_max", "total_iters")


class ImageClassifier(pl.LightningModule):
    """Classifies images into the data module's classes.

    Takes images as pixel values (uint8, or floats on the same 0-255 scale) and normalizes
    them itself, so exported models need no constants beside them. In a config
    every setting is a plain value, so checkpoints load with torch's weights-only loading.
    """

    def __init__(
        self,
        class_names: Sequence[str],
        channels: int,
        image_size: tuple[int, int],
        mean: Sequence[float],
        std: Sequence[float],
        net: NetFactory,
        optimizer: OptimizerFactory | None = None,
        scheduler: ScheduleFactory | None = None,
        compile: bool = False,
    ) -> None:
        """
        Args:
            class_names: Names of the classes, in label order (from the data module).
            channels: Channels of the input images (from the data module).
            image_size: Height and width of the input images (from the data module).
            mean: Per-channel pixel mean of the training images, 0-255 scale (from the data module).
            std: Per-channel pixel standard deviation, 0-255 scale (from the data module).
            net: The network: a class of nets.py and its own settings.
            optimizer: The optimizer: a class of torch.optim and its settings (none for a
                model that is not trained, e.g. loaded to predict).
            scheduler: The learning-rate schedule over the run, or none for a constant rate.
            compile: Compile the network with torch.compile (in place: checkpoints keep the
                uncompiled network's keys and load into an uncompiled model).

        train.py links the data facts in from the data module; configs/default.yaml sets the
        network, the optimizer and the schedule.
        """
        super().__init__()
        self.save_hyperparameters()
        if not len(mean) == len(std) == channels:
            raise ConfigError(
                f"mean and std need one value per channel ({channels}): {mean}, {std}"
            )
        self.input_shape = (channels, *image_size)
        self.register_buffer("pixel_mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)
        if compile:  # checked first: a refused run builds nothing
            require_compiler()
        try:
            self.net = net(channels, len(class_names), tuple(image_size))
        except (TypeError, ValueError) as error:  # e.g. images too small for the network
            raise ConfigError(f"--model.net cannot be built: {one_line(error)}") from error
{%- if cookiecutter.model == "backbone" %}
        # Pretrained weights expect the pixel statistics they were trained with, not this
        # data's: the network gives them (nets.Backbone.pixel_stats; none for random weights).
        if getattr(self.net, "pixel_stats", None):
            net_mean, net_std = self.net.pixel_stats
            self.pixel_mean.copy_(torch.tensor(net_mean).view(1, -1, 1, 1))
            self.pixel_std.copy_(torch.tensor(net_std).view(1, -1, 1, 1))
{%- endif %}
        # NHWC weights let cuDNN and oneDNN pick their faster convolution kernels.
        self.net.to(memory_format=torch.channels_last)
        if compile:
            # Only the network, before any strategy wraps the model (DDP wraps it around the
            # compiled network, as torch.compile advises); compiling happens at its first call.
            self.net.compile()
        self.make_optimizer, self.make_scheduler = optimizer, scheduler
        metrics = MetricCollection(
            {
                "acc": MulticlassAccuracy(num_classes=len(class_names), average="micro"),
                "f1": MulticlassF1Score(num_classes=len(class_names), average="macro"),
            }
        )
        self.val_metrics = metrics.clone(prefix="val/")
        self.test_metrics = metrics.clone(prefix="test/")
        # Means over images, not over batches: exact however the images split into batches
        # and, under DDP, into processes.
        self.val_loss, self.test_loss = MeanMetric(), MeanMetric()

    def forward(self, images: Tensor) -> Tensor:
        """Class logits for a batch of images of shape (N, channels, height, width)."""
        if tuple(images.shape[1:]) != self.input_shape:
            raise ValueError(
                f"expected images of shape (N, {', '.join(map(str, self.input_shape))}), "
                f"got {tuple(images.shape)}"
            )
        return self.net((images.float() - self.pixel_mean) / self.pixel_std)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        # Only the loss: accuracy on batches the weights are still moving on says little, and
        # computing it every step costs several percent of a CPU run. Validation measures.
        images, labels = batch
        loss = F.cross_entropy(self(images), torch.as_tensor(labels, device=self.device))
        # Logged only in the steps whose values reach the loggers (every log_every_n_steps):
        # each self.log call has a cost, and the loggers would drop the other steps' values.
        every = self.trainer.log_every_n_steps
        if every > 0 and (self.global_step + 1) % every == 0:
            self.log("train/loss", loss, prog_bar=True)
            # Here rather than by LearningRateMonitor, which fails when no logger is set.
            self.log("train/lr", self.optimizers().param_groups[0]["lr"])
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, self.val_metrics, self.val_loss, "val/loss")

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        # The logits, for callbacks that look at the predictions, such as TestReport.
        return self._evaluate(batch, self.test_metrics, self.test_loss, "test/loss")

    def _evaluate(
        self, batch: tuple[Tensor, Tensor], metrics: MetricCollection, loss: MeanMetric, name: str
    ) -> Tensor:
        images, labels = batch
        labels = torch.as_tensor(labels, device=self.device)
        logits = self(images)
        loss.update(F.cross_entropy(logits, labels), weight=len(labels))
        metrics.update(logits, labels)
        self.log(name, loss)
        self.log_dict(metrics, prog_bar=self.trainer.validating or self.trainer.sanity_checking)
        return logits

    def predict_step(self, batch: tuple[Tensor, Any], batch_idx: int) -> dict[str, Tensor]:
        images, _ = batch
        confidence, class_index = self(images).float().softmax(dim=1).max(dim=1)
        return {"class_index": class_index.cpu(), "confidence": confidence.cpu()}

    def configure_optimizers(self) -> Optimizer | dict[str, Any]:
        optimizer, scheduler = self.optimization(self.trainer.estimated_stepping_batches)
        if scheduler is None:
            return optimizer
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }

    def optimization(self, total_steps: int) -> tuple[Optimizer, LRScheduler | None]:
        """The optimizer, and its schedule over ``total_steps`` optimizer steps."""
        if self.make_optimizer is None:
            raise ConfigError("--model.optimizer is not set: give one in the config")
        try:
{%- if cookiecutter.model == "backbone" %}
            # The backbone at a fraction of the classifier's rate (parameter_groups below).
            optimizer = self.make_optimizer(parameter_groups(self.net))
            rates = scale_rates(optimizer, self.make_scheduler)
{%- else %}
            optimizer = self.make_optimizer(self.parameters())
{%- endif %}
            if self.make_scheduler is None:
                return optimizer, None
            return optimizer, self.make_scheduler(
                optimizer, **span(self.make_scheduler, total_steps){% if cookiecutter.model == "backbone" %}, **rates{% endif %}
            )
        except (TypeError, ValueError) as error:  # torch's own checks, e.g. "Invalid learning rate"
            raise ConfigError(
                f"--model.optimizer or --model.scheduler: {one_line(error)}"
            ) from error

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # What the schedule's span was computed from: a resumed fit must have the same.
        if self.trainer.datamodule is not None:
            checkpoint["schedule_basis"] = schedule_basis(self.trainer, self.trainer.datamodule)


def schedule_basis(trainer: pl.Trainer, datamodule: pl.LightningDataModule) -> dict[str, Any]:
    """The settings Lightning computes the run's optimizer steps from
    (``trainer.estimated_stepping_batches``, the span of the schedule), for a data module
    that is set up."""
    return {
        "trainer.max_epochs": trainer.max_epochs,
        "trainer.max_steps": trainer.max_steps,
        "trainer.accumulate_grad_batches": trainer.accumulate_grad_batches,
        "trainer.limit_train_batches": trainer.limit_train_batches,
        "processes": trainer.num_nodes * trainer.num_devices,
        "batches per epoch": len(datamodule.train_dataloader()),
    }


def span(make_scheduler: Callable[..., LRScheduler], total_steps: int) -> dict[str, int]:
    """The span argument the scheduler class takes, set to ``total_steps``."""
    # From a config, the factory is a partial of the class (jsonargparse's instantiation).
    target = make_scheduler.args[-1] if isinstance(make_scheduler, partial) else make_scheduler
    parameters = inspect.signature(target).parameters
    return {name: total_steps for name in SPAN_ARGUMENTS if name in parameters}
{%- if cookiecutter.model == "backbone" %}


# Schedulers that set every group's rate from their own arguments rather than the group's lr.
RATE_ARGUMENTS = ("max_lr", "base_lr")


def parameter_groups(net: nn.Module) -> list[dict[str, Any]]:
    """The optimizer's parameter groups for ``net``, each with its ``lr_ratio``."""
    if hasattr(net, "parameter_groups"):
        return net.parameter_groups()
    return [{"params": list(net.parameters()), "lr_ratio": 1.0}]


def scale_rates(
    optimizer: Optimizer, make_scheduler: Callable[..., LRScheduler] | None
) -> dict[str, list[float]]:
    """Scale each group's rate by its ``lr_ratio``, and return the arguments that scale the
    scheduler's own rates (OneCycleLR's max_lr, CyclicLR's) the same way, one per group."""
    ratios = [group["lr_ratio"] for group in optimizer.param_groups]
    for group, ratio in zip(optimizer.param_groups, ratios, strict=True):
        group["lr"] *= ratio
    # From a config, the factory is a partial of the class (jsonargparse's instantiation).
    keywords = make_scheduler.keywords if isinstance(make_scheduler, partial) else {}
    return {
        name: [keywords[name] * ratio for ratio in ratios]
        for name in RATE_ARGUMENTS
        if isinstance(keywords.get(name), int | float)
    }
{%- endif %}
