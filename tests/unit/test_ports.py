"""cluster/local_ports.py: taken ports named with their holder and variable, free ports picked
for a demo's defaults, and a cluster stopped by its session id, nothing else."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from cluster import local_ports
from tests.support import wait_for


@pytest.fixture
def listening() -> Iterator[int]:
    """A port this test process listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def test_a_listening_port_is_taken_and_its_holder_named(listening: int) -> None:
    assert not local_ports.is_free(listening)
    assert local_ports.holder(listening) == f"{Path('/proc/self/comm').read_text().strip()} " + (
        f"(pid {os.getpid()})"
    )
    free = local_ports.free_port()
    assert local_ports.is_free(free)
    assert local_ports.holder(free) is None


def test_check_says_in_one_line_what_holds_the_port_and_which_variable_moves_it(
    listening: int,
) -> None:
    free = local_ports.free_port({listening})
    errors = local_ports.check([f"RAY_PORT={listening}", f"MLFLOW_PORT={free}"])
    assert len(errors) == 1
    line = errors[0]
    assert "\n" not in line
    assert line.startswith(f"error: port {listening} (Ray GCS) is taken by ")
    assert f"(pid {os.getpid()})" in line
    assert "RAY_PORT=" in line


def test_check_exits_1_on_a_taken_port_and_0_when_all_are_free(
    listening: int, capsys: pytest.CaptureFixture[str]
) -> None:
    assert local_ports.main(["check", f"DASHBOARD_PORT={listening}"]) == 1
    assert "DASHBOARD_PORT" in capsys.readouterr().err
    assert local_ports.main(["check", f"DASHBOARD_PORT={local_ports.free_port()}"]) == 0
    assert local_ports.main(["check", "DASHBOARD_PORT=x"]) == 1


def test_pick_moves_a_taken_default_and_keeps_free_ones(listening: int) -> None:
    free = local_ports.free_port({listening})
    chosen, notes = local_ports.pick([f"RAY_PORT={listening}", f"MLFLOW_PORT={free}"], {})
    assert chosen["MLFLOW_PORT"] == free
    assert chosen["RAY_PORT"] not in (listening, free)
    assert local_ports.is_free(chosen["RAY_PORT"])
    assert len(notes) == 1
    assert f"port {listening} (Ray GCS) is taken" in notes[0]
    assert f"using {chosen['RAY_PORT']} (set RAY_PORT to choose)" in notes[0]


def test_pick_never_gives_one_port_twice() -> None:
    free = local_ports.free_port()
    chosen, _ = local_ports.pick([f"RAY_PORT={free}", f"DASHBOARD_PORT={free}"], {})
    assert chosen["RAY_PORT"] == free
    assert chosen["DASHBOARD_PORT"] != free


def test_pick_refuses_a_taken_port_the_user_asked_for(listening: int) -> None:
    with pytest.raises(local_ports.PortError, match=f"port {listening} .* RAY_PORT="):
        local_ports.pick([f"RAY_PORT={listening}"], {"RAY_PORT": str(listening)})


def test_pick_prints_lines_a_shell_can_eval(capsys: pytest.CaptureFixture[str]) -> None:
    free = local_ports.free_port()
    assert local_ports.main(["pick", f"SERVE_PORT={free}"]) == 0
    assert capsys.readouterr().out.strip() == f"SERVE_PORT={free}"


def test_a_server_in_this_session_is_not_recorded(listening: int, tmp_path: Path) -> None:
    # Its session is the caller's: stopping it by session would end the caller's processes.
    with pytest.raises(local_ports.PortError, match="session"):
        local_ports.record_ray(listening, tmp_path / "ray.json")
    assert not (tmp_path / "ray.json").exists()


def test_nothing_listening_is_not_recorded(tmp_path: Path) -> None:
    with pytest.raises(local_ports.PortError, match="no Ray GCS server"):
        local_ports.record_ray(local_ports.free_port(), tmp_path / "ray.json")


LISTENER = """
import socket, subprocess, sys, time  # a stand-in for a ray head
sock = socket.socket(); sock.bind(("127.0.0.1", 0)); sock.listen()
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)  # ray worker"])
print(sock.getsockname()[1], child.pid, flush=True)
time.sleep(600)
"""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_stop_ends_the_recorded_session_and_nothing_else(tmp_path: Path) -> None:
    head = subprocess.Popen(
        [sys.executable, "-c", LISTENER], stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    other = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(600)  # another ray cluster"],
        start_new_session=True,
    )
    try:
        assert head.stdout is not None
        port_text, child_text = head.stdout.readline().split()
        record = tmp_path / "ray.json"
        local_ports.record_ray(int(port_text), record)
        assert local_ports.stop_ray(record, grace_s=10) == 2
        wait_for(lambda: head.poll() is not None, 10, "the head to be reaped")
        assert not _alive(int(child_text))
        assert not record.exists()
        assert other.poll() is None
    finally:
        for process in (head, other):
            if process.poll() is None:
                process.kill()
                process.wait()
