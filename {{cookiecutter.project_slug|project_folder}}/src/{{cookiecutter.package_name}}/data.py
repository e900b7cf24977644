"""{{ "Fashion-MNIST" if cookiecutter.dataset == "fashion_mnist" else "MNIST" }} as a LightningDataModule: download, split, loaders; decoded once to tensors.

To train on other data, change this file and the ``data:`` section of the config: the rest of
the project only expects batches of ``(images, labels)``.
"""

from pathlib import Path

import pytorch_lightning as pl
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from torchvision.datasets import {{ "FashionMNIST" if cookiecutter.dataset == "fashion_mnist" else "MNIST" }}
from torchvision.datasets.mnist import read_sn3_pascalvincent_tensor
from torchvision.io import ImageReadMode, decode_image, read_file
from torchvision.transforms.v2.functional import resize

RAW_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}
# torchvision's loader for the data set: it downloads into and reads from
# <data_dir>/<its class name>/raw, in the IDX format of MNIST.
DATASET = {{ "FashionMNIST" if cookiecutter.dataset == "fashion_mnist" else "MNIST" }}
# Pixel statistics of its training set, on the 0-255 scale of the stored bytes.
{%- if cookiecutter.dataset == "fashion_mnist" %}
MEAN, STD = 0.2860 * 255, 0.3530 * 255
{%- else %}
MEAN, STD = 0.1307 * 255, 0.3081 * 255
{%- endif %}


class DatasetError(RuntimeError):
    """Data that is missing or unusable; the message says what to do."""


class InMemoryImages(Dataset):
    """Decoded uint8 images with their labels, or with names for predictions.

    ``__getitems__`` lets the DataLoader gather a whole batch with one indexing operation
    instead of collating it image by image.
    """

    def __init__(self, images: Tensor, targets: Tensor | list[str]) -> None:
        self.images = images
        self.targets = targets

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor | str]:
        return self.images[index], self.targets[index]

    def __getitems__(self, indices: list[int]) -> tuple[Tensor, Tensor | list[str]]:
        if isinstance(self.targets, Tensor):
            return self.images[indices], self.targets[indices]
        return self.images[indices], [self.targets[i] for i in indices]


def already_batched(batch: tuple) -> tuple:
    """Collate function for datasets whose ``__getitems__`` returns whole batches."""
    return batch


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
    return dataset.data.unsqueeze(1), dataset.targets


def corrupt_file_message(folder: Path) -> str:
    for name in RAW_FILES:
        try:
            read_sn3_pascalvincent_tensor(str(folder / name))
        except Exception:
            return f"{folder / name} is truncated or corrupt: replace it"
    return f"the files in {folder} cannot be read: replace all four"


def load_image(path: Path) -> Tensor:
    """Read an image as the data set has them: 8-bit grayscale, 28x28."""
    try:
        image = decode_image(read_file(str(path)), mode=ImageReadMode.GRAY)
    except RuntimeError as error:
        raise DatasetError(f"cannot read image {path}: not a PNG, JPEG or GIF file") from error
    if image.shape[-2:] != (28, 28):
        image = resize(image, [28, 28], antialias=True)
    return image


def image_paths(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise DatasetError(f"input {path} does not exist")
    paths = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise DatasetError(f"folder {path} holds no PNG or JPG images")
    return paths


class ImageDataModule(pl.LightningDataModule):
    """Train/val split of the official training set, and the official 10k test set.

    Batches hold uint8 images; they are normalized after reaching the device, which keeps
    host-to-device copies four times smaller.
    """

    def __init__(
        self,
        data_dir: str = "data",
        val_size: int = 5000,
        batch_size: int = 128,
        num_workers: int = 0,
        split_seed: int = 42,
        predict_path: str | None = None,
    ) -> None:
        """
        Args:
            data_dir: Folder holding ``{{ "FashionMNIST" if cookiecutter.dataset == "fashion_mnist" else "MNIST" }}/raw``; downloaded there if missing.
            val_size: Images of the official training set held out for validation.
            batch_size: Images per batch on each device.
            num_workers: DataLoader worker processes; the data already sits decoded in memory.
            split_seed: Seed of the train/validation split, independent of the global seed.
            predict_path: Image file or folder to predict on; the test split if not given.
        """
        super().__init__()
        self.save_hyperparameters()
        self.datasets: dict[str, Dataset] = {}

    def prepare_data(self) -> None:
        folder = raw_folder(self.hparams.data_dir)
        # Predicting on image files needs no data set.
        if self.hparams.predict_path or all((folder / name).is_file() for name in RAW_FILES):
            return
        try:
            for train in (True, False):
                DATASET(self.hparams.data_dir, train=train, download=True)
        except (OSError, RuntimeError) as error:
            reason = str(error).splitlines()[0].rstrip(":")
            raise DatasetError(
                f"{DATASET.__name__} is missing from {folder} and could not be downloaded "
                f"({reason}); "
                f"put the files {', '.join(RAW_FILES)} there (or their .gz archives)"
            ) from error

    def setup(self, stage: str) -> None:
        if stage in ("fit", "validate") and "train" not in self.datasets:
            images, labels = load_split(self.hparams.data_dir, train=True)
            generator = torch.Generator().manual_seed(self.hparams.split_seed)
            order = torch.randperm(len(labels), generator=generator)
            val, train = order[: self.hparams.val_size], order[self.hparams.val_size :]
            self.datasets["train"] = InMemoryImages(images[train], labels[train])
            self.datasets["val"] = InMemoryImages(images[val], labels[val])
        if stage == "test" and "test" not in self.datasets:
            self.datasets["test"] = InMemoryImages(*load_split(self.hparams.data_dir, train=False))
        if stage == "predict":
            self.datasets["predict"] = self._predict_set()

    def _predict_set(self) -> InMemoryImages:
        if self.hparams.predict_path is None:
            images, _ = load_split(self.hparams.data_dir, train=False)
            return InMemoryImages(images, [f"test/{i}" for i in range(len(images))])
        paths = image_paths(Path(self.hparams.predict_path))
        images = torch.stack([load_image(path) for path in paths])
        return InMemoryImages(images, [str(path) for path in paths])

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self._loader("predict")

    def _loader(self, split: str, shuffle: bool = False) -> DataLoader:
        workers = self.hparams.num_workers
        return DataLoader(
            self.datasets[split],
            batch_size=self.hparams.batch_size,
            shuffle=shuffle,
            collate_fn=already_batched,
            num_workers=workers,
            persistent_workers=workers > 0,
            pin_memory=torch.cuda.is_available(),
        )

    def on_after_batch_transfer(self, batch: tuple, dataloader_idx: int) -> tuple:
        images, targets = batch
        return (images.float() - MEAN) / STD, targets
