"""HTTP load for the serving benchmarks: client threads posting back to back over keep-alive
connections for a while, a health probe beside them, and what they got back as a Phase."""

from __future__ import annotations

import http.client
import itertools
import json
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

# One answered request: its HTTP status (0: none) and seconds.
Answered = Callable[[int, float], None]
HEALTH_PROBE_S = 0.1


@dataclass
class Phase:
    name: str
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    seconds: float = 0.0
    # What the hostile clients got back, by status (0: no answer).
    hostile: Counter[int] = field(default_factory=Counter)
    # GET /health's seconds, probed every HEALTH_PROBE_S meanwhile (a load balancer's view).
    health: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, float]:
        return {
            "rps": len(self.latencies) / self.seconds,
            "p50_ms": 1000 * _quantile(self.latencies, 0.5),
            "p99_ms": 1000 * _quantile(self.latencies, 0.99),
            "errors": self.errors,
            "requests": len(self.latencies),
            "health_p50_ms": 1000 * _quantile(self.health, 0.5),
            "health_max_ms": 1000 * max(self.health, default=float("nan")),
        }


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values) or [float("nan")]
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def _probe_health(port: int, deadline: float, took: list[float]) -> None:
    """``GET /health`` every HEALTH_PROBE_S until ``deadline``; each answer's seconds (a failed
    probe counts as the time it took to fail)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    while (started := time.perf_counter()) < deadline:
        try:
            connection.request("GET", "/health")
            connection.getresponse().read()
        except (OSError, http.client.HTTPException):
            connection.close()
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        took.append(time.perf_counter() - started)
        time.sleep(max(0.0, HEALTH_PROBE_S - (time.perf_counter() - started)))
    connection.close()


def _post_until(port: int, bodies: list[bytes], deadline: float, answered: Answered) -> None:
    """One client: ``bodies`` in turn, back to back over a keep-alive connection, until
    ``deadline``; each answer's status (0: none) and seconds go to ``answered``."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    headers = {"Content-Type": "application/octet-stream"}
    for body in itertools.cycle(bodies):
        if (started := time.perf_counter()) >= deadline:
            break
        try:
            connection.request("POST", "/predict", body, headers)
            response = connection.getresponse()
            response.read()
            status = response.status
        except (OSError, http.client.HTTPException):
            connection.close()
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            status = 0
        answered(status, time.perf_counter() - started)
    connection.close()


def drive(
    port: int,
    body: bytes,
    clients: int,
    seconds: float,
    name: str,
    hostile: tuple[list[bytes], int] = ([], 0),
) -> Phase:
    """``clients`` threads posting ``body`` back to back for ``seconds``; every answer counts.
    With ``hostile`` (bodies, clients), that many more threads post those bodies meanwhile;
    their answers are counted apart."""
    phase = Phase(name)
    deadline = time.perf_counter() + seconds
    lock = threading.Lock()

    def legit(status: int, took: float) -> None:
        with lock:
            if status == 200:
                phase.latencies.append(took)
            else:
                phase.errors += 1

    def attack(status: int, took: float) -> None:
        with lock:
            phase.hostile[status] += 1

    bodies, attackers = hostile
    threads = [
        threading.Thread(target=_post_until, args=(port, [body], deadline, legit))
        for _ in range(clients)
    ]
    threads += [
        threading.Thread(target=_post_until, args=(port, bodies, deadline, attack))
        for _ in range(attackers)
    ]
    threads.append(threading.Thread(target=_probe_health, args=(port, deadline, phase.health)))
    began = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    phase.seconds = time.perf_counter() - began
    hostile_note = f" hostile answers {dict(phase.hostile)}" if attackers else ""
    print(name, json.dumps(phase.summary()) + hostile_note, flush=True)
    return phase


def merged(phases: list[Phase], name: str) -> Phase:
    """The rounds' phases of one kind as one: their answers and seconds together."""
    merged = Phase(name)
    for phase in phases:
        merged.latencies += phase.latencies
        merged.errors += phase.errors
        merged.seconds += phase.seconds
        merged.health += phase.health
    return merged
