"""Helpers for the cache's integration tests: configs, resource names, upstream stats."""

from __future__ import annotations

import http.client
import json
import socket
import uuid
from typing import Any
from urllib.parse import quote

from tests.integration.harness import ADMIN_TOKEN, Gateway, Upstream, base_config


def cache_config(
    upstream: Upstream, frontend: str, cache: dict[str, Any] | None = None, **overrides: Any
) -> dict[str, Any]:
    config = base_config(upstream.url, frontend, **overrides)
    config["routes"][1]["policies"] = {"cache": cache or {}}
    return config


def resource(**params: str) -> tuple[str, str]:
    """(name, path) of a fresh ``/cache/r/NAME`` resource shaped by ``params``."""
    name = uuid.uuid4().hex[:12]
    query = "&".join(f"{k}={quote(v, safe='')}" for k, v in params.items())
    return name, f"/cache/r/{name}" + (f"?{query}" if query else "")


def upstream_call(upstream: Upstream, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", upstream.port, timeout=5)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def stats(upstream: Upstream, name: str) -> dict[str, Any]:
    status, body = upstream_call(upstream, f"/cache/stats/{name}")
    assert status == 200
    doc: dict[str, Any] = json.loads(body)
    return doc


def fail(
    upstream: Upstream,
    name: str,
    how: str,
    location: str | None = None,
    header: str | None = None,
) -> None:
    """Make the resource fail (``503``, ``close``) or not (``none``); set its Location and
    a header line (``Name:value``) added to every answer."""
    extra = f"&location={quote(location, safe='')}" if location else ""
    extra += f"&header={quote(header, safe='')}" if header else ""
    assert upstream_call(upstream, f"/cache/control/{name}?fail={how}{extra}")[0] == 204


def purge(gw: Gateway, doc: dict[str, Any], token: str | None = ADMIN_TOKEN) -> tuple[int, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", gw.admin_port, timeout=5)
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    try:
        conn.request("POST", "/admin/cache/purge", body=json.dumps(doc), headers=headers)
        response = conn.getresponse()
        return response.status, json.loads(response.read() or b"null")
    finally:
        conn.close()


def request_without_host(gw: Gateway, method: str, path: str) -> tuple[int, bytes]:
    """(status, body) of an HTTP/1.0 request with no ``Host`` field (http.client always
    sends one)."""
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as sock:
        sock.sendall(f"{method} {path} HTTP/1.0\r\nContent-Length: 0\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def count(body: bytes) -> int:
    """Which upstream request produced this body (``n`` of the resource)."""
    return int(json.loads(body)["n"])


def cache_status(value: str) -> tuple[str, dict[str, str]]:
    """``gateway; fwd=uri-miss; ttl=59; stored`` -> ("gateway", {"fwd": "uri-miss", ...})."""
    name, *params = [p.strip() for p in value.split(";")]
    out: dict[str, str] = {}
    for param in params:
        key, _, val = param.partition("=")
        out[key] = val or "?1"
    return name, out
