"""The rate limit table of bench/run.py: what one limiter costs beside the pass-through.

Issue 4's targets are relative: a limiter in memory at most 10 % overhead, a limiter in
Redis adding at most one Redis round trip to p50. Both are taken per round, from runs
made seconds apart: each round's req/s and c=1 p50 of a limiter variant against the same
round's ``gateway-native``; for a Redis limiter, the added p50 over the same round's
round trip (``bench/redis_rtt.py``: the limiter's own ``EVALSHA`` through the gateway's
client, pinned to the proxy's CPU). The table gives the median of the per-round figures
and their range, since one c=1 round on a shared machine moves by tens of microseconds.

Beside a Redis limiter the run has a control (``bench/floor_proxy.py``): a minimal proxy
with and without the same ``EVALSHA`` per request, paired the same way. Its row is the
floor on this machine: what one Redis call costs a proxy whose own work is next to
nothing, so the gateway's row can be read against what is reachable here.
"""

from __future__ import annotations

import json
import statistics
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REDIS_RTT_PY = BENCH / "redis_rtt.py"
BASELINE = "gateway-native"
FLOOR_PASS, FLOOR_REDIS = "floor-pass", "floor-redis"


def measure_rtt(
    python: str, url: str, seconds: float, taskset: str | None, cpu: int
) -> dict[str, Any] | None:
    """One round trip measurement (None, with a message, if the probe failed)."""
    cmd = [python, str(REDIS_RTT_PY), url, "--duration", str(seconds)]
    if taskset:
        cmd = [taskset, "-c", str(cpu), *cmd]
    try:
        done = subprocess.run(
            cmd, capture_output=True, text=True, timeout=seconds + 30, check=False
        )
    except subprocess.TimeoutExpired:
        print("  redis round trip: the probe did not finish", flush=True)
        return None
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        detail = (done.stderr.strip() or done.stdout.strip()).splitlines()[-1:]
        print(f"  redis round trip: the probe failed: {' '.join(detail)}", flush=True)
        return None
    result: dict[str, Any] = json.loads(lines[-1])
    print(
        f"  {'redis EVALSHA round trip':<24} c=1   {result['calls'] / seconds:>10,.0f} calls/s"
        f"  p50 {result['p50_us'] / 1000:.3f} ms",
        flush=True,
    )
    return result


def limits(variant: Any) -> str | None:
    """'memory', 'redis', or None: where the variant's rate limiters keep their state."""
    if variant is None:
        return None
    rules = variant.policies.get("rate_limit")
    if not rules:
        return None
    rules = rules if isinstance(rules, list) else [rules]
    return "memory" if all(r.get("store", "memory") == "memory" for r in rules) else "redis"


def _spread(values: Sequence[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def summarize(
    targets: Sequence[Any], rtts: Sequence[dict[str, Any] | None]
) -> list[dict[str, Any]]:
    """One row per rate-limit variant, paired round by round with the pass-through, and
    one for the floor control, paired with its own pass-through."""
    by_name = {t.name: t for t in targets}
    rows = []
    for t in targets:
        kind: str | None = "redis"
        if t.name == FLOOR_REDIS:
            base = by_name.get(FLOOR_PASS)
        else:
            kind, base = limits(t.variant), by_name.get(BASELINE)
        if kind is None or base is None or t.failed or base.failed:
            continue
        fewer = [
            1 - mine["rps"] / theirs["rps"] for mine, theirs in zip(t.runs, base.runs, strict=False)
        ]
        added, share, over_rtt = [], [], []
        for i, (mine, theirs) in enumerate(zip(t.latency, base.latency, strict=False)):
            diff = mine["p50_us"] - theirs["p50_us"]
            added.append(diff)
            share.append(diff / theirs["p50_us"])
            rtt = rtts[i] if i < len(rtts) else None
            if kind == "redis" and rtt is not None:
                over_rtt.append(diff / rtt["p50_us"])
        rows.append(
            {
                "target": t.name,
                "baseline": base.name,
                "store": kind,
                "rounds": len(added),
                "fewer_rps": _spread(fewer),
                "added_p50_us": _spread(added),
                "added_share": _spread(share),
                "rtt_p50_us": _spread([r["p50_us"] for r in rtts if r is not None])
                if kind == "redis"
                else None,
                "added_over_rtt": _spread(over_rtt),
            }
        )
    return rows


def _show(spread: dict[str, float] | None, pattern: str, scale: float = 1.0) -> str:
    if spread is None:
        return "-"
    m, lo, hi = (spread[k] * scale for k in ("median", "min", "max"))
    return f"{m:{pattern}} ({lo:{pattern}} to {hi:{pattern}})"


def print_table(
    rows: Sequence[dict[str, Any]],
    rounds: int,
    seconds: int,
    markdown: Callable[[Sequence[Sequence[str]]], None],
) -> None:
    lines = [
        [
            "target",
            "against",
            "store",
            "fewer req/s at c=N",
            "added p50, ms",
            "added / pass-through p50",
            "Redis round trip p50, ms",
            "added / round trip",
        ]
    ]
    for r in rows:
        lines.append(
            [
                r["target"],
                r["baseline"],
                r["store"],
                _show(r["fewer_rps"], ".1%"),
                _show(r["added_p50_us"], "+.3f", 1e-3),
                _show(r["added_share"], "+.1%"),
                _show(r["rtt_p50_us"], ".3f", 1e-3),
                _show(r["added_over_rtt"], ".2f"),
            ]
        )
    print()
    print(
        f"Rate limit overhead, each round against the same round's pass-through: req/s of "
        f"the throughput runs, p50 of the 1-connection runs (-d{seconds}s); median of "
        f"{rounds} round(s) (min to max). Targets: memory at most 10 % fewer req/s, Redis "
        f"at most 1.00 round trip added to p50. {FLOOR_REDIS} is the control: a minimal "
        "proxy making the same Redis call (bench/floor_proxy.py)"
    )
    markdown(lines)
