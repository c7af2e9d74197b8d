"""A request prepared for the wire and written later (``Outgoing``, ``Forwarder.arm``).

A rate limiter on Redis prepares its request while Redis answers and fires it from the
callback that reads the admitting reply. Against scripted servers on 127.0.0.1, under
asyncio and uvloop: ``fire`` writes only on an idle connection, once, and never after
``drop``; ``drop`` after the write gives the connection up; ``response`` writes what was
not fired and retries a stale connection as ``send`` does; ``timeouts.total`` counts
from the write; the forwarder arms only what a callback can send, to a single target.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from gateway.config.models import Timeouts, Upstream
from gateway.exchange import Exchange
from gateway.policies.rate_limit.admit import FireIfAdmitted
from gateway.transport.aiohttp_transport import AiohttpTransport
from gateway.transport.forward import UpstreamPool, make_forwarder
from gateway.transport.native import NativeTransport
from tests.unit.test_native_transport import (
    Body,
    Peer,
    Runner,
    Server,
    eventually,
    pool_of,
    request,
    serve_ok,
    transport,
)
from tests.unit.test_native_transport import (
    run as run,  # the asyncio and uvloop fixture
)


def recording(got: list[bytes], silent: bytes = b"") -> Callable[[Peer], Awaitable[None]]:
    """Keep-alive: record each request's target in ``got`` and answer it 200 with its
    connection's index, except ``silent``, left unanswered."""

    async def handler(peer: Peer) -> None:
        while (req := await peer.request()) is not None:
            got.append(req.url)
            if req.url != silent:
                peer.write(
                    b"HTTP/1.1 200 OK\r\nX-Conn: %d\r\nContent-Length: 0\r\n\r\n" % peer.index
                )

    return handler


def test_fire_writes_only_on_an_idle_connection_and_only_once(run: Runner[None]) -> None:
    async def main() -> None:
        got: list[bytes] = []

        async def handler(peer: Peer) -> None:
            while (req := await peer.request()) is not None:
                got.append(req.url)
                peer.write(
                    b"HTTP/1.1 200 OK\r\nX-Conn: %d\r\nContent-Length: 0\r\n\r\n" % peer.index
                )

        async with Server(handler) as server:
            t = transport(server.url)
            cold = t.prepare(request(server.url, path=b"/cold"))
            assert not cold.fire()  # no idle connection yet: response() connects
            assert (await cold.response()).status == 200
            assert len(pool_of(t).idle) == 1

            warm = t.prepare(request(server.url, path=b"/warm"))
            assert warm.fire()
            assert not pool_of(t).idle  # taken and written before anyone awaits
            await eventually(lambda: got == [b"/cold", b"/warm"])
            assert not warm.fire()  # written once
            response = await warm.response()
            assert response.status == 200 and response.header(b"x-conn") == b"0"
            assert len(server.peers) == 1 and len(pool_of(t).idle) == 1
            await t.close()

    run(main())


def test_drop_stops_a_fire_and_gives_up_a_written_request(run: Runner[None]) -> None:
    async def main() -> None:
        got: list[bytes] = []
        async with Server(recording(got, silent=b"/hang")) as server:
            t = transport(server.url)
            assert (await t.send(request(server.url))).status == 200
            refused = t.prepare(request(server.url, path=b"/refused"))
            refused.drop()
            assert not refused.fire()  # dropped: never written
            assert len(pool_of(t).idle) == 1

            gone = t.prepare(request(server.url, path=b"/hang"))
            assert gone.fire()
            gone.drop()  # its client left: the answer will not be read
            await eventually(lambda: server.peers[0].eof)
            assert pool_of(t).size == 0
            assert got == [b"/", b"/hang"]
            await t.close()

    run(main())


def test_a_fired_request_on_a_stale_connection_is_sent_again_on_a_fresh_one(
    run: Runner[None],
) -> None:
    async def main() -> None:
        got: list[bytes] = []

        async def handler(peer: Peer) -> None:
            while (req := await peer.request()) is not None:
                got.append(req.raw)
                if peer.index == 0 and len(got) == 2:
                    return  # closed the keep-alive connection without answering
                peer.write(
                    b"HTTP/1.1 200 OK\r\nX-Conn: %d\r\nContent-Length: 0\r\n\r\n" % peer.index
                )

        async with Server(handler) as server:
            t = transport(server.url)
            await t.send(request(server.url))
            outgoing = t.prepare(request(server.url, "POST", body=b"abc"))
            assert outgoing.fire()
            response = await outgoing.response()
            assert response.header(b"x-conn") == b"1"
            assert got[1] == got[2]
            await t.close()

    run(main())


