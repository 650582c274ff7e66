"""The bulk-scoring job without a cluster: its config, the inputs it lists (list files, folders),
the output it refuses to overwrite, and the rows one batch becomes."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from app import batch_predict_io as bio
from app.batch_predict import PredictConfig
from app.batch_predict_pipeline import (
    OUTPUT_SCHEMA,
    Resources,
    ScoringOptions,
    error_table,
    read_file,
    score_rows,
)
from app.config import ConfigError, merge_config
from app.inference import Predictor
from app.models import ModelSpec, build_model

BASE = {"model_uri": "models:/digits-classifier@champion", "input": "in", "output": "out"}


def _png(value: int = 200, size: int = 16) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((size, size), value, dtype=np.uint8), "L").save(buffer, "PNG")
    return buffer.getvalue()


def test_defaults_and_flags() -> None:
    cfg = merge_config(PredictConfig, {**BASE, "top_k": "5"}, env={})
    assert (cfg.top_k, cfg.batch_size, cfg.experiment, cfg.overwrite) == (
        5,
        256,
        "batch-inference",
        False,
    )


def test_every_bad_value_is_reported_at_once() -> None:
    bad = {
        "model_uri": "file:///tmp/model",
        "input": "http://example.com/images",
        "output": " ",
        "top_k": "0",
        "batch_size": "-1",
    }
    with pytest.raises(ConfigError) as error:
        merge_config(PredictConfig, bad, env={})
    message = str(error.value)
    assert "5 error(s)" in message
    for flag in ("--model-uri", "--input", "--output", "--top-k", "--batch-size"):
        assert flag in message


def test_model_uri_input_and_output_are_required() -> None:
    with pytest.raises(ConfigError) as error:
        merge_config(PredictConfig, {}, env={})
    assert all(f in str(error.value) for f in ("--model-uri", "--input", "--output"))


def test_list_file_parsing(tmp_path: Path) -> None:
    text = "# scans of Monday\n\n a.png \nsub/b.jpg\n/abs/c.png\na.png\n"
    assert bio.parse_list_file(text, tmp_path) == [
        str(tmp_path / "a.png"),
        str(tmp_path / "sub" / "b.jpg"),
        "/abs/c.png",
    ]
    uris = "s3://bucket/x/1.png\ns3://bucket/x/2.png\n"
    assert bio.parse_list_file(uris, tmp_path) == ["s3://bucket/x/1.png", "s3://bucket/x/2.png"]


def test_a_list_file_scores_what_it_names_and_reports_what_is_missing(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(_png())
    (tmp_path / "notes.dat").write_text("named, so scored (and found unreadable)")
    (tmp_path / "big.png").write_bytes(b"\0" * 2048)
    listing = tmp_path / "batch.txt"
    listing.write_text("a.png\nnotes.dat\nbig.png\ngone.png\n")
    found = bio.list_inputs(str(listing), max_bytes=1024)
    assert found.paths == [str(tmp_path / "a.png"), str(tmp_path / "notes.dat")]
    assert found.missing == [str(tmp_path / "gone.png")]
    assert found.oversized == [(str(tmp_path / "big.png"), 2048)]
    assert found.total == 4


def test_a_list_file_may_not_mix_kinds(tmp_path: Path) -> None:
    listing = tmp_path / "mixed.txt"
    listing.write_text("a.png\ns3://bucket/b.png\n")
    with pytest.raises(ValueError, match="mixes"):
        bio.list_inputs(str(listing), max_bytes=1024)


def test_a_folder_is_listed_recursively_by_image_extension(tmp_path: Path) -> None:
    (tmp_path / "one").mkdir()
    (tmp_path / "one" / "x.PNG").write_bytes(_png())
    (tmp_path / "y.jpeg").write_bytes(b"not really")
    (tmp_path / "README.txt").write_text("not an image file")
    found = bio.list_inputs(str(tmp_path), max_bytes=1 << 20)
    assert found.paths == [str(tmp_path / "one" / "x.PNG"), str(tmp_path / "y.jpeg")]


def test_empty_and_missing_inputs_are_refused(tmp_path: Path) -> None:
    (tmp_path / "only.txt.bak").write_text("x")
    with pytest.raises(ValueError, match="no image files"):
        bio.list_inputs(str(tmp_path), max_bytes=1024)
    with pytest.raises(FileNotFoundError, match="no such folder"):
        bio.list_inputs(str(tmp_path / "absent"), max_bytes=1024)
    empty_list = tmp_path / "empty.txt"
    empty_list.write_text("# nothing\n")
    with pytest.raises(ValueError, match="names no images"):
        bio.list_inputs(str(empty_list), max_bytes=1024)


def test_an_output_holding_a_result_is_refused_unless_overwrite(tmp_path: Path) -> None:
    fresh = tmp_path / "fresh"
    assert bio.check_output(str(fresh), overwrite=False)[1:] == (str(fresh), 0)
    (tmp_path / "empty").mkdir()
    assert bio.check_output(str(tmp_path / "empty"), overwrite=False)[2] == 0
    earlier = tmp_path / "earlier"
    earlier.mkdir()
    (earlier / "part-0.parquet").write_bytes(b"PAR1")
    with pytest.raises(ValueError, match="--overwrite"):
        bio.check_output(str(earlier), overwrite=False)
    assert bio.check_output(str(earlier), overwrite=True)[2] == 1
    assert (earlier / "part-0.parquet").exists(), "checking deletes nothing"
    with pytest.raises(ValueError, match="is a file"):
        bio.check_output(str(earlier / "part-0.parquet"), overwrite=True)


def test_s3_filesystem_honours_the_endpoint_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9000")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9001")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    assert bio.s3_endpoint() == "http://127.0.0.1:9001"  # the S3-specific one wins
    fs = bio.s3_filesystem()
    assert fs.region == "eu-west-1"


def _predictor() -> Predictor:
    spec = ModelSpec(
        architecture="resnet18",
        num_classes=10,
        dataset="digits",
        classes=tuple(str(i) for i in range(10)),
        in_channels=1,
        image_size=8,
        mean=(0.5,),
        std=(0.5,),
    )
    torch.manual_seed(0)
    return Predictor.on_device(build_model(spec), spec, torch.device("cpu"))


def test_a_batch_becomes_one_row_per_file_bad_ones_with_their_error() -> None:
    predictor = _predictor()
    options = ScoringOptions(3, "digits-classifier", "7", "s3")
    noisy = io.BytesIO()
    pixels = np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)
    Image.fromarray(pixels, "L").save(noisy, "PNG")
    truncated = noisy.getvalue()[: len(noisy.getvalue()) // 2]  # header fine, pixels cut
    blobs = [_png(10), b"GIF89a....", truncated, _png(120)]
    table = score_rows(predictor, ["b/1.png", "b/2.gif", "b/3.png", "b/4.png"], blobs, options)
    assert table.schema == OUTPUT_SCHEMA
    rows = table.to_pylist()
    assert [r["path"] for r in rows] == [
        "s3://b/1.png",
        "s3://b/2.gif",
        "s3://b/3.png",
        "s3://b/4.png",
    ]
    assert rows[1]["error"].startswith("unsupported_format") and "GIF" in rows[1]["error"]
    assert rows[2]["error"].startswith("corrupt_image")
    good = [rows[0], rows[3]]
    expected = predictor.predict_proba(
        np.stack([np.full((1, 8, 8), v, dtype=np.uint8) for v in (10, 120)])
    )
    for row, probabilities in zip(good, expected, strict=True):
        assert row["error"] is None
        assert row["class_index"] == int(probabilities.argmax())
        assert row["label"] == predictor.spec.classes[row["class_index"]]
        assert len(row["top_k"]) == 3 and row["top_k"][0]["label"] == row["label"]
        assert row["confidence"] == pytest.approx(float(probabilities.max()), rel=1e-5)
        probabilities_kept = [entry["probability"] for entry in row["top_k"]]
        assert probabilities_kept == sorted(probabilities_kept, reverse=True)
    assert {r["model_version"] for r in rows} == {"7"}


def test_a_file_that_vanished_or_grew_after_listing_is_a_row_with_its_error(
    tmp_path: Path,
) -> None:
    import pyarrow.fs as pafs

    fs = pafs.LocalFileSystem()
    (tmp_path / "ok.png").write_bytes(_png(50))
    (tmp_path / "grown.png").write_bytes(_png(60, size=256))
    limit = len(_png(50)) + 10
    blobs = [read_file(fs, str(tmp_path / n), limit) for n in ("ok.png", "gone.png", "grown.png")]
    assert blobs[0] == _png(50)
    assert isinstance(blobs[1], str) and blobs[1].startswith("not_readable: ")
    assert blobs[2] == f"too_large: over {limit} bytes"
    rows = score_rows(
        _predictor(), ["ok.png", "gone.png", "grown.png"], blobs, ScoringOptions(1, None, None, "")
    ).to_pylist()
    assert rows[0]["error"] is None and rows[0]["label"] is not None
    assert [r["error"] for r in rows[1:]] == blobs[1:]
    assert rows[1]["label"] is None and rows[2]["confidence"] is None


def test_the_pool_takes_a_gpu_per_actor_where_there_are_gpus_else_a_cpu() -> None:
    on_gpus = Resources.for_capacity(cpus=28, gpus=5)  # e.g. GPU workers resting at zero
    assert (on_gpus.actors, on_gpus.num_gpus, on_gpus.device, on_gpus.min_actors) == (
        5,
        1.0,
        "cuda",
        1,  # grows as the GPU workers come up
    )
    assert Resources.for_capacity(28, 5, max_actors=2).actors == 2
    on_cpus = Resources.for_capacity(cpus=2, gpus=0)
    assert (on_cpus.actors, on_cpus.num_gpus, on_cpus.device, on_cpus.min_actors) == (
        2,
        0.0,
        "cpu",
        2,  # started whole
    )
    assert Resources.for_capacity(cpus=0.5, gpus=0).actors == 1  # never an empty pool


def test_files_never_read_get_rows_of_the_same_schema() -> None:
    options = ScoringOptions(3, None, None, "")
    table = error_table([("/x/gone.png", "not_found: no such file")], options)
    assert table.schema == OUTPUT_SCHEMA
    assert table.to_pylist()[0]["error"] == "not_found: no such file"


def _run(argv: list[str]) -> int:
    from app.batch_predict import run_predict_job
    from app.cli import run_job

    with pytest.raises(SystemExit) as exited:
        run_job(PredictConfig, run_predict_job, "", argv)
    return int(exited.value.code or 0)


def test_job_errors_are_one_line_and_touch_no_ray(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import socket

    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.png").write_bytes(_png())
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there once closed
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    base = ["--model-uri", "models:/m@champion", "--output", str(tmp_path / "out")]
    cases = {
        "unreachable": [*base, "--input", str(tmp_path / "in")],
        "no such folder": [*base, "--input", str(tmp_path / "absent")],
    }
    for expected, argv in cases.items():
        assert _run(argv) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and expected in err[0], err
    assert _run([*base[:2], "--input", str(tmp_path / "in")]) == 2  # --output missing
    assert "--output" in capsys.readouterr().err
    import ray

    assert not ray.is_initialized()
