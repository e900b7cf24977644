{%- set fashion = cookiecutter.dataset == "fashion_mnist" -%}
"""{{ "Fashion-MNIST" if fashion else "MNIST" }} as a LightningDataModule: download, split, loaders; decoded once to tensors.

This module is the one place that knows the data. To train on other data, replace it with your
own ``ImageDataModule`` (same class name) and edit the ``data:`` section of
``configs/default.yaml`` to its arguments. The rest of the project relies on this contract,
which ``tests/test_data_contract.py`` checks rule by rule:

1. Facts about the data, as attributes that exist as soon as ``__init__`` returns:
   ``class_names`` (strings, in label order), ``channels``, ``image_size`` (height, width),
   and ``mean`` and ``std``, one value per channel on the 0-255 scale of the pixels.
   ``train.py`` links them into the model, and every checkpoint keeps them.
2. ``__init__`` calls ``self.save_hyperparameters()``: checkpoints record its arguments, and
   ``predict`` without ``--input`` builds the module again from them to read the test split.
3. ``train_dataloader``, ``val_dataloader`` and ``test_dataloader`` yield batches of uint8
   images (N, channels, height, width) and int64 labels (N,) in ``range(len(class_names))``.
   ``support.loading.batch_loader`` makes such loaders (and under DDP counts each evaluation
   image once).
4. A static ``write_sample(folder)`` writes a small sample of the data into ``folder``, in its
   real file format, and returns the ``__init__`` arguments that read it. The project's tests
   train on it: at least 4 training batches, 2 validation and 2 test batches, easy enough to
   learn above 90 % test accuracy in two epochs.
"""

import struct
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor
from torch.utils.data import DataLoader
from torchvision.datasets import {{ "FashionMNIST" if fashion else "MNIST" }}
from torchvision.datasets.mnist import read_sn3_pascalvincent_tensor

from .support.errors import DatasetError
from .support.loading import InMemoryImages, batch_loader

# torchvision's loader for the data set: it downloads into and reads from
# <data_dir>/<its class name>/raw, in MNIST's IDX format.
DATASET = {{ "FashionMNIST" if fashion else "MNIST" }}
RAW_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


class ImageDataModule(pl.LightningDataModule):
    """Train/val split of the official training set, and the official 10k test set.

    Batches hold uint8 images; the model normalizes them on its device, which keeps
    host-to-device copies four times smaller than float images.
    """
{% if fashion %}
    class_names = (
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Ankle boot",
    )
{%- else %}
    class_names = tuple(str(digit) for digit in range(10))
{%- endif %}
    channels = 1
    image_size = (28, 28)
    # Pixel statistics of the training set, on the 0-255 scale of the stored bytes.
    mean = ({{ "0.2860" if fashion else "0.1307" }} * 255,)
    std = ({{ "0.3530" if fashion else "0.3081" }} * 255,)

    def __init__(
        self,
        data_dir: str = "data",
        val_size: int = 5000,
        batch_size: int = 128,
        num_workers: int = 0,
        split_seed: int = 42,
    ) -> None:
        """
        Args:
            data_dir: Folder holding ``{{ "FashionMNIST" if fashion else "MNIST" }}/raw``; downloaded there if missing.
            val_size: Images of the official training set held out for validation.
            batch_size: Images per batch on each device.
            num_workers: DataLoader worker processes; the data already sits decoded in memory.
            split_seed: Seed of the train/validation split, independent of the global seed.
        """
        super().__init__()
        for name, value, least in (
            ("val_size", val_size, 1),
            ("batch_size", batch_size, 1),
            ("num_workers", num_workers, 0),
        ):
            if value < least:
                raise DatasetError(f"--data.{name} must be at least {least}, not {value}")
        self.save_hyperparameters()
        self.datasets: dict[str, InMemoryImages] = {}

    @staticmethod
    def write_sample(folder: Path) -> dict[str, Any]:
        """Write 640 training and 127 test images in which the class sets the row of a bright
        bar, as IDX files under ``folder``; return the arguments that read them.

        127 test images make uneven shares for two DDP processes, which the tests use.
        """
        raw = raw_folder(folder)
        raw.mkdir(parents=True, exist_ok=True)
        generator = torch.Generator().manual_seed(0)
        for prefix, size in (("train", 640), ("t10k", 127)):
            labels = torch.arange(size) % 10
            images = torch.randint(0, 60, (size, 28, 28), generator=generator, dtype=torch.uint8)
            for image, label in zip(images, labels.tolist(), strict=True):
                image[2 + 2 * label : 4 + 2 * label, 4:24] = 255
            write_idx(raw, prefix, images, labels)
        return {"data_dir": str(folder), "val_size": 128, "batch_size": 32}

    def prepare_data(self) -> None:
        folder = raw_folder(self.hparams.data_dir)
        if all((folder / name).is_file() for name in RAW_FILES):
            return
        try:
            for train in (True, False):
                DATASET(self.hparams.data_dir, train=train, download=True)
        except (OSError, RuntimeError) as error:
            reason = str(error).splitlines()[0].rstrip(":")
            raise DatasetError(
                f"{DATASET.__name__} is missing from {folder} and could not be downloaded "
                f"({reason}); put the files {', '.join(RAW_FILES)} there (or their .gz archives)"
            ) from error

    def setup(self, stage: str) -> None:
        if stage in ("fit", "validate") and "train" not in self.datasets:
            images, labels = load_split(self.hparams.data_dir, train=True)
            val_size = self.hparams.val_size
            if val_size >= len(labels):
                raise DatasetError(
                    f"--data.val_size {val_size} leaves no training images: "
                    f"use fewer than the {len(labels)} images of the training split"
                )
            generator = torch.Generator().manual_seed(self.hparams.split_seed)
            order = torch.randperm(len(labels), generator=generator)
            val, train = order[:val_size], order[val_size:]
            self.datasets["train"] = InMemoryImages(images[train], labels[train])
            self.datasets["val"] = InMemoryImages(images[val], labels[val])
        if stage in ("test", "predict") and "test" not in self.datasets:
            self.datasets["test"] = InMemoryImages(*load_split(self.hparams.data_dir, train=False))

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

    def _loader(self, split: str, shuffle: bool = False) -> DataLoader:
        hparams = self.hparams
        return batch_loader(self.datasets[split], hparams.batch_size, shuffle, hparams.num_workers)


