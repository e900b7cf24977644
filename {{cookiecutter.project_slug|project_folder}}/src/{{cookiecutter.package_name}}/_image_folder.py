"""A folder of images, one sub-folder per class, as a LightningDataModule; decoded once, cached.

This module is the one place that knows the data. To train on other data, replace it (keep the
class name ``ImageDataModule``) and edit the ``data:`` section of the config. The rest of the
project relies on what it provides:

- ``class_names``, ``channels``, ``image_size``, ``mean`` and ``std``: facts about the data,
  passed to the model by ``train.py`` and saved in every checkpoint;
- ``train_dataloader``, ``val_dataloader`` and ``test_dataloader``, yielding batches of
  (uint8 images of shape (N, channels, height, width), int64 labels);
- ``write_sample``, which writes a small learnable sample for the project's tests.

The layout is torchvision's ``ImageFolder`` with one folder per split::

    <data_dir>/train/<class name>/**/*.png|jpg|...   required; class names are the folder names
    <data_dir>/val/<class name>/...                  optional, the same class folders
    <data_dir>/test/<class name>/...                 optional, the same class folders

Without ``val/`` or ``test/``, ``val_size`` and ``test_size`` images of ``train/`` are held out
instead: a seeded split that keeps each class's share. The first run reads every image once: it
checks that each one decodes, converts it to ``channels`` and ``image_size``, and computes the
per-channel statistics; when the decoded images fit in ``max_cache_gb`` they are kept as one
uint8 tensor in ``cache_dir``. Later runs over the same files (names, sizes and modification
times) with the same settings start from the cache; a changed folder is read again. Larger sets
are decoded from the files in every epoch, in the DataLoader's worker processes.
"""

import contextlib
import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from PIL import Image
from pytorch_lightning.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from .image_cache import CACHE_VERSION, SPLITS, cache_file, list_images, read_all
from .inference.images import read_image
from .support.errors import DatasetError
from .support.loading import already_batched



class CachedImages(Dataset):
    """Decoded uint8 images with their labels, each batch gathered with one indexing operation."""

    def __init__(self, images: Tensor, labels: Tensor, augment: nn.Module | None = None) -> None:
        self.images = images
        self.labels = labels
        self.augment = augment

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        images, labels = self.__getitems__([index])
        return images[0], labels[0]

    def __getitems__(self, indices: list[int]) -> tuple[Tensor, Tensor]:
        return augmented(self.images[indices], self.augment), self.labels[indices]


class StreamedImages(Dataset):
    """Image files decoded when a batch asks for them (in the DataLoader's worker processes)."""

    def __init__(
        self,
        paths: list[Path],
        labels: Tensor,
        channels: int,
        image_size: tuple[int, int],
        augment: nn.Module | None = None,
    ) -> None:
        self.paths = paths
        self.labels = labels
        self.channels = channels
        self.image_size = image_size
        self.augment = augment

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        images, labels = self.__getitems__([index])
        return images[0], labels[0]

    def __getitems__(self, indices: list[int]) -> tuple[Tensor, Tensor]:
        images = [read_image(self.paths[i], self.channels, self.image_size) for i in indices]
        return augmented(torch.stack(images), self.augment), self.labels[indices]


def augmented(images: Tensor, augment: nn.Module | None) -> Tensor:
    """Each image through ``augment`` on its own: given the whole batch, a v2 transform would
    crop and flip every image of it alike."""
    if augment is None:
        return images
    return torch.stack([augment(image) for image in images])


def held_out(labels: Tensor, sizes: list[int], seed: int) -> list[Tensor]:
    """Split the indices of ``labels`` into parts of the given sizes and the rest, at random
    (seeded) but keeping each class's share in every part: the shuffled indices are ordered by
    their relative position within their class, so any run of them samples all classes evenly."""
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    position = torch.empty(len(labels), dtype=torch.float64)
    for label in labels.unique():
        members = (labels[order] == label).nonzero().flatten()
        position[members] = (torch.arange(len(members), dtype=torch.float64) + 0.5) / len(members)
    order = order[position.argsort(stable=True)]
    parts = order.split([*sizes, len(order) - sum(sizes)])
    return [part.sort().values for part in parts]


