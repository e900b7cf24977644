"""The layout of an image folder: its class folders, every image file with its label and
split, a key of the folder's state, and the splits held out of train/ (see data.py)."""

import hashlib
import os
from pathlib import Path

import torch
from pytorch_lightning.utilities import rank_zero_warn
from torch import Tensor

from .support.errors import DatasetError
from .support.images import IMAGE_SUFFIXES

SPLITS = ("train", "val", "test")


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
        names = class_folders(root)
        hint = ""
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
    """The files under ``folder`` at any depth, sorted, leaving out hidden files and folders.

    Links to folders are followed, as torchvision's ``ImageFolder`` follows them, except a
    link back to ``folder`` or above it (a loop); a folder linked twice is read once.
    """
    files, seen, top = [], set(), folder.resolve()
    for current, folders, names in os.walk(folder, followlinks=True):
        real = Path(current).resolve()
        if real in seen or (real != top and top.is_relative_to(real)):
            folders.clear()
            continue
        seen.add(real)
        folders[:] = [name for name in folders if not name.startswith(".")]
        paths = (Path(current, name) for name in names if not name.startswith("."))
        files += [path for path in paths if path.is_file()]
    return sorted(files)


def listing_key(root: Path, paths: list[Path], labels: list[int]) -> str:
    """What the folder holds: each file's name, label, size, times and inode, hashed.

    The inode and change time tell apart files that name, size and modification time do not:
    two class folders swapped by renaming, a file rewritten with its old time put back.
    """
    key = hashlib.sha256()
    for path, label in zip(paths, labels, strict=True):
        stat = path.stat()
        facts = (path.relative_to(root), label, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)
        key.update("\0".join(map(str, (*facts, stat.st_ino))).encode() + b"\n")
    return key.hexdigest()[:20]


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
