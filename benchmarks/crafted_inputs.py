"""Inputs built to hurt the inference service, for benchmarks/serve_load.py and the tests: each
is small on the wire and costly (or refused) when decoded."""

from __future__ import annotations

import io
import struct

import numpy as np
from PIL import Image


def encode(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


def rle8_bmp(width: int, height: int) -> bytes:
    """A valid BMP with BI_RLE8 compression (Pillow decodes it in Python): every row one run."""
    assert 1 <= width <= 255, "one run per row"
    rows = b"".join(bytes([width, 7]) + b"\x00\x00" for _ in range(height)) + b"\x00\x01"
    palette = b"".join(bytes([i, i, i, 0]) for i in range(256))
    offset = 14 + 40 + len(palette)
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 8, 1, len(rows), 0, 0, 256, 0)
    header = b"BM" + struct.pack("<IHHI", offset + len(rows), 0, 0, offset)
    return header + info + palette + rows


def sixteen_bit_png(side: int) -> bytes:
    """A flat 16-bit grey PNG: a few KB that decode to side x side x 2 bytes."""
    return encode(Image.fromarray(np.full((side, side), 0x1234, dtype=np.uint16)), "PNG")


def flat_webp(side: int) -> bytes:
    """A flat colour WebP: well under a KB that decodes to side x side x 3 bytes."""
    return encode(Image.new("RGB", (side, side), (90, 30, 200)), "WEBP")


def hostile_bodies(side: int = 2048) -> list[bytes]:
    """One of each: the costly decodes at the default pixel cap, and one the service refuses."""
    return [sixteen_bit_png(side), flat_webp(side), rle8_bmp(255, 255)]
