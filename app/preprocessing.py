"""Untrusted image bytes -> the uint8 array a ``Predictor`` takes, or a typed ``InputError``.

Bounded at every step: a byte cap before anything is parsed, a pixel cap checked on the header
before any pixel is decoded (on the pixels that will be decoded: a JPEG decodes at 1/8 scale when
that still covers the model's input), an allow-list of decoders (PNG, JPEG, WebP, BMP), so no other
Pillow plugin ever parses client bytes, and no decoder written in Python (Pillow decodes
RLE-compressed BMP in Python, holding the GIL for seconds on a crafted 8 MB file).

Two steps, so that a server can decide where to pay for the second: ``open_image`` reads and
checks the header (cheap), ``decode_image`` decodes the pixels (the cost, about proportional to
``decoded_pixels``).

Preprocessing matches the training data: any mode becomes the model's channels (L or RGB), the
picture is centre-cropped to a square and resized to the spec's ``image_size`` with area
averaging (how scikit-learn made the 8x8 digits from 32x32 bitmaps). The result is laid out
(C, H, W) like the training tensors; normalisation stays in ``Predictor.predict_proba``.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

SUPPORTED_FORMATS = ("PNG", "JPEG", "WEBP", "BMP")
# Images decode to grey (L) or RGB: the channels a model may take.
SUPPORTED_CHANNELS = (1, 3)
DEFAULT_MAX_BYTES = 8 * 1024 * 1024
# 2048 x 2048 decoded pixels: the models served take 32 x 32 at most, a phone's 12 MP JPEG decodes
# at 1/8 scale within it, and decoding it costs at most 12 MiB of RGB.
DEFAULT_MAX_PIXELS = 2048 * 2048
# What one request may decode in all (a batch of images): four images at the cap.
DEFAULT_MAX_REQUEST_PIXELS = 4 * DEFAULT_MAX_PIXELS
# Signatures of formats we recognise but do not decode, so the client hears what it sent.
_UNSUPPORTED_SIGNATURES = (
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"%PDF", "PDF"),
    (b"8BPS", "PSD"),
    (b"\x00\x00\x01\x00", "ICO"),
    (b"<svg", "SVG"),
    (b"<?xml", "SVG/XML"),
)
_HIGH_BIT_DEPTH_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


class InputError(ValueError):
    """A request the client must fix: carries the HTTP status and a stable error code."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail

    def to_json(self) -> dict[str, str | int]:
        return {"error": self.code, "status": self.status, "detail": self.detail}


@dataclass(frozen=True)
class Limits:
    max_bytes: int = DEFAULT_MAX_BYTES
    max_pixels: int = DEFAULT_MAX_PIXELS  # per image
    max_request_pixels: int = DEFAULT_MAX_REQUEST_PIXELS  # per request, over all its images


def _sniff_unsupported(data: bytes) -> str | None:
    head = data[:16].lstrip()
    for signature, name in _UNSUPPORTED_SIGNATURES:
        if head.startswith(signature):
            return name
    if data[4:8] == b"ftyp":  # ISO media: HEIC, AVIF
        return "HEIF/AVIF"
    return None


def _open(data: bytes) -> ImageFile.ImageFile:
    """Parse the header only: Pillow decodes pixels lazily."""
    try:
        return Image.open(io.BytesIO(data), formats=SUPPORTED_FORMATS)
    except Image.DecompressionBombError as exc:
        raise InputError(413, "too_many_pixels", str(exc)) from exc
    except UnidentifiedImageError as exc:
        found = _sniff_unsupported(data)
        what = f"{found} images are not supported" if found else "not a recognised image"
        raise InputError(
            415, "unsupported_format", f"{what}: send {', '.join(SUPPORTED_FORMATS)}"
        ) from exc
    except Exception as exc:  # Pillow's header parsers raise many types on malformed input
        raise InputError(422, "corrupt_image", f"unreadable image header: {exc}") from exc


def _refuse_python_decoders(image: ImageFile.ImageFile) -> None:
    """Pillow's decoders written in Python (registered in ``Image.DECODERS``; its C decoders
    are not) hold the GIL while they run, so no thread can bound their cost."""
    slow = {tile.codec_name for tile in image.tile} & set(Image.DECODERS)
    if slow:
        compressed = " (RLE-compressed)" if image.format == "BMP" else ""
        raise InputError(
            415,
            "unsupported_format",
            f"{image.format}{compressed} images of this encoding ({', '.join(sorted(slow))}) are "
            f"not supported: send PNG, JPEG, WebP or uncompressed BMP",
        )


