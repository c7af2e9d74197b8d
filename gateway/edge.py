"""Responses the gateway produces itself: problem+json (RFC 9457) with the trace id."""

from __future__ import annotations

from http import HTTPStatus

from gateway.errors import UpstreamError, problem_body, problem_headers
from gateway.exchange import Exchange, Response
from gateway.types import Headers


def problem_response(
    exchange: Exchange | None,
    status: int,
    problem_type: str,
    title: str,
    detail: str,
    headers: Headers | None = None,
    **extra: object,
) -> Response:
    trace_id = exchange.trace_id if exchange is not None else ""
    body = problem_body(status, problem_type, title, detail, trace_id, **extra)
    return Response(status, problem_headers(body, headers), body)


def upstream_error_response(exchange: Exchange, exc: UpstreamError) -> Response:
    return problem_response(exchange, exc.status, exc.problem_type, exc.title, str(exc))


def status_phrase(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode()
    except ValueError:
        return b"Unknown"
