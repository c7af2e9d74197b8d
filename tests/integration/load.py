"""A paced load generator for rate-limit accuracy runs (tests and bench/ratelimit_accuracy.py).

Sends GET requests on keep-alive connections from a few threads, scheduled at a fixed
offered rate across one or more gateway ports, and records each answer's status. The
span is measured around the whole run (first send to last answer), so it is never
shorter than the span the gateways saw: bounds computed from it are safe.
"""

from __future__ import annotations

import http.client
import itertools
import threading
import time
from collections import Counter
from dataclasses import dataclass, field


@dataclass
class LoadResult:
    statuses: Counter[int] = field(default_factory=Counter)
    span: float = 0.0
    errors: int = 0

    @property
    def sent(self) -> int:
        return sum(self.statuses.values()) + self.errors

    @property
    def admitted(self) -> int:
        return self.statuses[200]

    @property
    def rejected(self) -> int:
        return self.statuses[429]


def offer(
    ports: list[int], path: str, rate: float, duration: float, threads: int = 8,
    headers: dict[str, str] | None = None,
) -> LoadResult:  # fmt: skip
    """Offer ``rate`` requests/s for ``duration`` seconds, round-robin over ``ports``."""
    total = int(rate * duration)
    result = LoadResult()
    lock = threading.Lock()
    counter = itertools.count()
    start = time.monotonic() + 0.05

    def worker(index: int) -> None:
        connections: dict[int, http.client.HTTPConnection] = {}
        try:
            while True:
                with lock:
                    i = next(counter)
                if i >= total:
                    return
                delay = start + i / rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                port = ports[i % len(ports)]
                conn = connections.get(port)
                if conn is None:
                    conn = connections[port] = http.client.HTTPConnection(
                        "127.0.0.1", port, timeout=10
                    )
                try:
                    conn.request("GET", path, headers=headers or {})
                    response = conn.getresponse()
                    response.read()
                    status = response.status
                except (OSError, http.client.HTTPException):
                    conn.close()
                    del connections[port]
                    with lock:
                        result.errors += 1
                    continue
                with lock:
                    result.statuses[status] += 1
        finally:
            for conn in connections.values():
                conn.close()

    began = time.monotonic()
    workers = [threading.Thread(target=worker, args=(n,)) for n in range(threads)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()
    result.span = time.monotonic() - began
    return result


def allowance(algorithm: str, limit: float, period: float, burst: float | None,
              span: float) -> float:  # fmt: skip
    """Most requests an exact limiter may admit over ``span`` seconds from a fresh state:
    the initial allowance (burst, or one window) plus the rate times the span."""
    initial = burst if algorithm == "token_bucket" and burst is not None else limit
    return initial + limit / period * span
