"""``gateway explain``: which route a request matches and the policies it would meet.

What the front-ends refuse before routing is reported as such: ``CONNECT`` and methods
the HTTP parser does not know (501), a malformed method or request target (400). An
absolute-form target is routed as the front-ends route it: its authority is the Host.
"""

from __future__ import annotations

import json
from typing import Any

import httptools

from gateway.config.loader import LoadedConfig
from gateway.exchange import Exchange, Response
from gateway.frontends.native_request import (
    BadTarget,
    bad_request,
    connect_refusal,
    origin_form,
    unknown_method_refusal,
)


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
    method = method.upper()
    raw_target = target.encode("latin-1")
    refusal = _front_end_refusal(method)
    if refusal is None and not raw_target.startswith(b"/"):
        # As the front-ends: absolute-form becomes origin-form, its authority the Host.
        try:
            raw_target, authority = origin_form(raw_target, method)
        except BadTarget as exc:
            refusal = bad_request(str(exc))
        else:
            if authority is not None:
                raw_headers = [h for h in raw_headers if h[0].lower() != b"host"]
                raw_headers.append((b"host", authority))
    if refusal is not None:
        detail = json.loads(refusal.body)["detail"]
        return {"method": method, "path": target, "route": None,
                "status": refusal.status, "refused": detail}  # fmt: skip
    exchange = Exchange(method, raw_target, raw_headers, client)
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


def _front_end_refusal(method: str) -> Response | None:
    """What both front-ends answer a request with this method before routing it: 501
    for CONNECT and for a method their parser does not know, 400 for one that is not a
    token; None for the others."""
    if method == "CONNECT":
        return connect_refusal()
    line = method.encode("latin-1") + b" / HTTP/1.1\r\nHost: h\r\n\r\n"
    try:
        httptools.HttpRequestParser(_Quiet()).feed_data(line)
    except httptools.HttpParserInvalidMethodError as exc:
        return unknown_method_refusal(line, str(exc) or "malformed request")
    except httptools.HttpParserError as exc:
        return bad_request(str(exc) or "malformed request")
    return None


class _Quiet:
    """A parser protocol that listens to nothing."""


def render(report: dict[str, Any]) -> str:
    lines = [f"{report['method']} {report['path']}"]
    if report["route"] is None:
        if "refused" in report:
            lines.append(f"  refused by the front-end: {report['status']} ({report['refused']})")
        elif report["status"] == 405:
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
