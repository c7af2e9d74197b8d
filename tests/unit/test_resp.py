"""The RESP2 encoder and incremental parser of gateway.stores.resp (no network)."""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.errors import StoreError
from gateway.stores.redis import resp_address
from gateway.stores.resp import (
    Address,
    ProtocolError,
    ReplyError,
    RespClient,
    RespParser,
    _Connection,
    encode,
)


def wire(value: object) -> bytes:
    """The RESP2 form of a reply, written independently of the parser under test."""
    if value is None:
        return b"$-1\r\n"
    if isinstance(value, Simple):
        return b"+" + value.text + b"\r\n"
    if isinstance(value, ReplyError):
        return b"-" + str(value).encode() + b"\r\n"
    if isinstance(value, int):
        return b":" + str(value).encode() + b"\r\n"
    if isinstance(value, bytes):
        return b"$" + str(len(value)).encode() + b"\r\n" + value + b"\r\n"
    if isinstance(value, NilArray):
        return b"*-1\r\n"
    assert isinstance(value, list)
    return b"*" + str(len(value)).encode() + b"\r\n" + b"".join(wire(v) for v in value)


class Simple:
    """A simple string in a generated reply (parsed as bytes)."""

    def __init__(self, text: bytes) -> None:
        self.text = text


class NilArray:
    """A nil array in a generated reply (parsed as None)."""


def expected(value: object) -> object:
    """What the parser gives for a generated reply; errors compared by type and text."""
    if isinstance(value, Simple):
        return value.text
    if isinstance(value, NilArray):
        return None
    if isinstance(value, ReplyError):
        return ("error", str(value))
    if isinstance(value, list):
        return [expected(v) for v in value]
    return value


def comparable(value: object) -> object:
    if isinstance(value, ReplyError):
        return ("error", str(value))
    if isinstance(value, list):
        return [comparable(v) for v in value]
    return value


