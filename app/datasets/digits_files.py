"""scikit-learn's digits written as image files in class folders: the "own images" example.

``write_digits_images(root)`` writes every digit (or ``limit_per_class`` of each), upscaled to
``size`` x ``size`` grey images, into ``root/zero`` .. ``root/nine``: class names that are not
just digits, so a model trained on them shows its names come from the folders. Formats
alternate (PNG, JPEG by default), so the reader is exercised on more than one decoder.

    python -m app.datasets.digits_files DIR [--size 32] [--limit-per-class N]
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import numpy as np

DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
_EXTENSIONS = {"png": "png", "jpeg": "jpg", "jpg": "jpg", "webp": "webp", "bmp": "bmp"}
_PIL_FORMATS = {"png": "PNG", "jpg": "JPEG", "webp": "WEBP", "bmp": "BMP"}


def write_digits_images(
    root: Path,
    size: int = 32,
    formats: Sequence[str] = ("png", "jpeg"),
    limit_per_class: int | None = None,
) -> list[Path]:
    """Write the digits as ``size`` x ``size`` grey images under ``root/<name>/``; the paths,
    sorted. Formats alternate per image within each class."""
    from PIL import Image
    from sklearn.datasets import load_digits

    if not formats:
        raise ValueError("formats: give at least one of png, jpeg, webp, bmp")
    extensions = []
    for fmt in formats:
        if fmt.lower() not in _EXTENSIONS:
            raise ValueError(f"unsupported format {fmt!r}: choose from png, jpeg, webp, bmp")
        extensions.append(_EXTENSIONS[fmt.lower()])
    digits = load_digits()
    # 0..16 ink levels -> 0..255, then upscaled (bicubic: smooth strokes, like a real scan).
    images = np.round(digits.images * (255 / 16)).astype(np.uint8)
    root = Path(root)
    written: list[Path] = []
    for label, name in enumerate(DIGIT_NAMES):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        members = np.flatnonzero(digits.target == label)
        if limit_per_class is not None:
            members = members[:limit_per_class]
        for i, index in enumerate(members):
            ext = extensions[i % len(extensions)]
            picture = Image.fromarray(images[index], mode="L").resize(
                (size, size), Image.Resampling.BICUBIC
            )
            path = folder / f"{name}_{int(index):04d}.{ext}"
            options = {"quality": 95} if ext in ("jpg", "webp") else {}
            picture.save(path, format=_PIL_FORMATS[ext], **options)
            written.append(path)
    return sorted(written)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m app.datasets.digits_files",
        description="Write scikit-learn's digits as image files in class folders zero..nine.",
    )
    parser.add_argument("dir", type=Path, help="folder to write the class folders into")
    parser.add_argument("--size", type=int, default=32, help="image side in pixels (32)")
    parser.add_argument(
        "--formats", default="png,jpeg", help="comma-separated, alternating (png,jpeg)"
    )
    parser.add_argument("--limit-per-class", type=int, default=None, help="at most N per class")
    args = parser.parse_args(argv)
    if args.size < 1:
        parser.error("--size must be at least 1")
    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    try:
        paths = write_digits_images(args.dir, args.size, formats, args.limit_per_class)
    except ValueError as error:
        parser.error(str(error))
    counts: dict[str, int] = {}
    for path in paths:
        counts[path.parent.name] = counts.get(path.parent.name, 0) + 1
    print(f"wrote {len(paths)} images ({args.size}x{args.size}) to {args.dir}:")
    for name in DIGIT_NAMES:
        if name in counts:
            print(f"  {name}/  {counts[name]} images")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
