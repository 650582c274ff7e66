"""A local run joins the cluster the last `ray start` recorded only while that one answers: a
cluster left behind dead (stopped uncleanly, a test's) makes the run start its own instead of
failing after minutes of retries."""

from __future__ import annotations

import socket

import pytest
from ray._private import services

from app.ray_runtime import recorded_cluster_gone


def test_a_recorded_cluster_that_answers_is_joined_one_that_is_gone_is_not(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        alive = f"127.0.0.1:{listening.getsockname()[1]}"
        monkeypatch.setattr(services, "find_bootstrap_address", lambda temp_dir: alive)
        assert recorded_cluster_gone() is None
    # The port closed with the socket: what a dead head leaves.
    monkeypatch.setattr(services, "find_bootstrap_address", lambda temp_dir: alive)
    assert recorded_cluster_gone() == alive
    monkeypatch.setattr(services, "find_bootstrap_address", lambda temp_dir: None)
    assert recorded_cluster_gone() is None  # nothing recorded: ray.init() starts one anyway
    monkeypatch.setattr(services, "find_bootstrap_address", lambda temp_dir: "not-an-address")
    assert recorded_cluster_gone() == "not-an-address"
