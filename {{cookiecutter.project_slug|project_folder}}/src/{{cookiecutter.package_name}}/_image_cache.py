"""An image folder read once: the sizes ``auto`` picks, every file decoded and checked, and
the cache of the decoded images that later runs start from (see data.py)."""

import hashlib
import json
import os
import time
import zlib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from pytorch_lightning.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from .support.errors import DatasetError, OutputError, one_line
from .support.files import replaced, write_file
from .support.images import decode

# Part of every cache's name: raise it when decoding changes, so old caches are not reused.
CACHE_VERSION = 3
GRAYSCALE_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"}


class Headers(Dataset):
    """Each file's (height, width) and whether it is grayscale, from its header alone."""

    def __init__(self, paths: list[Path]) -> None:
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[int, int, bool] | None:
        try:
            with Image.open(self.paths[index]) as picture:
                palette = picture.getpalette() if picture.mode == "P" else None
                gray = picture.mode in GRAYSCALE_MODES or (
                    palette is not None and palette[0::3] == palette[1::3] == palette[2::3]
                )
                return picture.height, picture.width, gray
        except Exception:  # unreadable: the first read names it
            return None


def auto_sizes(paths: list[Path], cache_dir: Path, key: str) -> tuple[tuple[int, int], int]:
    """The most common image size (data.py scales it), and 1 channel when every image is
    grayscale, else 3. Remembered for this state of the folder."""
    remembered = cache_dir / f"auto-{key}.json"
    if picked := read_remembered(remembered):
        return picked
    headers = [header for header in in_processes(Headers(paths)) if header is not None]
    if not headers:
        raise DatasetError(f"none of the {len(paths)} images can be read")
    size, count = Counter(header[:2] for header in headers).most_common(1)[0]
    channels = 1 if all(header[2] for header in headers) else 3
    rank_zero_info(
        f"{count} of {len(headers)} images are {size[0]}x{size[1]}; "
        f"{'every image is grayscale' if channels == 1 else 'some images have colour'}"
    )
    with_cache_errors(
        write_file, remembered, json.dumps({"image_size": size, "channels": channels})
    )
    return size, channels


def read_remembered(path: Path) -> tuple[tuple[int, int], int] | None:
    """The sizes ``auto`` remembered in ``path``, or None when it has none: missing, or damaged
    (cut, emptied, edited), which is said in one line; the caller then writes it anew."""
    if not path.is_file():
        return None
    try:
        picked = json.loads(path.read_text())
        height, width = picked["image_size"]
        channels = picked["channels"]
        sizes = (height, width, channels)
        if not all(type(value) is int and value > 0 for value in sizes) or channels not in (1, 3):
            raise ValueError(f"image_size {picked['image_size']}, channels {channels}")
    except (OSError, UnicodeDecodeError, ValueError, TypeError, KeyError) as error:
        reason = "not valid JSON" if isinstance(error, json.JSONDecodeError) else one_line(error)
        rank_zero_warn(f"ignored the damaged {path} ({reason}); it is written again")
        return None
    return (height, width), channels


def in_processes(dataset: Dataset) -> Iterator[Any]:
    """Every item of ``dataset``, in order, computed by as many processes as there are cores
    (decoding holds the GIL, so only processes run it in parallel)."""
    workers = (os.cpu_count() or 1) if len(dataset) >= 200 else 0
    # Its own generator: the workers' seeds are otherwise drawn from the global RNG, and the
    # network, built after the data, would start from other weights on a folder's first run
    # than on the runs that read the cache.
    loader = DataLoader(
        dataset, batch_size=64, num_workers=workers, collate_fn=list, generator=torch.Generator()
    )
    for batch in loader:
        yield from batch


def cached_images(
    root: Path,
    paths: list[Path],
    key: str,
    labels: Tensor,
    splits: Tensor,
    channels: int,
    image_size: tuple[int, int],
    cache_dir: Path,
    max_cache_gb: float,
) -> dict[str, Any]:
    """The decoded folder from the cache, or read from the files and saved to it: pixels (when
    they fit in ``max_cache_gb``), labels, splits, digests, unreadable files and statistics."""
    height, width = image_size
    decoded_gb = len(paths) * channels * height * width / 1e9
    keep_pixels = decoded_gb <= max_cache_gb
    settings = f"{height}x{width}x{channels}" + ("" if keep_pixels else "-files")
    path = cache_dir / f"{settings}-v{CACHE_VERSION}-{key}.pt"
    cache = load_cache(path)
    if cache is not None:
        return cache
    rank_zero_info(
        f"Reading {len(paths)} images of {root} once"
        + (f" into {path}" if keep_pixels else f" ({decoded_gb:.1f} GB decoded: not cached)")
    )
    cache = read_all(paths, splits, channels, image_size, keep_pixels)
    cache |= {
        "paths": [str(p.relative_to(root)) for p in paths],
        "labels": labels,
        "splits": splits,
    }
    save_cache(path, cache)
    for stale in cache_dir.glob(f"{settings}-*.pt"):  # earlier states of the folder
        if stale != path:
            stale.unlink(missing_ok=True)
    return cache


