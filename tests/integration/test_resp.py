"""The RESP client (gateway.stores.resp) against real redis-servers and misbehaving fakes."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import shutil
import signal
import ssl
import subprocess
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.config.models import StoreSpec
from gateway.errors import StoreError
from gateway.stores.redis import RedisStore
from gateway.stores.resp import Address, ReplyError, RespClient
from tests.integration.harness import Redis, free_port, stop_process, wait_for_port

pytestmark = pytest.mark.integration


def start_redis(port: int, *extra: str) -> subprocess.Popen[bytes]:
    binary = shutil.which("redis-server")
    assert binary is not None, "redis-server is not installed"
    base = [binary, "--port", str(port), "--bind", "127.0.0.1", "--loglevel", "warning"]
    proc = subprocess.Popen(
        [*base, "--save", "", "--appendonly", "no", *extra],
        stdout=subprocess.PIPE,  # its start-up lines only: --loglevel warning
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        wait_for_port(port, proc)
    except BaseException:
        stop_process(proc)
        raise
    return proc


@pytest.fixture
def own_redis() -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Start redis-servers for one test (restartable on the same port); all stopped after."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(port: int, *extra: str) -> subprocess.Popen[bytes]:
        proc = start_redis(port, *extra)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        stop_process(proc)


def client(port: int, timeout: float = 1.0, **address: Any) -> RespClient:
    return RespClient("t", Address("127.0.0.1", port, **address), timeout, None)


def run(body: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(body())


def test_pipelined_concurrent_commands_answer_in_order(redis_server: Redis) -> None:
    async def body() -> None:
        resp = client(redis_server.port)
        await resp.call(b"DEL", "pipe:n")
        sets = [resp.call(b"SET", f"pipe:{i}", b"v%d" % i) for i in range(300)]
        assert await asyncio.gather(*sets) == [b"OK"] * 300
        mixed: list[Awaitable[object]] = []
        for i in range(300):
            mixed += [resp.call(b"GET", f"pipe:{i}"), resp.call(b"INCR", "pipe:n")]
        got = await asyncio.gather(*mixed)
        assert got[0::2] == [b"v%d" % i for i in range(300)]
        assert got[1::2] == list(range(1, 301))
        assert await resp.call(b"GET", "pipe:absent") is None
        with pytest.raises(ReplyError, match=r"WRONGTYPE|not an integer"):
            await resp.call(b"INCR", "pipe:0")
        assert await resp.call(b"GET", "pipe:1") == b"v1"  # in step after an error reply
        ids = await asyncio.gather(*(resp.call(b"CLIENT", b"ID") for _ in range(20)))
        assert len(set(ids)) == 1  # one connection carried everything
        await resp.close()

    run(body)


def test_concurrent_first_calls_share_one_connect(redis_server: Redis) -> None:
    async def body() -> None:
        resp = client(redis_server.port)
        ids = await asyncio.gather(*(resp.call(b"CLIENT", b"ID") for _ in range(50)))
        assert len(set(ids)) == 1
        await resp.close()

    run(body)


def test_a_cancelled_caller_does_not_shift_the_replies(redis_server: Redis) -> None:
    async def body() -> None:
        resp = client(redis_server.port)
        await resp.call(b"SET", "cancel:a", b"a")
        await resp.call(b"SET", "cancel:b", b"b")

        async def get(key: str) -> object:
            return await resp.call(b"GET", key)

        first = asyncio.ensure_future(get("cancel:a"))
        await asyncio.sleep(0)  # written
        second = asyncio.ensure_future(get("cancel:b"))
        first.cancel()
        assert await second == b"b"
        assert await resp.call(b"GET", "cancel:a") == b"a"
        await resp.close()

    run(body)


async def fake_server(
    handle: Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]],
) -> tuple[asyncio.Server, int]:
    """A TCP listener that runs ``handle(reader, writer, connection number)``."""
    count = 0

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal count
        count += 1
        try:
            await handle(reader, writer, count)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


def test_a_server_that_never_answers_gives_store_error_within_the_timeout() -> None:
    async def body() -> None:
        async def silent(reader: asyncio.StreamReader, writer: Any, n: int) -> None:
            await reader.read()  # reads until the client goes away, answers nothing

        server, port = await fake_server(silent)
        resp = client(port, timeout=0.1)
        loop = asyncio.get_running_loop()
        started = loop.time()
        calls = [asyncio.ensure_future(resp.call(b"GET", f"k{i}")) for i in range(5)]
        results = await asyncio.gather(*calls, return_exceptions=True)
        assert all(isinstance(r, StoreError) for r in results), results
        assert "timed out" in str(results[0])
        assert loop.time() - started < 0.5
        # a login that never completes is bounded the same way
        resp_login = client(port, timeout=0.1, password="pw")
        started = loop.time()
        with pytest.raises(StoreError, match="timed out"):
            await resp_login.call(b"PING")
        assert loop.time() - started < 0.5
        await resp.close()
        await resp_login.close()
        server.close()

    run(body)


def test_a_late_reply_never_answers_the_next_caller() -> None:
    """The first connection answers after the timeout; the next call must get its own reply."""

    async def body() -> None:
        first_closed = asyncio.Event()

        async def slow_then_fast(reader: asyncio.StreamReader, writer: Any, n: int) -> None:
            await reader.readuntil(b"GET\r\n")
            await reader.readline()
            await reader.readline()  # the key
            if n == 1:
                await asyncio.sleep(0.3)
                writer.write(b"$4\r\nlate\r\n")
                await reader.read()  # EOF: the client dropped this connection
                first_closed.set()
                return
            writer.write(b"$4\r\nmine\r\n")
            await reader.read()

        server, port = await fake_server(slow_then_fast)
        resp = client(port, timeout=0.1)
        with pytest.raises(StoreError, match="timed out"):
            await resp.call(b"GET", "k")
        assert await resp.call(b"GET", "k") == b"mine"
        await asyncio.wait_for(first_closed.wait(), 2)
        await resp.close()
        server.close()

    run(body)


def test_close_fails_calls_in_flight_and_connecting(redis_server: Redis) -> None:
    async def body() -> None:
        async def silent(reader: asyncio.StreamReader, writer: Any, n: int) -> None:
            await reader.read()

        server, port = await fake_server(silent)
        connecting = client(port, timeout=5.0, password="pw")  # the login never completes
        resp = client(redis_server.port, timeout=5.0)
        await resp.call(b"PING")
        calls = [asyncio.ensure_future(connecting.call(b"PING")) for _ in range(3)]
        calls += [asyncio.ensure_future(resp.call(b"BLPOP", "close:nothing", 10))]
        await asyncio.sleep(0.1)
        await connecting.close()
        await resp.close()
        results = await asyncio.gather(*calls, return_exceptions=True)
        assert all(isinstance(r, StoreError) for r in results), results
        assert "closed" in str(results[0]) and "closed" in str(results[-1])
        server.close()

    run(body)


def test_garbage_from_the_server_fails_the_pending_commands() -> None:
    async def body() -> None:
        async def garbage(reader: asyncio.StreamReader, writer: Any, n: int) -> None:
            await reader.readuntil(b"PING\r\n")
            writer.write(b"HTTP/1.1 400 Bad Request\r\n\r\n" if n == 1 else b"+PONG\r\n")
            await reader.read()

        server, port = await fake_server(garbage)
        resp = client(port, timeout=1.0)
        with pytest.raises(StoreError, match="not RESP"):
            await resp.call(b"PING")
        assert await resp.call(b"PING") == b"PONG"  # reconnected
        await resp.close()
        server.close()

    run(body)


def test_redis_killed_mid_run_then_restarted(own_redis: Callable[..., Any]) -> None:
    port = free_port()
    proc = own_redis(port)

    async def body() -> None:
        resp = client(port, timeout=2.0)
        assert await resp.call(b"SET", "life", b"1") == b"OK"
        loop = asyncio.get_running_loop()
        # BLPOP holds the connection: the commands pipelined behind it are pending too
        pending = [asyncio.ensure_future(resp.call(b"BLPOP", "nothing", 10))] + [
            asyncio.ensure_future(resp.call(b"GET", "life")) for _ in range(5)
        ]
        await asyncio.sleep(0.1)
        started = loop.time()
        proc.send_signal(signal.SIGKILL)
        results = await asyncio.gather(*pending, return_exceptions=True)
        assert all(isinstance(r, StoreError) for r in results), results
        assert loop.time() - started < 1.0  # failed on connection loss, not by timeout
        proc.wait(5)
        with pytest.raises(StoreError, match="connect failed"):
            await resp.call(b"GET", "life")
        await loop.run_in_executor(None, own_redis, port)
        assert await resp.call(b"GET", "life") is None  # a fresh, empty server
        assert await resp.call(b"SET", "life", b"2") == b"OK"
        await resp.close()

    run(body)


def test_store_script_survives_script_flush_and_restart(own_redis: Callable[..., Any]) -> None:
    port = free_port()
    proc = own_redis(port)

    async def body() -> None:
        store = RedisStore("s", StoreSpec(url=f"redis://127.0.0.1:{port}/0", timeout=1))
        assert store.resp is not None
        assert await store.run("incr_expire", ["sf"], [1, 10_000]) == 1
        sha = store._shas["incr_expire"]
        assert await store.resp.call(b"SCRIPT", b"FLUSH") == b"OK"
        assert await store.run("incr_expire", ["sf"], [1, 10_000]) == 2
        assert store._shas["incr_expire"] == sha
        stop_process(proc, signal.SIGKILL)
        with pytest.raises(StoreError):
            await store.run("incr_expire", ["sf"], [1, 10_000])
        assert not await store.ping()
        await asyncio.get_running_loop().run_in_executor(None, own_redis, port)
        assert await store.run("incr_expire", ["sf"], [1, 10_000]) == 1
        await store.set("text", b"x", 10)
        with pytest.raises(StoreError, match="not an integer"):
            await store.incr("text", 1, 10)  # an error reply inside the script
        assert await store.get("text") == b"x"
        await store.close()

    run(body)


def test_script_calls_in_flight_when_the_script_is_gone_keep_their_replies_in_order(
    own_redis: Callable[..., Any],
) -> None:
    # Each EVALSHA answered NOSCRIPT is sent again as EVAL on the same connection, while
    # other commands are in flight: every caller still gets its own reply.
    port = free_port()
    own_redis(port)

    async def body() -> None:
        store = RedisStore("s", StoreSpec(url=f"redis://127.0.0.1:{port}/0", timeout=1))
        assert store.resp is not None
        assert await store.run("incr_expire", ["warm"], [1, 10_000]) == 1
        assert await store.resp.call(b"SCRIPT", b"FLUSH") == b"OK"
        await store.set("plain", b"v", 10)
        calls: list[Awaitable[object]] = []
        for i in range(30):
            calls.append(store.run("incr_expire", [f"k{i % 3}"], [i, 10_000]))
            calls.append(store.get("plain"))
        results = await asyncio.gather(*calls)
        totals = [0, 0, 0]
        for i in range(30):
            totals[i % 3] += i
            assert results[2 * i] == totals[i % 3], (i, results)
            assert results[2 * i + 1] == b"v"
        assert await store.resp.call(b"SCRIPT", b"EXISTS", store._shas["incr_expire"]) == [1]
        await store.close()

    run(body)


def test_auth_and_select(own_redis: Callable[..., Any]) -> None:
    port = free_port()
    own_redis(port, "--requirepass", "s3cret", "--user", "alice", "on", ">alicepw", "~*", "+@all")

    async def body() -> None:
        db2 = RedisStore("s", StoreSpec(url=f"redis://:s3cret@127.0.0.1:{port}/2", prefix=""))
        db0 = RedisStore("s", StoreSpec(url=f"redis://:s3cret@127.0.0.1:{port}", prefix=""))
        alice = RedisStore("s", StoreSpec(url=f"redis://alice:alicepw@127.0.0.1:{port}/2"))
        await db2.set("where", b"db2", 10)
        assert await db2.get("where") == b"db2"
        assert await db0.get("where") is None
        assert await alice.get("where") == b"db2"
        assert await alice.ping()
        for url in (f"redis://:wrong@127.0.0.1:{port}/0", f"redis://127.0.0.1:{port}/0"):
            refused = RedisStore("s", StoreSpec(url=url))
            with pytest.raises(StoreError, match=r"WRONGPASS|NOAUTH"):
                await refused.get("where")
            await refused.close()
        for store in (db2, db0, alice):
            await store.close()

    run(body)


def make_certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for localhost and 127.0.0.1, and its key."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / "cert.pem", directory / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


def test_rediss_over_tls(tmp_path: Path, own_redis: Callable[..., Any]) -> None:
    cert, key = make_certificate(tmp_path)
    plain, port = free_port(), free_port()
    tls = ["--tls-port", str(port), "--tls-cert-file", str(cert), "--tls-key-file", str(key)]
    own_redis(plain, *tls, "--tls-ca-cert-file", str(cert), "--tls-auth-clients", "no")

    async def body() -> None:
        context = ssl.create_default_context(cafile=str(cert))
        resp = RespClient("t", Address("localhost", port, db=1, tls=True), 1.0, context)
        assert await resp.call(b"SET", "tls", b"yes") == b"OK"
        assert await resp.call(b"GET", "tls") == b"yes"
        await resp.close()
        untrusted = RespClient(
            "t", Address("localhost", port, tls=True), 1.0, ssl.create_default_context()
        )
        with pytest.raises(StoreError, match="connect failed"):
            await untrusted.call(b"PING")
        await untrusted.close()

    run(body)


def test_timeouts_cost_no_timer_per_call(redis_server: Redis) -> None:
    """Many calls in a row arm the connection's timer a handful of times, not once each."""

    async def body() -> None:
        resp = client(redis_server.port, timeout=0.05)
        loop = asyncio.get_running_loop()
        armed = 0
        call_at = loop.call_at

        def counting_call_at(when: float, callback: Any, *args: Any) -> asyncio.TimerHandle:
            nonlocal armed
            armed += 1
            return call_at(when, callback, *args)

        await resp.call(b"PING")
        loop.call_at = counting_call_at  # type: ignore[method-assign,assignment]
        started = time.monotonic()
        for _ in range(2000):
            await resp.call(b"PING")
        elapsed = time.monotonic() - started
        loop.call_at = call_at  # type: ignore[method-assign]
        assert armed <= elapsed / 0.05 * 2 + 2
        await resp.close()

    run(body)


