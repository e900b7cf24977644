"""Plain PyTorch networks; nothing here knows about Lightning."""

from torch import Tensor, nn

{% if cookiecutter.model == "cnn" %}
class ConvNet(nn.Module):
    """Three convolution blocks (28 -> 14 -> 7 -> 3 pixels) and a linear classifier."""

    def __init__(self, channels: int = 16, dropout: float = 0.25, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            conv_block(1, channels),
            conv_block(channels, 2 * channels),
            conv_block(2 * channels, 4 * channels),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(dropout),
            nn.Linear(4 * channels * 3 * 3, num_classes),
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
{%- else %}
class MLP(nn.Module):
    """One hidden layer over the flattened 28x28 image."""

    def __init__(self, hidden_dim: int = 128, num_classes: int = 10) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Flatten(),
            nn.Linear(28 * 28, hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, num_classes),
        )

    def forward(self, images: Tensor) -> Tensor:
        return self.layers(images)
{%- endif %}
