"""The three rate-limit algorithms, written once against the store's ``Scripts`` capability.

Each algorithm is one atomic step, ``store.run(script, [key], args)``:

* on Redis, the Lua file ``gateway/stores/lua/<script>.lua``: one round trip, the time
  taken from Redis ``TIME`` so that every gateway process shares one clock;
* in memory, the Python twin below, the time taken from the memory store's clock
  (injectable in tests). A twin is compiled once per limiter (``Algorithm.in_memory``:
  the arguments parsed, the store's LRU map bound) into a plain function of the key,
  which the policy calls directly: no coroutine, one clock read. ``MEMORY_SCRIPTS``
  holds the same twins by script name for ``MemoryStore.run``.

Both take the same keys and arguments (times in microseconds) and answer
``[allowed 0|1, remaining, reset_ms, retry_ms, token]``. Each algorithm also has a
refund (``<script>_refund``, same keys and arguments plus the admission's token, in Lua
and in memory) that gives back one admitted request, for a limiter whose request a
later limiter of its list refused; the token keeps a late refund from giving back
what a later window or a refilled bucket never took.
Each twin stores one value per key
through the memory store, so its footprint is bounded by the store's LRU
(``max_entries``); each Lua script sets an expiry on every key it writes.

* ``token_bucket``: GCRA (one timestamp per key). ``rate`` refills, ``burst`` is the
  bucket size. Exact: over any span ``d`` at most ``burst + rate * d`` are admitted.
* ``fixed_window``: a counter that starts with the key's first request and expires
  one period later. Exact per window; up to ``2 * limit`` across a window boundary.
  Rejected requests do not count.
* ``sliding_window``: counter approximation (current window count plus the previous
  window's count weighted by its remaining overlap), windows starting with the key's
  first request. Rejected requests do not count.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from math import ceil, floor

from gateway.config.units import Rate
from gateway.stores import ScriptArg
from gateway.stores.memory import MEMORY_SCRIPTS, MemoryStore

#: ``[allowed, remaining, reset_ms, retry_ms, token]`` as the scripts return it; the token
#: names what an admission took (the bucket's TAT, the window's end or start), for a
#: refund to give back only that.
Verdict = Sequence[int]
#: One decision for one key, the algorithm compiled for a memory store and its arguments.
Check = Callable[[str], Verdict]
#: One admitted request given back, for one key and the admission's token (the 5th item
#: of its verdict), compiled like a Check: whether anything was given back.
Refund = Callable[[str, int], bool]

ALGORITHMS = ("token_bucket", "sliding_window", "fixed_window")
_SCRIPTS = {
    "token_bucket": "rl_token_bucket",
    "sliding_window": "rl_sliding_window",
    "fixed_window": "rl_fixed_window",
}
_SHORT = {"token_bucket": "tb", "sliding_window": "sw", "fixed_window": "fw"}


def _evict(store: MemoryStore) -> None:
    """Drop least recently used keys until the store is within ``max_entries``."""
    data, limit = store.entries, store.max_entries
    while len(data) > limit:
        data.popitem(last=False)


def token_bucket_check(store: MemoryStore, args: Sequence[ScriptArg]) -> Check:
    """Twin of ``rl_token_bucket.lua``, compiled for ``store`` and ``args``."""
    data, clock, move = store.entries, store.clock, store.entries.move_to_end
    interval, burst = float(args[0]), float(args[1])
    # allow_at = new_tat - interval * burst, computed as tat - interval * (burst - 1): adding
    # the interval and taking it away again can round above tat, which refused the first
    # request of a fresh bucket of burst 1 whenever the clock's value rounded that way.
    head_room = interval * (burst - 1)

    def check(key: str) -> Verdict:
        t = clock()
        now = t * 1e6
        tat = now
        item = data.get(key)
        if item is not None:  # MemoryStore.load: expired is absent, found is most recent
            if item[1] and item[1] <= t:
                del data[key]
                item = None
            else:
                move(key)
                stored = item[0]
                if isinstance(stored, float) and stored > now:
                    tat = stored
        new_tat = tat + interval
        allow_at = tat - head_room
        if now < allow_at:
            return [0, 0, ceil((tat - now) / 1000), ceil((allow_at - now) / 1000), 0]
        # MemoryStore.save; a found key is already the most recent.
        data[key] = (new_tat, t + ((new_tat - now) / 1e6 + 0.001))
        if item is None and len(data) > store.max_entries:
            _evict(store)
        remaining = floor((now - allow_at) / interval + 1e-6)
        return [1, remaining, ceil((new_tat - now) / 1000), 0, int(new_tat)]

    return check


def fixed_window_check(store: MemoryStore, args: Sequence[ScriptArg]) -> Check:
    """Twin of ``rl_fixed_window.lua``; the value is ``[count, window end]``."""
    data, clock, move = store.entries, store.clock, store.entries.move_to_end
    limit, window = int(args[0]), float(args[1])
    ttl = window / 1e6

    def check(key: str) -> Verdict:
        t = clock()
        now = t * 1e6
        entry = None
        item = data.get(key)
        if item is not None:
            if item[1] and item[1] <= t:
                del data[key]
                item = None
            else:
                move(key)
                entry = item[0]
        if not isinstance(entry, list):
            entry = [0, now + window]  # [count, window end]
            data[key] = (entry, t + ttl if ttl > 0 else 0.0)
            if item is None and len(data) > store.max_entries:
                _evict(store)
        count = int(entry[0])
        reset = ceil((entry[1] - now) / 1000)
        if count >= limit:  # refused: not counted
            return [0, 0, reset, reset, 0]
        entry[0] = count + 1
        return [1, limit - count - 1, reset, 0, int(entry[1])]

    return check


def _sliding_wait(limit: float, window: float, elapsed: float, curr: float, prev: float) -> float:
    """Microseconds until one more request fits (see ``wait`` in the Lua script)."""
    room = limit - 1 - curr
    if room >= 0:
        if prev <= room:
            return 0.0
        return max(window * (1 - room / prev) - elapsed, 0.0)
    return window - elapsed + window * (1 - (limit - 1) / curr)


def sliding_window_check(store: MemoryStore, args: Sequence[ScriptArg]) -> Check:
    """Twin of ``rl_sliding_window.lua``; the value is ``(start, curr, prev)``."""
    data, clock, move = store.entries, store.clock, store.entries.move_to_end
    limit, window = float(args[0]), float(args[1])

    def check(key: str) -> Verdict:
        t = clock()
        now = t * 1e6
        entry = None
        item = data.get(key)
        if item is not None:
            if item[1] and item[1] <= t:
                del data[key]
                item = None
            else:
                move(key)
                entry = item[0]
        if isinstance(entry, tuple):
            start, curr, prev = entry
            if now >= start + window:
                if now < start + 2 * window:
                    start, prev, curr = start + window, curr, 0
                else:
                    start, curr, prev = now, 0, 0
        else:
            start, curr, prev = now, 0, 0
        elapsed = now - start
        estimate = prev * (window - elapsed) / window + curr
        if estimate + 1 > limit:
            retry = ceil(_sliding_wait(limit, window, elapsed, curr, prev) / 1000)
            return [0, 0, retry, retry, 0]
        curr += 1
        ttl = (start + 2 * window - now) / 1e6
        data[key] = ((start, curr, prev), t + ttl if ttl > 0 else 0.0)
        if item is None and len(data) > store.max_entries:
            _evict(store)
        remaining = floor(limit - estimate - 1 + 1e-9)
        if remaining > 0:
            reset = ceil((window - elapsed) / 1000)
        else:
            reset = ceil(_sliding_wait(limit, window, elapsed, curr, prev) / 1000)
        return [1, remaining, reset, 0, int(start)]

    return check


def _unexpired(store: MemoryStore, key: str) -> tuple[object, float] | None:
    """``(value, expiry)`` of ``key`` if it holds one that has not expired."""
    item = store.entries.get(key)
    if item is None or (item[1] and item[1] <= store.clock()):
        return None
    return item


def token_bucket_refund(store: MemoryStore, args: Sequence[ScriptArg]) -> Refund:
    """Twin of ``rl_token_bucket_refund.lua``: the TAT back by what is left of the
    admission whose TAT was ``token`` (none of it once the bucket refilled past it)."""
    interval = float(args[0])

    def refund(key: str, token: int) -> bool:
        item = _unexpired(store, key)
        if item is None or not isinstance(item[0], float):
            return False
        t = store.clock()
        now = t * 1e6
        amount = min(interval, token - now)
        if amount <= 0:
            return False
        tat = item[0] - amount
        if tat <= now:
            del store.entries[key]  # full again
        else:
            store.entries[key] = (tat, t + ((tat - now) / 1e6 + 0.001))
        return True

    return refund


def fixed_window_refund(store: MemoryStore, args: Sequence[ScriptArg]) -> Refund:
    """Twin of ``rl_fixed_window_refund.lua``: the count one down, if the window that
    ends at ``token`` is still the key's (a later window owes nothing)."""

    def refund(key: str, token: int) -> bool:
        item = _unexpired(store, key)
        entry = item[0] if item is not None else None
        if not isinstance(entry, list) or int(entry[1]) != token or entry[0] <= 0:
            return False
        entry[0] -= 1
        return True

    return refund