def raw_folder(data_dir: str | Path) -> Path:
    return Path(data_dir) / DATASET.__name__ / "raw"


def load_split(data_dir: str | Path, train: bool) -> tuple[Tensor, Tensor]:
    """Return uint8 images (N, 1, 28, 28) and int64 labels of one official split."""
    folder = raw_folder(data_dir)
    missing = [name for name in RAW_FILES if not (folder / name).is_file()]
    if missing:
        raise DatasetError(
            f"{DATASET.__name__} is missing from {folder}: put the files "
            f"{', '.join(missing)} there (uncompressed, as torchvision writes them)"
        )
    try:
        dataset = DATASET(data_dir, train=train)
    except Exception as error:  # torchvision's parser fails in several ways on a bad file
        raise DatasetError(corrupt_file_message(folder)) from error
    if len(dataset.data) != len(dataset.targets):
        raise DatasetError(f"the image and label files in {folder} differ in length")
    classes = len(ImageDataModule.class_names)
    if len(dataset.targets) and int(dataset.targets.max()) >= classes:
        label_file = RAW_FILES[1 if train else 3]
        raise DatasetError(
            f"{folder / label_file} holds label {int(dataset.targets.max())}, but there are "
            f"only {classes} classes (0 to {classes - 1}): replace the file"
        )
    return dataset.data.unsqueeze(1), dataset.targets


def corrupt_file_message(folder: Path) -> str:
    for name in RAW_FILES:
        try:
            read_sn3_pascalvincent_tensor(str(folder / name))
        except Exception:
            return f"{folder / name} is truncated or corrupt: replace it"
    return f"the files in {folder} cannot be read: replace all four"


def write_idx(folder: Path, prefix: str, images: Tensor, labels: Tensor) -> None:
    """Write uint8 images (N, 28, 28) and their labels as one split's two IDX files."""
    count, height, width = images.shape
    header = struct.pack(">IIII", 2051, count, height, width)
    (folder / f"{prefix}-images-idx3-ubyte").write_bytes(header + images.numpy().tobytes())
    label_bytes = labels.to(torch.uint8).numpy().tobytes()
    (folder / f"{prefix}-labels-idx1-ubyte").write_bytes(
        struct.pack(">II", 2049, count) + label_bytes
    )
