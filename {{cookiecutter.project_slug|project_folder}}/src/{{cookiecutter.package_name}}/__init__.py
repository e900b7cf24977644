"""Digit classification on MNIST with PyTorch Lightning."""