def sliding_window_refund(store: MemoryStore, args: Sequence[ScriptArg]) -> Refund:
    """Twin of ``rl_sliding_window_refund.lua``: one down from the count of the window
    that started at ``token``: the current one's, or the previous one's once the window
    moved on; nothing from a later window."""
    window = float(args[1])

    def refund(key: str, token: int) -> bool:
        item = _unexpired(store, key)
        if item is None or not isinstance(item[0], tuple):
            return False
        start, curr, prev = item[0]
        if abs(start - token) < 1 and curr > 0:
            store.entries[key] = ((start, curr - 1, prev), item[1])
        elif abs(start - token - window) < 1 and prev > 0:
            store.entries[key] = ((start, curr, prev - 1), item[1])
        else:
            return False
        return True

    return refund


#: Each algorithm compiled for one store and one set of arguments (what a policy keeps).
MEMORY_CHECKS: dict[str, Callable[[MemoryStore, Sequence[ScriptArg]], Check]] = {
    "rl_token_bucket": token_bucket_check,
    "rl_fixed_window": fixed_window_check,
    "rl_sliding_window": sliding_window_check,
}


#: The same, for giving back what a check admitted (``Algorithm.refund``).
MEMORY_REFUNDS: dict[str, Callable[[MemoryStore, Sequence[ScriptArg]], Refund]] = {
    "rl_token_bucket_refund": token_bucket_refund,
    "rl_fixed_window_refund": fixed_window_refund,
    "rl_sliding_window_refund": sliding_window_refund,
}