def open_image(data: bytes, image_size: int, channels: int, limits: Limits) -> Image.Image:
    """Check ``data`` up to its header: its bytes, its format and decoder, and the pixels that
    decoding it for a (channels, image_size, image_size) input will cost. Returns the image,
    its pixels not yet decoded.

    Raises ``InputError``: 400 empty, 413 too many bytes or pixels, 415 not a supported format,
    422 an unreadable header."""
    if channels not in SUPPORTED_CHANNELS:
        raise ValueError(f"models take {SUPPORTED_CHANNELS} channels, not {channels}")
    if not data:
        raise InputError(400, "empty_input", "the request carries no image bytes")
    if len(data) > limits.max_bytes:
        raise InputError(
            413, "too_large", f"{len(data)} bytes; the limit is {limits.max_bytes} bytes"
        )
    image = _open(data)
    _refuse_python_decoders(image)
    width, height = image.size
    if width < 1 or height < 1:
        raise InputError(422, "corrupt_image", f"image has no pixels ({width}x{height})")
    try:
        # JPEG only: decode at 1/2, 1/4 or 1/8 scale when that still covers the target size,
        # which makes a large photo cheap to decode.
        image.draft("L" if channels == 1 else "RGB", (image_size, image_size))
    except Exception as exc:
        raise InputError(422, "corrupt_image", f"unreadable image header: {exc}") from exc
    if decoded_pixels(image) > limits.max_pixels:
        scaled = (
            f" (decoded at {image.size[0]}x{image.size[1]})"
            if image.size != (width, height)
            else ""
        )
        raise InputError(
            413,
            "too_many_pixels",
            f"{width}x{height}{scaled} is {decoded_pixels(image)} pixels; the limit is "
            f"{limits.max_pixels}",
        )
    return image


def decoded_pixels(image: Image.Image) -> int:
    width, height = image.size
    return width * height


def _to_mode(image: Image.Image, mode: str) -> Image.Image:
    """Any decoded mode -> L or RGB: 16-bit scaled down, transparency composited over black
    (the background of the digits data), palettes and CMYK converted by Pillow."""
    if image.mode in _HIGH_BIT_DEPTH_MODES:
        wide = np.asarray(image)  # uint16 (I;16*) or int32 (I): no wider copy than needed
        if wide.dtype.kind == "i":
            wide = np.clip(wide, 0, 65535)
        image = Image.fromarray((wide >> 8).astype(np.uint8), "L")
    if image.has_transparency_data:
        black = Image.new("RGBA", image.size, (0, 0, 0, 255))
        image = Image.alpha_composite(black, image.convert("RGBA"))
    return image if image.mode == mode else image.convert(mode)


def decode_image(image: Image.Image, image_size: int, channels: int) -> np.ndarray:
    """Decode an image ``open_image`` checked into a uint8 (channels, image_size, image_size)
    array. Raises ``InputError`` 422 when the pixel data is truncated or corrupt."""
    mode = "L" if channels == 1 else "RGB"
    try:
        image = ImageOps.exif_transpose(image)  # loads the pixels; honours camera rotation
        image = _to_mode(image, mode)
    except Exception as exc:  # truncated data and decoder errors come in many types
        raise InputError(422, "corrupt_image", f"cannot decode the image: {exc}") from exc
    shrinking = min(image.size) >= image_size
    resample = Image.Resampling.BOX if shrinking else Image.Resampling.BILINEAR
    image = ImageOps.fit(image, (image_size, image_size), method=resample)
    array = np.asarray(image, dtype=np.uint8)
    return array[None] if channels == 1 else np.ascontiguousarray(array.transpose(2, 0, 1))


def to_model_input(
    data: bytes, image_size: int, channels: int, limits: Limits | None = None
) -> np.ndarray:
    """Decode ``data`` into a uint8 (channels, image_size, image_size) array.

    Raises ``InputError``: 400 empty, 413 too many bytes or pixels, 415 not a supported format,
    422 truncated or corrupt."""
    image = open_image(data, image_size, channels, limits or Limits())
    return decode_image(image, image_size, channels)
