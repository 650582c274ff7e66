"""What decoding an image may cost the ingress: the pixels it will decode are counted on the
header and capped per image and per request, decoders that hold the GIL are refused, and a
costly decode runs in a bounded pool of threads while the event loop goes on serving."""

from __future__ import annotations

import asyncio
import io

import numpy as np
import pytest
from PIL import Image

from app.preprocessing import InputError, Limits, open_image, to_model_input
from app.serving.decoding import INLINE_DECODE_PIXELS, DecodePool
from app.serving.errors import UnavailableError
from app.serving.shaped import ShapedClassifier
from benchmarks.crafted_inputs import encode, rle8_bmp

SHAPE = (3, 32, 32)


def photo(width: int, height: int, fmt: str) -> bytes:
    noise = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return encode(Image.fromarray(noise), fmt)


def test_rle_compressed_bmp_is_refused_before_any_pixel_is_decoded() -> None:
    data = rle8_bmp(64, 64)
    assert Image.open(io.BytesIO(data)).tile[0].codec_name == "bmp_rle"  # a real RLE8 file
    with pytest.raises(InputError) as caught:
        open_image(data, 32, 1, Limits())
    assert (caught.value.status, caught.value.code) == (415, "unsupported_format")
    assert "RLE" in caught.value.detail


def test_uncompressed_bmp_still_decodes() -> None:
    out = to_model_input(encode(Image.new("L", (40, 40), 200), "BMP"), 8, 1)
    assert out.shape == (1, 8, 8) and int(out.min()) == 200


def test_a_jpeg_is_capped_on_the_pixels_it_decodes_a_png_on_its_size() -> None:
    # 1600 x 1200 is over a 1 MP cap; a JPEG of it decodes at 1/8 scale for a 32 x 32 input.
    limits = Limits(max_pixels=1_000_000)
    assert to_model_input(photo(1600, 1200, "JPEG"), 32, 3, limits).shape == SHAPE
    with pytest.raises(InputError) as caught:
        to_model_input(photo(1600, 1200, "PNG"), 32, 3, limits)
    assert (caught.value.status, caught.value.code) == (413, "too_many_pixels")


def test_sixteen_bit_greys_keep_their_high_byte() -> None:
    wide = np.full((16, 16), 0xAB12, dtype=np.uint16)
    data = encode(Image.fromarray(wide), "PNG")  # mode I;16
    assert int(to_model_input(data, 8, 1).max()) == 0xAB


def classify(blobs: list[bytes], limits: Limits, pool: DecodePool | None = None) -> list[int]:
    """The images' shapes' first dimension, as a ShapedClassifier hands them to the model."""
    seen: list[int] = []

    async def lookup() -> tuple[int, int, int]:
        return SHAPE

    async def infer(request: tuple[np.ndarray, int]) -> dict[str, int]:
        seen.append(request[0].shape[0])
        return {"label": 0}

    async def run() -> None:
        await ShapedClassifier(lookup, infer, pool).classify(blobs, 1, limits, batch=True)

    asyncio.run(run())
    return seen


def test_a_request_is_capped_on_the_pixels_of_all_its_images() -> None:
    image = photo(100, 100, "PNG")  # 10 000 pixels each
    limits = Limits(max_pixels=10_000, max_request_pixels=30_000)
    assert classify([image] * 3, limits) == [3, 3, 3]
    with pytest.raises(InputError) as caught:
        classify([image] * 4, limits)
    assert (caught.value.status, caught.value.code) == (413, "too_many_pixels")
    assert "40000 pixels in all" in caught.value.detail


def test_a_bad_image_in_a_batch_is_named() -> None:
    good = photo(8, 8, "PNG")
    with pytest.raises(InputError) as caught:
        classify([good, rle8_bmp(8, 8)], Limits())
    assert caught.value.detail.startswith("files[1]: ")


def test_a_costly_decode_leaves_the_event_loop_free() -> None:
    image = open_image(photo(1024, 1024, "PNG"), 32, 3, Limits())
    pool = DecodePool(threads=1, queued_per_thread=0)

    async def scenario() -> list[str]:
        order: list[str] = []

        async def decode() -> None:
            await pool.decode(image, 32, 3)
            order.append("decoded")

        async def other_request() -> None:
            order.append("served")

        # Were the decode inline, it would finish before the loop could run anything else.
        decoding = asyncio.create_task(decode())
        await asyncio.sleep(0)  # the decode starts
        await other_request()
        await decoding
        return order

    assert asyncio.run(scenario()) == ["served", "decoded"]


def test_a_full_pool_refuses_with_503_and_takes_work_again_when_done() -> None:
    big = photo(512, 512, "PNG")
    pool = DecodePool(threads=1, queued_per_thread=1)

    async def scenario() -> None:
        images = [open_image(big, 32, 3, Limits()) for _ in range(3)]
        first = asyncio.create_task(pool.decode(images[0], 32, 3))
        second = asyncio.create_task(pool.decode(images[1], 32, 3))
        await asyncio.sleep(0)
        assert pool.room == 0
        with pytest.raises(UnavailableError):
            await pool.decode(images[2], 32, 3)
        await asyncio.gather(first, second)
        while pool.room < 2:  # the threads' done callbacks reach the loop
            await asyncio.sleep(0)
        assert (await pool.decode(images[2], 32, 3)).shape == SHAPE

    asyncio.run(scenario())


def test_small_images_decode_inline_and_never_fill_the_pool() -> None:
    side = int(INLINE_DECODE_PIXELS**0.5)
    pool = DecodePool(threads=1, queued_per_thread=0)
    small = [photo(side, side, "PNG")] * 5
    assert classify(small, Limits(), pool) == [3] * 5
    assert pool.room == 1