def _refund_script(
    name: str,
) -> Callable[[MemoryStore, Sequence[str], Sequence[ScriptArg]], int]:
    """A refund twin as ``MemoryStore.run`` calls it: 1 if given back, as the script."""

    def run(store: MemoryStore, keys: Sequence[str], args: Sequence[ScriptArg]) -> int:
        *own, token = args
        return int(MEMORY_REFUNDS[name](store, own)(keys[0], int(token)))

    return run


def token_bucket(store: MemoryStore, keys: Sequence[str], args: Sequence[ScriptArg]) -> Verdict:
    """The twin as ``MemoryStore.run`` calls it: compiled, then run for one key."""
    return token_bucket_check(store, args)(keys[0])


def fixed_window(store: MemoryStore, keys: Sequence[str], args: Sequence[ScriptArg]) -> Verdict:
    return fixed_window_check(store, args)(keys[0])


def sliding_window(store: MemoryStore, keys: Sequence[str], args: Sequence[ScriptArg]) -> Verdict:
    return sliding_window_check(store, args)(keys[0])


MEMORY_SCRIPTS.update(
    rl_token_bucket=token_bucket,
    rl_fixed_window=fixed_window,
    rl_sliding_window=sliding_window,
    **{name: _refund_script(name) for name in MEMORY_REFUNDS},
)


