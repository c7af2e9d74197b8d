"""Request coalescing and the policy's bounded background work.

:class:`Coalescer`: the first miss for a key *leads* (goes upstream and stores); later
misses for the key wait for the leader up to a bound, then look again and go upstream
themselves if nothing usable was stored. A key whose response turned out not storable
is remembered for a while ("hit-for-pass", as Varnish calls it) so requests for an
uncacheable URL are not serialised behind each other.

:class:`BackgroundTasks`: background refreshes and warming, at most ``limit`` at once;
work offered beyond that is dropped (and counted by the caller), never queued.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import Coroutine
from typing import Any

log = logging.getLogger("gateway.cache")

#: How long a key that produced an unstorable response skips coalescing.
PASS_FOR = 30.0
MAX_PASS_KEYS = 4096


class Flight:
    """One leading request: followers wait on ``done``; ``failed`` when the upstream failed
    (followers may then serve a stale copy instead of each trying the upstream again)."""

    __slots__ = ("done", "failed")

    def __init__(self) -> None:
        self.done = asyncio.Event()
        self.failed = False


class Coalescer:
    def __init__(self, pass_for: float = PASS_FOR, max_pass_keys: int = MAX_PASS_KEYS) -> None:
        self._flights: dict[str, Flight] = {}
        self._pass: OrderedDict[str, float] = OrderedDict()
        self.pass_for = pass_for
        self.max_pass_keys = max_pass_keys

    def __len__(self) -> int:
        return len(self._flights)

    def flight(self, key: str) -> Flight | None:
        """The in-flight request for ``key``, if one leads."""
        return self._flights.get(key)

    def lead(self, key: str) -> Flight | None:
        """Become the leader for ``key``; None when another request already leads."""
        if key in self._flights:
            return None
        flight = self._flights[key] = Flight()
        return flight

    def land(self, key: str, flight: Flight, failed: bool = False) -> None:
        """The leader is done (stored or not): wake every follower."""
        if self._flights.get(key) is flight:
            del self._flights[key]
        flight.failed = failed
        flight.done.set()

    @staticmethod
    async def wait(flight: Flight, timeout: float) -> bool:
        """Wait for a leader; False when ``timeout`` passed first."""
        try:
            async with asyncio.timeout(timeout):
                await flight.done.wait()
        except TimeoutError:
            return False
        return True

    def mark_pass(self, key: str, now: float) -> None:
        self._pass[key] = now + self.pass_for
        self._pass.move_to_end(key)
        while len(self._pass) > self.max_pass_keys:
            self._pass.popitem(last=False)

    def clear_pass(self, key: str) -> None:
        self._pass.pop(key, None)

    def passing(self, key: str, now: float) -> bool:
        until = self._pass.get(key)
        if until is None:
            return False
        if until <= now:
            del self._pass[key]
            return False
        return True


class BackgroundTasks:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._tasks: set[asyncio.Task[None]] = set()

    def __len__(self) -> int:
        return len(self._tasks)

    def spawn(self, work: Coroutine[Any, Any, None]) -> bool:
        """Run ``work`` in the background; False (and ``work`` discarded) when full."""
        if len(self._tasks) >= self.limit:
            work.close()
            return False
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return True

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("cache background work failed", exc_info=task.exception())

    async def join(self) -> None:
        """Wait for the work under way (tests and warming use it)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def cancel(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
