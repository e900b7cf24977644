"""A folder of images, one sub-folder per class, as a LightningDataModule; decoded once, cached.

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

The layout is torchvision's ``ImageFolder`` with one folder per split::

    <data_dir>/train/<class name>/**/*.png|jpg|...   required; class names are the folder names
    <data_dir>/val/<class name>/...                  optional, the same class folders
    <data_dir>/test/<class name>/...                 optional, the same class folders

Without ``val/`` or ``test/``, ``val_size`` and ``test_size`` images of ``train/`` are held out
instead: a seeded split that keeps each class's share. The first run reads every image once
(``image_cache.py``): it checks that each one decodes, converts it to ``channels`` and
``image_size``, and computes the per-channel statistics; when the decoded images fit in
``max_cache_gb`` they are kept as one uint8 tensor in ``cache_dir``. Later runs over the same
files with the same settings start from the cache. Training batches are augmented on the
training device, after the copy to it, every image on its own.
"""

from pathlib import Path
from typing import Any, Literal

import numpy as np
import pytorch_lightning as pl
import torch
from PIL import Image
from pytorch_lightning.utilities import rank_zero_info
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from .augment import Augment
from .image_cache import auto_sizes, cached_images, check_images
from .image_files import SPLITS, held_out, list_images, listing_key
from .support.errors import DatasetError
from .support.images import ImageFiles
from .support.loading import InMemoryImages, batch_loader

# The networks of nets.py pool three times: smaller images leave nothing to classify.
MIN_IMAGE_SIDE = 8
# `image_size: auto` scales the most common size down to fit this: larger images make a small
# CNN slow and rarely help it on a few thousand images.
MAX_AUTO_SIDE = 128


def auto_image_size(size: tuple[int, int], max_side: int) -> tuple[int, int]:
    """``size`` scaled down to at most ``max_side`` pixels a side, or up to at least
    MIN_IMAGE_SIDE, keeping its shape; an image too long and thin for both is squeezed."""
    scale = max(min(1.0, max_side / max(size)), MIN_IMAGE_SIDE / min(size))
    return tuple(min(max_side, round(side * scale)) for side in size)


