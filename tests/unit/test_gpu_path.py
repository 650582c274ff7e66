"""The GPU fast path, exercised on CPU where it can be (device defaults, compile, the serving
precision, the benchmarks' code paths), and on a real GPU where one is present (marked gpu)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from app.datasets import ImageSplits, dataset_info, load_splits
from app.inference import Predictor, serving_dtype
from app.models import ModelSpec, build_model
from app.train.batches import DeviceData, compile_model, prepare_batch, warm_up_shapes
from app.train.config import TrainConfig
from app.train.context import LocalContext
from app.train.loop import train_worker
from app.train.optim import resolve_precision

REPO = Path(__file__).resolve().parents[2]
needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="module")
def digits() -> ImageSplits:
    return load_splits("digits")


def small_digits(splits: ImageSplits, n_train: int, n_val: int) -> ImageSplits:
    """Sizes that divide the batch evenly, so the loop sees one train and one eval shape."""
    return ImageSplits(
        splits.info,
        splits.x_train[:n_train], splits.y_train[:n_train],
        splits.x_val[:n_val], splits.y_val[:n_val],
        splits.x_test, splits.y_test,
        splits.fingerprint,
    )  # fmt: skip


def test_warm_up_shapes_are_every_batch_size_the_loop_feeds() -> None:
    one = LocalContext(torch.device("cpu"))
    assert warm_up_shapes(1000, 100, one, 64) == ([40, 64], [100])  # 1000 = 15 x 64 + 40
    assert warm_up_shapes(256, 64, one, 64) == ([64], [64])
    assert warm_up_shapes(30, 10, one, 64) == ([30], [10])  # fewer rows than one batch
    rank1 = LocalContext(torch.device("cpu"))
    rank1.rank, rank1.world_size = 1, 2
    # 1000 rows over 2 ranks: 500 each (7 x 64 + 52); eval rows 1, 3, ... 99: 50.
    assert warm_up_shapes(1000, 100, rank1, 64) == ([52, 64], [50])


def test_compile_warm_up_measures_and_leaves_the_model_as_it_was(digits: ImageSplits) -> None:
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 10),
    )
    before = {k: v.clone() for k, v in model.state_dict().items()}
    data = DeviceData.of(digits.x_train[:64], digits.y_train[:64], torch.device("cpu"))
    precision = resolve_precision("auto", torch.device("cpu"))
    compiled, seconds = compile_model(model, data, digits.info, ([48, 64], [32]), precision, False)
    assert seconds > 0
    after = model.state_dict()
    # The train-mode warm-up moved BatchNorm's running statistics; they are restored.
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in model.parameters())
    with torch.inference_mode():
        batch = prepare_batch(digits.x_val[:32], digits.info, False, False)
        assert torch.allclose(compiled(batch), model.eval()(batch), atol=1e-5)


@pytest.mark.slow
def test_compiled_training_reports_compile_time_and_saves_plain_weights(
    digits: ImageSplits,
) -> None:
    cfg = TrainConfig(epochs=3, num_workers=1, batch_size=64, compile=True)
    ctx, lines = LocalContext(torch.device("cpu")), []
    metrics = train_worker(cfg, small_digits(digits, 1024, 128), ctx, log=lines.append)
    assert metrics["compile_seconds"] > 0
    assert any(line.startswith("compiled the model in") for line in lines)
    assert metrics["val_accuracy"] > 0.5  # it trains (10 classes: chance is 0.1)
    assert ctx.checkpoint is not None
    # The checkpoint holds the plain module's weights, loadable without torch.compile.
    spec = ModelSpec.for_dataset("resnet18", digits.info)
    build_model(spec).load_state_dict(ctx.checkpoint["model"])


def test_modules_the_gpu_benchmarks_need_import_without_ray_or_mlflow() -> None:
    """The GPU machine has torch but no Ray and no MLflow."""
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('ray', 'mlflow'):\n"
        "            raise ImportError('blocked ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import app.train.loop, app.inference, benchmarks.gpu_train, benchmarks.gpu_serve\n"
        "print('ok')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_serving_runs_full_precision_on_cpu(digits: ImageSplits) -> None:
    spec = ModelSpec.for_dataset("resnet18", digits.info)
    classifier = Predictor.on_device(build_model(spec), spec, torch.device("cpu"))
    assert serving_dtype(torch.device("cpu")) == torch.float32
    images = digits.x_test[:8]
    assert torch.equal(classifier.serve_proba(images), classifier.predict_proba(images))


@pytest.mark.slow
def test_gpu_benchmarks_quick_mode_runs_every_variant_on_cpu(tmp_path: Path) -> None:
    from benchmarks import gpu_serve, gpu_train

    out = tmp_path / "train.json"
    summary = gpu_train.main(["--quick", "--models", "mobilenet_v3_small", "--out", str(out)])
    (row,) = summary["models"]
    assert summary["device"] == "cpu" and row["precision"] == "fp32"
    assert all(row[f"{name}_img_s"] > 0 for name in ("project", "plain", "naive"))
    assert json.loads(out.read_text()) == summary
    serve_summary = gpu_serve.main(["--quick", "--models", "mobilenet_v3_small"])
    assert [p["batch"] for p in serve_summary["points"]] == [1, 2, 4, 8, 16, 32]
    assert all(p["served_img_s"] > 0 and p["bare_img_s"] > 0 for p in serve_summary["points"])


# ---------------------------------------------------------------------------------------------
# On a real GPU


def striped_digits(n: int) -> ImageSplits:
    """Learnable without scikit-learn (the GPU machine lacks it): class k has row k lit."""
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 8, (n,), generator=generator)
    images = torch.randint(0, 64, (n, 1, 8, 8), dtype=torch.uint8, generator=generator)
    images[torch.arange(n), 0, labels] = 255
    cut = n * 8 // 10
    return ImageSplits(
        dataset_info("digits"),
        images[:cut], labels[:cut],
        images[cut:], labels[cut:],
        images[cut:], labels[cut:],
        "striped",
    )  # fmt: skip


@pytest.mark.gpu
@needs_gpu
def test_gpu_training_uses_mixed_precision_and_learns() -> None:
    device = torch.device("cuda")
    assert resolve_precision("auto", device).name in ("bf16", "fp16")
    cfg = TrainConfig(epochs=4, num_workers=1, use_gpu=True)
    assert cfg.batch_size == 256
    ctx = LocalContext(device)
    # 16000 images: 50 optimizer steps an epoch at the GPU batch (256) and its scaled learning
    # rate; 4000 gave 13, too few for one-cycle to converge (0.11 to 0.50 on an H200).
    metrics = train_worker(cfg, striped_digits(16000), ctx, log=lambda _: None)
    assert metrics["val_accuracy"] > 0.9


@pytest.mark.gpu
@needs_gpu
def test_gpu_serving_in_float16_agrees_with_float32() -> None:
    spec = ModelSpec.for_dataset("resnet18", dataset_info("cifar10"))
    gpu = Predictor.on_device(build_model(spec), spec, torch.device("cuda"))
    assert gpu.serving_dtype == torch.float16
    images = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8)
    half, full = gpu.serve_proba(images), gpu.predict_proba(images)
    assert half.dtype == torch.float32 and torch.allclose(half, full, atol=1e-2)


@pytest.mark.gpu
@needs_gpu
def test_bulk_scoring_on_the_gpu_agrees_with_the_cpu(tmp_path: Path) -> None:
    """One batch-inference actor's work (read, decode, score) on the GPU, as the pool runs it
    where the cluster has GPUs: the same rows as on the CPU, the bad file still a row."""
    pafs = pytest.importorskip("pyarrow.fs")
    image_module = pytest.importorskip("PIL.Image")
    import numpy as np

    from app.batch_predict_pipeline import ImageScorer, ModelFiles, ScoringOptions
    from app.inference import save_model_files
    from app.models import cpu_state_dict

    rng = np.random.default_rng(0)
    paths = []
    for i in range(96):
        path = tmp_path / "in" / f"{i:03d}.{'png' if i % 2 else 'jpg'}"
        path.parent.mkdir(exist_ok=True)
        image_module.fromarray(rng.integers(0, 256, (40, 40, 3), np.uint8)).save(path)
        paths.append(str(path))
    (tmp_path / "in" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    paths.append(str(tmp_path / "in" / "bad.png"))
    spec = ModelSpec.for_dataset("resnet18", dataset_info("cifar10"))
    torch.manual_seed(0)
    files = ModelFiles.from_folder(
        save_model_files(cpu_state_dict(build_model(spec)), spec, tmp_path / "model")
    )
    options = ScoringOptions(3, "m", "1", "")
    batch = {"path": np.array(paths)}
    on_gpu = ImageScorer(files, options, "cuda", pafs.LocalFileSystem())
    assert next(on_gpu.predictor.model.parameters()).device.type == "cuda"
    gpu_rows = on_gpu(batch).to_pylist()
    cpu_rows = ImageScorer(files, options, "cpu", pafs.LocalFileSystem())(batch).to_pylist()
    assert gpu_rows[-1]["error"] and gpu_rows[-1]["error"] == cpu_rows[-1]["error"]
    scored = list(zip(gpu_rows[:-1], cpu_rows[:-1], strict=True))
    assert all(g["error"] is None for g, _ in scored)
    assert sum(g["label"] == c["label"] for g, c in scored) >= 0.97 * len(scored)
    assert all(abs(g["confidence"] - c["confidence"]) < 1e-3 for g, c in scored)
