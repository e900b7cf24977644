"""Image classification on {{ "Fashion-MNIST" if cookiecutter.dataset == "fashion_mnist" else "MNIST" }} with PyTorch Lightning."""

# The lightning-template release this project was generated from.
TEMPLATE_VERSION = "{{ cookiecutter._template_version }}"
