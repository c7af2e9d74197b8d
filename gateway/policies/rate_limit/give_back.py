"""What a limiter's admission took, given back when a later limiter refuses the request.

Every entry of ``rate_limit`` must pass, and a request counts only against the limits it
passed all of. An enforcing limiter followed by another one notes on the exchange how to
give back what it took (:meth:`GiveBacks.note`); a limiter that refuses (429, or 401 for
a bad token) calls those notes (:func:`give_back`). Each names the admission by its
token, the 5th item of its verdict (a bucket's TAT, a window's end or start), so a
give-back that arrives late never returns something of a later window.

In memory the give-back is immediate. In a store it is a script sent without awaiting,
so the refusal goes out at once; it is skipped while the store is known to be down, and
one that fails leaves the count one high until the window or bucket moves on.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from functools import partial

from gateway.exchange import Exchange
from gateway.policies.rate_limit.algorithms import Refund
from gateway.stores import ScriptArg

#: A give-back, ready to call.
GiveBack = Callable[[], object]
#: A store's ``run``: a script's reply for its keys and arguments.
Run = Callable[[str, Sequence[str], Sequence[ScriptArg]], Awaitable[object]]


def no_refund(key: str, token: int) -> bool:
    """The memory refund of a limiter whose store is not memory: there is none."""
    return False


def note(exchange: Exchange, refund: GiveBack) -> None:
    """Note what an admission took, for a later limiter that refuses to give back."""
    taken = exchange.quota_taken
    if taken is None:
        exchange.quota_taken = [refund]
    else:
        taken.append(refund)


def give_back(exchange: Exchange) -> None:
    """A limiter refuses the request: the limiters before it give back what they took."""
    taken = exchange.quota_taken
    if taken is None:
        return
    exchange.quota_taken = None
    for refund in taken:
        refund()


class GiveBacks:
    """One limiter's give-backs: in its memory store, in its local share (while its store
    is down), or in its store."""

    def __init__(
        self,
        memory: Refund,
        local: Refund,
        run: Run,
        script: str,
        args: Sequence[ScriptArg],
        store_key: Callable[[str], str],
        store_down: Callable[[], bool],
    ) -> None:
        self._memory = memory
        self._local = local
        self._run = run
        self._script = script
        self._args = tuple(args)
        self._store_key = store_key
        self._store_down = store_down
        self._calls: set[asyncio.Future[object]] = set()  # store give-backs in flight

    def memory(self, key: str, token: int) -> GiveBack:
        return partial(self._memory, key, token)

    def local(self, key: str, token: int) -> GiveBack:
        return partial(self._local, key, token)

    def store(self, bucket: str, token: int) -> GiveBack:
        return partial(self._in_store, bucket, token)

    def _in_store(self, bucket: str, token: int) -> None:
        if self._store_down():
            return
        key = self._store_key(bucket)
        call = asyncio.ensure_future(self._run(self._script, (key,), (*self._args, token)))
        self._calls.add(call)  # a reference until done: a task is not collected mid-run
        call.add_done_callback(self._done)

    def _done(self, call: asyncio.Future[object]) -> None:
        self._calls.discard(call)
        if not call.cancelled():
            call.exception()  # retrieved: nothing to report
