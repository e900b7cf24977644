"""After testing: a confusion-matrix picture and a grid of misclassified test images."""

from pathlib import Path

import pytorch_lightning as pl
import torch
from matplotlib.figure import Figure
from torch import Tensor
from torchmetrics.classification import MulticlassConfusionMatrix

from .data import MEAN, STD


class TestReport(pl.Callback):
{%- if cookiecutter.logger in ("tensorboard", "wandb", "mlflow") %}
    """Save ``confusion_matrix.png`` and ``misclassified.png`` (600x600) in the run folder,
    and send both to the experiment logger."""
{%- else %}
    """Save ``confusion_matrix.png`` and ``misclassified.png`` (600x600) in the run folder."""
{%- endif %}

    def __init__(self, num_classes: int = 10, max_images: int = 36) -> None:
        self.num_classes = num_classes
        self.max_images = max_images

    def on_test_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.confusion = MulticlassConfusionMatrix(self.num_classes).to(pl_module.device)
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
        self.confusion.update(predicted, labels)
        missing = self.max_images - len(self.mistakes)
        if missing > 0:
            wrong = (predicted != labels).nonzero().flatten()[:missing]
            pixels = (images[wrong] * STD + MEAN).clamp(0, 255).to(torch.uint8).cpu()
            found = zip(pixels, labels[wrong].tolist(), predicted[wrong].tolist(), strict=True)
            self.mistakes.extend(found)

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        matrix = self.confusion.compute().cpu()  # summed over all processes
        run_dir = Path(trainer.log_dir)  # every rank must ask: the property broadcasts
        if not trainer.is_global_zero:
            return
        figures = {
            "confusion_matrix": confusion_figure(matrix),
            "misclassified": mistakes_figure(self.mistakes),
        }
        for name, figure in figures.items():
            path = run_dir / f"{name}.png"
            figure.savefig(path, dpi=100)
{%- if cookiecutter.logger == "tensorboard" %}
            trainer.logger.experiment.add_figure(f"test/{name}", figure)
{%- elif cookiecutter.logger == "wandb" %}
            trainer.logger.log_image(f"test/{name}", [str(path)])
{%- elif cookiecutter.logger == "mlflow" %}
            trainer.logger.experiment.log_artifact(trainer.logger.run_id, str(path))
{%- endif %}


def confusion_figure(matrix: Tensor) -> Figure:
    """Counts of (true, predicted) pairs; the diagonal holds the correct predictions."""
    figure = Figure(figsize=(6, 6))
    axes = figure.subplots()
    axes.imshow(matrix.numpy(), cmap="Blues")
    classes = range(len(matrix))
    for true in classes:
        for predicted in classes:
            count = int(matrix[true, predicted])
            color = "white" if count > matrix.max() / 2 else "black"
            axes.text(predicted, true, count, ha="center", va="center", fontsize=7, color=color)
    axes.set(xlabel="predicted", ylabel="true", xticks=classes, yticks=classes)
    axes.set_title("Test confusion matrix")
    figure.tight_layout()
    return figure


def mistakes_figure(mistakes: list[tuple[Tensor, int, int]], columns: int = 6) -> Figure:
    """Misclassified test images, each titled with its true and predicted class."""
    figure = Figure(figsize=(6, 6))
    grid = figure.subplots(columns, columns, gridspec_kw={"hspace": 0.5})
    for index, axes in enumerate(grid.flatten()):
        axes.axis("off")
        if index < len(mistakes):
            image, true, predicted = mistakes[index]
            axes.imshow(image[0].numpy(), cmap="gray")
            axes.set_title(f"{true} as {predicted}", fontsize=7)
    figure.suptitle("Misclassified test images (true as predicted)")
    return figure
