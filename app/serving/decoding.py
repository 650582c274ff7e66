"""Where the ingress pays for decoding an image: inline when it is small, else in a bounded pool
of threads, so that a costly image never stalls the event loop that also serves the HTTP routes
and health checks.

The cost is known before it is paid: ``open_image`` reads the header, and the pixels to decode
(``decoded_pixels``) decide. Pillow's C decoders release the GIL while they work, and
``open_image`` refuses the decoders written in Python, so a thread here cannot hold the loop.
The pool is bounded twice: a few threads, and a few queued images per thread; past that the
ingress answers 503 with Retry-After rather than queue work it cannot finish soon.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
from PIL import Image

from app.preprocessing import decode_image, decoded_pixels
from app.serving.errors import UnavailableError

# Decoding 128 x 128 pixels costs less than a hop to a thread.
INLINE_DECODE_PIXELS = 128 * 128
DECODE_THREADS = 2
QUEUED_PER_THREAD = 8


class DecodePool:
    """Decodes images checked by ``open_image``: small ones inline, others in its threads."""

    def __init__(
        self, threads: int = DECODE_THREADS, queued_per_thread: int = QUEUED_PER_THREAD
    ) -> None:
        self._executor = ThreadPoolExecutor(threads, thread_name_prefix="decode")
        self._room = threads * (1 + queued_per_thread)

    @property
    def room(self) -> int:
        """How many more images the pool takes before it refuses."""
        return self._room

    async def decode(self, image: Image.Image, image_size: int, channels: int) -> np.ndarray:
        if decoded_pixels(image) <= INLINE_DECODE_PIXELS:
            return decode_image(image, image_size, channels)
        if self._room <= 0:
            raise UnavailableError("too many images are being decoded")
        loop = asyncio.get_running_loop()
        self._room -= 1
        work = self._executor.submit(decode_image, image, image_size, channels)

        def release(_: Future[np.ndarray]) -> None:
            # When the thread is done, not when the request is: a client that hangs up does not
            # stop the decode it started, so it must not free its place early.
            loop.call_soon_threadsafe(self._release)

        work.add_done_callback(release)
        return await asyncio.wrap_future(work)

    def _release(self) -> None:
        self._room += 1