line = st.binary(max_size=20).map(lambda b: b.replace(b"\r", b"r").replace(b"\n", b"n"))
leaves = st.one_of(
    st.none(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.binary(max_size=300),  # may contain CR LF: bulk strings are length-prefixed
    line.map(Simple),
    line.map(lambda b: ReplyError("ERR " + b.decode("latin-1"))),
    st.just(NilArray()),
)
replies = st.recursive(leaves, lambda inner: st.lists(inner, max_size=5), max_leaves=30)


def parse_in_chunks(data: bytes, cuts: list[int]) -> list[object]:
    parser = RespParser()
    got: list[object] = []
    start = 0
    for cut in [*sorted({c % (len(data) + 1) for c in cuts}), len(data)]:
        got += parser.feed(data[start:cut])
        start = cut
    return got


@settings(max_examples=300, deadline=None)
@given(st.lists(replies, min_size=1, max_size=6), st.lists(st.integers(0, 10_000), max_size=12))
def test_any_replies_split_anywhere(values: list[object], cuts: list[int]) -> None:
    data = b"".join(wire(v) for v in values)
    got = parse_in_chunks(data, cuts)
    assert [comparable(v) for v in got] == [expected(v) for v in values]


@settings(max_examples=50, deadline=None)
@given(replies)
def test_one_byte_at_a_time(value: object) -> None:
    data = wire(value)
    assert [comparable(v) for v in parse_in_chunks(data, list(range(len(data))))] == [
        expected(value)
    ]


def test_every_type() -> None:
    parser = RespParser()
    data = (
        b"+OK\r\n-NOSCRIPT No matching script.\r\n:42\r\n:-7\r\n$5\r\nhello\r\n$0\r\n\r\n"
        b"$-1\r\n*-1\r\n*0\r\n*3\r\n:1\r\n*2\r\n$1\r\na\r\n$-1\r\n-ERR inner\r\n"
    )
    got = parser.feed(data)
    assert got[:4] == [b"OK", got[1], 42, -7]
    assert isinstance(got[1], ReplyError) and got[1].code == "NOSCRIPT"
    assert got[4:9] == [b"hello", b"", None, None, []]
    assert got[9][:2] == [1, [b"a", None]]  # type: ignore[index]
    inner = got[9][2]  # type: ignore[index]
    assert isinstance(inner, ReplyError) and str(inner) == "ERR inner"
    assert isinstance(inner, StoreError)


def test_bulk_string_containing_crlf_and_waiting_for_its_end() -> None:
    parser = RespParser()
    assert parser.feed(b"$12\r\nab\r\n") == []
    assert parser.feed(b"cd\r\n") == []
    assert parser.feed(b"ef") == []
    assert parser.feed(b"gh\r\n:1") == [b"ab\r\ncd\r\nefgh"]
    assert parser.feed(b"\r\n") == [1]


def test_large_bulk_string_in_many_chunks() -> None:
    body = bytes(range(256)) * 4096  # 1 MiB
    data = wire(body)
    parser = RespParser()
    got: list[object] = []
    for start in range(0, len(data), 65536):
        got += parser.feed(data[start : start + 65536])
    assert got == [body]


def test_array_completed_across_reads_keeps_its_parsed_elements() -> None:
    parser = RespParser()
    assert parser.feed(b"*3\r\n:1\r\n$3\r\nab") == []
    assert parser.feed(b"c\r\n") == []
    assert parser.feed(b"*1\r\n+x\r\n+next\r\n") == [[1, b"abc", [b"x"]], b"next"]


@pytest.mark.parametrize(
    "data",
    [b"?what\r\n", b":12x\r\n", b"$3\r\nabcd\r\n", b"*x\r\n", b"$\r\n"],
)
def test_not_resp(data: bytes) -> None:
    with pytest.raises(ProtocolError):
        RespParser().feed(data)


def test_encode() -> None:
    assert encode([b"GET", "k\u00e9"]) == b"*2\r\n$3\r\nGET\r\n$3\r\nk\xc3\xa9\r\n"
    assert encode([b"SET", b"k", b"", b"PX", 1500]) == (
        b"*5\r\n$3\r\nSET\r\n$1\r\nk\r\n$0\r\n\r\n$2\r\nPX\r\n$4\r\n1500\r\n"
    )
    assert encode([b"X", -3, 0.5, True]) == b"*4\r\n$1\r\nX\r\n$2\r\n-3\r\n$3\r\n0.5\r\n$1\r\n1\r\n"
    with pytest.raises(TypeError):
        encode([b"X", None])  # type: ignore[list-item]


def test_encoded_commands_parse_back() -> None:
    args: list[bytes | str | int] = [b"EVALSHA", "a" * 40, 1, b"k\r\n", 10**12]
    assert RespParser().feed(encode(args)) == [
        [b"EVALSHA", b"a" * 40, b"1", b"k\r\n", b"10" + b"0" * 11]
    ]


def test_single_server_urls_use_the_resp_client() -> None:
    assert resp_address("redis://h:7000/2") == Address("h", 7000, db=2)
    assert resp_address("redis://:p%40ss@h") == Address("h", 6379, password="p@ss")
    assert resp_address("redis://alice:pw@[::1]:6380/0") == Address(
        "::1", 6380, username="alice", password="pw"
    )
    assert resp_address("rediss://h/1") == Address("h", 6379, db=1, tls=True)
    for other in ("redis+sentinel://h/m", "redis+cluster://h", "rediss://h/0?ssl_cert_reqs=none"):
        assert resp_address(other) is None
    with pytest.raises(ValueError):
        resp_address("redis://h/zero")


def test_a_script_call_is_encoded_like_the_same_evalsha_and_keeps_its_eval() -> None:
    loop = asyncio.new_event_loop()
    client = RespClient("s", Address("127.0.0.1", 6379), 1.0, None)
    conn = _Connection(client, loop)  # an open connection, on a transport that records
    written: list[bytes] = []

    class Recorder:
        def write(self, data: bytes) -> None:
            written.append(data)

    conn.transport = Recorder()  # type: ignore[assignment]
    conn.made = True
    client._conn = conn

    def sent() -> tuple[bytes, object]:
        conn.waiters.pop().cancel()  # leave the connection idle: the next write goes out
        conn.deadlines.pop()
        return written.pop(), conn.fallbacks.pop()

    args = (100.0, 10_000_000.0, 7)
    try:
        _check_script_calls(client, args, sent)
    finally:
        loop.close()


def _check_script_calls(
    client: RespClient,
    args: tuple[float, float, int],
    sent: Callable[[], tuple[bytes, object]],
) -> None:
    for keys in (["k"], ["a", "bé"], []):
        for call_args in (args, args, list(args)):  # the second call reuses the encoding
            client.call_script(b"f" * 40, b"return 1", keys, call_args)
            data, fallback = sent()
            assert data == encode((b"EVALSHA", b"f" * 40, len(keys), *keys, *args))
            assert fallback == (b"EVAL", b"return 1", len(keys), *keys, *call_args)


def test_error_replies_can_be_weakly_referenced() -> None:
    # A compiled class with a Python base breaks weak references to its instances (the
    # process crashed when the last one went); ReplyError is kept out of compiled code.
    refs = [weakref.ref(RespParser().feed(b"-ERR x\r\n")[0]) for _ in range(100)]
    gc.collect()
    assert all(ref() is None for ref in refs)
