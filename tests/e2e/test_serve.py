"""The classifier service over real HTTP: serve/config.yaml deployed with `serve deploy` on the
session Ray cluster (token auth), models registered on the session MLflow server.

The module deploys once; the tests share it in file order and the alias/pin swaps come last.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
import schemathesis
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from mlflow.tracking import MlflowClient
from PIL import Image
from schemathesis import GenerationMode

from app import model_registry
from app.datasets import dataset_info, load_splits
from app.models import ModelSpec, build_model, cpu_state_dict
from benchmarks.crafted_inputs import rle8_bmp
from serve.client import ServeClient, png_bytes
from tests.conftest import BIN, REPO, MlflowServer, RayCluster
from tests.model_factory import digits_state, log_digits_model, log_untrained
from tests.support import free_port, http_ok, wait_for
from tests.unit.test_preprocessing import encode, png_header_only

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

MODEL_NAME = "e2e-serve-digits"
# Tight bounds so the oversize cases stay small.
MAX_IMAGE_BYTES = 64 * 1024
MAX_PIXELS = 1_000_000
MAX_REQUEST_PIXELS = 3 * MAX_PIXELS
MAX_BATCH_IMAGES = 8
# Requests schemathesis sends to each operation, per generation mode.
FUZZ_EXAMPLES = 40


@dataclass
class Registered:
    """Two registered versions of one briefly trained model, and its own test predictions."""

    run_id: str
    test_accuracy: float
    probabilities: torch.Tensor  # the registered model's own, on the digits test split
    pngs: list[bytes]
    labels: list[str]


@dataclass
class Service:
    url: str
    config: dict[str, Any]
    config_path: Path
    env: dict[str, str]
    dashboard: str
    loaded_at: str = ""

    def deploy(self) -> None:
        self.config_path.write_text(yaml.safe_dump(self.config, sort_keys=False))
        serve_cli(["deploy", "--address", self.dashboard, str(self.config_path)], self.env)

    def deployment(self, name: str) -> dict[str, Any]:
        app = self.config["applications"][0]
        found: dict[str, Any] = next(d for d in app["deployments"] if d["name"] == name)
        return found


def serve_cli(args: list[str], env: dict[str, str]) -> None:
    subprocess.run(
        [str(BIN / "serve"), *args],
        cwd=REPO,
        env={**os.environ, **env},
        check=True,
        timeout=120,
        capture_output=True,
    )


@pytest.fixture(scope="module")
def registered(mlflow_server: MlflowServer) -> Iterator[Registered]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", mlflow_server.uri)
        splits = load_splits("digits")
        run_id, accuracy = log_digits_model(digits_state(epochs=4), "e2e-serve", splits)
        for version in ("1", "2"):
            assert model_registry.register_version(run_id, MODEL_NAME, {}) == version
        model_registry.set_alias(MODEL_NAME, "champion", "1")
        classifier = model_registry.load_predictor(f"models:/{MODEL_NAME}/1")
        yield Registered(
            run_id,
            accuracy,
            classifier.predict_proba(splits.x_test),
            [png_bytes(image[0].numpy()) for image in splits.x_test],
            [splits.info.classes[y] for y in splits.y_test],
        )


def service_config(port: int) -> dict[str, Any]:
    """serve/config.yaml as shipped, pointed at this test's model, port and bounds."""
    config: dict[str, Any] = yaml.safe_load((REPO / "serve" / "config.yaml").read_text())
    config["http_options"].update(host="127.0.0.1", port=port)
    app = config["applications"][0]
    deployments = {d["name"]: d for d in app["deployments"]}
    deployments["ClassifierAPI"]["user_config"].update(
        max_image_bytes=MAX_IMAGE_BYTES,
        max_pixels=MAX_PIXELS,
        max_request_pixels=MAX_REQUEST_PIXELS,
        max_batch_images=MAX_BATCH_IMAGES,
    )
    classifier = deployments["Classifier"]
    classifier["user_config"].update(model_name=MODEL_NAME, poll_interval_s=0.5)
    # One replica: the cluster's 4 logical CPUs are shared with the other tests.
    classifier["autoscaling_config"].update(min_replicas=1, max_replicas=1)
    return config


