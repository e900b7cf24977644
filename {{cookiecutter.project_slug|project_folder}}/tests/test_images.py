"""Image files to model input: every mode and bit depth converted correctly, or refused."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from {{ cookiecutter.package_name }}.errors import ImageError
from {{ cookiecutter.package_name }}.images import decode


def encoded(picture: Image.Image, image_format: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, format=image_format)
    return buffer.getvalue()


def gray16(image_format: str) -> bytes:
    """A 16-bit grayscale image: black, mid-gray and white columns."""
    pixels = np.array([[0, 32896, 65535]] * 2, dtype=np.uint16)
    return encoded(Image.fromarray(pixels), image_format)


@pytest.mark.parametrize("image_format", ["PNG", "TIFF"])
def test_16_bit_images_are_scaled_not_wrapped(image_format: str) -> None:
    image = decode(gray16(image_format), channels=1, image_size=(2, 3))
    assert image.dtype == torch.uint8
    assert image[0, 0].tolist() == [0, 128, 255]


def test_colour_modes_convert_to_the_model_channels() -> None:
    rgba = Image.new("RGBA", (4, 4), (200, 30, 10, 0))  # alpha is dropped, not blended
    assert decode(encoded(rgba), 3, (4, 4))[:, 0, 0].tolist() == [200, 30, 10]
    palette = Image.new("RGB", (4, 4), (10, 200, 30)).convert("P", palette=Image.Palette.ADAPTIVE)
    assert decode(encoded(palette), 3, (4, 4))[:, 0, 0].tolist() == [10, 200, 30]
    gray_jpeg = encoded(Image.new("L", (8, 8), 90), "JPEG")
    assert decode(gray_jpeg, 3, (8, 8))[:, 0, 0].tolist() == pytest.approx([90] * 3, abs=2)
    bmp = encoded(Image.new("RGB", (4, 4), (255, 255, 255)), "BMP")
    assert decode(bmp, 1, (4, 4)).tolist() == [[[255] * 4] * 4]
    two_channels = decode(encoded(Image.new("LA", (4, 4), (70, 255))), 2, (4, 4))
    assert two_channels[:, 0, 0].tolist() == [70, 255]


def test_images_are_resized_to_the_model_size() -> None:
    image = decode(encoded(Image.new("RGB", (40, 10), (5, 5, 5))), 3, (20, 16))
    assert image.shape == (3, 20, 16)


TRUNCATED_PNG = encoded(Image.new("RGB", (64, 64), (1, 2, 3)))[:60]


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "the image is empty"),
        (b"plain text, not an image", "not an image in a known format"),
        (TRUNCATED_PNG, "not an image in a known format, or truncated"),
    ],
    ids=["empty", "text", "truncated-png"],
)
def test_unusable_input_is_refused_with_a_reason(data: bytes, reason: str) -> None:
    with pytest.raises(ImageError, match=reason):
        decode(data, 3, (8, 8))


def test_channel_counts_without_an_image_mode_are_refused() -> None:
    with pytest.raises(ImageError, match="cannot be converted to 5 channels"):
        decode(encoded(Image.new("RGB", (4, 4))), 5, (4, 4))
