"""Prometheus metrics, one registry per app (no global registry), children pre-bound.

Policies declare their own counters through :meth:`Metrics.counter` /
:meth:`Metrics.gauge`; every policy decision is counted by the runner in
``gateway_policy_decisions_total``.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterator, Sequence

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip
STATUS_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")


class _Histogram:
    """One label set's histogram: bucket counts by bisect, no locks (one event loop)."""

    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(LATENCY_BUCKETS, value)] += 1
        self.total += value


class Tally:
    """A counter family kept in plain ints, for counts taken on the request path.

    ``cell(*label_values)`` is a one-item list to add to (``cell[0] += 1``): no lock,
    no method call per count (a prometheus_client ``Counter.inc`` takes a lock, ~0.5 µs).
    Rendered at scrape time like a Counter, without the ``_created`` series.
    """

    __slots__ = ("cells", "doc", "labels", "name")

    def __init__(self, name: str, doc: str, labels: Sequence[str]) -> None:
        self.name = name.removesuffix("_total")
        self.doc = doc
        self.labels = list(labels)
        self.cells: dict[tuple[str, ...], list[int]] = {}

    def cell(self, *values: str) -> list[int]:
        return self.cells.setdefault(values, [0])

    def family(self) -> CounterMetricFamily:
        family = CounterMetricFamily(self.name, self.doc, labels=self.labels)
        for values, cell in sorted(self.cells.items()):
            family.add_metric(list(values), cell[0])
        return family


class _RequestCollector(Collector):
    """The per-request series, kept in plain ints and lists and rendered at scrape time.

    prometheus_client's Counter.inc and Histogram.observe take a lock and walk every
    bucket (~2-3 us per request for the three series); these cost ~0.3 us.
    """

    def __init__(self) -> None:
        self.requests: dict[tuple[str, str, str], list[int]] = {}
        self.decisions: dict[tuple[str, str, str, str], list[int]] = {}
        self.durations: dict[str, _Histogram] = {}
        self.upstream: dict[str, _Histogram] = {}
        self.tallies: dict[str, Tally] = {}

    def collect(self) -> Iterator[Metric]:
        for tally in self.tallies.values():
            yield tally.family()
        requests = CounterMetricFamily(
            "gateway_requests",
            "Requests answered, by route, method and status class.",
            labels=["route", "method", "status_class"],
        )
        for labels, cell in sorted(self.requests.items()):
            requests.add_metric(list(labels), cell[0])
        yield requests
        decisions = CounterMetricFamily(
            "gateway_policy_decisions",
            "Policy decisions by route, policy, action and mode (enforce or shadow).",
            labels=["route", "policy", "action", "mode"],
        )
        for names, count in sorted(self.decisions.items()):
            decisions.add_metric(list(names), count[0])
        yield decisions
        yield self._histograms(
            "gateway_request_duration_seconds",
            "Time from request head received to last response byte sent.",
            "route",
            self.durations,
        )
        yield self._histograms(
            "gateway_upstream_duration_seconds",
            "Time from sending a request upstream to its response head.",
            "upstream",
            self.upstream,
        )

    @staticmethod
    def _histograms(
        name: str, doc: str, label: str, series: dict[str, _Histogram]
    ) -> HistogramMetricFamily:
        family = HistogramMetricFamily(name, doc, labels=[label])
        for value, hist in sorted(series.items()):
            cumulative, buckets = 0, []
            for bound, count in zip((*LATENCY_BUCKETS, float("inf")), hist.counts, strict=True):
                cumulative += count
                buckets.append((_bound(bound), float(cumulative)))
            family.add_metric([value], buckets, hist.total)
        return family


def _bound(value: float) -> str:
    return "+Inf" if value == float("inf") else repr(value)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        if registry is None:
            ProcessCollector(registry=r)  # process_* (CPU, RSS, open fds) of this process
            PlatformCollector(registry=r)
        self._fast = _RequestCollector()
        r.register(self._fast)
        self.in_flight = Gauge(
            "gateway_requests_in_flight", "Requests being served now.", registry=r
        )
        self.upstream_errors = Counter(
            "gateway_upstream_errors_total",
            "Failed upstream calls by kind (connect, timeout, protocol, body).",
            ["upstream", "kind"],
            registry=r,
        )
        self.reloads = Counter(
            "gateway_config_reloads_total",
            "Configuration reloads by result (success, failure).",
            ["result"],
            registry=r,
        )
        self.store_errors = Counter(
            "gateway_store_errors_total",
            "Failed or timed-out store calls by store and policy.",
            ["store", "policy"],
            registry=r,
        )
        self.config_info = Gauge(
            "gateway_config_info", "The loaded config's hash (value 1).", ["hash"], registry=r
        )
        self._request_cells: dict[tuple[str, str, int], list[int]] = {}
        self._decision_cells: dict[tuple[str, str, str, bool], list[int]] = {}
        self._custom: dict[str, Counter | Gauge] = {}
        for result in ("success", "failure"):
            self.reloads.labels(result)

    def request_done(self, route: str, method: str, status: int, seconds: float) -> None:
        key = (route, method, status // 100)
        cell = self._request_cells.get(key)
        if cell is None:
            cls = STATUS_CLASSES[min(max(status // 100, 1), 5) - 1]
            cell = self._fast.requests.setdefault((route, method, cls), [0])
            self._request_cells[key] = cell
        cell[0] += 1
        hist = self._fast.durations.get(route)
        if hist is None:
            hist = self._fast.durations[route] = _Histogram()
        hist.observe(seconds)

    def decision(self, route: str, policy: str, action: str, shadow: bool) -> None:
        key = (route, policy, action, shadow)
        cell = self._decision_cells.get(key)
        if cell is None:
            labels = (route, policy, action, "shadow" if shadow else "enforce")
            cell = self._decision_cells[key] = self._fast.decisions.setdefault(labels, [0])
        cell[0] += 1

    def upstream_observer(self, upstream: str) -> Callable[[float], None]:
        hist = self._fast.upstream.get(upstream)
        if hist is None:
            hist = self._fast.upstream[upstream] = _Histogram()
        return hist.observe

    def upstream_error_counter(self, upstream: str) -> Callable[[str], None]:
        def count(kind: str) -> None:
            self.upstream_errors.labels(upstream, kind).inc()

        return count

    def counter(self, name: str, doc: str, labels: Sequence[str]) -> Counter:
        """A policy's own counter, created once per process and reused across reloads."""
        existing = self._custom.get(name)
        if existing is None:
            if name in self._fast.tallies:
                raise ValueError(f"metric {name} is already a tally")
            existing = self._custom[name] = Counter(name, doc, labels, registry=self.registry)
        assert isinstance(existing, Counter)
        return existing

    def tally(self, name: str, doc: str, labels: Sequence[str]) -> Tally:
        """A policy's counter for the request path (see :class:`Tally`), created once per
        process and reused across reloads."""
        tallies = self._fast.tallies
        existing = tallies.get(name)
        if existing is None:
            if name in self._custom:
                raise ValueError(f"metric {name} is already a Counter or Gauge")
            existing = tallies[name] = Tally(name, doc, labels)
        return existing

    def gauge(self, name: str, doc: str, labels: Sequence[str]) -> Gauge:
        existing = self._custom.get(name)
        if existing is None:
            existing = self._custom[name] = Gauge(name, doc, labels, registry=self.registry)
        assert isinstance(existing, Gauge)
        return existing

    def render(self) -> bytes:
        return generate_latest(self.registry)