@pytest.fixture(scope="module")
def service(
    ray_cluster: RayCluster, registered: Registered, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Service]:
    port = free_port()
    service = Service(
        f"http://127.0.0.1:{port}",
        service_config(port),
        tmp_path_factory.mktemp("serve") / "config.yaml",
        ray_cluster.env,
        ray_cluster.dashboard,
    )
    try:
        service.deploy()
        wait_for(lambda: http_ok(f"{service.url}/health"), 300, "the service's /health")
        service.loaded_at = requests.get(f"{service.url}/model", timeout=10).json()["loaded_at"]
        yield service
    finally:
        serve_cli(["shutdown", "-y", "--address", ray_cluster.dashboard], ray_cluster.env)


# ---------------------------------------------------------------------------------------------
# Predictions


def test_held_out_digits_are_classified_like_the_registered_model(
    service: Service, registered: Registered
) -> None:
    client = ServeClient(service.url)
    served: list[dict[str, Any]] = []
    for start in range(0, len(registered.pngs), MAX_BATCH_IMAGES):
        served += client.predict_batch(registered.pngs[start : start + MAX_BATCH_IMAGES])
    own = registered.probabilities
    assert [p["class_index"] for p in served] == own.argmax(1).tolist()
    accuracy = np.mean([p["label"] == y for p, y in zip(served, registered.labels, strict=True)])
    assert accuracy == pytest.approx(registered.test_accuracy)
    assert accuracy >= 0.8  # the model learned: the equality above is not chance agreement
    confidences = [p["confidence"] for p in served]
    assert confidences == pytest.approx(own.max(1).values.tolist(), abs=1e-4)


def test_single_raw_single_multipart_and_batch_agree(
    service: Service, registered: Registered
) -> None:
    images = registered.pngs[:MAX_BATCH_IMAGES]
    client = ServeClient(service.url)
    batch = client.predict_batch(images, top_k=10)
    for image, from_batch in zip(images, batch, strict=True):
        raw = client.predict(image, top_k=10)
        response = requests.post(
            f"{service.url}/predict",
            files={"file": ("digit.png", image, "image/png")},
            params={"top_k": 10},
            timeout=30,
        )
        assert response.status_code == 200
        for other in (response.json(), from_batch):
            assert other["class_index"] == raw["class_index"] and other["label"] == raw["label"]
            ranked = [(c["class_index"], c["probability"]) for c in other["top_k"]]
            expected = [(c["class_index"], c["probability"]) for c in raw["top_k"]]
            assert [i for i, _ in ranked] == [i for i, _ in expected]
            assert [p for _, p in ranked] == pytest.approx([p for _, p in expected], abs=1e-5)
        probabilities = [c["probability"] for c in raw["top_k"]]
        assert probabilities == sorted(probabilities, reverse=True)
        assert sum(probabilities) == pytest.approx(1, abs=1e-4)
    assert len(client.predict(images[0])["top_k"]) == 3  # the default top-k


def test_model_endpoint_reports_the_served_version(
    service: Service, registered: Registered
) -> None:
    info = ServeClient(service.url).model()
    assert (info["name"], info["version"], info["alias"]) == (MODEL_NAME, "1", "champion")
    assert (info["status"], info["dataset"]) == ("ready", "digits")
    assert info["input_shape"] == [1, 8, 8] and info["classes"] == [str(d) for d in range(10)]
    assert datetime.fromisoformat(info["loaded_at"]).tzinfo is not None
    # What it was made from is the clients' too; where it is stored and its metrics are not.
    assert info["lineage"]["training_run_id"] == registered.run_id
    assert "models:/" not in str(info) and "test_accuracy" not in str(info)
    prediction = ServeClient(service.url).predict(registered.pngs[0])
    assert prediction["model"] == {"name": MODEL_NAME, "version": "1", "alias": "champion"}


