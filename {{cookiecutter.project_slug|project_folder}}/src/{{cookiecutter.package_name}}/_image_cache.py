"""Reading a folder of images once: its layout, every file decoded and checked, and the
cache of the decoded images that later runs start from (see data.py)."""

import hashlib
import os
from pathlib import Path
from typing import Any

import torch
from pytorch_lightning.utilities import rank_zero_warn
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from .inference.images import IMAGE_SUFFIXES, decode
from .support.errors import DatasetError

SPLITS = ("train", "val", "test")
# Part of every cache file's name: raise it when decoding changes, so old caches are not reused.
CACHE_VERSION = 1


class FilesToCheck(Dataset):
    """For the first read: each file's pixels, or why it cannot be decoded, and a digest."""

    def __init__(self, paths: list[Path], channels: int, image_size: tuple[int, int]) -> None:
        self.paths = paths
        self.channels = channels
        self.image_size = image_size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[Tensor | None, int, str]:
        try:
            data = self.paths[index].read_bytes()
            pixels = decode(data, self.channels, self.image_size)
        except Exception as error:  # e.g. Pillow's DecompressionBombError: reported, named
            return None, 0, str(error)
        # Identical files have identical digests; 64 bits make a chance match negligible.
        digest = hashlib.blake2b(data, digest_size=8).digest()
        return pixels, int.from_bytes(digest, "little", signed=True), ""


def class_folders(folder: Path) -> list[str]:
    """Names of the class folders in ``folder``, sorted; hidden ones (.ipynb_checkpoints) aside."""
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def list_images(root: Path) -> tuple[list[str], list[Path], list[int], list[int]]:
    """Class names, and every image file under ``root`` with its label and split index.

    Raises DatasetError for a missing ``train/``, fewer than two classes, an empty class folder,
    or a ``val/`` or ``test/`` folder whose classes differ from those of ``train/``.
    """
    train = root / "train"
    if not train.is_dir():
        if not root.is_dir():
            raise DatasetError(f"data folder {root} does not exist: set --data.data_dir")
        hint = ""
        names = class_folders(root)
        if len(names) >= 2:  # perhaps the class folders were put in data_dir itself
            listed = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
            hint = f" (if {listed} are classes, move them there)"
        raise DatasetError(
            f"{root} has no train/ folder: put one folder of images per class in {train}{hint}"
        )
    class_names = class_folders(train)
    if len(class_names) < 2:
        raise DatasetError(
            f"{train} needs at least two class folders to tell apart, found {len(class_names)}"
            f"{': ' + class_names[0] if class_names else ''}"
        )
    paths, labels, splits, ignored = [], [], [], []
    for split_index, split in enumerate(SPLITS):
        folder = root / split
        if split != "train" and not folder.is_dir():
            continue
        names = class_folders(folder)
        if names != class_names:
            differences = [
                f"{where} only: {', '.join(sorted(only))}"
                for where, only in (
                    (f"{split}/", set(names) - set(class_names)),
                    ("train/", set(class_names) - set(names)),
                )
                if only
            ]
            raise DatasetError(
                f"the class folders of {folder} differ from those of {train} "
                f"({'; '.join(differences)}): give both the same classes"
            )
        for label, name in enumerate(class_names):
            files = visible_files(folder / name)
            found = [path for path in files if path.suffix.lower() in IMAGE_SUFFIXES]
            if not found:
                raise DatasetError(
                    f"class folder {folder / name} holds no images "
                    f"({', '.join(IMAGE_SUFFIXES)}): add some or remove the folder"
                )
            ignored += [path for path in files if path.suffix.lower() not in IMAGE_SUFFIXES]
            paths += found
            labels += [label] * len(found)
            splits += [split_index] * len(found)
    if ignored:
        rank_zero_warn(
            f"ignored {len(ignored)} file(s) without an image suffix "
            f"({', '.join(IMAGE_SUFFIXES)}), e.g. {ignored[0]}"
        )
    return class_names, paths, labels, splits


def visible_files(folder: Path) -> list[Path]:
    """The files under ``folder`` at any depth, sorted, leaving out hidden files and folders."""
    files = (path for path in folder.rglob("*") if path.is_file())
    return sorted(
        path
        for path in files
        if not any(part.startswith(".") for part in path.relative_to(folder).parts)
    )


def cache_file(cache_dir: Path, root: Path, paths: list[Path], settings: str) -> Path:
    """The cache's path: named after the settings, keyed on each file's name, size and mtime."""
    key = hashlib.sha256(f"{CACHE_VERSION} {settings}\n".encode())
    for path in paths:
        stat = path.stat()
        key.update(f"{path.relative_to(root)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return cache_dir / f"{settings}-{key.hexdigest()[:20]}.pt"


def read_all(
    paths: list[Path],
    splits: Tensor,
    channels: int,
    image_size: tuple[int, int],
    keep_pixels: bool,
) -> dict[str, Any]:
    """Decode every file once: pixels (if kept), digests, unreadable files, and the per-channel
    mean and standard deviation, on the 0-255 scale, of the images in the train/ folder (held-out
    ones included: the statistics only scale the inputs, and so do not depend on the split)."""
    count = len(paths)
    images = torch.zeros((count, channels, *image_size), dtype=torch.uint8) if keep_pixels else None
    readable = torch.ones(count, dtype=torch.bool)
    digests = torch.zeros(count, dtype=torch.int64)
    unreadable = []
    # Per channel: pixel count, sum and sum of squares, in float64 to stay exact.
    sums = torch.zeros(3, channels, dtype=torch.float64)
    # Decoding holds the GIL, so only processes run it in parallel; starting one pays off
    # from a few hundred files on.
    workers = min(os.cpu_count() or 1, count // 500)
    files = FilesToCheck(paths, channels, image_size)
    loader = DataLoader(files, batch_size=64, num_workers=workers, collate_fn=list)
    index = 0
    for batch in loader:
        for pixels, digest, error in batch:
            if pixels is None:
                readable[index] = False
                unreadable.append(f"{paths[index]} ({error})")
            else:
                if images is not None:
                    images[index] = pixels
                digests[index] = digest
                if splits[index] == 0:
                    values = pixels.flatten(1).double()
                    sums[0] += values.shape[1]
                    sums[1] += values.sum(1)
                    sums[2] += values.square().sum(1)
            index += 1
    pixel_count, total, squares = sums
    mean = total / pixel_count
    # A constant channel would divide by zero when the model normalizes; 1 leaves it as is.
    std = (squares / pixel_count - mean.square()).clamp(min=0).sqrt().clamp(min=1)
    result = {
        "readable": readable,
        "digests": digests,
        "unreadable": unreadable,
        "mean": mean.tolist(),
        "std": std.tolist(),
    }
    if images is not None:
        result["images"] = images
    return result


