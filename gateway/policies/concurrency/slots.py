"""An in-flight counter with a bounded FIFO of waiters.

A released slot goes straight to the oldest waiter (no barging), so a queued request
is never overtaken by one that arrived later. One instance per route and snapshot;
this counter is the state the policy shares between requests.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque


class Slots:
    __slots__ = ("in_flight", "limit", "queue_size", "waiters")

    def __init__(self, limit: int, queue_size: int) -> None:
        self.limit = limit
        self.queue_size = queue_size
        self.in_flight = 0
        self.waiters: deque[asyncio.Future[None]] = deque()

    def try_acquire(self) -> bool:
        """Take a free slot now, unless the slots are full or others already wait."""
        if self.in_flight < self.limit and not self.waiters:
            self.in_flight += 1
            return True
        return False

    async def acquire(self, timeout: float) -> bool:
        """Take a slot, waiting in the queue up to ``timeout``; False when the queue is
        full or the wait timed out."""
        if self.try_acquire():
            return True
        if len(self.waiters) >= self.queue_size:
            return False
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.waiters.append(waiter)
        try:
            async with asyncio.timeout(timeout):
                await waiter
        except BaseException as exc:  # timed out, or the client went away
            if waiter.done() and not waiter.cancelled():
                self.release()  # a slot was handed over just as the wait ended: pass it on
            else:
                self._forget(waiter)
            if isinstance(exc, TimeoutError):
                return False
            raise
        return True

    def _forget(self, waiter: asyncio.Future[None]) -> None:
        with contextlib.suppress(ValueError):
            self.waiters.remove(waiter)

    def done(self, exchange: object, status: int) -> None:
        """:meth:`release` as an ``exchange.on_complete`` callback (one call, no waiters)."""
        if self.waiters:
            self.release()
        else:
            self.in_flight -= 1

    def release(self) -> None:
        """Free a slot, or hand it to the oldest live waiter."""
        waiters = self.waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot moves on: in_flight is unchanged
                return
        self.in_flight -= 1
