"""Prometheus metrics, one registry per app (no global registry), children pre-bound.

Policies declare their own counters through :meth:`Metrics.counter` /
:meth:`Metrics.gauge`; every policy decision is counted by the runner in
``gateway_policy_decisions_total``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.exposition import generate_latest

LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip
STATUS_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        if registry is None:
            ProcessCollector(registry=r)  # process_* (CPU, RSS, open fds) of this process
            PlatformCollector(registry=r)
        self.requests = Counter(
            "gateway_requests_total",
            "Requests answered, by route, method and status class.",
            ["route", "method", "status_class"],
            registry=r,
        )
        self.duration = Histogram(
            "gateway_request_duration_seconds",
            "Time from request head received to last response byte sent.",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.upstream_duration = Histogram(
            "gateway_upstream_duration_seconds",
            "Time from sending a request upstream to its response head.",
            ["upstream"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
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
        self.decisions = Counter(
            "gateway_policy_decisions_total",
            "Policy decisions by route, policy, action and mode (enforce or shadow).",
            ["route", "policy", "action", "mode"],
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
        self._request_children: dict[tuple[str, str, int], Callable[[], None]] = {}
        self._duration_children: dict[str, Callable[[float], None]] = {}
        self._decision_children: dict[tuple[str, str, str, bool], Callable[[], None]] = {}
        self._custom: dict[str, Counter | Gauge] = {}
        for result in ("success", "failure"):
            self.reloads.labels(result)

    def request_done(self, route: str, method: str, status: int, seconds: float) -> None:
        key = (route, method, status // 100)
        inc = self._request_children.get(key)
        if inc is None:
            cls = STATUS_CLASSES[min(max(status // 100, 1), 5) - 1]
            inc = self._request_children[key] = self.requests.labels(route, method, cls).inc
        inc()
        observe = self._duration_children.get(route)
        if observe is None:
            observe = self._duration_children[route] = self.duration.labels(route).observe
        observe(seconds)

    def decision(self, route: str, policy: str, action: str, shadow: bool) -> None:
        key = (route, policy, action, shadow)
        inc = self._decision_children.get(key)
        if inc is None:
            mode = "shadow" if shadow else "enforce"
            inc = self._decision_children[key] = self.decisions.labels(
                route, policy, action, mode
            ).inc
        inc()

    def upstream_observer(self, upstream: str) -> Callable[[float], None]:
        return self.upstream_duration.labels(upstream).observe

    def upstream_error_counter(self, upstream: str) -> Callable[[str], None]:
        def count(kind: str) -> None:
            self.upstream_errors.labels(upstream, kind).inc()

        return count

    def counter(self, name: str, doc: str, labels: Sequence[str]) -> Counter:
        """A policy's own counter, created once per process and reused across reloads."""
        existing = self._custom.get(name)
        if existing is None:
            existing = self._custom[name] = Counter(name, doc, labels, registry=self.registry)
        assert isinstance(existing, Counter)
        return existing

    def gauge(self, name: str, doc: str, labels: Sequence[str]) -> Gauge:
        existing = self._custom.get(name)
        if existing is None:
            existing = self._custom[name] = Gauge(name, doc, labels, registry=self.registry)
        assert isinstance(existing, Gauge)
        return existing

    def render(self) -> bytes:
        return generate_latest(self.registry)
