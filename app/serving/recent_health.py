"""``GET /health`` answered from a recent check instead of a new one per probe.

The check is a call to the Classifier replica, which under load waits behind batches in the
replica's request slots (BENCHMARKS.md: 160 ms at 32 clients on 2 cores), so a load balancer's
probe would time out exactly when the service is busiest. Here one background check runs every
``interval_s`` and each probe gets the latest answer at once; an answer older than
``stale_after_s`` (the checks themselves are stuck) is not given: the probe waits for the next.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

Answer = Any  # what the check returns (the health body, or an error response)


class RecentHealth:
    def __init__(
        self,
        check: Callable[[], Awaitable[Answer]],
        interval_s: float = 1.0,
        stale_after_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._check = check
        self._clock = clock
        self._interval_s = interval_s
        self._stale_after_s = stale_after_s
        self._latest: tuple[float, Answer] | None = None
        self._fresh = asyncio.Event()
        self._refresher: asyncio.Task[None] | None = None

    async def answer(self) -> Answer:
        """The latest check's answer; the first probe (and any while answers are stale) waits
        for a check. ``check`` should answer rather than raise (a raise ends the refresher,
        which the next look restarts)."""
        while True:
            if self._refresher is None or self._refresher.done():
                self._refresher = asyncio.create_task(self._refresh_forever())
            latest = self._latest
            if latest is not None and self._clock() - latest[0] <= self._stale_after_s:
                return latest[1]
            self._fresh.clear()
            await self._fresh.wait()

    async def _refresh_forever(self) -> None:
        while True:
            started = self._clock()
            try:
                self._latest = (started, await self._check())
            finally:
                self._fresh.set()  # waiting probes look again, even after a failed check
            await asyncio.sleep(max(0.0, self._interval_s - (self._clock() - started)))

    async def close(self) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
            await asyncio.gather(self._refresher, return_exceptions=True)
