"""What a model cost and what it was made from, in one command:

    python -m app.provenance models:/digits-classifier@champion
    python -m app.provenance models:/digits-classifier/7 --json

The chain: the registered version (and its aliases) -> its training run (status, cost, the
resources it held) -> the sweep that chose it (its total cost, the best trial's, what early
stopping saved) -> the dataset (name, digest, source) -> the code (commit, dirty or not, where
the commit came from) and the Ray job that ran it.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from mlflow.exceptions import MlflowException

from app import model_registry, tracking

SWEEP_METRICS = ("sweep_cost_usd", "best_trial_cost_usd", "asha_saved_usd")
RUN_METRICS = ("cost_usd", "cpu_seconds", "gpu_seconds", "node_seconds", "test_accuracy")


def provenance(model_uri: str) -> dict[str, Any]:
    client = tracking.client(patient=False)
    ref = model_registry.resolve_model_uri(model_uri)
    run = client.get_run(ref.run_id)
    chain = model_registry.lineage(ref, run)
    tags, metrics = run.data.tags, run.data.metrics
    chain["aliases"] = (
        list(client.get_model_version(ref.name, ref.version).aliases)
        if ref.name and ref.version
        else []
    )
    chain["run_status"] = run.info.status
    chain["run"] = {key: metrics.get(key) for key in RUN_METRICS}
    chain["nodes"] = tags.get("cost.nodes")
    chain["price_table"] = tags.get("cost.price_table")
    chain["git_source"] = tags.get("git_source")
    inputs = run.inputs.dataset_inputs if run.inputs else []
    chain["dataset_source"] = json.loads(inputs[0].dataset.source) if inputs else None
    chain["sweep_totals"] = None
    if chain["sweep_run_id"]:
        parent = client.get_run(chain["sweep_run_id"]).data.metrics
        chain["sweep_totals"] = {key: parent.get(key) for key in SWEEP_METRICS}
    return chain


def _usd(value: Any) -> str:
    return "not recorded" if value is None else f"${value:.4f}"


def _hours(seconds: Any) -> str:
    return "?" if seconds is None else f"{seconds / 3600:.3f} h"


def _source_text(source: dict[str, Any] | None) -> str:
    """An HTTP source's URL, or a packaged dataset's summary."""
    if not source:
        return ""
    text = source.get("url") or source.get("uri") or source.get("tags", {}).get("summary")
    return f" ({text})" if text else ""


def describe(chain: dict[str, Any]) -> str:
    run, sweep = chain["run"], chain["sweep_totals"]
    dirty = {"true": " (uncommitted changes)", "false": " (clean)"}.get(chain["git_dirty"], "")
    lines = [
        f"model      {chain['model']} version {chain['version']}"
        + (f" @{', @'.join(chain['aliases'])}" if chain["aliases"] else ""),
        f"run        {chain['training_run_id']} ({chain['run_status']}), "
        f"test accuracy {run['test_accuracy']}",
        f"cost       {_usd(run['cost_usd'])}: CPU {_hours(run['cpu_seconds'])}, "
        f"GPU {_hours(run['gpu_seconds'])}, node {_hours(run['node_seconds'])} "
        f"on {chain['nodes'] or '?'} (price table {chain['price_table'] or '?'})",
    ]
    if sweep is not None:
        lines.append(
            f"sweep      {chain['sweep']} (run {chain['sweep_run_id']}): total "
            f"{_usd(sweep['sweep_cost_usd'])}, best trial {_usd(sweep['best_trial_cost_usd'])}, "
            f"early stopping saved {_usd(sweep['asha_saved_usd'])}"
        )
    lines += [
        f"dataset    {chain['dataset']} digest {chain['dataset_digest'] or '?'}"
        + _source_text(chain["dataset_source"]),
        f"code       {chain['git_commit'] or 'unknown commit'}{dirty}"
        + (f" via {chain['git_source']}" if chain["git_source"] else ""),
        f"ray job    {chain['ray_job_id'] or 'none (run outside a Ray Job)'}",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model_uri", help="models:/<name>@<alias>, models:/<name>/<version>, ...")
    parser.add_argument("--json", action="store_true", help="the chain as one JSON object")
    args = parser.parse_args(argv)
    try:
        chain = provenance(args.model_uri)
    except ValueError as exc:  # an unsupported URI
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except MlflowException as exc:
        print(f"error: {args.model_uri}: {exc.message}", file=sys.stderr)
        return 1
    except OSError as exc:  # the tracking server does not answer
        print(f"error: tracking server {tracking.tracking_uri()}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(chain, indent=2, default=str) if args.json else describe(chain))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
