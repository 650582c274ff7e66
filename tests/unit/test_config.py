import subprocess
import sys
from pathlib import Path

import pytest

from app.config import ConfigError, merge_config, parse_config
from app.train.config import TrainConfig

REPO = Path(__file__).resolve().parents[2]


def test_flags_override_env_override_yaml(tmp_path: Path) -> None:
    config_file = tmp_path / "train.yaml"
    config_file.write_text("epochs: 3\nbatch-size: 32\nlr: 0.2\nmodel: mobilenet_v3_small\n")
    env = {"RAYVISION_EPOCHS": "5", "RAYVISION_LR": "0.3"}
    cfg = parse_config(TrainConfig, ["--config", str(config_file), "--lr", "0.01"], env=env)
    assert cfg.epochs == 5  # env beats YAML
    assert cfg.lr == 0.01  # flag beats env
    assert cfg.batch_size == 32  # YAML beats default, kebab-case keys accepted
    assert cfg.model == "mobilenet_v3_small"


def test_boolean_flags_both_ways() -> None:
    assert parse_config(TrainConfig, ["--use-gpu"], env={}).use_gpu is True
    assert parse_config(TrainConfig, ["--no-download"], env={}).download is False


def test_every_invalid_value_reported_at_once() -> None:
    with pytest.raises(ConfigError) as error:
        merge_config(TrainConfig, {"epochs": "0", "dataset": "imagenet", "lr": "-1"}, env={})
    message = str(error.value)
    assert "3 error(s)" in message
    for flag in ("--epochs", "--dataset", "--lr"):
        assert flag in message


def test_unknown_yaml_key_is_an_error(tmp_path: Path) -> None:
    config_file = tmp_path / "train.yaml"
    config_file.write_text("epoch: 3\n")
    with pytest.raises(ConfigError, match="--epoch"):
        merge_config(TrainConfig, {}, config_file, env={})


def test_yaml_must_be_a_mapping(tmp_path: Path) -> None:
    config_file = tmp_path / "train.yaml"
    config_file.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        merge_config(TrainConfig, {}, config_file, env={})


def test_cross_field_rules() -> None:
    with pytest.raises(ConfigError, match="batch_size"):
        merge_config(TrainConfig, {"batch_size": 2, "num_workers": 4}, env={})
    with pytest.raises(ConfigError, match="register_as"):
        merge_config(TrainConfig, {"alias": "champion"}, env={})
    cfg = merge_config(TrainConfig, {"batch_size": 64, "num_workers": 4}, env={})
    assert cfg.per_worker_batch_size == 16


def test_gpu_default_batch_and_linearly_scaled_learning_rate() -> None:
    cpu = merge_config(TrainConfig, {}, env={})
    assert (cpu.batch_size, cpu.lr) == (64, 0.05)
    gpu = merge_config(TrainConfig, {"use_gpu": "true", "num_workers": "2"}, env={})
    assert (gpu.batch_size, gpu.lr) == (512, pytest.approx(0.4))  # 256 a GPU, 0.05 per 64
    bigger = merge_config(TrainConfig, {"batch_size": "128"}, env={})
    assert bigger.lr == pytest.approx(0.1)
    chosen = merge_config(TrainConfig, {"use_gpu": "true", "lr": "0.01"}, env={})
    assert (chosen.batch_size, chosen.lr) == (512, 0.01)  # an explicit lr is kept
    # The resolved values travel to the workers as set fields: no second scaling there.
    assert TrainConfig.model_validate(gpu.model_dump(mode="json")) == gpu


def test_registered_name_is_validated() -> None:
    with pytest.raises(ConfigError, match="--register-as"):
        merge_config(TrainConfig, {"register_as": "bad name/with slash"}, env={})


@pytest.mark.parametrize(
    ("args", "flag"),
    [(["--epochs", "0"], "--epochs"), (["--dataset", "imagenet"], "--dataset")],
)
def test_train_job_rejects_bad_config_before_ray(args: list[str], flag: str) -> None:
    """Exit status 2, the flag named, and no Ray started (the job returns in well under the
    seconds a Ray start takes, and prints nothing from Ray)."""
    result = subprocess.run(
        [sys.executable, str(REPO / "jobs" / "train.py"), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert flag in result.stderr
    assert "Started a local Ray instance" not in result.stderr + result.stdout
