"""``gateway explain``: which route a request matches and the policies it would meet."""

from __future__ import annotations

from typing import Any

from gateway.config.loader import LoadedConfig
from gateway.exchange import Exchange


def explain(
    loaded: LoadedConfig, method: str, target: str, headers: list[str], client: str
) -> dict[str, Any]:
    from gateway.runtime import Runtime

    runtime = Runtime(loaded)
    snapshot = runtime.snapshot
    raw_headers: list[tuple[bytes, bytes]] = []
    for line in headers:
        name, sep, value = line.partition(":")
        if not sep or not name.strip():
            raise ValueError(f"header {line!r} is not 'Name: value'")
        raw_headers.append((name.strip().encode("latin-1"), value.strip().encode("latin-1")))
    exchange = Exchange(method.upper(), target.encode(), raw_headers, client)
    match = snapshot.router.match(exchange.method, exchange.path, exchange.host, raw_headers)
    report: dict[str, Any] = {"method": exchange.method, "path": exchange.path}
    if match.route is None:
        if match.allowed:
            report.update(route=None, status=405, allowed=sorted(match.allowed))
        else:
            report.update(route=None, status=404)
        return report
    route = match.route
    exchange.route = route
    exchange.path_params = match.params
    pool = snapshot.pools[route.upstream]
    report.update(
        route=route.name,
        match=route.match.model_dump(mode="json", exclude_none=True, exclude_defaults=True),
        params=match.params,
        upstream={"name": route.upstream, "targets": [t.key for t in pool.targets]},
        policies=[
            {
                "order": i + 1,
                "policy": p.label,
                "mode": "shadow" if p.shadow else "enforce",
                "detail": p.explain(exchange),
            }
            for i, p in enumerate(route.policies)
        ],
    )
    return report


def render(report: dict[str, Any]) -> str:
    lines = [f"{report['method']} {report['path']}"]
    if report["route"] is None:
        if report["status"] == 405:
            lines.append(
                f"  no route allows this method: 405 (allowed: {', '.join(report['allowed'])})"
            )
        else:
            lines.append("  no route matches: 404")
        return "\n".join(lines) + "\n"
    lines.append(f"  route:    {report['route']}  {report['match']}")
    if report["params"]:
        lines.append("  params:   " + ", ".join(f"{k}={v}" for k, v in report["params"].items()))
    up = report["upstream"]
    lines.append(f"  upstream: {up['name']} -> {', '.join(up['targets'])}")
    if not report["policies"]:
        lines.append("  policies: none (proxied as is)")
    else:
        lines.append("  policies, in the order they run:")
        for p in report["policies"]:
            detail = f": {p['detail']}" if p["detail"] else ""
            lines.append(f"    {p['order']}. {p['policy']} [{p['mode']}]{detail}")
    return "\n".join(lines) + "\n"