def test_a_reply_hook_runs_before_its_future_resolves_and_only_for_replies(
    redis_server: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    async def body() -> None:
        resp = client(redis_server.port)
        assert await resp.call(b"SET", "hook:s", b"v") == b"OK"
        seen: list[tuple[str, object, bool]] = []

        def hook(name: str, future: asyncio.Future[object]) -> Callable[[object], None]:
            return lambda reply: seen.append((name, reply, future.done()))

        def broken(reply: object) -> None:
            raise RuntimeError("hook failed")

        calls = [resp.call(b"INCR", "hook:n"), resp.call(b"INCR", "hook:s")]
        calls += [resp.call(b"GET", "hook:s"), resp.call(b"GET", "hook:s")]
        futures = [c for c in calls if isinstance(c, asyncio.Future)]
        assert len(futures) == 4  # on an open connection, the reply's future itself
        first, error, third, cancelled = futures
        assert resp.on_reply(first, hook("first", first))
        assert resp.on_reply(error, hook("error", error))  # an error reply: not called
        assert resp.on_reply(third, broken)  # logged; the replies after it still answered
        assert resp.on_reply(cancelled, hook("cancelled", cancelled))
        cancelled.cancel()
        results = await asyncio.gather(first, error, third, return_exceptions=True)
        assert results[0] == 1 and isinstance(results[1], ReplyError) and results[2] == b"v"
        assert seen == [("first", 1, False)]  # called with the reply, before it resolved
        assert not resp.on_reply(first, hook("again", first))  # done: nothing to hook
        assert resp._conn is not None and resp._conn.hooks == {}
        await resp.close()

    with caplog.at_level("ERROR", logger="gateway.stores"):
        run(body)
    assert "a store reply's hook failed" in caplog.text


def test_a_reply_hook_follows_its_call_through_noscript(own_redis: Callable[..., Any]) -> None:
    port = free_port()
    own_redis(port)

    async def body() -> None:
        store = RedisStore("s", StoreSpec(url=f"redis://127.0.0.1:{port}/0", timeout=1))
        assert store.resp is not None
        assert await store.run("incr_expire", ["hk"], [1, 10_000]) == 1
        assert await store.resp.call(b"SCRIPT", b"FLUSH") == b"OK"
        seen: list[object] = []
        call = store.run("incr_expire", ["hk"], [4, 10_000])  # NOSCRIPT, then EVAL
        assert store.on_reply(call, seen.append)
        assert await call == 5
        assert seen == [5]  # the EVAL's reply, not the NOSCRIPT error
        waiting = store.incr("hk", 1, 10)  # a coroutine: only awaiting it tells
        assert not store.on_reply(waiting, seen.append)
        assert await waiting == 6 and seen == [5]
        await store.close()

    run(body)
