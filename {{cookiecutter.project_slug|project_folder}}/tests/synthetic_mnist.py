"""Small synthetic data in MNIST's real IDX file format, so torchvision's own loader is tested."""

import struct
from pathlib import Path

import torch

from {{ cookiecutter.package_name }}.data import raw_folder

RAW_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def digit_images(labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Noisy 28x28 uint8 images in which the class sets the row of a bright bar."""
    images = torch.randint(0, 60, (len(labels), 28, 28), generator=generator, dtype=torch.uint8)
    for index, label in enumerate(labels.tolist()):
        row = 2 + 2 * label
        images[index, row : row + 2, 4:24] = 255
    return images


def write_idx(folder: Path, split: str, images: torch.Tensor, labels: torch.Tensor) -> None:
    image_file, label_file = RAW_FILES[split]
    count = len(labels)
    (folder / image_file).write_bytes(
        struct.pack(">IIII", 2051, count, 28, 28) + images.numpy().tobytes()
    )
    (folder / label_file).write_bytes(
        struct.pack(">II", 2049, count) + labels.to(torch.uint8).numpy().tobytes()
    )


def write_synthetic_mnist(data_dir: Path, train_size: int = 640, test_size: int = 128) -> Path:
    """Write the raw files of ``data_dir`` with learnable synthetic images; return ``data_dir``."""
    folder = raw_folder(data_dir)
    folder.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(0)
    for split, size in (("train", train_size), ("test", test_size)):
        labels = torch.arange(size) % 10
        write_idx(folder, split, digit_images(labels, generator), labels)
    return data_dir
