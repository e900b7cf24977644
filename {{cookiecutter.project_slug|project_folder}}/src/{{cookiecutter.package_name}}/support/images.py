"""Image files to model input: the one decoding path of everything that reads image files.

An image is converted to what the checkpoint's model was trained on: its channel count (1 is
grayscale, 3 is RGB; 2 and 4 add alpha) and its height and width, as uint8 pixels, whatever
its format, colour mode, bit depth and frame count.
"""

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.transforms.v2.functional import resize

from .errors import ImageError, one_line

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".webp", ".bmp", ".tif", ".tiff")
# Pillow's mode for each channel count: the conversion it does is the one of every command.
PILLOW_MODES = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}
# Images with more pixels (all frames together) are refused before decoding: a small file can
# hold a huge image (a PNG of one colour compresses about 1000:1) and exhaust the memory.
# 8192 x 8192 holds any camera photo.
MAX_PIXELS = 8192 * 8192


def decode(data: bytes, channels: int, image_size: tuple[int, int]) -> Tensor:
    """Decode an encoded image to uint8 pixels of shape (channels, height, width)."""
    if channels not in PILLOW_MODES:
        raise ImageError(f"images cannot be converted to {channels} channels")
    if not data:
        raise ImageError("the image is empty")
    try:
        with Image.open(io.BytesIO(data)) as picture:
            pixels = picture.width * picture.height * getattr(picture, "n_frames", 1)
            if pixels > MAX_PIXELS:
                raise ImageError(
                    f"the image has {pixels:,} pixels, more than the {MAX_PIXELS:,} allowed"
                )
            picture.load()  # an animated image: its first frame
            # Upright as a viewer shows it: cameras store the sensor's rows and an EXIF tag.
            picture = ImageOps.exif_transpose(picture)
            array = np.asarray(converted(picture, PILLOW_MODES[channels]))
    except ImageError:
        raise
    except Image.DecompressionBombError as error:  # Pillow's own limit, above ours
        raise ImageError(f"the image has too many pixels ({error})") from error
    except UnidentifiedImageError as error:  # its message holds only the buffer's address
        raise ImageError("not an image in a known format") from error
    except Exception as error:  # Pillow's decoders raise OSError, ValueError, SyntaxError, ...
        raise ImageError(
            f"not an image in a known format, or truncated ({one_line(error)})"
        ) from error
    image = torch.from_numpy(array.copy()).reshape(*array.shape[:2], channels).permute(2, 0, 1)
    if tuple(image.shape[-2:]) != tuple(image_size):
        image = resize(image, list(image_size), antialias=True)
    return image


def converted(picture: Image.Image, mode: str) -> Image.Image:
    """The picture in ``mode``; 16- and 32-bit grayscale scaled to 8 bits, not truncated.

    Transparency, one rule for every format and channel count: each pixel's colour is
    composited over black (multiplied by its opacity, "premultiplied"), so a fully transparent
    pixel is black whatever colour the file keeps under it; 2 and 4 channels keep the opacity
    beside it.
    """
    if picture.mode.startswith(("I", "F")):
        values = np.asarray(picture, dtype=np.float64)
        top = 65535 if picture.mode.startswith("I;16") else max(values.max(), 1)
        picture = Image.fromarray((values * (255 / top)).round().clip(0, 255).astype(np.uint8))
    if picture.has_transparency_data:
        rgba = np.asarray(picture.convert("RGBA"), dtype=np.uint16)
        rgba[..., :3] = (rgba[..., :3] * rgba[..., 3:] + 127) // 255
        picture = Image.fromarray(rgba.astype(np.uint8))  # (Pillow's RGBA -> L drops opacity)
    return picture.convert(mode)


def read_image(path: Path, channels: int, image_size: tuple[int, int]) -> Tensor:
    try:
        return decode(path.read_bytes(), channels, image_size)
    except OSError as error:
        raise ImageError(f"cannot read image {path}: {error.strerror}") from error
    except ImageError as error:
        raise ImageError(f"cannot read image {path}: {error}") from error


class ImageFiles(Dataset):
    """Image files decoded when a batch asks for them, each with its target (a label, or the
    name ``predict`` writes)."""

    def __init__(
        self, paths: list[Path], targets: Sequence, channels: int, image_size: tuple[int, int]
    ) -> None:
        self.paths, self.targets = paths, targets
        self.channels, self.image_size = channels, image_size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[Tensor, Any]:
        return read_image(self.paths[index], self.channels, self.image_size), self.targets[index]