class ImageDataModule(pl.LightningDataModule):
    """Images of ``<data_dir>/{train,val,test}/<class>/``, converted, cached and split.

    Batches hold uint8 images; the model normalizes them on its device, which keeps
    host-to-device copies four times smaller than float images.
    """

    def __init__(
        self,
        data_dir: str = "data",
        image_size: tuple[int, int] | Literal["auto"] = "auto",
        auto_max_side: int = MAX_AUTO_SIDE,
        channels: int | Literal["auto"] = "auto",
        val_size: float = 0.1,
        test_size: float = 0.1,
        split_seed: int = 42,
        augment: Augment | None = None,
        batch_size: int = 64,
        num_workers: int = 0,
        cache_dir: str | None = None,
        max_cache_gb: float = 4.0,
        skip_bad_images: bool = False,
    ) -> None:
        """
        Args:
            data_dir: Folder holding ``train/<class>/`` and optionally ``val/`` and ``test/``.
            image_size: Height and width every image is resized to; ``auto``: the images' most
                common size, scaled down to at most ``auto_max_side`` pixels a side.
            auto_max_side: The longest side ``auto`` picks.
            channels: 1 (grayscale) or 3 (RGB); 2 and 4 add the alpha channel. ``auto``: 1 when
                every image is grayscale, else 3.
            val_size: Images of train/ held out for validation when there is no val/ folder:
                a fraction below 1, or a count.
            test_size: Images of train/ held out for testing when there is no test/ folder:
                a fraction below 1, or a count.
            split_seed: Seed of the held-out splits, independent of the global seed.
            augment: Random changes to each training image, on the training device; never to
                validation, test or predicted images. None: no augmentation.
            batch_size: Images per batch on each device.
            num_workers: DataLoader worker processes; they decode the images of a set too large
                to cache (a cached set needs none).
            cache_dir: Folder for the decoded images; default ``<data_dir>/.cache``.
            max_cache_gb: Largest decoded size kept as a cache; larger sets are decoded from
                the files in every epoch (0: always).
            skip_bad_images: Leave out, with a warning, images that cannot be decoded, instead
                of stopping with an error that names them.
        """
        super().__init__()
        if channels not in ("auto", 1, 2, 3, 4):
            raise DatasetError(f"--data.channels must be 1, 2, 3, 4 or auto, not {channels}")
        if image_size != "auto" and (len(image_size) != 2 or min(image_size) < MIN_IMAGE_SIDE):
            raise DatasetError(
                f"--data.image_size must be [height, width] of at least {MIN_IMAGE_SIDE} pixels "
                f"each (the networks of nets.py pool three times), or auto, not {image_size}"
            )
        for name, value, least in (
            ("auto_max_side", auto_max_side, MIN_IMAGE_SIDE),
            ("batch_size", batch_size, 1),
            ("num_workers", num_workers, 0),
            ("max_cache_gb", max_cache_gb, 0),
        ):
            if value < least:
                raise DatasetError(f"--data.{name} must be at least {least}, not {value}")
        for name, value in (("val_size", val_size), ("test_size", test_size)):
            if value <= 0:
                raise DatasetError(f"--data.{name} must be a fraction or a count, not {value}")
        if augment and not 0 < augment.crop_scale[0] <= augment.crop_scale[1] <= 1:
            raise DatasetError(
                f"--data.augment.crop_scale must be [low, high] within (0, 1] of the image's "
                f"area, not {list(augment.crop_scale)}"
            )
        if augment and not 0 <= augment.jitter < 1:
            raise DatasetError(f"--data.augment.jitter must be within [0, 1), not {augment.jitter}")
        # Not sent to the loggers, which get them in the run's config: the model's image_size
        # and channels are what `auto` picked, and Lightning refuses to log two values of one
        # name. Checkpoints keep them as given, `auto` included, which picks the same again.
        self.save_hyperparameters(logger=False)
        self.augment = augment
        self.root = Path(data_dir)
        self.cache_dir = Path(cache_dir) if cache_dir else self.root / ".cache"
        class_names, paths, labels, splits = list_images(self.root)
        self.class_names = tuple(class_names)
        key = listing_key(self.root, paths, labels)
        if "auto" in (image_size, channels):
            picked_size, picked_channels = auto_sizes(paths, self.cache_dir, key)
            if image_size == "auto":
                image_size = auto_image_size(picked_size, auto_max_side)
                rank_zero_info(
                    f"image_size auto: {list(image_size)} (the most common size, "
                    f"{picked_size[0]}x{picked_size[1]}, fitted within {MIN_IMAGE_SIDE}-"
                    f"{auto_max_side} pixels a side)"
                )
            if channels == "auto":
                channels = picked_channels
                rank_zero_info(f"channels auto: {channels}")
        self.image_size, self.channels = tuple(image_size), channels
        self.cache = cached_images(
            self.root,
            paths,
            key,
            torch.tensor(labels),
            torch.tensor(splits),
            channels,
            self.image_size,
            self.cache_dir,
            max_cache_gb,
        )
        check_images(self.cache, self.root, skip_bad_images)
        self.mean = tuple(self.cache["mean"])
        self.std = tuple(self.cache["std"])
        self.datasets: dict[str, Dataset] = {}

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
        return {"data_dir": str(folder), "image_size": [32, 32], "val_size": 0.3, "batch_size": 32}

    def setup(self, stage: str) -> None:
        if stage in ("fit", "validate") and "train" not in self.datasets:
            parts = self._splits()
            self.datasets["train"] = self._dataset(parts["train"])
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

    def _dataset(self, indices: Tensor) -> Dataset:
        labels = self.cache["labels"][indices]
        if "images" in self.cache:
            return InMemoryImages(self.cache["images"][indices], labels)
        paths = [self.root / self.cache["paths"][i] for i in indices.tolist()]
        return ImageFiles(paths, labels, self.channels, self.image_size)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Augment training batches where they are now: on the training device."""
        if self.augment is None or self.trainer is None or not self.trainer.training:
            return batch
        images, labels = batch
        return self.augment(images), labels

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

    def _loader(self, split: str, shuffle: bool = False) -> DataLoader:
        hparams = self.hparams
        return batch_loader(self.datasets[split], hparams.batch_size, shuffle, hparams.num_workers)
