"""The memory twins of the rate-limit scripts, with an injected clock (no sleeping).

The same algorithms run against a real Redis in tests/integration/test_rate_limit_store.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from gateway.config.models import StoreSpec
from gateway.config.units import parse_rate
from gateway.policies.rate_limit.algorithms import Algorithm, advertised, compile_algorithm
from gateway.stores.memory import MEMORY_SCRIPTS, MemoryStore


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def store(clock: Clock, max_entries: int = 100_000) -> MemoryStore:
    return MemoryStore("memory", StoreSpec(url="memory://", max_entries=max_entries), clock)


def check(mem: MemoryStore, algorithm: Algorithm, key: str = "k") -> Sequence[int]:
    """One decision by the memory twin (what ``MemoryStore.run`` calls)."""
    result = MEMORY_SCRIPTS[algorithm.script](mem, [key], algorithm.args)
    assert isinstance(result, list)
    return result


def test_the_memory_store_runs_the_twins_by_script_name() -> None:
    mem = store(Clock())
    tb = compile_algorithm("token_bucket", parse_rate("1/h"), None)
    admitted = asyncio.run(mem.run(tb.script, ["k"], tb.args))
    assert isinstance(admitted, list) and admitted[:4] == [1, 0, 3600000, 0]
    assert asyncio.run(mem.run(tb.script, ["k"], tb.args)) == [0, 0, 3600000, 3600000, 0]
    # the refund by name, with the admission's token: the place is back
    assert asyncio.run(mem.run(tb.refund_script, ["k"], (*tb.args, admitted[4]))) == 1
    assert asyncio.run(mem.run(tb.script, ["k"], tb.args))[0] == 1


def admitted(mem: MemoryStore, algorithm: Algorithm, n: int, key: str = "k") -> int:
    return sum(check(mem, algorithm, key)[0] for _ in range(n))


def test_token_bucket_admits_the_burst_then_refills_at_the_rate() -> None:
    clock = Clock()
    mem = store(clock)
    tb = compile_algorithm("token_bucket", parse_rate("10/s"), 5)
    remaining = [check(mem, tb)[1] for _ in range(5)]
    assert remaining == [4, 3, 2, 1, 0]
    allowed, remaining_now, reset_ms, retry_ms, _ = check(mem, tb)
    assert (allowed, remaining_now) == (0, 0)
    assert retry_ms == 100  # one token every 100 ms
    assert reset_ms == 500  # the bucket is full again after 5 tokens
    clock.advance(0.1)
    assert check(mem, tb)[0] == 1
    assert check(mem, tb)[0] == 0
    clock.advance(10)  # idle: the bucket is full, never more than the burst
    assert admitted(mem, tb, 20) == 5


def test_token_bucket_over_a_long_burst_admits_burst_plus_rate_times_time() -> None:
    clock = Clock()
    mem = store(clock)
    tb = compile_algorithm("token_bucket", parse_rate("100/s"), 20)
    total = 0
    for _ in range(5000):  # 10 s at 5x the rate, one request every 2 ms
        total += check(mem, tb)[0]
        clock.advance(0.002)
    # first request at 0, last at 9.998 s: burst + rate * span, not one more
    assert total == 20 + int(100 * 9.998)


def test_token_bucket_default_burst_is_the_rate_count() -> None:
    assert compile_algorithm("token_bucket", parse_rate("100/s"), None).args[1] == 100
    assert compile_algorithm("token_bucket", parse_rate("1/10s"), None).args[1] == 1


def test_fixed_window_counts_per_window_from_the_first_request() -> None:
    clock = Clock()
    mem = store(clock)
    fw = compile_algorithm("fixed_window", parse_rate("3/10s"), None)
    assert [check(mem, fw)[:2] for _ in range(3)] == [[1, 2], [1, 1], [1, 0]]
    clock.advance(4)
    allowed, _, reset_ms, retry_ms, _ = check(mem, fw)
    assert allowed == 0 and reset_ms == retry_ms == 6000
    clock.advance(6)  # the window that began with the first request has ended
    assert admitted(mem, fw, 5) == 3


def test_fixed_window_over_a_long_burst_admits_limit_per_window() -> None:
    clock = Clock()
    mem = store(clock)
    fw = compile_algorithm("fixed_window", parse_rate("50/s"), None)
    total = 0
    for _ in range(2500):  # 10 s at 5x
        total += check(mem, fw)[0]
        clock.advance(0.004)
    assert total == 50 * 10


def test_sliding_window_weights_the_previous_window() -> None:
    clock = Clock()
    mem = store(clock)
    sw = compile_algorithm("sliding_window", parse_rate("10/s"), None)
    assert admitted(mem, sw, 15) == 10
    clock.advance(1.5)  # half of the previous window still overlaps: 10 * 0.5 = 5 used
    assert admitted(mem, sw, 10) == 5
    clock.advance(10)  # two idle windows: everything is forgotten
    assert admitted(mem, sw, 15) == 10


def test_sliding_window_retry_after_is_when_the_next_request_fits() -> None:
    clock = Clock()
    mem = store(clock)
    sw = compile_algorithm("sliding_window", parse_rate("4/s"), None)
    assert admitted(mem, sw, 4) == 4
    allowed, _, reset_ms, retry_ms, _ = check(mem, sw)
    # next window: 4 * (1 - e) <= 3 when e >= 0.25 s, i.e. 1.25 s from now
    assert allowed == 0 and retry_ms == reset_ms == 1250
    clock.advance(1.2)
    assert check(mem, sw)[0] == 0
    clock.advance(0.06)
    assert check(mem, sw)[0] == 1


def test_sliding_window_under_steady_overload_stays_within_one_percent() -> None:
    clock = Clock(1000.123)
    mem = store(clock)
    sw = compile_algorithm("sliding_window", parse_rate("100/s"), None)
    total = 0
    for _ in range(5000):  # 10 s at 5x
        total += check(mem, sw)[0]
        clock.advance(0.002)
    ideal = 100 * 10
    assert ideal * 0.97 <= total <= ideal * 1.01


@pytest.mark.parametrize("algorithm", ["token_bucket", "sliding_window", "fixed_window"])
def test_distinct_keys_are_distinct_buckets(algorithm: str) -> None:
    mem = store(Clock())
    alg = compile_algorithm(algorithm, parse_rate("2/h"), None)
    assert admitted(mem, alg, 5, "a") == 2
    assert admitted(mem, alg, 5, "b") == 2


@pytest.mark.parametrize("algorithm", ["token_bucket", "sliding_window", "fixed_window"])
def test_memory_stays_bounded_under_a_flood_of_keys(algorithm: str) -> None:
    mem = store(Clock(), max_entries=500)
    alg = compile_algorithm(algorithm, parse_rate("5/s"), None)
    for i in range(20_000):
        check(mem, alg, f"10.0.{i // 256}.{i % 256}")
    assert len(mem) == 500


@pytest.mark.parametrize("algorithm", ["token_bucket", "sliding_window", "fixed_window"])
def test_state_expires_with_the_store_ttl(algorithm: str) -> None:
    clock = Clock()
    mem = store(clock)
    alg = compile_algorithm(algorithm, parse_rate("5/s"), None)
    check(mem, alg)
    assert mem.load("k") is not None
    clock.advance(3)  # longer than any algorithm keeps a key
    assert mem.load("k") is None


@pytest.mark.parametrize("algorithm", ["token_bucket", "sliding_window", "fixed_window"])
def test_the_compiled_check_decides_as_the_script(algorithm: str) -> None:
    """What the policy calls (``in_memory``) and what ``MemoryStore.run`` calls agree,
    verdict by verdict and entry by entry (values, deadlines, LRU order)."""
    clock = Clock()
    by_check, by_script = store(clock, max_entries=3), store(clock, max_entries=3)
    alg = compile_algorithm(algorithm, parse_rate("3/s"), None)
    compiled = alg.in_memory(by_check)
    for step in range(400):
        key = "abcd"[step * 7 % 5 % 4]
        assert compiled(key) == check(by_script, alg, key)
        assert list(by_check.entries.items()) == list(by_script.entries.items())
        clock.advance((0.0, 0.01, 0.2, 0.7, 2.5)[step % 5])


@pytest.mark.parametrize("algorithm", ["token_bucket", "sliding_window", "fixed_window"])
def test_the_compiled_check_keeps_the_store_rules(algorithm: str) -> None:
    clock = Clock()
    mem = store(clock, max_entries=2)
    compiled = compile_algorithm(algorithm, parse_rate("5/s"), None).in_memory(mem)
    compiled("a")
    compiled("b")
    compiled("a")  # read: the most recent again
    compiled("c")  # a new key: the least recent goes
    assert list(mem.entries) == ["a", "c"]
    clock.advance(3)  # longer than any algorithm keeps a key
    assert mem.load("a") is None and len(mem) == 1
    assert compiled("c")[0] == 1  # expired: a fresh bucket
    assert list(mem.entries) == ["c"]


def test_local_share_divides_the_limit_by_the_replicas() -> None:
    tb = compile_algorithm("token_bucket", parse_rate("100/s"), 30)
    assert tb.shared(4).args == (40_000.0, 7.5)
    assert tb.shared(1) is tb
    fw = compile_algorithm("fixed_window", parse_rate("10/s"), None)
    assert fw.shared(3).args[0] == 3  # rounded down: 3 replicas admit 9 <= 10
    assert fw.shared(50).args[0] == 1
    clock = Clock()
    mem = store(clock)
    assert admitted(mem, fw.shared(3), 10) == 3
    # the share advertises what it enforces
    assert (fw.shared(3).quota, fw.shared(3).window) == (3, 1)
    assert (tb.shared(4).quota, tb.shared(4).window) == (25, 1)


@pytest.mark.parametrize(
    ("rate", "q", "w"),
    [("100/s", 100, 1), ("5000/h", 5000, 3600), ("10/30s", 10, 30), ("10/0.1s", 100, 1),
     ("0.5/s", 1, 2), ("2.5/s", 5, 2), ("1/1.5s", 2, 3), ("7/1.3s", 70, 13),
     ("1/0.7s", 10, 7), ("3/3.14159s", 3, 4)],
)  # fmt: skip
def test_advertised_quota_and_window_are_whole_and_never_generous(
    rate: str, q: int, w: int
) -> None:
    parsed = parse_rate(rate)
    assert advertised(parsed) == (q, w)
    assert q / w <= parsed.per_second + 1e-9


@pytest.mark.parametrize(
    ("rate", "burst", "q", "w"),
    [("100/s", 200, 200, 2), ("5/s", 10, 10, 2), ("100/s", 150, 150, 2), ("100/s", 10, 100, 1),
     ("100/s", None, 100, 1), ("10/m", 15, 15, 90)],
)  # fmt: skip
def test_a_token_bucket_larger_than_its_quota_advertises_the_bucket(
    rate: str, burst: int | None, q: int, w: int
) -> None:
    parsed = parse_rate(rate)
    tb = compile_algorithm("token_bucket", parsed, burst)
    assert (tb.quota, tb.window) == (q, w)
    assert q / w <= parsed.per_second + 1e-9
    # a fresh bucket's first answer has the most tokens left there can be: never above q
    verdict = check(store(Clock()), tb)
    assert verdict[0] == 1 and verdict[1] <= q


def test_a_fresh_bucket_admits_its_first_request_whatever_the_clock_reads() -> None:
    # At this clock value (t + interval) - interval rounds above t in floating point:
    # computing the bucket's edge that way refused the first request of a fresh bucket.
    clock = Clock(3806.4001756786247)
    now = clock.now * 1e6
    assert (now + 3.6e9) - 3.6e9 > now  # the rounding this test is about
    tb = compile_algorithm("token_bucket", parse_rate("1/h"), None)
    mem = store(clock)
    compiled = tb.in_memory(mem)
    assert compiled("k")[0] == 1
    assert compiled("k")[0] == 0
    assert check(store(clock), tb)[0] == 1  # the script twin as well
    for burst in (1, 2, 7):
        for rate in ("3/s", "1/h", "100/s", "7/m"):
            fresh = compile_algorithm("token_bucket", parse_rate(rate), burst)
            assert fresh.in_memory(store(clock))("k")[0] == 1, (rate, burst)


def test_a_late_fixed_window_refund_takes_nothing_from_the_next_window() -> None:
    clock = Clock()
    mem = store(clock)
    fw = compile_algorithm("fixed_window", parse_rate("2/s"), None)
    refund = fw.refund_in_memory(mem)
    token = check(mem, fw)[4]
    clock.advance(1.5)  # that window is over; a request opens the next one
    assert check(mem, fw)[:2] == [1, 1]
    assert not refund("k", token)
    own = check(mem, fw)[4]
    assert check(mem, fw)[0] == 0  # still 2 in this window
    assert refund("k", own)  # a refund of this window's own admission gives it back
    assert check(mem, fw)[0] == 1


def test_a_sliding_window_refund_follows_its_window() -> None:
    clock = Clock()
    mem = store(clock)
    sw = compile_algorithm("sliding_window", parse_rate("4/s"), None)
    refund = sw.refund_in_memory(mem)
    token = check(mem, sw)[4]
    clock.advance(1.2)  # the next window: the admission is now the previous one's
    check(mem, sw)
    assert mem.entries["k"][0][1:] == (1, 1)  # (start, curr, prev)
    assert refund("k", token)
    assert mem.entries["k"][0][1:] == (1, 0)
    token = check(mem, sw)[4]
    clock.advance(2.5)  # two windows on: a fresh start owes it nothing
    check(mem, sw)
    assert not refund("k", token)


def test_a_token_bucket_refund_gives_back_what_is_left_of_the_admission() -> None:
    clock = Clock()
    mem = store(clock)
    tb = compile_algorithm("token_bucket", parse_rate("2/s"), 1)  # one token per 0.5 s
    refund = tb.refund_in_memory(mem)
    token = check(mem, tb)[4]
    assert check(mem, tb)[0] == 0  # the bucket is empty
    assert refund("k", token)
    second = check(mem, tb)  # the token came back at once
    assert second[0] == 1
    clock.advance(0.6)  # refilled past the second admission: nothing of it is left
    assert check(mem, tb)[0] == 1
    assert not refund("k", second[4])
    assert check(mem, tb)[0] == 0  # the third request's token was not given away
