"""The aiohttp client behind the seam: the first transport, and the oracle in tests.

aiohttp's defaults are wrong for a proxy; this transport turns them off: no redirects,
no decompression, no cookie jar, no automatic headers, no path re-quoting.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from gateway.config.models import Upstream
from gateway.errors import (
    UpstreamBodyError,
    UpstreamConnectError,
    UpstreamConnectTimeout,
    UpstreamProtocolError,
    UpstreamTimeout,
)
from gateway.exchange import ByteStream, Response
from gateway.transport.base import UpstreamRequest

_SKIP_AUTO = frozenset({"User-Agent", "Accept", "Accept-Encoding", "Content-Type"})


class AiohttpTransport:
    name = "aiohttp"

    def __init__(self, config: Upstream) -> None:
        self.config = config
        self._session: aiohttp.ClientSession | None = None

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(
                limit=0,
                limit_per_host=self.config.pool.max_connections,
                keepalive_timeout=self.config.pool.idle_timeout,
                ssl=bool(self.config.verify_tls),
                enable_cleanup_closed=False,
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                auto_decompress=False,
                cookie_jar=aiohttp.DummyCookieJar(),
                skip_auto_headers=_SKIP_AUTO,
                timeout=aiohttp.ClientTimeout(total=None),
            )
        return self._session

    async def send(self, request: UpstreamRequest) -> Response:
        target = request.target
        url = URL(
            f"{target.scheme}://{target.authority.decode('latin-1')}"
            + request.path.decode("latin-1"),
            encoded=True,
        )
        t = request.timeouts
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=t.connect, sock_read=t.read, connect=t.connect
        )
        body = request.body
        data: bytes | AsyncIterator[bytes] | None
        data = body if isinstance(body, bytes) or body is None else _iterate(body)
        if data == b"":
            data = None
        headers = CIMultiDict(
            (k.decode("latin-1"), v.decode("latin-1")) for k, v in request.headers
        )
        try:
            coro = self._get_session().request(
                request.method,
                url,
                headers=headers,
                data=data,
                allow_redirects=False,
                timeout=timeout,
                compress=None,
                auto_decompress=False,
            )
            if t.total is not None:
                resp = await asyncio.wait_for(coro, t.total)
            else:
                resp = await coro
        except aiohttp.ConnectionTimeoutError as exc:
            raise UpstreamConnectTimeout(f"{target.key}: connect timed out") from exc
        except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
            raise UpstreamTimeout(f"{target.key}: timed out") from exc
        except aiohttp.ClientConnectorError as exc:
            raise UpstreamConnectError(f"{target.key}: {exc.os_error or exc}") from exc
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
            raise UpstreamConnectError(f"{target.key}: connection lost: {exc}") from exc
        except aiohttp.ClientResponseError as exc:
            raise UpstreamProtocolError(f"{target.key}: {exc.message}") from exc
        except aiohttp.ClientError as exc:
            raise UpstreamProtocolError(f"{target.key}: {exc}") from exc
        raw_headers = list(resp.raw_headers)
        no_body = request.method == "HEAD" or resp.status in (204, 304) or resp.status < 200
        if no_body:
            resp.release()
            return Response(resp.status, raw_headers, b"", reason=(resp.reason or "").encode())
        return Response(
            resp.status,
            raw_headers,
            stream=_ResponseStream(resp),
            reason=(resp.reason or "").encode(),
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


async def _iterate(body: ByteStream) -> AsyncIterator[bytes]:
    async for chunk in body:
        yield chunk


class _ResponseStream:
    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        self._resp = resp

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._iter()

    async def _iter(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._resp.content.iter_any():
                yield chunk
        except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
            self._resp.close()
            raise UpstreamBodyError("upstream body timed out") from exc
        except (aiohttp.ClientError, OSError) as exc:
            self._resp.close()
            raise UpstreamBodyError(f"upstream body cut: {exc}") from exc
        self._resp.release()

    async def aclose(self) -> None:
        if not self._resp.closed:
            self._resp.close()
