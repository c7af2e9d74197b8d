"""RESP2 on the wire: commands encoded as arrays of bulk strings, replies parsed
incrementally. The client that uses them is :mod:`gateway.stores.resp`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

from gateway.errors import ReplyError

Arg = bytes | str | int | float
#: A reply: bytes (bulk and simple strings), int, None (nil), a list of replies, or, inside
#: an array only, a ReplyError (a top-level error reply is raised instead).
Reply = object


class ProtocolError(Exception):
    """The bytes received are not RESP2."""


# --- encoding ---------------------------------------------------------------------------


def encode(args: Sequence[Arg]) -> bytes:
    """One command as a RESP array of bulk strings."""
    return b"*%d\r\n%s" % (len(args), bulks(args))


def bulks(args: Sequence[Arg]) -> bytes:
    """``args`` as consecutive RESP bulk strings (an array's elements)."""
    out = []
    for arg in args:
        kind = type(arg)
        if kind is bytes:
            data = cast(bytes, arg)
        elif kind is str:
            data = cast(str, arg).encode()
        elif isinstance(arg, int):  # bool included, as 1 and 0
            data = b"%d" % arg
        elif isinstance(arg, float):
            data = repr(arg).encode()
        elif isinstance(arg, bytes | str):  # subclasses
            data = arg.encode() if isinstance(arg, str) else bytes(arg)
        else:
            raise TypeError(f"cannot send a {kind.__name__} to Redis")
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


# --- decoding ---------------------------------------------------------------------------


class RespParser:
    """Incremental RESP2 parser: ``feed`` takes any chunk, returns the replies it completed.

    Simple strings and bulk strings are ``bytes``, integers ``int``, nil bulk strings and
    nil arrays ``None``, arrays ``list``; an error reply is a :class:`ReplyError` value.
    The unconsumed tail is kept between calls; a partly received array keeps the elements
    already parsed, and a bulk string is not looked at again until all of it is there.
    """

    __slots__ = ("_buf", "_have", "_more", "_need", "_stack")

    def __init__(self) -> None:
        self._buf = b""  # the unconsumed tail, starting at the beginning of a value
        self._more: list[bytes] = []  # chunks received since, not yet joined to it
        self._have = 0  # len(_buf) plus the sizes in _more
        self._need = 0  # bytes needed from the start of _buf before parsing can go on
        self._stack: list[tuple[list[Reply], int]] = []  # arrays being filled, innermost last

    def feed(self, data: bytes) -> list[Reply]:
        if self._buf:
            self._more.append(data)
            self._have += len(data)
            if self._have < self._need:
                return []
            self._more.insert(0, self._buf)
            buf = b"".join(self._more)
            self._more.clear()
        else:
            buf = data
        out: list[Reply] = []
        try:
            pos = self._parse(buf, out)
        except ValueError as exc:
            raise ProtocolError(f"not RESP: {exc}") from None
        self._buf = tail = buf[pos:] if pos < len(buf) else b""
        self._have = len(tail)
        return out

    def _parse(self, buf: bytes, out: list[Reply]) -> int:
        """Parse from the start of ``buf``; the position of the first byte not consumed."""
        stack = self._stack
        size = len(buf)
        pos = 0
        value: Reply
        while pos < size:
            end = buf.find(b"\r\n", pos)
            if end < 0:
                self._need = size - pos + 1
                return pos
            kind = buf[pos]
            if kind == 36:  # $ bulk string
                length = int(buf[pos + 1 : end])
                if length < 0:
                    value = None
                    pos = end + 2
                else:
                    start = end + 2
                    stop = start + length
                    if stop + 2 > size:
                        self._need = stop + 2 - pos
                        return pos
                    if buf[stop : stop + 2] != b"\r\n":
                        raise ValueError("a bulk string longer than its announced length")
                    value = buf[start:stop]
                    pos = stop + 2
            elif kind == 42:  # * array
                count = int(buf[pos + 1 : end])
                pos = end + 2
                if count > 0:
                    stack.append(([], count))
                    continue
                value = None if count < 0 else []
            elif kind == 58:  # : integer
                value = int(buf[pos + 1 : end])
                pos = end + 2
            elif kind == 43:  # + simple string
                value = buf[pos + 1 : end]
                pos = end + 2
            elif kind == 45:  # - error
                value = ReplyError(buf[pos + 1 : end].decode("utf-8", "replace"))
                pos = end + 2
            else:
                raise ValueError(f"unknown type byte {buf[pos : pos + 1]!r}")
            while stack:  # place the value: into the innermost open array, or out
                items, count = stack[-1]
                items.append(value)
                if len(items) < count:
                    break
                stack.pop()
                value = items
            else:
                out.append(value)
        return pos
