"""A local Ray head of the tests' own: free ports, its own HOME (holding its auth token) and
temp dir, and a stop() that ends exactly the processes it started.

`ray stop` (and ray.cluster_utils.AutoscalingCluster, which calls `ray stop --force`) would end
every Ray process on the machine, other people's clusters included.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import requests

from tests.support import free_port, wait_for

RAY = str(Path(sys.executable).with_name("ray"))


class LocalRayCluster:
    def __init__(
        self,
        root: Path,
        *,
        head_cpus: int,
        autoscaling_config: dict[str, Any] | None = None,
        env: dict[str, str] | None = None,
        head_args: tuple[str, ...] = (),
        cwd: Path | None = None,
    ) -> None:
        self.root = root
        self.home = root / "home"
        # Short: Unix socket paths under the temp dir must stay below ~107 characters for Ray
        # and 97 for HAProxy, which adds a 56-character node id of its own.
        self.temp_dir = Path(f"/tmp/rv{secrets.token_hex(3)}")
        self.head_cpus = head_cpus
        self.autoscaling_config = autoscaling_config
        self.extra_env = env or {}
        self.head_args = head_args
        self.cwd = cwd  # the working directory of its processes, jobs' drivers included
        # Every port explicit: Ray's defaults (6379, 8265, 52365, ...) may be taken by Redis or by
        # other clusters on this machine.
        ports: list[int] = []
        while len(ports) < 9:
            port = free_port()
            if port not in ports:
                ports.append(port)
        self.gcs_port, self.dashboard_port = ports[:2]
        self.metrics_port = ports[5]
        self.port_args = [
            f"--{flag}={port}"
            for flag, port in zip(
                (
                    "ray-client-server-port",
                    "dashboard-agent-listen-port",
                    "dashboard-agent-grpc-port",
                    "metrics-export-port",
                    "runtime-env-agent-port",
                    "node-manager-port",
                    "object-manager-port",
                ),
                ports[2:],
                strict=True,
            )
        ]
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def gcs_address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    @property
    def token(self) -> str:
        return (self.home / ".ray" / "auth_token").read_text().strip()

    @property
    def metrics_url(self) -> str:
        """The head node's Prometheus endpoint (Ray's and the applications' metrics)."""
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def client_env(self) -> dict[str, str]:
        """Environment of a client process: the cluster's HOME (its token), token auth on."""
        env = {**os.environ, "HOME": str(self.home), "RAY_AUTH_MODE": "token"}
        env.pop("RAY_ADDRESS", None)
        return env

    def start(self) -> None:
        self.home.mkdir(parents=True)
        cmd = [
            RAY,
            "start",
            "--head",
            "--block",
            f"--port={self.gcs_port}",
            f"--dashboard-port={self.dashboard_port}",
            *self.port_args,
            "--dashboard-host=127.0.0.1",
            "--include-dashboard=true",
            f"--num-cpus={self.head_cpus}",
            f"--temp-dir={self.temp_dir}",
            "--disable-usage-stats",
            *self.head_args,
        ]
        # A RAY_ADDRESS of the caller's names another cluster; one in `env` names this one.
        inherited = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        env = {**inherited, "HOME": str(self.home), **self.extra_env}
        # `ray start --head` turns token auth on when a token exists (or RAY_AUTH_MODE=token):
        # make one in this HOME, as a user does once with the same command.
        subprocess.run(
            [RAY, "get-auth-token", "--generate"], env=env, check=True, capture_output=True
        )
        if self.autoscaling_config is not None:
            config_path = self.root / "autoscaling.json"
            config_path.write_text(json.dumps(self.autoscaling_config))
            cmd.append(f"--autoscaling-config={config_path}")
        log = (self.root / "ray-start.log").open("wb")
        self.process = subprocess.Popen(
            cmd,
            env=env,
            cwd=self.cwd,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            wait_for(self._dashboard_up, 90, "the Ray dashboard to answer")
        except TimeoutError:
            self.stop()
            raise

    def _dashboard_up(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            log = (self.root / "ray-start.log").read_text()[-2000:]
            raise RuntimeError(f"ray start exited early:\n{log}")
        try:
            requests.get(f"{self.dashboard_url}/api/version", timeout=2)
        except requests.ConnectionError:
            return False
        return (self.home / ".ray" / "auth_token").is_file()

    def _own_processes(self) -> list[int]:
        """`ray start` and every live process whose command line names this cluster's temp dir."""
        if self.process is not None:
            self.process.poll()  # reaps `ray start` once it has exited
        marker = str(self.temp_dir).encode()
        own = []
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                cmdline = (proc / "cmdline").read_bytes()
                state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue  # ended meanwhile
            is_head = self.process is not None and int(proc.name) == self.process.pid
            if state != "Z" and (is_head or marker in cmdline):
                own.append(int(proc.name))
        return own

    def stop(self) -> None:
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            # A raylet drains for up to 30 s on SIGTERM; a test cluster has nothing to drain.
            wait_for(lambda: not self._own_processes(), 5, "Ray to stop")
        except TimeoutError:
            for pid in self._own_processes():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            wait_for(lambda: not self._own_processes(), 10, "Ray to be killed")
        self.process = None
        shutil.rmtree(self.temp_dir, ignore_errors=True)
