"""Serving throughput under concurrent HTTP load, against the bare model, in one run.

    python benchmarks/serve_load.py            # 4 rounds, 30 s of load per phase
    python benchmarks/serve_load.py --quick    # 2 rounds, 10 s per phase, about two minutes

Starts a private local Ray and Serve (free ports; nothing shared is touched) in the Serve mode
the project's clusters run (serve/throughput.py: HAProxy in front; set RAY_SERVE_ENABLE_HA_PROXY=0
and RAY_SERVE_THROUGHPUT_OPTIMIZED=0 to measure Ray's default proxy instead), registers an
untrained model in a temporary MLflow store (throughput does not depend on the weights),
deploys serve.service with serve/config.yaml's options and one Classifier replica, and drives
``--clients`` threads, each posting one PNG to /predict over a keep-alive connection (a held-out
digit; with ``--dataset cifar10`` a 32x32 colour picture for a CIFAR-sized model):

Rounds, paired and interleaved (benchmarks/paired.py: batching on then off, then off then on,
...), each of:

1. dynamic batching on (the config's max_batch_size and wait), and right after it the bare
   model in this process: ``Predictor.serve_proba`` on uint8 batches of exactly the sizes the
   replica formed in that phase, with one torch thread like the replica;
2. dynamic batching off (redeployed with max_batch_size 1 in the ingress's user_config).

Then once: one client alone (the latency an idle service adds by waiting for a batch to fill),
and mixed: the batching-on load with a tenth of the clients posting crafted images instead
(benchmarks/crafted_inputs.py: a 2048 x 2048 16-bit PNG and a flat WebP of a few KB each, an
RLE-compressed BMP), reporting the legitimate clients' throughput and latency.

Ratios, each the median of the rounds' ratios with min and max: served / bare images per second
(goal >= 0.5 on 2 CPU cores) and batching on / off (goal >= 2). Last line: one JSON object,
also appended to results/bench.jsonl.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from serve.throughput import (  # noqa: E402
    HIGH_THROUGHPUT_ENV,
    front_haproxy_env,
    private_haproxy_env,
)

# Read by Ray's Serve modules on import and by every process of the private cluster: the Serve
# path the project's clusters run, unless the caller set these (0 measures Ray's default path).
for _name, _value in HIGH_THROUGHPUT_ENV.items():
    os.environ.setdefault(_name, _value)

import numpy as np  # noqa: E402
import torch  # noqa: E402
from ray.serve import Application  # noqa: E402

from app import model_registry, tracking  # noqa: E402
from app.datasets import dataset_info, load_splits  # noqa: E402
from app.models import ModelSpec, build_model, cpu_state_dict  # noqa: E402
from benchmarks.crafted_inputs import hostile_bodies  # noqa: E402
from benchmarks.http_load import Phase, drive, merged  # noqa: E402
from benchmarks.paired import Paired, paired, record  # noqa: E402
from serve import service  # noqa: E402
from serve.client import png_bytes  # noqa: E402

MODEL_NAME = "bench-digits"
# The share of clients that send crafted inputs in the mixed phase.
HOSTILE_SHARE = 0.1


def register_untrained(spec: ModelSpec) -> str:
    run_id = tracking.start_run("bench-serve", "serve-load", {"model": spec.architecture}, {})
    example = np.zeros((2, spec.image_size, spec.image_size), dtype=np.uint8)
    if spec.in_channels == 3:
        example = np.zeros((2, spec.image_size, spec.image_size, 3), dtype=np.uint8)
    model_registry.log_model(run_id, cpu_state_dict(build_model(spec)), spec, example)
    version = model_registry.register_version(run_id, MODEL_NAME, {}, alias="champion")
    return f"models:/{MODEL_NAME}/{version}"


def application(batching: bool) -> Application:
    """serve.service as serve/config.yaml configures it, with one Classifier replica; without
    batching, the ingress's max_batch_size 1."""
    options = service.deployment_options(service.load_config())
    classifier = options["Classifier"]
    classifier.pop("autoscaling_config")
    classifier["num_replicas"] = 1
    classifier["user_config"]["model_name"] = MODEL_NAME
    if not batching:
        options["ClassifierAPI"]["user_config"]["max_batch_size"] = 1
    return service.build_app(options)


