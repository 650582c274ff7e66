"""--dataset image-folder: the digits written as files, read back through the real loader."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from app.config import ConfigError, merge_config
from app.datasets import IMAGE_FOLDER, ImageFolderError, ImageFolderSource, load_splits
from app.datasets.digits_files import DIGIT_NAMES, main, write_digits_images
from app.train.config import TrainConfig

PER_CLASS = 12
SIZE = 16
BAD = ("zero/broken.png", "one/notes.jpg", "README.txt")


def _source(root: Path | str, channels: int = 1) -> ImageFolderSource:
    return ImageFolderSource(str(root), image_size=SIZE, channels=channels)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("digits")
    write_digits_images(root, size=SIZE, limit_per_class=PER_CLASS)
    good = next((root / "zero").glob("*.png")).read_bytes()
    (root / "zero" / "broken.png").write_bytes(good[: len(good) // 2])  # truncated
    (root / "one" / "notes.jpg").write_text("not a picture\n")
    (root / "README.txt").write_text("my digits\n")
    (root / "two" / ".DS_Store").write_bytes(b"\0\0")  # hidden: ignored, not listed
    return root


def _copy(folder: Path, tmp_path: Path) -> Path:
    target = tmp_path / "copy"
    shutil.copytree(folder, target)
    return target


def test_writer_names_classes_and_alternates_formats(tmp_path: Path) -> None:
    paths = write_digits_images(tmp_path, size=20, limit_per_class=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(DIGIT_NAMES)
    assert len(paths) == 20
    assert {p.suffix for p in paths} == {".png", ".jpg"}
    from PIL import Image

    assert Image.open(paths[0]).size == (20, 20)


def test_writer_command_prints_what_it_wrote(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([str(tmp_path), "--size", "12", "--limit-per-class", "1"]) == 0
    out = capsys.readouterr().out
    assert "wrote 10 images (12x12)" in out and "nine/" in out


def test_loads_and_skips_exactly_the_bad_files(
    folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    splits = load_splits(IMAGE_FOLDER, folder=_source(folder), val_fraction=0.1, seed=1)
    assert splits.info.classes == tuple(sorted(DIGIT_NAMES))  # sorted folder names
    assert splits.info.name == IMAGE_FOLDER
    assert (splits.info.channels, splits.info.image_size) == (1, SIZE)
    assert [line.split(":")[0] for line in splits.skipped] == sorted(BAD)
    total = len(splits.y_train) + len(splits.y_val) + len(splits.y_test)
    assert total == 10 * PER_CLASS
    assert splits.x_train.shape[1:] == (1, SIZE, SIZE)
    assert splits.x_train.dtype.is_floating_point is False
    for y in (splits.y_train, splits.y_val, splits.y_test):
        assert set(y.tolist()) == set(range(10))  # stratified: every class in every split
    assert splits.source_uri == folder.resolve().as_uri()
    out = capsys.readouterr().out
    assert "skipped 3 file(s)" in out and "zero/broken.png" in out
    # mean / std are the train images' own statistics
    expected = splits.x_train.float().div(255).mean().item()
    assert splits.info.mean[0] == pytest.approx(expected, abs=1e-5)


def test_deterministic_split(folder: Path) -> None:
    a = load_splits(IMAGE_FOLDER, folder=_source(folder), seed=3)
    b = load_splits(IMAGE_FOLDER, folder=_source(folder), seed=4)
    # the test split does not follow the training seed: evaluate reloads the same test set
    assert np.array_equal(a.x_test.numpy(), b.x_test.numpy())
    assert not np.array_equal(a.x_val.numpy(), b.x_val.numpy())
    assert a.fingerprint == b.fingerprint


def test_fingerprint_follows_contents_not_names(folder: Path, tmp_path: Path) -> None:
    before = load_splits(IMAGE_FOLDER, folder=_source(folder))
    copy = _copy(folder, tmp_path)
    first = sorted((copy / "three").glob("*.png"))[0]
    first.rename(first.with_name("renamed_image.png"))
    renamed = load_splits(IMAGE_FOLDER, folder=_source(copy))
    assert renamed.fingerprint == before.fingerprint
    assert np.array_equal(renamed.x_test.numpy(), before.x_test.numpy())
    # one byte of one file changed (a PNG's last IEND CRC byte would break it: use metadata)
    from PIL import Image

    target = sorted((copy / "four").glob("*.png"))[0]
    pixels = np.asarray(Image.open(target)).copy()
    pixels[0, 0] ^= 1
    Image.fromarray(pixels).save(target)
    assert load_splits(IMAGE_FOLDER, folder=_source(copy)).fingerprint != before.fingerprint


def test_moving_a_file_to_another_class_changes_the_fingerprint(
    folder: Path, tmp_path: Path
) -> None:
    before = load_splits(IMAGE_FOLDER, folder=_source(folder))
    copy = _copy(folder, tmp_path)
    moved = sorted((copy / "five").glob("*.png"))[0]
    moved.rename(copy / "six" / moved.name)
    assert load_splits(IMAGE_FOLDER, folder=_source(copy)).fingerprint != before.fingerprint


def test_channels_one_and_three(folder: Path) -> None:
    grey = load_splits(IMAGE_FOLDER, folder=_source(folder, channels=1))
    rgb = load_splits(IMAGE_FOLDER, folder=_source(folder, channels=3))
    assert grey.x_train.shape[1] == 1 and rgb.x_train.shape[1] == 3
    assert len(grey.info.mean) == 1 and len(rgb.info.mean) == 3
    assert grey.fingerprint != rgb.fingerprint


def test_empty_class_is_an_error(folder: Path, tmp_path: Path) -> None:
    copy = _copy(folder, tmp_path)
    for path in (copy / "seven").iterdir():
        path.unlink()
    (copy / "seven" / "junk.png").write_text("nope")
    with pytest.raises(ImageFolderError, match=r"no readable images in class folder.*seven"):
        load_splits(IMAGE_FOLDER, folder=_source(copy))


def test_too_small_class_is_an_error(folder: Path, tmp_path: Path) -> None:
    copy = _copy(folder, tmp_path)
    for path in sorted((copy / "eight").iterdir())[3:]:
        path.unlink()
    with pytest.raises(ImageFolderError, match=r"too few images in eight \(3\).*at least 7"):
        load_splits(IMAGE_FOLDER, folder=_source(copy))


def test_one_class_and_missing_folder_are_errors(tmp_path: Path) -> None:
    write_digits_images(tmp_path / "one_class", size=8, limit_per_class=10)
    for name in DIGIT_NAMES[1:]:
        shutil.rmtree(tmp_path / "one_class" / name)
    with pytest.raises(ImageFolderError, match="at least 2 class subfolders, found zero"):
        load_splits(IMAGE_FOLDER, folder=_source(tmp_path / "one_class"))
    from app.datasets import DatasetUnavailableError

    with pytest.raises(DatasetUnavailableError, match="is not a folder"):
        load_splits(IMAGE_FOLDER, folder=_source(tmp_path / "absent"))


def test_config_requires_image_folder_with_image_folder_dataset() -> None:
    with pytest.raises(ConfigError, match="--dataset image-folder needs --image-folder"):
        merge_config(TrainConfig, {"dataset": "image-folder"}, env={})
    with pytest.raises(ConfigError, match="--image-folder: only with --dataset image-folder"):
        merge_config(TrainConfig, {"dataset": "digits", "image_folder": "/x"}, env={})
    with pytest.raises(ConfigError, match="--channels: Input should be 1 \\(grey\\) or 3"):
        merge_config(
            TrainConfig, {"dataset": "image-folder", "image_folder": "/x", "channels": "2"}, env={}
        )
    with pytest.raises(ConfigError, match="a local path or s3://bucket/prefix"):
        merge_config(TrainConfig, {"dataset": "image-folder", "image_folder": "gs://b/x"}, env={})
    cfg = merge_config(
        TrainConfig,
        {"dataset": "image-folder", "image_folder": "s3://b/p", "image_size": "16"},
        env={},
    )
    assert cfg.image_folder_source() == ImageFolderSource("s3://b/p", 16, 3, 0.2)


def test_s3_prefix_loads_the_same_as_the_local_folder(folder: Path, s3_endpoint: str) -> None:
    from app.datasets.image_folder import s3_client

    client = s3_client()
    client.create_bucket(Bucket="images")
    for path in folder.rglob("*"):
        if path.is_file():
            key = f"team/digits/{path.relative_to(folder).as_posix()}"
            client.put_object(Bucket="images", Key=key, Body=path.read_bytes())
    local = load_splits(IMAGE_FOLDER, folder=_source(folder))
    remote = load_splits(IMAGE_FOLDER, folder=_source("s3://images/team/digits"))
    assert remote.fingerprint == local.fingerprint
    assert remote.info == local.info
    assert remote.skipped == local.skipped
    assert remote.source_uri == "s3://images/team/digits/"
    for name in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test"):
        assert np.array_equal(getattr(remote, name).numpy(), getattr(local, name).numpy()), name
