"""The ingress's bounded body readers and JSON error bodies, over real HTTP: a small FastAPI app
built from app.serving's pieces, served by uvicorn in a thread, called with requests."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import requests
import uvicorn
from fastapi import FastAPI, Request

from app.serving.bodies import MULTIPART_SLACK, read_image, read_images
from app.serving.errors import UnavailableError, install_error_handlers
from app.serving.schemas import TOP_K
from app.serving.settings import ApiSettings
from tests.support import wait_for

SETTINGS = ApiSettings(
    max_image_bytes=2048,
    max_batch_bytes=4096,
    max_batch_images=3,
    body_grace_s=0.5,
    min_body_bytes_per_s=1000,
)


@contextmanager
def serving(api: FastAPI) -> Iterator[str]:
    """``api`` on a free local port; its base URL."""
    config = uvicorn.Config(api, host="127.0.0.1", port=0, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started, 30, "the uvicorn test server", interval=0.02)
        port = server.servers[0].sockets[0].getsockname()[1]
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)


def reader_app(rejected: list[str]) -> FastAPI:
    """The readers as the ingress routes call them; each answers the sizes it read. The error
    codes of rejected inputs are appended to ``rejected``."""
    api = FastAPI()
    install_error_handlers(api, rejected.append)

    @api.post("/predict")
    async def predict(request: Request, top_k: int = TOP_K) -> dict[str, Any]:
        return {"sizes": [len(await read_image(request, SETTINGS))], "top_k": top_k}

    @api.post("/predict/batch")
    async def predict_batch(request: Request) -> dict[str, Any]:
        return {"sizes": [len(blob) for blob in await read_images(request, SETTINGS)]}

    @api.get("/unavailable")
    async def unavailable() -> None:
        raise UnavailableError("the served model is changing")

    return api


@pytest.fixture(scope="module")
def rejected() -> list[str]:
    return []


@pytest.fixture(scope="module")
def url(rejected: list[str]) -> Iterator[str]:
    with serving(reader_app(rejected)) as base:
        yield base


def error_of(response: requests.Response, status: int) -> str:
    """The JSON error body's code, after checking its form."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["status"] == status and body["detail"]
    code: str = body["error"]
    return code


def multipart(boundary: str, body: bytes) -> dict[str, Any]:
    return {"data": body, "headers": {"Content-Type": f"multipart/form-data; boundary={boundary}"}}


def test_raw_and_multipart_images_up_to_the_cap_are_read_whole(url: str) -> None:
    cap = SETTINGS.max_image_bytes
    raw = requests.post(f"{url}/predict", data=bytes(cap), timeout=10)
    assert raw.json()["sizes"] == [cap]
    one_file = requests.post(f"{url}/predict", files={"file": ("a.png", bytes(cap))}, timeout=10)
    assert one_file.json()["sizes"] == [cap]


def test_an_image_over_the_cap_is_413(url: str) -> None:
    cap = SETTINGS.max_image_bytes
    declared = requests.post(f"{url}/predict", data=bytes(cap + 1), timeout=10)
    assert error_of(declared, 413) == "too_large"
    # No Content-Length (chunked): refused while streaming, at the first byte past the cap.
    chunked = requests.post(f"{url}/predict", data=iter([bytes(cap), b"x"]), timeout=10)
    assert "Content-Length" not in chunked.request.headers
    assert error_of(chunked, 413) == "too_large"
    # Multipart gets room for its headers, not for a bigger image.
    big = bytes(cap + MULTIPART_SLACK)
    over = requests.post(f"{url}/predict", files={"file": ("a.png", big)}, timeout=10)
    assert error_of(over, 413) == "too_large"


def test_a_batch_over_its_byte_cap_is_413_though_each_image_fits(url: str) -> None:
    small = [("files", (f"{i}.png", bytes(1000))) for i in range(SETTINGS.max_batch_images)]
    response = requests.post(f"{url}/predict/batch", files=small, timeout=10)
    assert response.json()["sizes"] == [1000] * SETTINGS.max_batch_images
    # Two images at the per-image cap: within the file count, over the batch's bytes.
    image = bytes(SETTINGS.max_image_bytes)
    assert 2 * len(image) >= SETTINGS.max_batch_bytes
    files = [("files", (f"{i}.png", image)) for i in range(2)]
    response = requests.post(f"{url}/predict/batch", files=files, timeout=10)
    assert error_of(response, 413) == "too_large"