class ImageDataModule(pl.LightningDataModule):
    """Images of ``<data_dir>/{train,val,test}/<class>/``, converted, cached and split.

    Batches hold uint8 images; the model normalizes them on its device, which keeps
    host-to-device copies four times smaller than float images.
    """

    def __init__(
        self,
        data_dir: str = "data",
        image_size: tuple[int, int] = (64, 64),
        channels: int = 3,
        val_size: float = 0.1,
        test_size: float = 0.1,
        split_seed: int = 42,
        augment: list[nn.Module] | None = None,
        batch_size: int = 64,
        num_workers: int = 2,
        cache_dir: str | None = None,
        max_cache_gb: float = 4.0,
        skip_bad_images: bool = False,
    ) -> None:
        """
        Args:
            data_dir: Folder holding ``train/<class>/`` and optionally ``val/`` and ``test/``.
            image_size: Height and width every image is resized to.
            channels: 1 (grayscale) or 3 (RGB); 2 and 4 add the alpha channel.
            val_size: Images of train/ held out for validation when there is no val/ folder:
                a fraction below 1, or a count.
            test_size: Images of train/ held out for testing when there is no test/ folder:
                a fraction below 1, or a count.
            split_seed: Seed of the held-out splits, independent of the global seed.
            augment: torchvision.transforms.v2 transforms applied, in order, to each training
                image (uint8, channels x height x width); never to validation or test images.
            batch_size: Images per batch on each device.
            num_workers: DataLoader worker processes; they decode the images when the set is
                too large to cache, and run the augmentation.
            cache_dir: Folder for the decoded images; default ``<data_dir>/.cache``.
            max_cache_gb: Largest decoded size kept as a cache; larger sets are decoded from
                the files in every epoch (0: always).
            skip_bad_images: Leave out, with a warning, images that cannot be decoded, instead
                of stopping with an error that names them.
        """
        super().__init__()
        if channels not in (1, 2, 3, 4):
            raise DatasetError(f"--data.channels must be 1, 2, 3 or 4, not {channels}")
        if len(image_size) != 2 or min(image_size) < 1:
            raise DatasetError(f"--data.image_size must be [height, width], not {image_size}")
        for name, value, least in (
            ("batch_size", batch_size, 1),
            ("num_workers", num_workers, 0),
            ("max_cache_gb", max_cache_gb, 0),
        ):
            if value < least:
                raise DatasetError(f"--data.{name} must be at least {least}, not {value}")
        for name, value in (("val_size", val_size), ("test_size", test_size)):
            if value <= 0:
                raise DatasetError(f"--data.{name} must be a fraction or a count, not {value}")
        # The transforms stay out of the checkpoint, which holds plain values only (the run's
        # config.yaml records them).
        self.save_hyperparameters(ignore=["augment"])
        self.augment = v2.Compose(augment) if augment else None
        self.channels = channels
        # As given (a list from a config file): Lightning refuses to log a model and a data
        # module whose hyperparameters of the same name differ, even as tuple and list.
        self.image_size = self.hparams.image_size
        self.root = Path(data_dir)
        self.cache_dir = Path(cache_dir) if cache_dir else self.root / ".cache"
        class_names, paths, labels, splits = list_images(self.root)
        self.class_names = tuple(class_names)
        self.cache = self._read_or_build_cache(paths, torch.tensor(labels), torch.tensor(splits))
        self.mean = tuple(self.cache["mean"])
        self.std = tuple(self.cache["std"])
        self._report_problems()
        self.datasets: dict[str, Dataset] = {}

    def _read_or_build_cache(self, paths: list[Path], labels: Tensor, splits: Tensor) -> dict:
        """The decoded data set from the cache, or read from the files and saved to it."""
        height, width = self.image_size
        decoded_gb = len(paths) * self.channels * height * width / 1e9
        keep_pixels = decoded_gb <= self.hparams.max_cache_gb
        settings = f"{height}x{width}x{self.channels}" + ("" if keep_pixels else "-files")
        path = cache_file(self.cache_dir, self.root, paths, settings)
        if path.is_file():
            try:
                # Memory-mapped: start-up reads only what the run touches, once.
                return torch.load(path, mmap=True, weights_only=True)
            except Exception as error:  # a cache from another torch version, a damaged file
                rank_zero_warn(f"reading the image cache again: {path} failed to load ({error})")
        rank_zero_info(
            f"Reading {len(paths)} images of {self.root} once"
            + (f" into {path}" if keep_pixels else f" ({decoded_gb:.1f} GB decoded: not cached)")
        )
        cache = read_all(paths, splits, self.channels, self.image_size, keep_pixels)
        cache |= {
            "paths": [str(p.relative_to(self.root)) for p in paths],
            "labels": labels,
            "splits": splits,
        }
        # Written under a temporary name and renamed, so that no process (another DDP rank, a
        # later run) ever reads a half-written cache.
        partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
        try:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            torch.save(cache, partial)
            partial.replace(path)
        except OSError as error:
            with contextlib.suppress(OSError):  # e.g. never written: the folder is not one
                partial.unlink()
            raise DatasetError(
                f"cannot write the image cache in {self.cache_dir} ({error.strerror}): "
                "set --data.cache_dir to a writable folder"
            ) from error
        # Caches of earlier states of the folder, with these settings, are of no further use.
        for stale in path.parent.glob(f"{height}x{width}x{self.channels}-*.pt"):
            if stale != path:
                with contextlib.suppress(OSError):  # e.g. still open in another process
                    stale.unlink()
        return cache

    def _report_problems(self) -> None:
        """Stop on unreadable images unless told to skip them; warn of repeated images."""
        unreadable = self.cache["unreadable"]
        if unreadable:
            listed = "; ".join(unreadable[:3]) + ("; ..." if len(unreadable) > 3 else "")
            if not self.hparams.skip_bad_images:
                raise DatasetError(
                    f"{len(unreadable)} image(s) cannot be read: {listed}. Replace or remove "
                    "them, or leave them out with --data.skip_bad_images true"
                )
            rank_zero_warn(f"left out {len(unreadable)} unreadable image(s): {listed}")
            if not (self.cache["readable"] & (self.cache["splits"] == 0)).any():
                raise DatasetError(f"none of the images in {self.root / 'train'} can be read")
        # An image in train/ and in val/ or test/ as well inflates the held-out accuracy.
        cache = self.cache
        readable, splits, digests = cache["readable"], cache["splits"], cache["digests"]
        in_train = set(digests[readable & (splits == 0)].tolist())
        repeated = [
            cache["paths"][i]
            for i in (readable & (splits > 0)).nonzero().flatten().tolist()
            if digests[i].item() in in_train
        ]
        if repeated:
            rank_zero_warn(
                f"{len(repeated)} image(s) of val/ or test/ are also in train/, e.g. "
                f"{repeated[0]}: their accuracy overstates how the model does on new images"
            )

    @staticmethod
    def write_sample(folder: Path) -> dict[str, Any]:
        """Write a small, easily learnable stand-in for the data set under ``folder``, in its
        real file format, and return the arguments of this class that read it.

        The project's tests train on it: three classes, in which the class sets the row of a
        bright bar; 120 images each in train/ (8 training and 4 validation batches) and 36 in
        test/ (4 batches), of mixed sizes, colour modes (grayscale, RGB, RGBA, palette, 16-bit)
        and formats (PNG, JPEG, BMP, WebP, GIF, TIFF).
        """
        formats = [
            ("RGB", "png"),
            ("L", "jpg"),
            ("RGBA", "png"),
            ("RGB", "webp"),
            ("P", "gif"),
            ("RGB", "bmp"),
            ("I;16", "png"),
            ("RGB", "tiff"),
        ]
        sizes = [(40, 40), (64, 48), (33, 57), (96, 96)]
        rng = np.random.default_rng(0)
        for split, count in (("train", 120), ("test", 36)):
            for label, name in enumerate(("bottom", "middle", "top")):
                (folder / split / name).mkdir(parents=True, exist_ok=True)
                for index in range(count):
                    width, height = sizes[index % len(sizes)]
                    pixels = rng.integers(0, 60, (height, width, 3), dtype=np.uint8)
                    row = int(height * (0.7 - 0.3 * label))  # bottom, middle or top
                    pixels[row : row + height // 6, width // 8 : -width // 8] = (255, 200, 120)
                    mode, suffix = formats[index % len(formats)]
                    if mode == "I;16":  # 16-bit grayscale, scaled to the full 16-bit range
                        gray = np.asarray(Image.fromarray(pixels).convert("L"), dtype=np.uint16)
                        image = Image.fromarray(gray * 257)
                    else:
                        image = Image.fromarray(pixels).convert(mode)
                    image.save(folder / split / name / f"{index:03d}.{suffix}")
        return {
            "data_dir": str(folder),
            "image_size": [32, 32],
            "val_size": 0.3,
            "batch_size": 32,
            "num_workers": 0,  # worker processes would cost the tests more than they save
        }

    def setup(self, stage: str) -> None:
        if stage in ("fit", "validate") and "train" not in self.datasets:
            parts = self._splits()
            self.datasets["train"] = self._dataset(parts["train"], self._checked_augment())
            self.datasets["val"] = self._dataset(parts["val"])
        if stage in ("test", "predict") and "test" not in self.datasets:
            self.datasets["test"] = self._dataset(self._splits()["test"])

    def _splits(self) -> dict[str, Tensor]:
        """Indices into the cache of each split's readable images, in file order."""
        readable, splits = self.cache["readable"], self.cache["splits"]
        indices = {
            name: (readable & (splits == i)).nonzero().flatten() for i, name in enumerate(SPLITS)
        }
        train = indices["train"]
        missing = [split for split in ("val", "test") if len(indices[split]) == 0]
        sizes = [self._held_out_count(split, len(train)) for split in missing]
        if sum(sizes) >= len(train):
            raise DatasetError(
                f"holding out {' + '.join(map(str, sizes))} images for "
                f"{' and '.join(missing)} leaves none of the {len(train)} images of train/ "
                f"for training: lower --data.{missing[0]}_size"
            )
        *parts, rest = held_out(self.cache["labels"][train], sizes, self.hparams.split_seed)
        indices |= {split: train[part] for split, part in zip(missing, parts, strict=True)}
        indices["train"] = train[rest]
        return indices

    def _held_out_count(self, split: str, available: int) -> int:
        size = self.hparams[f"{split}_size"]
        count = round(size * available) if size < 1 else int(size)
        if count < 1:
            raise DatasetError(
                f"--data.{split}_size {size} of {available} images is no image: hold out more, "
                f"or add a {split}/ folder to {self.root}"
            )
        return count

    def _dataset(self, indices: Tensor, augment: nn.Module | None = None) -> Dataset:
        labels = self.cache["labels"][indices]
        if "images" in self.cache:
            return CachedImages(self.cache["images"][indices], labels, augment)
        paths = [self.root / self.cache["paths"][i] for i in indices.tolist()]
        return StreamedImages(paths, labels, self.channels, self.image_size, augment)

    def _checked_augment(self) -> nn.Module | None:
        """The augmentation, tried once on a blank image so that a mistake shows before training."""
        if self.augment is None:
            return None
        blank = torch.zeros((self.channels, *self.image_size), dtype=torch.uint8)
        try:
            result = self.augment(blank)
        except Exception as error:  # whatever a transform raises on an input it cannot take
            raise DatasetError(f"--data.augment fails on uint8 images: {error}") from error
        if not (isinstance(result, Tensor) and result.dtype == torch.uint8):
            raise DatasetError("--data.augment must return uint8 image tensors")
        if result.shape != blank.shape:
            raise DatasetError(
                f"--data.augment turns images of shape {tuple(blank.shape)} into "
                f"{tuple(result.shape)}: give crops and resizes the size of --data.image_size"
            )
        return self.augment

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

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