def check_images(cache: dict[str, Any], root: Path, skip_bad_images: bool) -> None:
    """Stop on unreadable images unless told to skip them; warn of repeated images."""
    unreadable = cache["unreadable"]
    if unreadable:
        listed = "; ".join(unreadable[:3]) + ("; ..." if len(unreadable) > 3 else "")
        if not skip_bad_images:
            raise DatasetError(
                f"{len(unreadable)} image(s) cannot be read: {listed}. Replace or remove "
                "them, or leave them out with --data.skip_bad_images true"
            )
        rank_zero_warn(f"left out {len(unreadable)} unreadable image(s): {listed}")
        if not (cache["readable"] & (cache["splits"] == 0)).any():
            raise DatasetError(f"none of the images in {root / 'train'} can be read")
    # An image in train/ and in val/ or test/ as well inflates the held-out accuracy.
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


class FilesToRead(Dataset):
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
        except Exception as error:  # e.g. a file that vanished: reported, named
            return None, 0, str(error)
        # Identical files have identical digests; 64 bits make a chance match negligible.
        digest = hashlib.blake2b(data, digest_size=8).digest()
        return pixels, int.from_bytes(digest, "little", signed=True), ""


def read_all(
    paths: list[Path], splits: Tensor, channels: int, image_size: tuple[int, int], keep: bool
) -> dict[str, Any]:
    """Decode every file once: pixels (if ``keep``), digests, unreadable files, and the
    per-channel mean and standard deviation, on the 0-255 scale, of the images in train/
    (held-out ones included: the statistics only scale the inputs)."""
    count, start = len(paths), time.perf_counter()
    images = torch.zeros((count, channels, *image_size), dtype=torch.uint8) if keep else None
    readable = torch.ones(count, dtype=torch.bool)
    digests = torch.zeros(count, dtype=torch.int64)
    unreadable = []
    # Per channel: pixel count, sum and sum of squares, in float64 to stay exact.
    sums = torch.zeros(3, channels, dtype=torch.float64)
    decoded = in_processes(FilesToRead(paths, channels, image_size))
    for index, (pixels, digest, error) in enumerate(decoded):
        if pixels is None:
            readable[index] = False
            unreadable.append(f"{paths[index]} ({error})")
            continue
        if images is not None:
            images[index] = pixels
        digests[index] = digest
        if splits[index] == 0:
            values = pixels.flatten(1).double()
            sums[0] += values.shape[1]
            sums[1] += values.sum(1)
            sums[2] += values.square().sum(1)
    seconds = time.perf_counter() - start
    rank_zero_info(f"read {count} images in {seconds:.1f} s ({count / seconds:.0f} images/s)")
    pixel_count, total, squares = sums
    mean = total / pixel_count
    # A constant channel would divide by zero when the model normalizes; 1 leaves it as is.
    std = (squares / pixel_count - mean.square()).clamp(min=0).sqrt().clamp(min=1)
    cache = {"readable": readable, "digests": digests, "unreadable": unreadable}
    cache |= {"mean": mean.tolist(), "std": std.tolist()}
    return cache | ({"images": images} if images is not None else {})


def checksum(cache: dict[str, Any]) -> int:
    """CRC-32 of every tensor of the cache: a file damaged on disk but still loadable differs."""
    value = 0
    for name in sorted(cache):
        if torch.is_tensor(cache[name]):
            value = zlib.crc32(cache[name].contiguous().view(torch.uint8).numpy(), value)
    return value


def load_cache(path: Path) -> dict[str, Any] | None:
    """The cache at ``path`` if it loads and its checksum holds, else None (with a warning)."""
    if not path.is_file():
        return None
    try:
        # Memory-mapped: the tensors are the file's pages, read once by the checksum and
        # shared with training, not a second copy in the process's memory.
        cache = torch.load(path, mmap=True, weights_only=True)
        if cache.pop("checksum", None) == checksum(cache):
            return cache
        reason = "its checksum does not match its content"
    except Exception as error:  # a cache from another torch version, a damaged file
        reason = f"it failed to load ({error})"
    rank_zero_warn(f"reading the images again: the cache {path} is damaged: {reason}")
    return None


def save_cache(path: Path, cache: dict[str, Any]) -> None:
    """Save the cache whole, under its final name only once complete."""

    def save() -> None:
        with replaced(path) as file:
            torch.save({**cache, "checksum": checksum(cache)}, file)

    with_cache_errors(save)


def with_cache_errors(write: Any, *args: Any) -> None:
    try:
        write(*args)
    except OutputError as error:
        raise DatasetError(f"{error}: set --data.cache_dir to a writable folder") from None