def test_too_many_files_is_413(url: str) -> None:
    files = [("files", (f"{i}.png", b"x")) for i in range(SETTINGS.max_batch_images + 1)]
    response = requests.post(f"{url}/predict/batch", files=files, timeout=10)
    assert error_of(response, 413) == "too_many_files"
    two = [("file", ("a.png", b"x")), ("file", ("b.png", b"y"))]
    assert error_of(requests.post(f"{url}/predict", files=two, timeout=10), 413) == (
        "too_many_files"
    )


def test_batch_files_keep_their_order(url: str) -> None:
    files = [("files", (f"{i}.png", bytes(i + 1))) for i in range(3)]
    assert requests.post(f"{url}/predict/batch", files=files, timeout=10).json()["sizes"] == [
        1,
        2,
        3,
    ]


MALFORMED: dict[str, tuple[str, dict[str, Any], str]] = {
    "no boundary": (
        "/predict",
        {"data": b"abc", "headers": {"Content-Type": "multipart/form-data"}},
        "malformed_multipart",
    ),
    "garbage": ("/predict", multipart("xyz", b"\x00\x01 garbage --xyz--"), "malformed_multipart"),
    "batch not multipart": ("/predict/batch", {"data": b"abc"}, "malformed_multipart"),
    "no file field": ("/predict", {"files": {"image": ("a.png", b"x")}}, "missing_file"),
    "batch without files": ("/predict/batch", {"files": {"file": ("a", b"x")}}, "missing_file"),
    "file field as text": (
        "/predict",
        {"data": {"file": "not a file"}, "files": {"x": ("x", b"")}},
        "missing_file",
    ),
}


@pytest.mark.parametrize(("route", "request_args", "code"), MALFORMED.values(), ids=list(MALFORMED))
def test_malformed_multipart_is_400(
    url: str, route: str, request_args: dict[str, Any], code: str
) -> None:
    response = requests.post(f"{url}{route}", timeout=10, **request_args)
    assert error_of(response, 400) == code


def test_other_errors_are_json_too(url: str) -> None:
    invalid = requests.post(f"{url}/predict", data=b"x", params={"top_k": 0}, timeout=10)
    assert error_of(invalid, 422) == "invalid_parameter"
    assert error_of(requests.get(f"{url}/nowhere", timeout=10), 404) == "not_found"
    unavailable = requests.get(f"{url}/unavailable", timeout=10)
    assert error_of(unavailable, 503) == "unavailable"
    assert unavailable.headers["Retry-After"] == "1"


def test_rejected_inputs_are_counted_by_code(url: str, rejected: list[str]) -> None:
    before = len(rejected)
    requests.post(f"{url}/predict", data=bytes(SETTINGS.max_image_bytes + 1), timeout=10)
    requests.post(f"{url}/predict", data=b"x", params={"top_k": 0}, timeout=10)
    requests.get(f"{url}/nowhere", timeout=10)  # not an input the client sent wrong
    assert rejected[before:] == ["too_large", "invalid_parameter"]


@pytest.mark.parametrize("path", ["/predict", "/predict/batch"])
def test_a_body_that_trickles_in_is_cut_off_with_408(url: str, path: str) -> None:
    """A client that sends its headers and a few bytes, then waits: the ingress answers 408
    once the body falls behind the minimum rate, instead of holding the request open."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as client:
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 2000\r\n"
            "Content-Type: multipart/form-data; boundary=b\r\n\r\n"
        )
        client.sendall(head.encode() + b"--b\r\n")
        answer = client.recv(4096).decode()  # no more bytes come from this client
    status_line, _, rest = answer.partition("\r\n")
    assert status_line.split()[1] == "408", answer
    assert '"error":"body_too_slow"' in rest