def test_health_and_openapi(service: Service) -> None:
    health = requests.get(f"{service.url}/health", timeout=10)
    assert health.status_code == 200 and health.json()["model"]["version"] == "1"
    assert requests.get(f"{service.url}/docs", timeout=10).status_code == 200
    # The load balancer's check on the cluster (serve-ingress.yaml): Serve's liveness route.
    ingress = yaml.safe_load((REPO / "cluster" / "kuberay" / "serve-ingress.yaml").read_text())
    liveness = ingress["metadata"]["annotations"]["alb.ingress.kubernetes.io/healthcheck-path"]
    assert requests.get(f"{service.url}{liveness}", timeout=10).status_code == 200
    paths = requests.get(f"{service.url}/openapi.json", timeout=10).json()["paths"]
    assert {"/predict", "/predict/batch", "/model", "/health"} <= set(paths)


def ingress_sessions(stats_url: str) -> list[int]:
    """Requests HAProxy has sent straight to each ClassifierAPI replica (its stats, as CSV);
    empty until HAProxy has learned of one, when its fallback is Serve's Python proxy."""
    lines = requests.get(f"{stats_url};csv", timeout=10).text.splitlines()
    header = lines[0].removeprefix("# ").split(",")
    rows = [dict(zip(header, line.split(","), strict=False)) for line in lines[1:] if line]
    prefix = "SERVE_REPLICA_classifier-ClassifierAPI"
    return [int(row["stot"]) for row in rows if row["svname"].startswith(prefix)]


def test_requests_go_through_haproxy_to_the_ingress_replica(
    service: Service, registered: Registered, ray_cluster: RayCluster
) -> None:
    """The high-throughput path the project's clusters run: HAProxy on Serve's HTTP port,
    forwarding to the ingress replica's own HTTP server, not through Serve's Python proxy."""
    stats = ray_cluster.haproxy_stats
    before = wait_for(lambda: ingress_sessions(stats), 120, "HAProxy to know the ingress replica")
    for png in registered.pngs[:5]:
        assert requests.post(f"{service.url}/predict", data=png, timeout=30).status_code == 200
    assert sum(ingress_sessions(stats)) >= sum(before) + 5
    # A silent client is dropped in 30 s, not Ray's default hour.
    (config,) = (ray_cluster.temp_dir / "hp").glob("*/haproxy.cfg")  # Ray's: one per node
    assert "timeout client 30s" in config.read_text()


def exported(metrics_url: str, *needles: str) -> bool:
    """One line of the node's Prometheus page holds every needle (export lags seconds)."""
    lines = requests.get(metrics_url, timeout=10).text.splitlines()
    return any(all(needle in line for needle in needles) for line in lines)


def test_service_metrics_reach_prometheus(
    service: Service, registered: Registered, ray_cluster: RayCluster
) -> None:
    """Requests, latency, batch sizes and the version served, on the node's metrics endpoint."""
    assert requests.post(f"{service.url}/predict", data=registered.pngs[0], timeout=30).ok
    version = (f'model_name="{MODEL_NAME}"', 'model_version="1"')
    expected = [
        ("ray_rayvision_http_requests_total{", 'route="/predict"', 'status="200"'),
        ("ray_rayvision_http_latency_ms_bucket{", 'route="/predict"'),
        ("ray_rayvision_batch_size_bucket{",),
        ("ray_rayvision_forward_ms_bucket{",),
        ("ray_rayvision_predictions_total{", *version),
        ("ray_rayvision_model_served{", *version),
    ]
    for needles in expected:
        wait_for(lambda n=needles: exported(ray_cluster.metrics, *n), 60, " ".join(needles))


# ---------------------------------------------------------------------------------------------
# Bad input: a 4xx with a JSON body, and the replica keeps serving


def encoded(fmt: str, size: int = 64) -> bytes:
    noise = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
    return encode(Image.fromarray(noise), fmt)


def multipart(boundary: str, body: bytes) -> dict[str, Any]:
    return {"data": body, "headers": {"Content-Type": f"multipart/form-data; boundary={boundary}"}}


