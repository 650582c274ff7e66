"""/health from a recent check: probes are answered at once from the background check, never
from one older than its bound, and a stuck or failing check is waited out, not served."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from app.serving.recent_health import RecentHealth


class Checks:
    """A health check that counts its calls and can be held or made to fail."""

    def __init__(self) -> None:
        self.calls = 0
        self.release = asyncio.Event()
        self.release.set()
        self.fail_next = False

    async def __call__(self) -> dict[str, Any]:
        self.calls += 1
        await self.release.wait()
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("the check itself broke")
        return {"status": "ready", "check": self.calls}


def run(scenario: Callable[[Checks], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(scenario(Checks()), 30))


def test_probes_share_the_background_check_instead_of_making_their_own() -> None:
    async def scenario(checks: Checks) -> None:
        health = RecentHealth(checks, interval_s=3600, stale_after_s=3600)
        answers = await asyncio.gather(*(health.answer() for _ in range(50)))
        assert checks.calls == 1 and all(a == {"status": "ready", "check": 1} for a in answers)
        await health.close()

    run(scenario)


async def until(condition: Callable[[], bool], what: str) -> None:
    deadline = asyncio.get_running_loop().time() + 10
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


def test_the_answer_follows_the_checks_and_a_stale_one_is_not_served() -> None:
    async def scenario(checks: Checks) -> None:
        now = [0.0]
        health = RecentHealth(checks, interval_s=0, stale_after_s=5, clock=lambda: now[0])
        first = await health.answer()
        await until(lambda: checks.calls >= first["check"] + 2, "checks of their own accord")
        assert (await health.answer())["check"] > first["check"]
        checks.release.clear()  # the check gets stuck: the replica stops answering
        await until(lambda: not checks.release.is_set() and checks.calls > 0, "a stuck check")
        held = await health.answer()  # still fresh: answered at once
        now[0] += 6  # past the bound
        waiting = asyncio.create_task(health.answer())
        for _ in range(20):
            await asyncio.sleep(0)
        assert not waiting.done(), "a stale answer was served"
        checks.release.set()
        assert (await waiting)["check"] > held["check"]
        await health.close()

    run(scenario)


def test_a_check_that_raises_is_retried_not_served() -> None:
    async def scenario(checks: Checks) -> None:
        health = RecentHealth(checks, interval_s=3600, stale_after_s=3600)
        checks.fail_next = True
        assert await health.answer() == {"status": "ready", "check": 2}
        await health.close()

    run(scenario)


@pytest.mark.parametrize("probes", [1, 3])
def test_closing_stops_the_background_check(probes: int) -> None:
    async def scenario(checks: Checks) -> None:
        health = RecentHealth(checks, interval_s=0.01, stale_after_s=1)
        for _ in range(probes):
            await health.answer()
        await health.close()
        calls = checks.calls
        await asyncio.sleep(0.1)
        assert checks.calls == calls

    run(scenario)