def test_a_streamed_body_is_never_fired(run: Runner[None]) -> None:
    async def main() -> None:
        async with Server(serve_ok) as server:
            t = transport(server.url)
            await t.send(request(server.url))
            outgoing = t.prepare(request(server.url, "POST", body=Body([b"a", b"b"])))
            assert not outgoing.fire()
            assert len(pool_of(t).idle) == 1
            assert (await outgoing.response()).status == 200
            await t.close()

    run(main())


def test_the_forwarder_arms_only_what_a_callback_can_send(run: Runner[None]) -> None:
    async def main() -> None:
        async with Server(serve_ok) as server:
            config = Upstream(url=server.url)
            t = transport(server.url)
            forwarder = make_forwarder(UpstreamPool("app", config, t), (), None)
            plain = Exchange("GET", b"/p", [(b"host", b"api")], "203.0.113.9")
            armed = forwarder.arm(plain)
            assert armed is not None
            response = await forwarder.send_armed(plain, armed)  # not fired: written now
            assert response.status == 200 and response.header(b"via") == b"1.1 gateway"
            assert plain.upstream_duration > 0

            streamed = Exchange(
                "POST", b"/s", [(b"host", b"api")], "203.0.113.9",
                body_stream=Body([b"x"]), content_length=1,
            )  # fmt: skip
            assert forwarder.arm(streamed) is None
            upgrade = Exchange(
                "GET", b"/ws",
                [(b"host", b"api"), (b"connection", b"upgrade"), (b"upgrade", b"websocket"),
                 (b"sec-websocket-key", b"dGhlIHNhbXBsZSBub25jZQ==")],
                "203.0.113.9",
            )  # fmt: skip
            assert forwarder.arm(upgrade) is None
            other = AiohttpTransport(config)
            assert make_forwarder(UpstreamPool("app", config, other), (), None).arm(plain) is None
            await other.close()
            await t.close()

    run(main())


def test_the_limiters_hook_fires_only_a_well_formed_admitting_verdict(run: Runner[None]) -> None:
    async def main() -> None:
        async with Server(serve_ok) as server:
            t = transport(server.url)
            await t.send(request(server.url))
            outgoing = t.prepare(request(server.url))
            hook = FireIfAdmitted(outgoing)
            for reply in (
                [0, 0, 10, 10, 0],
                [1, 5],
                [1, 5, 10, 0],
                b"1",
                None,
                1,
                [b"1", 5, 10, 0, 7],
            ):
                hook(reply)
                assert outgoing.head is None, reply  # nothing written
            assert len(pool_of(t).idle) == 1
            hook([1, 5, 10, 0, 7])
            assert outgoing.head is not None and not pool_of(t).idle
            assert (await outgoing.response()).status == 200
            await t.close()

    run(main())


def test_the_total_timeout_counts_from_the_write_not_the_preparation(run: Runner[None]) -> None:
    # A limiter prepares its request before its store answers: that wait is not the
    # upstream's, and a slow store must not time the request out (or, worse, send it
    # with a deadline already past).
    async def main() -> None:
        async with Server(serve_ok) as server:
            t = transport(server.url)
            await t.send(request(server.url))
            quick = Timeouts(connect=1.0, read=1.0, total=0.2)
            fired = t.prepare(request(server.url, timeouts=quick))
            written = t.prepare(request(server.url, timeouts=quick))
            await asyncio.sleep(0.3)
            assert fired.fire()
            assert (await fired.response()).status == 200
            assert (await written.response()).status == 200
            await t.close()

    run(main())


def test_an_upstream_with_several_targets_is_never_armed(run: Runner[None]) -> None:
    # Arming would take a round-robin turn before the decision, for requests that may
    # be refused.
    async def main() -> None:
        async with Server(serve_ok) as one, Server(serve_ok) as two:
            config = Upstream(url=one.url, targets=[two.url])
            t = NativeTransport(config)
            forwarder = make_forwarder(UpstreamPool("app", config, t), (), None)
            exchange = Exchange("GET", b"/p", [(b"host", b"api")], "203.0.113.9")
            assert forwarder.arm(exchange) is None
            assert (await forwarder(exchange)).status == 200
            await t.close()

    run(main())
