"""Image classification with PyTorch Lightning."""

# The lightning-template release this project was generated from.
TEMPLATE_VERSION = "{{ cookiecutter._template_version }}"
