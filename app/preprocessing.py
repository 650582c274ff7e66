"""Untrusted image bytes -> the uint8 array a ``Predictor`` takes, or a typed ``InputError``.

Bounded at every step: a byte cap before anything is parsed, a pixel cap checked on the header
before any pixel is decoded (well below Pillow's own decompression-bomb limit), and an allow-list
of decoders (PNG, JPEG, WebP, BMP), so no other Pillow plugin ever parses client bytes.

Preprocessing matches the training data: any mode becomes the model's channels (L or RGB), the
picture is centre-cropped to a square and resized to the spec's ``image_size`` with area
averaging (how scikit-learn made the 8x8 digits from 32x32 bitmaps). The result is laid out
(C, H, W) like the training tensors; normalisation stays in ``Predictor.predict_proba``.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

SUPPORTED_FORMATS = ("PNG", "JPEG", "WEBP", "BMP")
# Images decode to grey (L) or RGB: the channels a model may take.
SUPPORTED_CHANNELS = (1, 3)
DEFAULT_MAX_BYTES = 8 * 1024 * 1024
# 4096 x 4096: a fifth of Pillow's warning threshold (~89.5 MP) and far above what a classifier
# of small images needs; decoding it costs at most 48 MiB of RGB.
DEFAULT_MAX_PIXELS = 4096 * 4096
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
    max_pixels: int = DEFAULT_MAX_PIXELS


def _sniff_unsupported(data: bytes) -> str | None:
    head = data[:16].lstrip()
    for signature, name in _UNSUPPORTED_SIGNATURES:
        if head.startswith(signature):
            return name
    if data[4:8] == b"ftyp":  # ISO media: HEIC, AVIF
        return "HEIF/AVIF"
    return None


def _open(data: bytes, limits: Limits) -> Image.Image:
    """Parse the header only (Pillow decodes pixels lazily) and enforce the pixel cap."""
    try:
        image = Image.open(io.BytesIO(data), formats=SUPPORTED_FORMATS)
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
    width, height = image.size
    if width * height > limits.max_pixels:
        raise InputError(
            413,
            "too_many_pixels",
            f"{width}x{height} is {width * height} pixels; the limit is {limits.max_pixels}",
        )
    if width < 1 or height < 1:
        raise InputError(422, "corrupt_image", f"image has no pixels ({width}x{height})")
    return image


def _to_mode(image: Image.Image, mode: str) -> Image.Image:
    """Any decoded mode -> L or RGB: 16-bit scaled down, transparency composited over black
    (the background of the digits data), palettes and CMYK converted by Pillow."""
    if image.mode in _HIGH_BIT_DEPTH_MODES:
        wide = np.asarray(image, dtype=np.int64)
        image = Image.fromarray((np.clip(wide, 0, 65535) >> 8).astype(np.uint8), "L")
    if image.has_transparency_data:
        black = Image.new("RGBA", image.size, (0, 0, 0, 255))
        image = Image.alpha_composite(black, image.convert("RGBA"))
    return image if image.mode == mode else image.convert(mode)


def to_model_input(
    data: bytes, image_size: int, channels: int, limits: Limits | None = None
) -> np.ndarray:
    """Decode ``data`` into a uint8 (channels, image_size, image_size) array.

    Raises ``InputError``: 400 empty, 413 too many bytes or pixels, 415 not a supported format,
    422 truncated or corrupt."""
    limits = limits or Limits()
    if channels not in SUPPORTED_CHANNELS:
        raise ValueError(f"models take {SUPPORTED_CHANNELS} channels, not {channels}")
    if not data:
        raise InputError(400, "empty_input", "the request carries no image bytes")
    if len(data) > limits.max_bytes:
        raise InputError(
            413, "too_large", f"{len(data)} bytes; the limit is {limits.max_bytes} bytes"
        )
    image = _open(data, limits)
    mode = "L" if channels == 1 else "RGB"
    try:
        # JPEG only: decode at 1/2, 1/4 or 1/8 scale when that still covers the target size,
        # which makes a large photo cheap to decode.
        image.draft(mode, (image_size, image_size))
        image = ImageOps.exif_transpose(image)  # loads the pixels; honours camera rotation
        image = _to_mode(image, mode)
    except Exception as exc:  # truncated data and decoder errors come in many types
        raise InputError(422, "corrupt_image", f"cannot decode the image: {exc}") from exc
    shrinking = min(image.size) >= image_size
    resample = Image.Resampling.BOX if shrinking else Image.Resampling.BILINEAR
    image = ImageOps.fit(image, (image_size, image_size), method=resample)
    array = np.asarray(image, dtype=np.uint8)
    return array[None] if channels == 1 else np.ascontiguousarray(array.transpose(2, 0, 1))
