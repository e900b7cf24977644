"""The LightningModule: loss, metrics, optimizer and the train/val/test/predict steps."""

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

{% if cookiecutter.model == "cnn" -%}
from .nets import ConvNet
{%- else -%}
from .nets import MLP
{%- endif %}

NUM_CLASSES = 10


class ImageClassifier(pl.LightningModule):
    """Classifies 28x28 digits.

    Hyperparameters are plain numbers, so checkpoints load with weights-only loading.
    """

    def __init__(
        self,
{%- if cookiecutter.model == "cnn" %}
        channels: int = 16,
        dropout: float = 0.25,
{%- else %}
        hidden_dim: int = 128,
{%- endif %}
        lr: float = 3e-3,
        weight_decay: float = 1e-4,
    ) -> None:
        """
        Args:
{%- if cookiecutter.model == "cnn" %}
            channels: Channels of the first convolution; each later one doubles them.
            dropout: Dropout before the classifier.
{%- else %}
            hidden_dim: Width of the hidden layer.
{%- endif %}
            lr: Peak learning rate of AdamW, annealed to zero along a cosine.
            weight_decay: AdamW's decoupled weight decay.
        """
        super().__init__()
        self.save_hyperparameters()
{%- if cookiecutter.model == "cnn" %}
        self.net = ConvNet(channels=channels, dropout=dropout, num_classes=NUM_CLASSES)
        # NHWC weights let cuDNN and oneDNN pick their faster convolution kernels.
        self.net.to(memory_format=torch.channels_last)
{%- else %}
        self.net = MLP(hidden_dim=hidden_dim, num_classes=NUM_CLASSES)
{%- endif %}
        metrics = MetricCollection(
            {
                "acc": MulticlassAccuracy(num_classes=NUM_CLASSES, average="micro"),
                "f1": MulticlassF1Score(num_classes=NUM_CLASSES, average="macro"),
            }
        )
        self.train_metrics = metrics.clone(prefix="train/")
        self.val_metrics = metrics.clone(prefix="val/")
        self.test_metrics = metrics.clone(prefix="test/")

    def forward(self, images: Tensor) -> Tensor:
        return self.net(images)

    def _step(
        self, batch: tuple[Tensor, Tensor], metrics: MetricCollection
    ) -> tuple[Tensor, Tensor]:
        images, labels = batch
        logits = self(images)
        metrics.update(logits, labels)
        return F.cross_entropy(logits, labels), logits

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        loss, _ = self._step(batch, self.train_metrics)
        self.log("train/loss", loss, prog_bar=True)
        self.log_dict(self.train_metrics, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        loss, _ = self._step(batch, self.val_metrics)
        self.log("val/loss", loss, sync_dist=True)
        self.log_dict(self.val_metrics, prog_bar=True)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        loss, logits = self._step(batch, self.test_metrics)
        self.log("test/loss", loss, sync_dist=True)
        self.log_dict(self.test_metrics)
        return logits  # for callbacks that look at the predictions, such as TestReport

    def predict_step(self, batch: tuple[Tensor, list[str]], batch_idx: int) -> dict:
        images, sources = batch
        confidence, predicted = self(images).float().softmax(dim=1).max(dim=1)
        return {"source": sources, "predicted": predicted.cpu(), "confidence": confidence.cpu()}

    def configure_optimizers(self) -> dict:
        optimizer = torch.optim.AdamW(
            self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay
        )
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=self.trainer.estimated_stepping_batches
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }
