"""A small client of the classifier service.

    python serve/client.py digit.png                 # classify one image
    python serve/client.py a.png b.png c.png         # one batch request, results in order
    python serve/client.py --model                   # what is served: version, alias, metrics
    python serve/client.py --write-sample digit.png  # a held-out digit to try (prints its label)
    python serve/client.py --smoke                   # post a held-out digit, exit 1 if misread

``--url`` (default ``$SERVE_URL`` or http://127.0.0.1:8000) and ``--top-k`` apply to all.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import requests

DEFAULT_URL = os.environ.get("SERVE_URL", "http://127.0.0.1:8000")


class ServeError(RuntimeError):
    """The service answered with an error: ``status`` and its JSON body."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(f"HTTP {status}: {body.get('error')}: {body.get('detail')}")
        self.status = status
        self.body = body


class ServeClient:
    def __init__(self, url: str = DEFAULT_URL, timeout: float = 30) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.session = requests.Session()

    def _json(self, response: requests.Response) -> Any:
        try:
            body = response.json()
        except ValueError:
            body = {"error": "not_json", "detail": response.text[:200]}
        if not response.ok:
            raise ServeError(response.status_code, body)
        return body

    def predict(self, image: bytes, top_k: int = 3) -> dict[str, Any]:
        """One image's prediction (the body is the raw image bytes)."""
        response = self.session.post(
            f"{self.url}/predict", data=image, params={"top_k": top_k}, timeout=self.timeout
        )
        result: dict[str, Any] = self._json(response)
        return result

    def predict_batch(self, images: Sequence[bytes], top_k: int = 3) -> list[dict[str, Any]]:
        """One prediction per image, in order, in a single multipart request."""
        files = [("files", (f"image{i}", data)) for i, data in enumerate(images)]
        response = self.session.post(
            f"{self.url}/predict/batch", files=files, params={"top_k": top_k}, timeout=self.timeout
        )
        predictions: list[dict[str, Any]] = self._json(response)["predictions"]
        return predictions

    def model(self) -> dict[str, Any]:
        info: dict[str, Any] = self._json(self.session.get(f"{self.url}/model", timeout=10))
        return info


def png_bytes(image: np.ndarray) -> bytes:
    """A uint8 (H, W) or (H, W, 3) array as PNG (lossless: the service sees these pixels)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "PNG")
    return buffer.getvalue()


def sample_digit(index: int = 0) -> tuple[bytes, str]:
    """A digit from the held-out test split of ``digits`` as PNG bytes, with its true label."""
    # Run as a script (``python serve/client.py``), sys.path has serve/ but not the repository
    # root, where the ``app`` library is.
    sys.path.append(str(Path(__file__).resolve().parent.parent))
    from app.datasets import load_splits

    splits = load_splits("digits")
    return png_bytes(splits.x_test[index, 0].numpy()), splits.info.classes[splits.y_test[index]]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("images", nargs="*", type=Path, help="image files to classify")
    parser.add_argument("--url", default=DEFAULT_URL, help="the service's base URL")
    parser.add_argument("--top-k", type=int, default=3, help="classes to rank per image")
    parser.add_argument("--model", action="store_true", help="show the served model")
    parser.add_argument("--write-sample", type=Path, help="write a held-out digit PNG here")
    parser.add_argument("--smoke", action="store_true", help="classify a held-out digit")
    parser.add_argument("--index", type=int, default=0, help="which test digit to use")
    args = parser.parse_args(argv)
    client = ServeClient(args.url)
    try:
        if args.write_sample:
            data, label = sample_digit(args.index)
            args.write_sample.write_bytes(data)
            print(f"wrote {args.write_sample}: a held-out digit, true label {label}")
        elif args.smoke:
            data, label = sample_digit(args.index)
            result = client.predict(data, args.top_k)
            model = result["model"]
            print(
                f"test digit {args.index}: true {label}, predicted {result['label']} "
                f"({result['confidence']:.3f}) by {model['name']} v{model['version']}"
            )
            return 0 if result["label"] == label else 1
        elif args.model:
            print(json.dumps(client.model(), indent=2))
        elif len(args.images) == 1:
            print(json.dumps(client.predict(args.images[0].read_bytes(), args.top_k), indent=2))
        elif args.images:
            blobs = [path.read_bytes() for path in args.images]
            print(json.dumps(client.predict_batch(blobs, args.top_k), indent=2))
        else:
            parser.error("give image files, --model, --write-sample PATH or --smoke")
    except (ServeError, requests.RequestException) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
