"""After testing: a confusion-matrix picture and a grid of misclassified test images."""

from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from matplotlib.figure import Figure
from pytorch_lightning.loggers import MLFlowLogger, TensorBoardLogger, WandbLogger
from torch import Tensor
from torchmetrics.classification import MulticlassConfusionMatrix

from ..support.files import replaced
from .runs import run_folder


class TestReport(pl.Callback):
    """Save ``confusion_matrix.png`` and ``misclassified.png`` (600x600) in the run folder,
    and send both to the experiment loggers that take pictures."""

    def __init__(self, max_images: int = 36) -> None:
        self.max_images = max_images

    def on_test_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.class_names = list(pl_module.hparams.class_names)
        self.confusion = MulticlassConfusionMatrix(len(self.class_names)).to(pl_module.device)
        self.mistakes: list[tuple[Tensor, int, int]] = []

    def on_test_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Tensor,
        batch: tuple[Tensor, Tensor],
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        images, labels = batch
        predicted = outputs.argmax(dim=1)
        labels = torch.as_tensor(labels, device=predicted.device)
        self.confusion.update(predicted, labels)
        missing = self.max_images - len(self.mistakes)
        if missing > 0:
            wrong = (predicted != labels).nonzero().flatten()[:missing]
            found = zip(
                images[wrong].cpu(), labels[wrong].tolist(), predicted[wrong].tolist(), strict=True
            )
            self.mistakes.extend(found)

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Summed over all processes, so every one takes part; the plot reuses the result.
        self.confusion.compute()
        run_dir = run_folder(trainer)
        if not trainer.is_global_zero:
            return
        figures = {
            "confusion_matrix": confusion_figure(self.confusion, self.class_names),
            "misclassified": mistakes_figure(self.mistakes, self.class_names),
        }
        for name, figure in figures.items():
            path = run_dir / f"{name}.png"
            with replaced(path) as file:
                figure.savefig(file, format="png", dpi=100)
            for logger in trainer.loggers:
                send_picture(logger, f"test/{name}", figure, path)


def send_picture(logger: pl.loggers.Logger, tag: str, figure: Figure, path: Path) -> None:
    """Hand a saved picture to a logger that keeps pictures; the others only get metrics."""
    if isinstance(logger, TensorBoardLogger):
        logger.experiment.add_figure(tag, figure)
    elif isinstance(logger, WandbLogger):
        logger.log_image(tag, [str(path)])
    elif isinstance(logger, MLFlowLogger):
        logger.experiment.log_artifact(logger.run_id, str(path))


def confusion_figure(confusion: MulticlassConfusionMatrix, class_names: list[str]) -> Figure:
    """Counts of (true, predicted) pairs; the diagonal holds the correct predictions."""
    figure = Figure(figsize=(6, 6), layout="constrained")
    # Beyond 20 classes the counts no longer fit in their cells.
    confusion.plot(ax=figure.subplots(), labels=class_names, add_text=len(class_names) <= 20)
    figure.suptitle("Test confusion matrix")
    return figure


def mistakes_figure(
    mistakes: list[tuple[Tensor, int, int]], class_names: list[str], columns: int = 6
) -> Figure:
    """Misclassified test images, each titled with its true and predicted class."""
    figure = Figure(figsize=(6, 6))
    grid = figure.subplots(columns, columns, gridspec_kw={"hspace": 0.6})
    for index, axes in enumerate(grid.flatten()):
        axes.axis("off")
        if index < len(mistakes):
            image, true, predicted = mistakes[index]
            pixels, colormap = displayable(image)
            axes.imshow(pixels, cmap=colormap)
            axes.set_title(f"{class_names[true]}\nas {class_names[predicted]}", fontsize=6)
    figure.suptitle("Misclassified test images (true as predicted)")
    return figure


def displayable(image: Tensor) -> tuple[np.ndarray, str | None]:
    """Pixels and colour map for ``imshow``: RGB (and RGBA, without its alpha) in colour, any
    other channel count as the grayscale of its first channel."""
    if image.shape[0] in (3, 4):
        return image[:3].permute(1, 2, 0).numpy(), None
    return image[0].numpy(), "gray"