PNG = encoded("PNG")
BAD_INPUTS: dict[str, tuple[str, dict[str, Any], int, str]] = {
    "empty body": ("/predict", {"data": b""}, 400, "empty_input"),
    "non-image bytes": (
        "/predict",
        {"data": b"%!PS-Adobe-3.0 not an image"},
        415,
        "unsupported_format",
    ),
    "truncated png": ("/predict", {"data": PNG[: len(PNG) // 2]}, 422, "corrupt_image"),
    "too many pixels": ("/predict", {"data": png_header_only(1001, 1000)}, 413, "too_many_pixels"),
    "decompression bomb": (
        "/predict",
        {"data": png_header_only(30_000, 30_000)},
        413,
        "too_many_pixels",
    ),
    "batch over the pixel budget": (
        "/predict/batch",
        {"files": [("files", (f"{i}.png", png_header_only(1000, 1000))) for i in range(4)]},
        413,
        "too_many_pixels",
    ),
    "rle-compressed bmp (decoded in python)": (
        "/predict",
        {"data": rle8_bmp(255, 255)},
        415,
        "unsupported_format",
    ),
    "oversize body": ("/predict", {"data": b"\x89PNG" + bytes(MAX_IMAGE_BYTES)}, 413, "too_large"),
    "oversize chunked body": (
        "/predict",
        {"data": iter([b"\x89PNG", bytes(MAX_IMAGE_BYTES)])},  # no Content-Length: streamed
        413,
        "too_large",
    ),
    "oversize multipart file": (
        "/predict",
        {"files": {"file": ("big.png", bytes(MAX_IMAGE_BYTES * 3))}},
        413,
        "too_large",
    ),
    "gif": ("/predict", {"data": encoded("GIF")}, 415, "unsupported_format"),
    "tiff": (
        "/predict",
        {"files": {"file": ("a.tif", encoded("TIFF", 16))}},
        415,
        "unsupported_format",
    ),
    "bad image in a batch": (
        "/predict/batch",
        {"files": [("files", ("a.png", PNG)), ("files", ("b.gif", encoded("GIF")))]},
        415,
        "unsupported_format",
    ),
    "batch over the limit": (
        "/predict/batch",
        {"files": [("files", (f"{i}.png", PNG)) for i in range(MAX_BATCH_IMAGES + 1)]},
        413,
        "too_many_files",
    ),
    "batch not multipart": ("/predict/batch", {"data": PNG}, 400, "malformed_multipart"),
    "multipart without boundary": (
        "/predict",
        {"data": b"abc", "headers": {"Content-Type": "multipart/form-data"}},
        400,
        "malformed_multipart",
    ),
    "multipart garbage": (
        "/predict",
        multipart("xyz", b"\x00\x01 garbage --xyz--"),
        400,
        "malformed_multipart",
    ),
    "multipart without the file field": (
        "/predict",
        {"files": {"image": ("a.png", PNG)}},
        400,
        "missing_file",
    ),
    "file field as text": (
        "/predict",
        {"data": {"file": "not a file"}, "files": {"x": ("x", b"")}},
        400,
        "missing_file",
    ),
    "top_k out of range": (
        "/predict",
        {"data": PNG, "params": {"top_k": 0}},
        422,
        "invalid_parameter",
    ),
}


@pytest.mark.parametrize(
    ("route", "request_args", "status", "code"), BAD_INPUTS.values(), ids=list(BAD_INPUTS)
)
def test_bad_input_is_a_4xx_json_error_and_the_replica_stays_up(
    service: Service, route: str, request_args: dict[str, Any], status: int, code: str
) -> None:
    response = requests.post(f"{service.url}{route}", timeout=30, **request_args)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert (body["error"], body["status"]) == (code, status) and body["detail"]
    assert http_ok(f"{service.url}/health")
    # Still the replica that started with the module: none crashed and was replaced.
    assert requests.get(f"{service.url}/model", timeout=10).json()["loaded_at"] == service.loaded_at


@pytest.mark.parametrize("mode", list(GenerationMode), ids=lambda mode: mode.value)
def test_an_outside_client_fuzzing_the_published_openapi_gets_no_5xx(
    service: Service, mode: GenerationMode
) -> None:
    """schemathesis reads the service's /openapi.json and sends what it describes (positive)
    and what breaks it (negative: wrong types, missing bodies, out-of-range top_k) to every
    operation, through HAProxy as a client would."""
    schema = schemathesis.openapi.from_url(f"{service.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/predict", "/predict/batch", "/model", "/health"}
    answers: list[tuple[str, int]] = []
    for operation in operations:

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(
            max_examples=FUZZ_EXAMPLES,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def send(case: schemathesis.Case) -> None:
            response = case.call(timeout=30)
            answers.append((f"{case.method} {case.path}", response.status_code))
            assert response.status_code < 500, f"{case.method} {case.path}: {response.text[:300]}"

        try:
            send()
        except Unsatisfiable:  # negative: an operation without parameters has nothing to break
            assert mode is GenerationMode.NEGATIVE and not operation.path.startswith("/predict")
    fuzzed = {route for route, _ in answers}
    assert {"POST /predict", "POST /predict/batch"} <= fuzzed, answers
    assert requests.get(f"{service.url}/model", timeout=10).json()["loaded_at"] == service.loaded_at


TRICKLERS = 150  # more than the ingress's max_ongoing_requests (128)


def test_trickling_uploads_are_cut_off_and_do_not_starve_normal_clients(
    service: Service, registered: Registered
) -> None:
    """150 connections that send a /predict's headers, then a byte of its body now and then:
    each is cut off (408, or closed) once it falls behind the ingress's minimum body rate, and
    meanwhile a normal client's every request is answered."""
    port = int(service.url.rsplit(":", 1)[1])
    head = (
        b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\n"
        b"Content-Length: 60000\r\n\r\n\x89PNG"
    )
    tricklers = []
    for _ in range(TRICKLERS):
        connection = socket.create_connection(("127.0.0.1", port), timeout=10)
        connection.sendall(head)
        connection.setblocking(False)
        tricklers.append(connection)
    ended: dict[socket.socket, bytes] = {}
    stop = threading.Event()

    def trickle() -> None:
        while not stop.wait(0.5) and len(ended) < len(tricklers):
            for connection in tricklers:
                if connection in ended:
                    continue
                try:
                    ended[connection] = connection.recv(4096)  # b"": closed, no answer
                    continue
                except BlockingIOError:
                    pass  # nothing yet: the next byte
                except OSError:
                    ended[connection] = b""
                    continue
                with contextlib.suppress(OSError):  # closed meanwhile: recv says so next
                    connection.send(b"\x00")

    pacer = threading.Thread(target=trickle, daemon=True)
    pacer.start()
    try:
        statuses = [
            requests.post(f"{service.url}/predict", data=png, timeout=60).status_code
            for png in registered.pngs[:20]
        ]
        wait_for(lambda: len(ended) == len(tricklers), 120, "every trickling upload cut off")
    finally:
        stop.set()
        pacer.join()
        for connection in tricklers:
            connection.close()
    assert statuses == [200] * 20
    answers = {a.split(b"\r\n", 1)[0] for a in ended.values()}
    assert answers <= {b"HTTP/1.1 408 Request Timeout", b""}, answers
    assert b"HTTP/1.1 408 Request Timeout" in answers
    assert requests.get(f"{service.url}/model", timeout=10).json()["loaded_at"] == service.loaded_at


# ---------------------------------------------------------------------------------------------
# Zero-downtime swaps (last: they change what is served)


@dataclass
class SteadyClient:
    """Posts one digit continuously from a thread; records every outcome in order."""

    url: str
    image: bytes
    versions: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        with requests.Session() as session:
            while not self.stop.is_set():
                try:
                    response = session.post(f"{self.url}/predict", data=self.image, timeout=30)
                except requests.RequestException as exc:
                    self.failures.append(repr(exc))
                    continue
                if response.status_code == 200:
                    self.versions.append(response.json()["model"]["version"])
                else:
                    self.failures.append(f"{response.status_code}: {response.text[:200]}")

    def served(self, version: str, count: int) -> bool:
        """At least ``count`` answers from ``version`` since the last different one."""
        tail = self.versions[-count:]
        return len(tail) == count and all(v == version for v in tail)


def segments(versions: list[str]) -> list[str]:
    return [v for i, v in enumerate(versions) if i == 0 or versions[i - 1] != v]


def test_alias_move_and_user_config_pin_swap_with_zero_failed_requests(
    service: Service, registered: Registered, mlflow_server: MlflowServer
) -> None:
    steady = SteadyClient(service.url, registered.pngs[0])
    thread = threading.Thread(target=steady.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: steady.served("1", 20), 60, "answers from version 1")
        # A promotion: the alias moves in the registry; the replica's poller follows it.
        MlflowClient(mlflow_server.uri).set_registered_model_alias(MODEL_NAME, "champion", "2")
        wait_for(lambda: steady.served("2", 20), 60, "answers from version 2 after the alias move")
        # An explicit switch: `serve deploy` with only the user_config changed (no restart).
        service.deployment("Classifier")["user_config"]["model_version"] = 1
        service.deploy()
        wait_for(lambda: steady.served("1", 20), 120, "answers from version 1 after the pin")
    finally:
        steady.stop.set()
        thread.join(60)
    assert steady.failures == []
    assert segments(steady.versions) == ["1", "2", "1"]
    info = ServeClient(service.url).model()
    assert (info["version"], info["alias"], info["status"]) == ("1", None, "ready")


def test_a_swap_to_a_model_of_another_input_shape_under_load_fails_no_request(
    service: Service, registered: Registered, mlflow_server: MlflowServer
) -> None:
    """Version 3 takes 3 x 32 x 32 colour images where versions 1 and 2 take 1 x 8 x 8 grey
    ones: requests decoded for one shape while the other is swapped in are decoded again."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", mlflow_server.uri)
        cifar = ModelSpec.for_dataset("resnet18", dataset_info("cifar10"))
        run_id = log_untrained(cifar, cpu_state_dict(build_model(cifar)))
        version = model_registry.register_version(run_id, MODEL_NAME, {})
    steady = SteadyClient(service.url, registered.pngs[0])
    thread = threading.Thread(target=steady.run, daemon=True)
    thread.start()
    classifier = service.deployment("Classifier")
    try:
        wait_for(lambda: steady.served("1", 20), 60, "answers from version 1")
        classifier["user_config"]["model_version"] = int(version)
        service.deploy()
        wait_for(lambda: steady.served(version, 20), 120, f"answers from version {version}")
        classifier["user_config"]["model_version"] = 1
        service.deploy()
        wait_for(lambda: steady.served("1", 20), 120, "answers from version 1 again")
    finally:
        steady.stop.set()
        thread.join(60)
    assert steady.failures == []
    assert segments(steady.versions) == ["1", version, "1"]


def test_environment_pins_a_run_over_the_user_config(
    service: Service, registered: Registered
) -> None:
    # The user_config still pins version 1; MODEL_RUN_ID in the replicas' environment wins, and
    # the run's newest registered version (2) is reported.
    env = {"MODEL_RUN_ID": registered.run_id}
    service.config["applications"][0]["runtime_env"] = {"env_vars": env}
    service.deploy()

    def model() -> dict[str, Any] | None:
        try:
            response = requests.get(f"{service.url}/model", timeout=10)
        except requests.RequestException:
            return None  # the replicas restart for a new environment
        if not response.ok:
            return None
        info: dict[str, Any] = response.json()
        return info if info["version"] == "2" else None  # version 1 is pinned until then

    info = wait_for(model, 180, "the model of MODEL_RUN_ID")
    assert (info["alias"], info["status"]) == (None, "ready")


# ---------------------------------------------------------------------------------------------
# Autoscaling and overload


def serve_application(service: Service) -> dict[str, Any]:
    """The classifier application as Serve's REST API reports it ({} while it cannot answer)."""
    response = requests.get(
        f"{service.dashboard}/api/serve/applications/",
        headers={"Authorization": f"Bearer {service.env['RAY_AUTH_TOKEN']}"},
        timeout=10,
    )
    app: dict[str, Any] = (
        response.json()["applications"].get("classifier", {}) if response.ok else {}
    )
    return app


def running_replicas(service: Service, deployment: str) -> list[dict[str, Any]]:
    found = serve_application(service).get("deployments", {}).get(deployment, {})
    return [replica for replica in found.get("replicas", []) if replica["state"] == "RUNNING"]


@dataclass
class SteadyLoad:
    """``SteadyClient``s posting one digit each from their own threads."""

    clients: list[SteadyClient]

    def answered(self) -> int:
        return sum(len(client.versions) for client in self.clients)

    def failures(self) -> list[str]:
        return [failure for client in self.clients for failure in client.failures]


@contextlib.contextmanager
def steady_load(service: Service, image: bytes, clients: int = 16) -> Iterator[SteadyLoad]:
    load = SteadyLoad([SteadyClient(service.url, image) for _ in range(clients)])
    threads = [threading.Thread(target=client.run, daemon=True) for client in load.clients]
    for thread in threads:
        thread.start()
    try:
        yield load
    finally:
        for client in load.clients:
            client.stop.set()
        for thread in threads:
            thread.join(60)


def test_classifier_scales_out_under_load_with_zero_failed_requests(
    service: Service, registered: Registered
) -> None:
    """Load past target_ongoing_requests adds a Classifier replica while requests keep being
    answered. One image per batch here, so that every in-flight image is a Classifier request
    and the load is sure to pass the target (1 batch per replica, as the config ships)."""
    service.deployment("ClassifierAPI")["user_config"]["max_batch_size"] = 1
    classifier = service.deployment("Classifier")
    assert classifier["autoscaling_config"]["target_ongoing_requests"] == 1
    classifier["autoscaling_config"].update(max_replicas=2, upscale_delay_s=5)
    service.deploy()
    with steady_load(service, registered.pngs[0]) as load:
        wait_for(lambda: len(running_replicas(service, "Classifier")) == 2, 180, "a second replica")
        before = load.answered()
        wait_for(lambda: load.answered() >= before + 50, 60, "answers after the scale-out")
    assert load.failures() == []


def test_a_classifier_replica_killed_under_load_gives_only_200_and_503(
    service: Service, registered: Registered
) -> None:
    """A Classifier replica's process killed (SIGKILL, as the OOM killer or a lost node does)
    while 16 clients post: the requests it held are 503 with Retry-After, never 500; the rest
    are answered, and Serve replaces the replica."""

    def replicas() -> list[dict[str, Any]]:
        return running_replicas(service, "Classifier")

    wait_for(lambda: len(replicas()) == 2, 180, "two Classifier replicas (the scale-out's)")
    with steady_load(service, registered.pngs[0]) as load:
        wait_for(lambda: load.answered() >= 50, 60, "answers under load")
        (victim, *_) = replicas()
        os.kill(victim["pid"], signal.SIGKILL)
        before = load.answered()
        wait_for(lambda: load.answered() >= before + 100, 120, "answers after the kill")
        wait_for(
            lambda: victim["replica_id"] not in {r["replica_id"] for r in replicas()},
            60,
            "Serve to notice the killed replica",
        )
    assert all(failure.startswith("503:") for failure in load.failures()), load.failures()


def serving_with(service: Service, bounds: dict[str, int]) -> bool:
    """Serve's REST API reports the application running with ``bounds`` on every deployment."""
    app = serve_application(service)
    deployments = app.get("deployments", {}).values()
    return app.get("status") == "RUNNING" and all(
        d["status"] == "HEALTHY" and bounds.items() <= d["deployment_config"].items()
        for d in deployments
    )


def test_overload_is_refused_with_503_and_the_service_recovers(
    service: Service, registered: Registered
) -> None:
    """Past the queue bounds requests are refused with 503 instead of queueing without end."""
    bounds = {"max_ongoing_requests": 1, "max_queued_requests": 1}
    for name in ("ClassifierAPI", "Classifier"):
        service.deployment(name).update(bounds)
    service.deploy()
    wait_for(lambda: serving_with(service, bounds), 180, "the redeployed queue bounds")
    clients = 40
    start = threading.Barrier(clients)
    statuses: list[int] = []

    def post() -> None:
        start.wait()
        response = requests.post(f"{service.url}/predict", data=registered.pngs[0], timeout=60)
        statuses.append(response.status_code)

    threads = [threading.Thread(target=post) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(90)
    # Some are served, the rest refused; none fails otherwise or times out.
    assert len(statuses) == clients and sorted(set(statuses)) == [200, 503], statuses
    assert requests.get(f"{service.url}/health", timeout=10).status_code == 200
