"""The cache's own metrics for one route, declared and labelled once when it is built.

Hits, misses and the other decisions are counted by the chain from
``exchange.decisions``; these are the rest: the in-process tier's size, shared-tier
reads, store outcomes, coalescing and background work.
"""

from __future__ import annotations

from gateway.observability.metrics import Metrics


class CacheStats:
    def __init__(self, metrics: Metrics, route: str) -> None:
        m = metrics
        self._route = route
        self._bytes = m.gauge(
            "gateway_cache_memory_bytes", "Bytes held by the in-process cache tier.", ["route"]
        ).labels(route)
        self._entries = m.gauge(
            "gateway_cache_memory_entries", "URLs held by the in-process cache tier.", ["route"]
        ).labels(route)
        self._evicted = m.counter(
            "gateway_cache_evictions_total",
            "URLs evicted from the in-process tier to stay within memory.max_bytes.",
            ["route"],
        ).labels(route)
        shared = m.tally(
            "gateway_cache_shared_reads_total",
            "Reads of the shared cache tier by result (hit, miss, error).",
            ["route", "result"],
        )
        self._shared = {r: shared.cell(route, r) for r in ("hit", "miss", "error")}
        self._stores = m.counter(
            "gateway_cache_stores_total",
            "Responses considered for storing, by outcome: `stored`, or why not (no-store, "
            "private, too-large, ...).",
            ["route", "outcome"],
        )
        coalesced = m.counter(
            "gateway_cache_coalesced_total",
            "Requests that waited for another request to the same key, by outcome "
            "(reused: served its response; refetched: went upstream themselves).",
            ["route", "outcome"],
        )
        self.reused = coalesced.labels(route, "reused").inc
        self.refetched = coalesced.labels(route, "refetched").inc
        self._background = m.counter(
            "gateway_cache_background_total",
            "Background refreshes (stale-while-revalidate) and warm-ups, by result "
            "(ok, not-stored, error, skipped).",
            ["route", "kind", "result"],
        )

    def l1_changed(self, size: int, entries: int, evicted: int) -> None:
        """The in-process tier's ``on_change``."""
        self._bytes.set(size)
        self._entries.set(entries)
        if evicted:
            self._evicted.inc(evicted)

    def l2_read(self, result: str) -> None:
        self._shared[result][0] += 1

    def stored(self, outcome: str) -> None:
        """A response considered for storing: ``stored`` or the reason it was not."""
        self._stores.labels(self._route, outcome).inc()

    def background(self, kind: str, result: str) -> None:
        self._background.labels(self._route, kind, result).inc()
