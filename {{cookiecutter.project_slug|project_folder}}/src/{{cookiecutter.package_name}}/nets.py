"""Plain PyTorch networks; nothing here knows about Lightning.

The model builds its network from the config (``model.net`` in ``configs/default.yaml``) and
passes it the shape of the data first: ``in_channels``, ``num_classes`` and ``image_size``
(height, width), in that order. A network of your own is one more class here that takes those
three arguments first, selected in the config or by flag:

    --model.net {{ cookiecutter.package_name }}.nets.YourNet

Checkpoints record the network by that class path; only the classes of this module are built
from one (``network_class``), so a crafted checkpoint cannot make loading import other code.
"""

{% if cookiecutter.model == "backbone" -%}
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any

import torch
{% endif -%}
from torch import Tensor, nn


class ConvNet(nn.Module):
    """Three convolution blocks, each halving height and width, and a linear classifier."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        image_size: tuple[int, int],
        width: int = 16,
        dropout: float = 0.0,
    ) -> None:
        """
        Args:
            width: Channels of the first block; each later block doubles them.
            dropout: Dropout before the classifier.
        """
        super().__init__()
        height, image_width = image_size
        if min(height, image_width) < 8:
            raise ValueError(
                f"ConvNet needs images of at least 8x8 pixels, not {height}x{image_width}"
            )
        self.features = nn.Sequential(
            conv_block(in_channels, width),
            conv_block(width, 2 * width),
            conv_block(2 * width, 4 * width),
        )
        # Each block's 2x2 pooling rounds down: 28 -> 14 -> 7 -> 3.
        features = 4 * width * (height // 8) * (image_width // 8)
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Dropout(dropout), nn.Linear(features, num_classes)
        )

    def forward(self, images: Tensor) -> Tensor:
        return self.classifier(self.features(images))


def conv_block(in_channels: int, out_channels: int) -> nn.Sequential:
    """3x3 convolution, batch norm, ReLU, then 2x2 max pooling (halves height and width)."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )


