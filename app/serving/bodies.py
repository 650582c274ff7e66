"""Request bodies, bounded: raw image bytes or multipart files, refused with a 4xx as soon as
they pass their cap, or as soon as they arrive slower than a minimum rate (a client trickling
its upload would otherwise hold one of the ingress's few request slots for as long as it likes).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator

from fastapi import Request
from starlette.datastructures import Headers, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from app.preprocessing import InputError
from app.serving.settings import ApiSettings, BodyPace

# Room for multipart boundaries and part headers around one image.
MULTIPART_SLACK = 64 * 1024
# Text fields a multipart body may carry beside its files.
MAX_FORM_FIELDS = 16


async def read_body(request: Request, cap: int, pace: BodyPace) -> bytes:
    """The request body, refused with 413 as soon as it passes ``cap`` bytes and with 408 as
    soon as it falls behind ``pace``."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > cap:
        raise InputError(413, "too_large", f"{declared} bytes; the limit is {cap} bytes")
    chunks: list[bytes] = []
    size = 0
    stream = request.stream().__aiter__()
    loop = asyncio.get_running_loop()
    started = loop.time()
    while True:
        wait = pace.deadline(started, size) - loop.time()
        try:
            chunk = await asyncio.wait_for(anext(stream), max(wait, 0))
        except StopAsyncIteration:
            return b"".join(chunks)
        except TimeoutError:
            raise InputError(
                408,
                "body_too_slow",
                f"{size} bytes in {loop.time() - started:.0f} s; send the body at "
                f"{pace.min_bytes_per_s} bytes/s or faster",
            ) from None
        size += len(chunk)
        if size > cap:
            raise InputError(413, "too_large", f"more than {cap} bytes; the limit is {cap}")
        chunks.append(chunk)


async def read_files(headers: Headers, body: bytes, field: str, max_files: int) -> list[bytes]:
    """The file parts named ``field`` of a multipart body already read (and capped)."""

    async def replay() -> AsyncGenerator[bytes, None]:
        yield body

    parser = MultiPartParser(headers, replay(), max_files=max_files, max_fields=MAX_FORM_FIELDS)
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        # Starlette's only signal for "max_files exceeded" is this message.
        if exc.message.startswith("Too many files"):
            raise InputError(
                413, "too_many_files", f"more than {max_files} files; the limit is {max_files}"
            ) from exc
        raise InputError(400, "malformed_multipart", exc.message) from exc
    uploads = form.getlist(field)
    if not uploads:
        raise InputError(400, "missing_file", f"multipart body has no {field!r} file field")
    files = [upload for upload in uploads if isinstance(upload, UploadFile)]
    if len(files) != len(uploads):
        raise InputError(400, "missing_file", f"{field!r} must be a file, not a text field")
    return [await upload.read() for upload in files]


def is_multipart(request: Request) -> bool:
    return request.headers.get("content-type", "").lower().startswith("multipart/form-data")


async def read_image(request: Request, settings: ApiSettings) -> bytes:
    """``POST /predict``'s one image: the raw body, or the multipart field ``file``."""
    if not is_multipart(request):
        return await read_body(request, settings.max_image_bytes, settings.body_pace)
    body = await read_body(request, settings.max_image_bytes + MULTIPART_SLACK, settings.body_pace)
    (image,) = await read_files(request.headers, body, "file", 1)
    return image


async def read_images(request: Request, settings: ApiSettings) -> list[bytes]:
    """``POST /predict/batch``'s images: the multipart fields ``files``, in order."""
    if not is_multipart(request):
        raise InputError(400, "malformed_multipart", "send multipart/form-data with `files`")
    body = await read_body(request, settings.max_batch_bytes, settings.body_pace)
    return await read_files(request.headers, body, "files", settings.max_batch_images)
