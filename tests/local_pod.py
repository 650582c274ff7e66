"""A rendered pod spec run as local processes, in an image's environment (tests/image_env.py).

Each container runs its own `command` and `args` with its own `env` (values and Secret
references), with every volume mount mapped to a local directory: the paths the chart wrote
point there instead. Native sidecars (init containers with `restartPolicy: Always`) start first
and must pass their startup probe; plain init containers run to completion; then the containers
start. What Kubernetes injects from outside the spec (the IRSA webhook's AWS settings) is
``injected_env``.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.image_env import ImageEnv
from tests.support import http_ok, stop_process_group, wait_for


@dataclass
class LocalPod:
    spec: dict[str, Any]  # the pod template's spec
    image: ImageEnv
    volumes: dict[str, Path]  # volume name -> local directory
    secrets: dict[str, dict[str, str]] = field(default_factory=dict)
    injected_env: dict[str, str] = field(default_factory=dict)
    logs: Path | None = None
    running: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def container(self, name: str) -> dict[str, Any]:
        everything = self.spec.get("initContainers", []) + self.spec["containers"]
        (found,) = [c for c in everything if c["name"] == name]
        return found

    def _mapped(self, container: dict[str, Any], text: str) -> str:
        """``text`` with each mount path (a whole path component, the longest first) replaced by
        its local directory, in one pass: the local paths may themselves lie under a mount path
        such as /tmp."""
        mounts = {
            m["mountPath"]: str(self.volumes[m["name"]]) for m in container.get("volumeMounts", [])
        }
        if not mounts:
            return text
        paths = "|".join(re.escape(p) for p in sorted(mounts, key=len, reverse=True))
        return re.sub(rf"(?<![\w/.-])({paths})(?=/|$|[^\w.-])", lambda m: mounts[m[1]], text)

    def mapped(self, name: str, text: str) -> str:
        """``text`` (a file's content) as container ``name`` would find its paths here."""
        return self._mapped(self.container(name), text)

    def argv(self, name: str) -> list[str]:
        container = self.container(name)
        words = container.get("command", []) + container.get("args", [])
        return [self._mapped(container, word) for word in words]

    def env(self, name: str) -> dict[str, str]:
        container = self.container(name)
        env = dict(self.injected_env)
        for item in container.get("env", []):
            if "value" in item:
                env[item["name"]] = self._mapped(container, str(item["value"]))
            else:
                ref = item["valueFrom"]["secretKeyRef"]
                env[item["name"]] = self.secrets[ref["name"]][ref["key"]]
        return self.image.env(env)

    def _popen(self, name: str) -> subprocess.Popen[bytes]:
        out: Any = subprocess.DEVNULL
        if self.logs is not None:
            out = (self.logs / f"{name}.log").open("ab")
        return subprocess.Popen(
            self.argv(name),
            cwd=self.image.workdir,
            env=self.env(name),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def log(self, name: str) -> str:
        assert self.logs is not None
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def probe(self, name: str, kind: str) -> bool:
        container = self.container(name)
        check = container[kind]
        if "exec" in check:
            argv = [self._mapped(container, w) for w in check["exec"]["command"]]
            return subprocess.run(argv, check=False).returncode == 0
        port = check["httpGet"]["port"]
        if isinstance(port, str):
            port = next(p["containerPort"] for p in container["ports"] if p["name"] == port)
        return http_ok(f"http://127.0.0.1:{port}{check['httpGet']['path']}")

    def run(self, name: str, timeout: float = 300) -> int:
        """Run a container to completion; its exit status."""
        process = self._popen(name)
        try:
            return process.wait(timeout=timeout)
        finally:
            stop_process_group(process)

    def start(self, name: str, timeout: float = 120) -> subprocess.Popen[bytes]:
        """Start a long-running container and wait for its startup probe, failing early with
        its log if it exits."""
        process = self._popen(name)
        self.running[name] = process

        def started() -> bool:
            if process.poll() is not None:
                raise AssertionError(f"{name} exited with {process.returncode}:\n{self.log(name)}")
            return "startupProbe" not in self.container(name) or self.probe(name, "startupProbe")

        wait_for(started, timeout, f"{name}'s startup probe", interval=0.5)
        return process

    def _init(self) -> None:
        """Sidecars and init containers, in order, as the kubelet runs them."""
        for container in self.spec.get("initContainers", []):
            if container.get("restartPolicy") == "Always":
                self.start(container["name"])
            else:
                status = self.run(container["name"])
                assert status == 0, f"{container['name']}: {status}\n{self.log(container['name'])}"

    def start_pod(self) -> None:
        """A Deployment's pod: its init containers, then its long-running containers. If one
        fails to start, what did start (a sidecar) is stopped again."""
        try:
            self._init()
            for container in self.spec["containers"]:
                self.start(container["name"])
        except BaseException:
            self.stop()
            raise

    def run_job(self, timeout: float = 600) -> dict[str, int]:
        """A Job's pod: its init containers, then each container to completion; exit statuses."""
        self._init()
        return {c["name"]: self.run(c["name"], timeout) for c in self.spec["containers"]}

    def stop(self, name: str | None = None) -> None:
        names = [name] if name else list(self.running)
        for each in names:
            stop_process_group(self.running.pop(each))
