"""The trailer section of a chunked request body, bounded on its own.

RFC 9110 6.5.1: trailer fields are never merged into the header section; both
front-ends drop them. They are bounded by ``limits.max_header_size``, counted the same
way on both: each complete field as its name and value plus 4 bytes, plus the line still
arriving. httptools buffers a line until it ends, so the unfinished line is counted from
the reads: in the read where a line ended, what follows its last LF; later reads whole.
The section is open from a chunk-size line until the chunk's data or the message's end
(trailer fields only follow the last chunk-size line, so the counts start there).
"""

from __future__ import annotations


class TrailerBound:
    """One connection's trailer counts; each method that can go over the bound says so."""

    __slots__ = ("fresh", "limit", "open", "pending", "size")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.open = False  # a chunk-size line ended; no data or end of message since
        self.fresh = False  # a line ended in the read being parsed
        self.pending = 0  # bytes of the unfinished line
        self.size = 0  # bytes of the complete fields

    def chunk_header(self) -> None:
        """A chunk-size line ended: its data follows, or the trailer section."""
        self.open = self.fresh = True
        self.pending = self.size = 0

    def fed(self, data: bytes) -> bool:
        """A read was parsed with the section open: whether it is now over the bound."""
        if self.fresh:
            self.fresh = False
            self.pending = len(data) - data.rfind(b"\n") - 1
        else:
            self.pending += len(data)
        return self.size + self.pending > self.limit

    def field(self, name: bytes, value: bytes) -> bool:
        """A complete trailer field (dropped by the caller): whether it is over the bound."""
        self.fresh = True
        self.pending = 0
        self.size += len(name) + len(value) + 4
        return self.size > self.limit

    def detail(self) -> str:
        return f"the trailer fields exceed {self.limit} bytes"