@dataclass(frozen=True, slots=True)
class Algorithm:
    """One limiter's algorithm, compiled: the script to run and its arguments."""

    name: str
    script: str
    args: tuple[float, ...]
    #: RateLimit-Policy ``q`` and ``w``: the configured rate in whole requests/seconds.
    quota: int
    window: int

    @property
    def short(self) -> str:
        """A short tag for keys, so a change of algorithm never reads another's state."""
        return _SHORT[self.name]

    def shared(self, replicas: int) -> Algorithm:
        """The same algorithm admitting ``1 / replicas`` of the traffic (``local_share``).

        Windows round their limit down (never above the global limit in total); the
        token bucket refills ``replicas`` times slower from a bucket as many times smaller.
        """
        if replicas <= 1:
            return self
        if self.name == "token_bucket":
            interval, burst = self.args
            interval, burst = interval * replicas, max(1.0, burst / replicas)
            quota, window = _bucket_advertised(Rate(1.0, interval / 1e6), burst)
            return replace(self, args=(interval, burst), quota=quota, window=window)
        limit, window_us = self.args
        limit = float(max(1, math.floor(limit / replicas)))
        quota, window = advertised(Rate(limit, window_us / 1e6))
        return replace(self, args=(limit, window_us), quota=quota, window=window)

    @property
    def refund_script(self) -> str:
        """The script that gives back one request this algorithm admitted."""
        return self.script + "_refund"

    def in_memory(self, store: MemoryStore) -> Check:
        """This algorithm's twin compiled for ``store``: one call per decision."""
        return MEMORY_CHECKS[self.script](store, self.args)

    def refund_in_memory(self, store: MemoryStore) -> Refund:
        """The refund twin compiled for ``store``."""
        return MEMORY_REFUNDS[self.refund_script](store, self.args)


#: How many whole windows ``advertised`` tries, from the rate's own, to state a fractional
#: rate exactly (``2.5/s`` is ``q=5;w=2``, not ``q=2;w=1``).
EXACT_TRIES = 60


def advertised(rate: Rate) -> tuple[int, int]:
    """``(q, w)`` for RateLimit-Policy: whole requests per whole seconds, never more than
    ``rate`` allows (the draft has no sub-second windows and no fractional quotas).

    The first whole window that holds a whole number of requests states the rate
    exactly; when none does within ``EXACT_TRIES``, the rate's own window (rounded up)
    with its quota rounded down."""
    first = max(1, math.ceil(rate.period - 1e-9))
    for window in range(first, first + EXACT_TRIES):
        exact = rate.limit * window / rate.period
        quota = round(exact)
        if quota >= 1 and abs(exact - quota) < 1e-9 * max(1.0, exact):
            return quota, window
    quota = math.floor(rate.limit * first / rate.period + 1e-9)
    if quota < 1:
        return 1, math.ceil(rate.period / rate.limit - 1e-9)
    return quota, first


def _bucket_advertised(rate: Rate, size: float) -> tuple[int, int]:
    """``(q, w)`` of a token bucket of ``size`` filled at ``rate``: the rate's, or, for a
    bucket larger than the rate's quota, the bucket and the whole seconds it takes to
    refill, so that ``r`` (tokens left) never exceeds ``q``."""
    quota, window = advertised(rate)
    if size > quota:
        quota = int(size)
        window = max(1, math.ceil(size * rate.period / rate.limit - 1e-9))
    return quota, window


def compile_algorithm(name: str, rate: Rate, burst: int | None) -> Algorithm:
    """The algorithm ``name`` for ``rate`` (and ``burst``, token bucket only)."""
    quota, window = advertised(rate)
    period_us = rate.period * 1e6
    if name == "token_bucket":
        size = float(burst) if burst is not None else max(1.0, rate.limit)
        args: tuple[float, ...] = (period_us / rate.limit, size)
        quota, window = _bucket_advertised(rate, size)
    else:
        args = (float(rate.limit), period_us)
    return Algorithm(name, _SCRIPTS[name], args, quota, window)