class BatchCounter:
    """Forward passes per batch size so far, asked of the Classifier replica. The handle lives on
    an event loop of its own thread: with Ray's throughput-optimized Serve a handle routes on its
    caller's running loop, which this synchronous script does not have."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()

    def __call__(self) -> dict[int, int]:
        from ray import serve

        async def ask() -> dict[int, int]:
            handle = serve.get_deployment_handle("Classifier", "classifier")
            counts: dict[int, int] = await handle.batch_size_counts.remote()
            return counts

        return asyncio.run_coroutine_threadsafe(ask(), self.loop).result(timeout=60)


def bare_rps(
    model_uri: str, shape: tuple[int, ...], batch_counts: dict[int, int], repeats: int
) -> float:
    """Images per second of the bare forward pass over the same mix of batch sizes."""
    torch.set_num_threads(1)  # the replica's share: Ray sets OMP_NUM_THREADS from its CPUs
    classifier = model_registry.load_predictor(model_uri)
    rng = np.random.default_rng(0)
    seconds = 0.0
    for size, count in batch_counts.items():
        images = rng.integers(0, 256, (size, *shape), dtype=np.uint8)
        classifier.serve_proba(images)  # warm-up
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            classifier.serve_proba(images)
            times.append(time.perf_counter() - started)
        seconds += count * statistics.median(times)
    return sum(size * count for size, count in batch_counts.items()) / seconds


def report(
    args: argparse.Namespace,
    seconds: float,
    phases: dict[str, Phase],
    counts: Counter[int],
    served_vs_bare: Paired,
    batching: Paired,
) -> None:
    """The phases in words, then as one JSON line."""
    on, off = phases["batching_on"].summary(), phases["batching_off"].summary()
    idle, mixed = phases["idle"].summary(), phases["mixed"].summary()
    mean_batch = sum(s * n for s, n in counts.items()) / max(sum(counts.values()), 1)
    ratio, spread = served_vs_bare.summary(), batching.summary()
    print(f"batch sizes formed with batching on: {dict(sorted(counts.items()))}")
    print(
        f"served {on['rps']:.0f} img/s (p50 {on['p50_ms']:.1f} ms, p99 {on['p99_ms']:.1f} ms, "
        f"{on['errors']} errors); unbatched {off['rps']:.0f} img/s; bare model "
        f"{ratio['b_median']:.0f} img/s at the same batch sizes (mean {mean_batch:.1f}); "
        f"served / bare {ratio['ratio']:.3f} ({ratio['ratio_min']:.3f}..{ratio['ratio_max']:.3f}), "
        f"on / off {spread['ratio']:.2f} ({spread['ratio_min']:.2f}..{spread['ratio_max']:.2f}); "
        f"one idle client: p50 {idle['p50_ms']:.1f} ms"
    )
    print(
        f"with {HOSTILE_SHARE:.0%} hostile clients: legitimate {mixed['rps']:.0f} img/s, p50 "
        f"{mixed['p50_ms']:.1f} ms, p99 {mixed['p99_ms']:.1f} ms, {mixed['errors']} errors; "
        f"hostile answers {dict(phases['mixed'].hostile)}; /health p50 "
        f"{mixed['health_p50_ms']:.1f} ms, max {mixed['health_max_ms']:.1f} ms (clean phase: "
        f"{on['health_p50_ms']:.1f} ms, max {on['health_max_ms']:.1f} ms)"
    )
    print(
        record(
            {
                "bench": "serve_load",
                "model": args.model,
                "dataset": args.dataset,
                "clients": args.clients,
                "seconds_per_phase": seconds,
                "cpus": os.cpu_count(),
                "project_rps": round(on["rps"], 1),
                "p50_ms": round(on["p50_ms"], 2),
                "p99_ms": round(on["p99_ms"], 2),
                "errors": on["errors"] + off["errors"] + idle["errors"],
                "idle_p50_ms": round(idle["p50_ms"], 2),
                "mixed_legit_rps": round(mixed["rps"], 1),
                "mixed_legit_p50_ms": round(mixed["p50_ms"], 2),
                "mixed_legit_p99_ms": round(mixed["p99_ms"], 2),
                "mixed_legit_errors": mixed["errors"],
                "mixed_hostile_answers": dict(phases["mixed"].hostile),
                "health_p50_ms": round(on["health_p50_ms"], 2),
                "health_max_ms": round(on["health_max_ms"], 2),
                "mixed_health_p50_ms": round(mixed["health_p50_ms"], 2),
                "mixed_health_max_ms": round(mixed["health_max_ms"], 2),
                "unbatched_rps": round(off["rps"], 1),
                "unbatched_p50_ms": round(off["p50_ms"], 2),
                "unbatched_p99_ms": round(off["p99_ms"], 2),
                "mean_batch_size": round(mean_batch, 2),
                "baseline_rps": round(ratio["b_median"], 1),
                "rounds": ratio["rounds"],
                "goal": ">= 0.5",
                **{k: ratio[k] for k in ("ratio", "ratio_min", "ratio_max", "ratios")},
                "batching_goal": ">= 2",
                **{f"batching_{k}": spread[k] for k in ("ratio", "ratio_min", "ratio_max")},
                "batching_ratios": spread["ratios"],
            }
        )
    )


@dataclass(frozen=True)
class Load:
    """Where and how hard the phases post."""

    port: int
    image: bytes
    clients: int
    seconds: float
    warmup: float


@dataclass
class Rounds:
    """What the paired rounds measured."""

    phases: dict[str, Phase]
    counts: Counter[int]  # batch sizes formed with batching on, all rounds
    served_vs_bare: Paired
    batching: Paired


def measure_rounds(load: Load, model_uri: str, shape: tuple[int, ...], rounds: int) -> Rounds:
    """Batching on (with its bare pair right after) and off, interleaved, on a running Serve."""
    from ray import serve

    batch_size_counts = BatchCounter()
    on_phases: list[Phase] = []
    off_phases: list[Phase] = []
    bare: list[float] = []
    counts: Counter[int] = Counter()

    def served(batching: bool) -> float:
        name = "batching_on" if batching else "batching_off"
        serve.run(application(batching), name="classifier", route_prefix="/")
        drive(load.port, load.image, load.clients, load.warmup, "warm-up")
        before = batch_size_counts()
        phase = drive(load.port, load.image, load.clients, load.seconds, name)
        formed = Counter(batch_size_counts())
        formed.subtract(before)
        formed = +formed  # the sizes formed in this phase only
        if batching:  # its bare pair: the same batch sizes, right after
            counts.update(formed)
            bare.append(bare_rps(model_uri, shape, formed, repeats=20))
        (on_phases if batching else off_phases).append(phase)
        return phase.summary()["rps"]

    batching = paired(lambda: served(True), lambda: served(False), rounds)
    return Rounds(
        {
            "batching_on": merged(on_phases, "batching_on"),
            "batching_off": merged(off_phases, "batching_off"),
        },
        counts,
        Paired([p.summary()["rps"] for p in on_phases], bare),
        batching,
    )


def measure_once(load: Load) -> dict[str, Phase]:
    """With batching on: one client alone (what the batching wait costs an idle service), and
    the same load with a tenth of the clients sending crafted images."""
    from ray import serve

    serve.run(application(True), name="classifier", route_prefix="/")
    attackers = max(1, round(load.clients * HOSTILE_SHARE))
    return {
        "idle": drive(load.port, load.image, 1, load.warmup, "idle"),
        "mixed": drive(
            load.port,
            load.image,
            load.clients - attackers,
            load.seconds,
            "mixed",
            (hostile_bodies(), attackers),
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="2 rounds of 10 s phases")
    parser.add_argument("--rounds", type=int, default=None, help="paired rounds")
    parser.add_argument("--clients", type=int, default=32, help="concurrent client threads")
    parser.add_argument("--model", default="resnet18", help="architecture to serve")
    parser.add_argument(
        "--dataset",
        default="digits",
        choices=["digits", "cifar10"],
        help="input shape and classes: digits (1x8x8, a real digit posted) or cifar10 "
        "(3x32x32, a random picture posted)",
    )
    parser.add_argument("--num-cpus", type=int, default=os.cpu_count(), help="Ray logical CPUs")
    args = parser.parse_args()
    seconds, warmup = (10.0, 2.0) if args.quick else (30.0, 5.0)
    rounds = args.rounds or (2 if args.quick else 4)

    import ray
    from ray import serve

    from cluster.mlflow.processes import free_port

    with tempfile.TemporaryDirectory() as tmp:
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp}/bench.db"
        os.environ["PYTHONPATH"] = str(REPO)
        spec = ModelSpec.for_dataset(args.model, dataset_info(args.dataset))
        model_uri = register_untrained(spec)
        if args.dataset == "digits":
            image = png_bytes(load_splits("digits").x_test[0, 0].numpy())
        else:
            image = png_bytes(np.random.default_rng(0).integers(0, 256, (32, 32, 3), np.uint8))
        load = Load(free_port(), image, args.clients, seconds, warmup)
        os.environ.update(private_haproxy_env(f"{tmp}/haproxy", free_port(), free_port()))
        # HAProxy behind the front wrapper, as the project's clusters run it.
        os.environ.update(front_haproxy_env(), RAYVISION_PYTHON=sys.executable)
        # address="local": a private cluster, never one another user started on this machine.
        ray.init(address="local", num_cpus=args.num_cpus, include_dashboard=False)
        try:
            serve.start(http_options={"host": "127.0.0.1", "port": load.port})
            shape = (spec.in_channels, spec.image_size, spec.image_size)
            measured = measure_rounds(load, model_uri, shape, rounds)
            phases = {**measured.phases, **measure_once(load)}
        finally:
            serve.shutdown()
            ray.shutdown()

    report(args, seconds, phases, measured.counts, measured.served_vs_bare, measured.batching)


if __name__ == "__main__":
    main()
