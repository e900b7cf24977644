import torch

{% if cookiecutter.model == "cnn" -%}
from {{ cookiecutter.package_name }}.nets import ConvNet


def test_convnet_maps_images_to_class_logits() -> None:
    net = ConvNet(channels=8, num_classes=10)
    assert net(torch.randn(3, 1, 28, 28)).shape == (3, 10)
{%- else -%}
from {{ cookiecutter.package_name }}.nets import MLP


def test_mlp_maps_images_to_class_logits() -> None:
    net = MLP(hidden_dim=16, num_classes=10)
    assert net(torch.randn(3, 1, 28, 28)).shape == (3, 10)
{%- endif %}
