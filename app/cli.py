"""What every job entry point shares: parse and validate the config before any Ray work,
run, write ``--results-json``, and turn failures into a clear message and a non-zero exit."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from mlflow.exceptions import MlflowException

from app.config import ConfigError, ConfigT, parse_config
from app.datasets import DatasetUnavailableError
from app.errors import JobFailedError
from app.inference import ModelLoadError

# Failures a user can fix from the message alone: no traceback for these.
USER_ERRORS = (
    DatasetUnavailableError,
    ModelLoadError,
    FileNotFoundError,
    ValueError,
    MlflowException,
)
EXIT_FAILED = 1
EXIT_USAGE = 2


def write_results(path: Path | None, results: dict[str, Any]) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(f"results written to {path}", flush=True)


def run_job(
    config_cls: type[ConfigT],
    main: Callable[[ConfigT], dict[str, Any]],
    description: str,
    argv: Sequence[str] | None = None,
) -> None:
    """Parse (exit 2 on bad config), run ``main``, write its results JSON, exit 0 / 1."""
    cfg = parse_config(config_cls, argv, description)
    try:
        results = main(cfg)
    except ConfigError as exc:  # found only once the job looked (a space file, cluster fit)
        print(f"error: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(EXIT_USAGE) from None
    except JobFailedError as exc:
        write_results(cfg.results_json, exc.results)
        print(f"error: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(EXIT_FAILED) from None
    except USER_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(EXIT_FAILED) from None
    write_results(cfg.results_json, results)
