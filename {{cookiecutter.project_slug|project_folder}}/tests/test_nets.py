import pytest
import torch

from {{ cookiecutter.package_name }} import nets

SHAPES = [(1, 10, (28, 28)), (3, 4, (20, 20)), (3, 2, (8, 8)), (2, 5, (64, 48))]


@pytest.mark.parametrize("net_class", [nets.ConvNet, nets.MLP])
@pytest.mark.parametrize(("channels", "classes", "size"), SHAPES)
def test_networks_map_any_image_shape_to_class_logits(
    net_class: type, channels: int, classes: int, size: tuple[int, int]
) -> None:
    net = net_class(channels, classes, size)
    assert net(torch.randn(3, channels, *size)).shape == (3, classes)


def test_convnet_refuses_images_too_small_to_pool_three_times() -> None:
    with pytest.raises(ValueError, match="at least 8x8 pixels, not 7x9"):
        nets.ConvNet(1, 10, (7, 9))
