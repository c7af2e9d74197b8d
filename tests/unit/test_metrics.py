"""Metrics kept in plain ints (request-path counts) render like prometheus counters."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.observability.metrics import Metrics


def samples(metrics: Metrics, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    out = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for sample in family.samples:
            if sample.name == name:
                out[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def test_a_tally_renders_as_a_counter_and_survives_being_declared_again() -> None:
    metrics = Metrics()
    reads = metrics.tally("gateway_test_reads_total", "Reads by result.", ["route", "result"])
    hit = reads.cell("r", "hit")
    hit[0] += 3
    reads.cell("r", "miss")[0] += 1
    # A reload declares it again: the same counts go on.
    again = metrics.tally("gateway_test_reads_total", "Reads by result.", ["route", "result"])
    assert again is reads and again.cell("r", "hit") is hit
    hit[0] += 1
    families = text_string_to_metric_families(metrics.render().decode())
    assert {f.name: f.type for f in families}["gateway_test_reads"] == "counter"
    assert samples(metrics, "gateway_test_reads_total") == {
        (("result", "hit"), ("route", "r")): 4.0,
        (("result", "miss"), ("route", "r")): 1.0,
    }


def test_a_name_is_either_a_tally_or_a_counter() -> None:
    metrics = Metrics()
    metrics.tally("gateway_test_a_total", "A.", ["x"])
    metrics.counter("gateway_test_b_total", "B.", ["x"])
    with pytest.raises(ValueError, match="already"):
        metrics.counter("gateway_test_a_total", "A.", ["x"])
    with pytest.raises(ValueError, match="already"):
        metrics.tally("gateway_test_b_total", "B.", ["x"])
