"""Image bytes -> model input: conversions match the training data, every bad input is a typed
error with its HTTP status, and no random input gets anything else out."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from app.datasets import load_splits
from app.preprocessing import InputError, Limits, to_model_input

CLIENT_ERRORS = {400, 413, 415, 422}


def encode(image: Image.Image, fmt: str = "PNG", **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A valid PNG signature and IHDR claiming width x height, with one tiny IDAT: a bomb's
    header without the bomb."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def error_of(data: bytes, size: int = 8, channels: int = 1, **limits: int) -> InputError:
    with pytest.raises(InputError) as caught:
        to_model_input(data, size, channels, Limits(**limits))
    return caught.value


@pytest.fixture(scope="module")
def digit() -> np.ndarray:
    """A held-out digit as the model saw it in training: uint8 (8, 8)."""
    return load_splits("digits").x_test[0, 0].numpy()


# ---------------------------------------------------------------------------------------------
# Conversions


def test_a_digit_png_round_trips_exactly(digit: np.ndarray) -> None:
    out = to_model_input(encode(Image.fromarray(digit)), 8, 1)
    assert out.dtype == np.uint8 and out.shape == (1, 8, 8)
    assert np.array_equal(out[0], digit)


def test_downscaling_averages_areas_like_the_digits_data(digit: np.ndarray) -> None:
    # scikit-learn made each 8x8 digit by averaging 4x4 blocks of a 32x32 bitmap: a 4x
    # upscaled digit must come back exactly.
    big = Image.fromarray(digit).resize((32, 32), Image.Resampling.NEAREST)
    assert np.array_equal(to_model_input(encode(big), 8, 1)[0], digit)


def test_colour_becomes_luma_and_grey_becomes_three_channels() -> None:
    red = encode(Image.new("RGB", (8, 8), (255, 0, 0)))
    assert np.all(to_model_input(red, 8, 1) == 76)  # ITU-R 601: 0.299 * 255
    grey = encode(Image.new("L", (4, 4), 200))
    out = to_model_input(grey, 4, 3)
    assert out.shape == (3, 4, 4) and np.all(out == 200)


def test_rgb_comes_out_channels_first() -> None:
    pixels = np.zeros((4, 4, 3), dtype=np.uint8)
    pixels[..., 2] = 255  # blue
    out = to_model_input(encode(Image.fromarray(pixels)), 4, 3)
    assert out[2].min() == 255 and out[:2].max() == 0


def test_transparency_is_composited_over_black() -> None:
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[..., :3] = 255  # white everywhere, but only the left half opaque
    rgba[:, :2, 3] = 255
    out = to_model_input(encode(Image.fromarray(rgba, "RGBA")), 4, 1)[0]
    assert np.all(out[:, :2] == 255) and np.all(out[:, 2:] == 0)


def test_sixteen_bit_png_is_scaled_not_clipped() -> None:
    wide = np.full((4, 4), 32768, dtype=np.uint16)
    wide[0, 0] = 65535
    out = to_model_input(encode(Image.fromarray(wide)), 4, 1)[0]
    assert out[0, 0] == 255 and out[1, 1] == 128


def test_non_square_images_are_centre_cropped() -> None:
    wide = np.zeros((8, 24), dtype=np.uint8)
    wide[:, 8:16] = 255  # the centre square is white, the sides black
    assert np.all(to_model_input(encode(Image.fromarray(wide)), 8, 1) == 255)


def test_exif_rotation_is_applied() -> None:
    pixels = np.zeros((8, 16), dtype=np.uint8)
    pixels[:, :8] = 255  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: display rotated 90 degrees clockwise
    out = to_model_input(encode(Image.fromarray(pixels), exif=exif), 8, 1)[0]
    # Rotated clockwise the left half becomes the top: the centre crop is top-white.
    assert out[0].min() == 255 and out[-1].max() == 0


@pytest.mark.parametrize(("fmt", "options"), [("JPEG", {"quality": 95}), ("WEBP", {}), ("BMP", {})])
def test_every_supported_format_decodes(fmt: str, options: dict[str, object]) -> None:
    photo = np.zeros((64, 64, 3), dtype=np.uint8)
    photo[16:48, 16:48] = (40, 200, 90)
    out = to_model_input(encode(Image.fromarray(photo), fmt, **options), 8, 3)
    assert out.shape == (3, 8, 8)
    assert abs(int(out[1, 4, 4]) - 200) <= 8 and out[1, 0, 0] <= 8


def test_a_large_jpeg_decodes_at_reduced_scale_quickly() -> None:
    rng = np.random.default_rng(0)
    photo = rng.integers(0, 256, (2000, 3000, 3), dtype=np.uint8)
    out = to_model_input(encode(Image.fromarray(photo), "JPEG"), 32, 3)
    assert out.shape == (3, 32, 32)
    assert 100 < out.mean() < 155  # area averages of uniform noise sit near 127


# ---------------------------------------------------------------------------------------------
# Rejections


def test_empty_input_is_400() -> None:
    assert (error_of(b"").status, error_of(b"").code) == (400, "empty_input")


def test_bytes_over_the_cap_are_413_before_parsing() -> None:
    err = error_of(b"\x89PNG" + b"\0" * 100, max_bytes=50)
    assert (err.status, err.code) == (413, "too_large")


def test_pixel_cap_is_checked_on_the_header_before_decoding() -> None:
    # The pixels are missing: decoding would be a 422; the header check must answer first.
    err = error_of(png_header_only(1000, 1000), max_pixels=999_999)
    assert (err.status, err.code) == (413, "too_many_pixels")
    assert "1000x1000" in err.detail


def test_a_decompression_bomb_past_pillows_own_limit_is_413() -> None:
    err = error_of(png_header_only(20_000, 20_000), max_pixels=10**12)
    assert (err.status, err.code) == (413, "too_many_pixels")


def test_default_pixel_cap_is_well_below_pillows() -> None:
    assert Limits().max_pixels * 4 < (Image.MAX_IMAGE_PIXELS or 0)
    assert error_of(png_header_only(2049, 2048)).status == 413


@pytest.mark.parametrize(
    ("fmt", "name"), [("GIF", "GIF"), ("TIFF", "TIFF"), ("PDF", "PDF"), ("ICO", "ICO")]
)
def test_unsupported_formats_are_415_naming_the_format(fmt: str, name: str) -> None:
    err = error_of(encode(Image.new("RGB", (16, 16)), fmt))
    assert (err.status, err.code) == (415, "unsupported_format")
    assert err.detail.startswith(name)


def test_non_image_bytes_are_415() -> None:
    err = error_of(b'{"image": "not really"}')
    assert (err.status, err.code) == (415, "unsupported_format")


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "BMP"])
def test_truncated_images_are_422(fmt: str) -> None:
    noise = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    data = encode(Image.fromarray(noise), fmt)
    err = error_of(data[: len(data) // 2], 8, 3)
    assert (err.status, err.code) == (422, "corrupt_image")


def test_error_body_is_json_ready() -> None:
    assert InputError(415, "unsupported_format", "GIF").to_json() == {
        "error": "unsupported_format",
        "status": 415,
        "detail": "GIF",
    }


# ---------------------------------------------------------------------------------------------
# Properties: nothing but a valid array or an expected InputError ever comes out

SIGNATURES = [b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"RIFF\0\0\0\0WEBPVP8 ", b"BM", b"GIF89a"]
SAVE_MODES = {
    "PNG": ["1", "L", "LA", "P", "RGB", "RGBA", "I;16"],
    "JPEG": ["L", "RGB", "CMYK"],
    "WEBP": ["L", "RGB", "RGBA"],
    "BMP": ["1", "L", "RGB"],
}
targets = st.tuples(st.sampled_from([1, 8, 28, 32]), st.sampled_from([1, 3]))
PROPERTY_SETTINGS = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


def check_outcome(data: bytes, size: int, channels: int) -> np.ndarray | None:
    try:
        out = to_model_input(data, size, channels, Limits(max_bytes=1 << 16, max_pixels=1 << 16))
    except InputError as err:
        assert err.status in CLIENT_ERRORS and err.code and err.detail
        return None
    assert out.dtype == np.uint8 and out.shape == (channels, size, size)
    return out


@PROPERTY_SETTINGS
@given(
    prefix=st.sampled_from([b"", *SIGNATURES]),
    body=st.binary(max_size=2048),
    target=targets,
)
def test_random_bytes_give_an_array_or_a_client_error(
    prefix: bytes, body: bytes, target: tuple[int, int]
) -> None:
    check_outcome(prefix + body, *target)


@st.composite
def encoded_images(draw: st.DrawFn) -> bytes:
    fmt = draw(st.sampled_from(sorted(SAVE_MODES)))
    mode = draw(st.sampled_from(SAVE_MODES[fmt]))
    width, height = draw(st.integers(1, 40)), draw(st.integers(1, 40))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    rgba = Image.fromarray(rng.integers(0, 256, (height, width, 4), dtype=np.uint8), "RGBA")
    if mode == "I;16":
        image = Image.fromarray(rng.integers(0, 65536, (height, width), dtype=np.uint16))
    elif mode == "P":
        image = rgba.convert("RGB").quantize(16)
    else:
        image = rgba.convert(mode)
    return encode(image, fmt)


@PROPERTY_SETTINGS
@given(encoded=encoded_images(), target=targets)
def test_random_images_in_every_mode_and_format_decode(
    encoded: bytes, target: tuple[int, int]
) -> None:
    assert check_outcome(encoded, *target) is not None


@PROPERTY_SETTINGS
@given(encoded=encoded_images(), cut=st.floats(0, 1, exclude_max=True), target=targets)
def test_cut_or_corrupted_images_give_an_array_or_a_client_error(
    encoded: bytes, cut: float, target: tuple[int, int]
) -> None:
    data = encoded
    check_outcome(data[: int(len(data) * cut)], *target)
    flipped = bytearray(data)
    flipped[int(len(data) * cut)] ^= 0xFF
    check_outcome(bytes(flipped), *target)
