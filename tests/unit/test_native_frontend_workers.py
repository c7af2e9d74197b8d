"""``workers: N``: the supervisor's merge of the workers' Prometheus expositions."""

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from gateway.frontends.workers_admin import merge_expositions


def exposition(requests: int, in_flight: int) -> bytes:
    registry = CollectorRegistry()
    counter = Counter("gateway_requests_total", "Requests.", ["route"], registry=registry)
    counter.labels("users").inc(requests)
    Gauge("gateway_requests_in_flight", "In flight.", registry=registry).set(in_flight)
    histogram = Histogram("gateway_request_duration_seconds", "Duration.", ["route"],
                          buckets=(0.1, 1.0), registry=registry)  # fmt: skip
    histogram.labels("users").observe(0.5)
    return generate_latest(registry)


def test_merged_exposition_labels_every_sample_by_worker() -> None:
    merged = merge_expositions([("0", exposition(3, 1)), ("1", exposition(5, 0))]).decode()
    families = {f.name: f for f in text_string_to_metric_families(merged)}
    requests = families["gateway_requests"].samples
    assert sorted((s.labels["worker"], s.value) for s in requests) == [("0", 3.0), ("1", 5.0)]
    in_flight = families["gateway_requests_in_flight"].samples
    assert {s.labels["worker"]: s.value for s in in_flight} == {"0": 1.0, "1": 0.0}
    buckets = [s for s in families["gateway_request_duration_seconds"].samples
               if s.name.endswith("_bucket")]  # fmt: skip
    assert len(buckets) == 6
    assert all(s.labels["route"] == "users" for s in buckets)
    assert merged.count("# TYPE gateway_requests_total counter") == 1


def test_no_workers_answering_gives_an_empty_exposition() -> None:
    assert merge_expositions([]) == b""
