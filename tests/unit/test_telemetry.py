"""MLflow's telemetry thread edits os.environ under running requests (it failed a sweep
trial); importing the platform turns it off, unless the user decided otherwise."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PROBE = (
    "import os, app\n"
    "from mlflow.telemetry.client import get_telemetry_client\n"
    "print(os.environ['MLFLOW_DISABLE_TELEMETRY'], get_telemetry_client() is None)\n"
)


def probe(extra: dict[str, str]) -> str:
    # As a user's process: none of the test runner's variables that MLflow reads as "testing".
    env = {k: v for k, v in os.environ.items() if k not in ("PYTEST_CURRENT_TEST", "CI")}
    env.pop("MLFLOW_DISABLE_TELEMETRY", None)
    done = subprocess.run(
        [sys.executable, "-c", PROBE],
        cwd=REPO,
        env={**env, **extra},
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip()


def test_importing_the_platform_turns_mlflow_telemetry_off() -> None:
    assert probe({}) == "true True"


@pytest.mark.parametrize("value", ["false", "1"])
def test_a_users_own_setting_is_kept(value: str) -> None:
    assert probe({"MLFLOW_DISABLE_TELEMETRY": value}).split()[0] == value
