"""Image files to model input: every format, colour mode and bit depth becomes exactly the
channels and size the model takes, or is refused with a reason."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from {{ cookiecutter.package_name }}.support.errors import ImageError
from {{ cookiecutter.package_name }}.support.images import PILLOW_MODES, decode

FORMATS = ["PNG", "JPEG", "GIF", "WEBP", "BMP", "TIFF"]
MODES = ["1", "L", "LA", "P", "RGB", "RGBA", "I;16"]
# What each format can store; Pillow refuses the rest.
STORES = {
    "JPEG": {"1", "L", "RGB"},
    "GIF": {"1", "L", "P"},
    "BMP": {"1", "L", "P", "RGB"},
    "WEBP": {"RGB", "RGBA"},
    "PNG": set(MODES),
    "TIFF": set(MODES),
}
# Two flat halves, each one JPEG block wide, so that lossy formats keep their colours.
WIDTH, HEIGHT = 16, 8


def encoded(picture: Image.Image, image_format: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, format=image_format)
    return buffer.getvalue()


def picture_in(mode: str) -> Image.Image:
    """A picture with a colour in each half (the right one half transparent), in ``mode``."""
    pixels = np.zeros((HEIGHT, WIDTH, 4), dtype=np.uint8)
    pixels[:, : WIDTH // 2] = (200, 40, 10, 255)
    pixels[:, WIDTH // 2 :] = (20, 160, 240, 128)
    picture = Image.fromarray(pixels, "RGBA")
    if mode == "I;16":
        return Image.fromarray(np.asarray(picture.convert("L"), dtype=np.uint16) * 257)
    if mode == "1":  # black and white halves, not dithered noise
        return picture.convert("L").point(lambda level: 255 if level > 100 else 0).convert("1")
    if mode == "P":
        return picture.convert("RGB").convert("P", palette=Image.Palette.ADAPTIVE)
    return picture.convert(mode)


CASES = [
    (image_format, mode, channels)
    for image_format in FORMATS
    for mode in MODES
    if mode in STORES[image_format]
    for channels in (1, 2, 3, 4)
]


@pytest.mark.parametrize(("image_format", "mode", "channels"), CASES)
def test_every_format_and_mode_becomes_the_model_channels_and_size(
    image_format: str, mode: str, channels: int
) -> None:
    data = encoded(picture_in(mode), image_format)
    assert tuple(decode(data, channels, (5, 7)).shape) == (channels, 5, 7)
    image = decode(data, channels, (HEIGHT, WIDTH))
    assert image.dtype == torch.uint8 and tuple(image.shape) == (channels, HEIGHT, WIDTH)
    # The colours of Pillow's own conversion of the same file, composited over black by
    # Pillow where it is transparent, within its rounding.
    with Image.open(io.BytesIO(data)) as picture:
        if picture.mode.startswith("I"):
            picture = Image.fromarray((np.asarray(picture) / 257).round().astype(np.uint8))
        if picture.has_transparency_data:
            rgba = picture.convert("RGBA")
            black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
            picture = Image.alpha_composite(black, rgba)
            picture.putalpha(rgba.getchannel("A"))
        reference = np.asarray(picture.convert(PILLOW_MODES[channels]), dtype=np.int64)
    reference = torch.from_numpy(reference.reshape(HEIGHT, WIDTH, channels)).permute(2, 0, 1)
    for column in (2, WIDTH - 3):  # inside each half
        found, expected = image[:, 4, column].long(), reference[:, 4, column]
        assert (found - expected).abs().max() <= 3, (column, found.tolist(), expected.tolist())


def test_16_bit_images_are_scaled_not_wrapped() -> None:
    pixels = np.array([[0, 32896, 65535]] * 2, dtype=np.uint16)
    for image_format in ("PNG", "TIFF"):
        image = decode(encoded(Image.fromarray(pixels), image_format), 1, (2, 3))
        assert image[0, 0].tolist() == [0, 128, 255], image_format


def test_animated_gif_gives_its_first_frame() -> None:
    frames = [Image.new("L", (4, 4), level) for level in (30, 220)]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:])
    assert decode(buffer.getvalue(), 1, (4, 4)).unique().tolist() == [30]


def test_exif_orientation_is_applied() -> None:
    # Stored 16 wide and 8 high, left half dark; EXIF orientation 6: shown turned a quarter
    # clockwise, 8 wide and 16 high, the dark half on top.
    stored = Image.new("L", (16, 8), 250)
    stored.paste(20, (0, 0, 8, 8))
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation
    for image_format in ("PNG", "JPEG"):
        buffer = io.BytesIO()
        stored.save(buffer, format=image_format, exif=exif, quality=95)
        image = decode(buffer.getvalue(), 1, (16, 8))
        assert image.shape == (1, 16, 8), image_format
        top, bottom = image[0, :8].float().mean(), image[0, 8:].float().mean()
        assert top < 40 and bottom > 230, image_format


def transparent(mode: str) -> Image.Image:
    """Left column fully transparent over bright red, right column half transparent."""
    rgba = np.zeros((2, 2, 4), dtype=np.uint8)
    rgba[:, 0] = (255, 0, 0, 0)
    rgba[:, 1] = (200, 100, 50, 128)
    picture = Image.fromarray(rgba)
    if mode == "P":  # a palette with one fully transparent entry
        picture = Image.fromarray(rgba[..., :3]).convert("P", palette=Image.Palette.ADAPTIVE)
        picture.info["transparency"] = picture.getpixel((0, 0))
    return picture if mode in ("RGBA", "P") else picture.convert(mode)


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P"])
def test_fully_transparent_pixels_show_no_hidden_colour(mode: str) -> None:
    data = encoded(transparent(mode))
    for channels in (1, 2, 3, 4):
        image = decode(data, channels, (2, 2))
        colour = image[: 3 if channels >= 3 else 1]
        assert colour[:, :, 0].eq(0).all(), (mode, channels)  # black, whatever was under it
        if channels in (2, 4):
            assert image[-1, :, 0].eq(0).all(), (mode, channels)  # and still transparent
    if mode == "RGBA":  # half transparent: the colour at half strength (over black)
        assert decode(data, 3, (2, 2))[:, 0, 1].tolist() == [100, 50, 25]


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
