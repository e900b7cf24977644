"""Image files to model input: the one decoding path of ``predict`` (and of any server).

An image is converted to what the checkpoint's model was trained on: its channel count (1 is
grayscale, 3 is RGB; 2 and 4 add alpha) and its height and width, as uint8 pixels.
"""

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.io import ImageReadMode, decode_image
from torchvision.transforms.v2.functional import resize, to_dtype

from .errors import ImageError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".webp", ".bmp", ".tif", ".tiff")
READ_MODES = {
    1: ImageReadMode.GRAY,
    2: ImageReadMode.GRAY_ALPHA,
    3: ImageReadMode.RGB,
    4: ImageReadMode.RGB_ALPHA,
}
PILLOW_MODES = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}
# Images with more pixels (all frames together) are refused before decoding: a small file can
# hold a huge image (a PNG of one colour compresses about 1000:1) and exhaust the memory.
# 8192 x 8192 holds any camera photo.
MAX_PIXELS = 8192 * 8192


def decode(data: bytes, channels: int, image_size: tuple[int, int]) -> Tensor:
    """Decode an encoded image to uint8 pixels of shape (channels, height, width)."""
    if channels not in READ_MODES:
        raise ImageError(f"images cannot be converted to {channels} channels")
    if not data:
        raise ImageError("the image is empty")
    check_pixel_count(data)
    try:
        image = decode_image(
            torch.frombuffer(bytearray(data), dtype=torch.uint8), READ_MODES[channels]
        )
    except RuntimeError:  # a format torchvision does not decode (BMP, TIFF), or a broken file
        image = decode_with_pillow(data, channels)
    if image.ndim == 4:  # an animated GIF: its first frame
        image = image[0]
    # 16-bit PNGs are scaled to 8 bits, not truncated.
    image = to_dtype(image, torch.uint8, scale=True)
    if tuple(image.shape[-2:]) != tuple(image_size):
        image = resize(image, list(image_size), antialias=True)
    return image


def check_pixel_count(data: bytes) -> None:
    """Refuse an image with more than ``MAX_PIXELS`` pixels, as its header says."""
    try:
        with Image.open(io.BytesIO(data)) as picture:
            pixels = picture.width * picture.height * getattr(picture, "n_frames", 1)
    except Image.DecompressionBombError as error:  # Pillow's own limit, above ours
        raise ImageError(f"the image has too many pixels ({error})") from error
    except Exception:  # a header Pillow cannot read: left to the decoders, which say why
        return
    if pixels > MAX_PIXELS:
        raise ImageError(f"the image has {pixels:,} pixels, more than the {MAX_PIXELS:,} allowed")


def decode_with_pillow(data: bytes, channels: int) -> Tensor:
    try:
        with Image.open(io.BytesIO(data)) as picture:
            picture.load()
            if picture.mode.startswith("I"):  # 16- or 32-bit integer grayscale
                pixels = np.asarray(picture, dtype=np.float64)
                scale = 255 / (65535 if picture.mode.startswith("I;16") else max(pixels.max(), 1))
                picture = Image.fromarray((pixels * scale).round().clip(0, 255).astype(np.uint8))
            pixels = np.asarray(picture.convert(PILLOW_MODES[channels]))
    except UnidentifiedImageError as error:  # its message holds only the buffer's address
        raise ImageError("not an image in a known format") from error
    except (OSError, ValueError) as error:
        raise ImageError(f"not an image in a known format, or truncated ({error})") from error
    return torch.from_numpy(pixels.copy()).reshape(*pixels.shape[:2], channels).permute(2, 0, 1)


def read_image(path: Path, channels: int, image_size: tuple[int, int]) -> Tensor:
    try:
        return decode(path.read_bytes(), channels, image_size)
    except ImageError as error:
        raise ImageError(f"cannot read image {path}: {error}") from error


def image_paths(path: Path) -> list[Path]:
    """``path`` itself if it is a file, else the images under the folder, sorted."""
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise ImageError(f"input {path} does not exist")
    paths = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise ImageError(f"folder {path} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return paths


class ImageFiles(Dataset):
    """Image files decoded on access, each with its path as the source name."""

    def __init__(self, paths: list[Path], channels: int, image_size: tuple[int, int]) -> None:
        self.paths = paths
        self.channels = channels
        self.image_size = image_size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[Tensor, str]:
        path = self.paths[index]
        return read_image(path, self.channels, self.image_size), str(path)