class MLP(nn.Module):
    """One hidden layer over the flattened image."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        image_size: tuple[int, int],
        hidden_dim: int = 128,
        dropout: float = 0.0,
    ) -> None:
        """
        Args:
            hidden_dim: Width of the hidden layer.
            dropout: Dropout before the classifier.
        """
        super().__init__()
        height, width = image_size
        self.layers = nn.Sequential(
            nn.Flatten(),
            nn.Linear(in_channels * height * width, hidden_dim),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden_dim, num_classes),
        )

    def forward(self, images: Tensor) -> Tensor:
        return self.layers(images)
{%- if cookiecutter.model == "backbone" %}


class Backbone(nn.Module):
    """An image model of timm by name (any of ``timm.list_models()``), pretrained or not,
    with its first layer adapted to the data's channels and a new classifier for its classes.

    timm rather than torchvision's model registry: it names every model of both and many more,
    each with its pretrained input size and mean/std (``pretrained_cfg``); ``in_chans`` adapts
    pretrained first-layer weights to 1, 2 or 4 channels (summed for one, repeated for more),
    ``num_classes`` replaces the classifier, and its hub download caches the weights.
    ``training/finetuning.py`` freezes the backbone (all but the classifier) for the first
    epochs; the optimizer trains it at ``backbone_lr_ratio`` times the classifier's rate.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        image_size: tuple[int, int],
        name: str = "resnet18",
        pretrained: bool = True,
        weights_file: str | None = None,
        backbone_lr_ratio: float = 0.1,
    ) -> None:
        """
        Args:
            name: The timm model, e.g. resnet18, efficientnet_b0, convnext_tiny.
            pretrained: Start from its pretrained weights (timm's hub download, cached); false
                for random weights.
            weights_file: Pretrained weights from this file instead of the hub (a timm or
                torch state dict, .safetensors or .pth), e.g. offline.
            backbone_lr_ratio: The backbone's learning rate, as a fraction of the classifier's
                (pretrained weights only: random ones train like any network's).
        """
        super().__init__()
        import timm  # here: importing timm is slow, and commands without a backbone skip it
        from timm.models import get_pretrained_cfg

        if not 0 < backbone_lr_ratio <= 1:
            raise ValueError(f"backbone_lr_ratio must be within (0, 1], not {backbone_lr_ratio}")
        if weights_file and not pretrained:
            raise ValueError(f"weights_file {weights_file} is given with pretrained false")
        # Built from a checkpoint, the pretrained weights are not fetched: it holds them all.
        fetch = pretrained and not WEIGHTS_FROM_CHECKPOINT.get()
        if fetch and weights_file and not Path(weights_file).is_file():
            raise ValueError(f"weights_file {weights_file} is not a file")
        overlay = {"file": str(weights_file)} if fetch and weights_file else None
        # Models of a fixed input size (ViTs: their position embeddings) are built for the
        # data's; timm resamples pretrained position embeddings to it.
        fixed = getattr(get_pretrained_cfg(name), "fixed_input_size", False)
        size = {"img_size": tuple(image_size)} if fixed else {}
        try:
            self.model = timm.create_model(
                name,
                pretrained=fetch,
                pretrained_cfg_overlay=overlay,
                in_chans=in_channels,
                num_classes=num_classes,
                **size,
            )
        except OSError as error:  # the hub unreachable, or the file not weights
            raise ValueError(
                f"the pretrained weights of {name} could not be "
                + (f"read from {weights_file}" if weights_file else "downloaded")
                + f" ({type(error).__name__}): download them where the hub is reachable and "
                "give the file with --model.net.init_args.weights_file, or set "
                "--model.net.init_args.pretrained false for random weights"
            ) from error
        except RuntimeError as error:  # an unknown name, or weights of another model
            raise ValueError(f"timm cannot build {name!r}: {error}") from error
        self.pretrained = pretrained
        self.backbone_lr_ratio = backbone_lr_ratio if pretrained else 1.0
        # The pixel statistics the model normalizes inputs with: pretrained weights expect their
        # own (timm's pretrained_cfg, on the 0-255 scale); random weights take the data's.
        config = self.model.pretrained_cfg
        self.pixel_stats = (
            (per_channel(config["mean"], in_channels), per_channel(config["std"], in_channels))
            if pretrained
            else None
        )

    def forward(self, images: Tensor) -> Tensor:
        return self.model(images)

    def _split(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """The backbone's parameters and the classifier's."""
        head = {id(parameter) for parameter in self.model.get_classifier().parameters()}
        parameters = list(self.model.parameters())
        return (
            [parameter for parameter in parameters if id(parameter) not in head],
            [parameter for parameter in parameters if id(parameter) in head],
        )

    def parameter_groups(self) -> list[dict[str, Any]]:
        """The optimizer's parameter groups, each with its ``lr_ratio`` to the base rate: the
        classifier's first, at the configured rate (what ``train/lr`` logs), then the
        backbone's."""
        backbone, head = self._split()
        return [
            {"params": head, "lr_ratio": 1.0},
            {"params": backbone, "lr_ratio": self.backbone_lr_ratio},
        ]

    def freeze_backbone(self, frozen: bool) -> None:
        """Stop or resume training the backbone. Frozen, its BatchNorm layers are in eval mode:
        they normalize with, and keep, the pretrained running statistics. Random weights have
        nothing to keep: they are never frozen."""
        frozen = frozen and self.pretrained
        backbone, _ = self._split()
        for parameter in backbone:
            parameter.requires_grad_(not frozen)
        head = set(self.model.get_classifier().modules())
        for module in self.model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and module not in head:
                module.train(not frozen and self.training)

    @staticmethod
    def preferred_side(name: str = "resnet18", **settings: Any) -> int:
        """The longer side of the input size the model of ``name`` was pretrained at."""
        from timm.models import get_pretrained_cfg

        config = get_pretrained_cfg(name)
        return max(config.input_size[1:]) if config else 224


# True while networks are built to take a checkpoint's weights (``weights_from_checkpoint``).
WEIGHTS_FROM_CHECKPOINT = ContextVar("weights_from_checkpoint", default=False)


@contextmanager
def weights_from_checkpoint() -> Iterator[None]:
    """Networks built here get all their weights from a checkpoint next: one that would fetch
    pretrained weights (a download, a weights file) skips them, and is otherwise the network
    trained (the same layers, input normalization and settings)."""
    token = WEIGHTS_FROM_CHECKPOINT.set(True)
    try:
        yield
    finally:
        WEIGHTS_FROM_CHECKPOINT.reset(token)


def per_channel(values: tuple[float, ...], channels: int) -> tuple[float, ...]:
    """Per-channel RGB statistics (0-1 scale) for ``channels`` inputs, as timm adapts the
    first layer: one channel sums the RGB weights, so it takes their mean; more repeat them."""
    scaled = torch.tensor(values, dtype=torch.float64) * 255
    if channels == 1:
        return (scaled.mean().item(),)
    return tuple(scaled[index % len(scaled)].item() for index in range(channels))
{%- endif %}


def network_class(class_path: str) -> type[nn.Module]:
    """The network class of this module that ``class_path`` names; ValueError for any other."""
    module, _, name = class_path.rpartition(".")
    found = globals().get(name)
    if module != __name__ or not (isinstance(found, type) and issubclass(found, nn.Module)):
        raise ValueError(f"the network {class_path!r} is not one of {__name__}")
    return found
