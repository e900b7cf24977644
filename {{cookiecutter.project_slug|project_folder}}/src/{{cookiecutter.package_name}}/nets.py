"""Plain PyTorch networks; nothing here knows about Lightning.

The model builds its network from the config (``model.net`` in ``configs/default.yaml``) and
passes it the shape of the data first: ``in_channels``, ``num_classes`` and ``image_size``
(height, width), in that order. A network of your own is one more class here that takes those
three arguments first, selected in the config or by flag:

    --model.net {{ cookiecutter.package_name }}.nets.YourNet

Checkpoints record the network by that class path; only the classes of this module are built
from one (``network_class``), so a crafted checkpoint cannot make loading import other code.
"""

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


def network_class(class_path: str) -> type[nn.Module]:
    """The network class of this module that ``class_path`` names; ValueError for any other."""
    module, _, name = class_path.rpartition(".")
    found = globals().get(name)
    if module != __name__ or not (isinstance(found, type) and issubclass(found, nn.Module)):
        raise ValueError(f"the network {class_path!r} is not one of {__name__}")
    return found
