"""The stored entry, its shared-tier format, the byte-bounded LRU (L1), bans and tiers."""

from __future__ import annotations

import asyncio

from gateway.config.models import StoreSpec
from gateway.errors import StoreError
from gateway.observability.metrics import Metrics
from gateway.policies.cache.entry import (
    FIELDS,
    Entry,
    Settings,
    dump,
    load,
    parse_tags,
    stored_headers,
)
from gateway.policies.cache.fields import format_http_date
from gateway.policies.cache.invalidation import BanList, Invalidation, Matcher
from gateway.policies.cache.memory import MemoryTier
from gateway.policies.cache.rules import response_facts
from gateway.policies.cache.tiers import Tiers
from gateway.stores.guard import StoreGuard
from gateway.stores.memory import MemoryStore
from gateway.types import Headers

T0 = 1_700_000_000.0
SETTINGS = Settings(heuristic_ttl=None, max_ttl=3600, default_swr=0, default_sie=0)


def entry(url: str = "/a", body: bytes = b"x" * 100, max_age: int = 60, t: float = T0,
          values: tuple[bytes | None, ...] = (), tags: tuple[str, ...] = (),
          host: str = "") -> Entry:  # fmt: skip
    headers: Headers = [(b"cache-control", f"max-age={max_age}".encode()),
                        (b"date", format_http_date(t))]  # fmt: skip
    names = tuple(b"h%d" % i for i in range(len(values)))
    return Entry(url=url, host=host, status=200, reason=b"OK", headers=headers, body=body,
                 request_time=t, response_time=t, age_value=0, select_names=names,
                 select_values=values, tags=tags, heuristics=True, settings=SETTINGS)  # fmt: skip


def test_entry_is_ready_to_send() -> None:
    e = entry(body=b"hello")
    assert e.send_headers[-1] == (b"content-length", b"5")
    assert e.lifetime == 60 and e.ttl(T0 + 10) == 50 and e.age(T0 + 10) == 10
    assert e.keep == 60 and e.expires_at() == T0 + 60
    assert [k for k, _ in e.not_modified_headers] == [b"cache-control", b"date"]


def test_stored_headers_drop_per_hop_private_and_tag_fields_and_add_date() -> None:
    received: Headers = [
        (b"Cache-Control", b'max-age=60, private="X-User"'),
        (b"X-User", b"alice"),
        (b"Age", b"3"),
        (b"Content-Length", b"5"),
        (b"Surrogate-Key", b"a b"),
        (b"ETag", b'"1"'),
    ]
    facts = response_facts(200, received)
    out = stored_headers(received, facts, b"surrogate-key", T0)
    assert [k for k, _ in out] == [b"Cache-Control", b"ETag", b"date"]
    assert out[-1] == (b"date", format_http_date(T0))
    assert parse_tags([(b"surrogate-key", b"a b, c"), (b"Surrogate-Key", b"a d")],
                      b"surrogate-key") == ("a", "b", "c", "d")  # fmt: skip


def fields(e: Entry) -> dict[str, object]:
    return {name: getattr(e, name) for name in FIELDS}


def rich_entry(settings: Settings = SETTINGS) -> Entry:
    """Every optional part present: validators, stale windows, Vary, tags, odd bytes."""
    headers: Headers = [
        (b"Cache-Control", b"max-age=60, stale-while-revalidate=30, stale-if-error=90"),
        (b"Date", format_http_date(T0 - 5)),
        (b"ETag", b'W/"v1"'),
        (b"Last-Modified", format_http_date(T0 - 3600)),
        (b"Vary", b"Accept-Language, X-Empty"),
        (b"X-Odd", b"nul\x00 and \xff bytes"),
    ]
    return Entry(url="/caf\xe9?x=1", host="shop.example", status=203, reason=b"Fine",
                 headers=headers, body=b"\x00\xff body", request_time=T0 - 1,
                 response_time=T0, age_value=2, select_names=(b"accept-language", b"x-empty"),
                 select_values=(b"fr", b""), tags=("t1", "pr\xeft"), heuristics=False,
                 settings=settings)  # fmt: skip


def test_shared_format_round_trip() -> None:
    one = rich_entry()
    two = entry(url="/caf\xe9?x=1", body=b"", values=(None, b"gzip"))
    blob = dump([one, two], SETTINGS)
    assert blob is not None and blob[:4] == b"GWC2"
    assert blob[5] == 1  # X-Odd holds a NUL: the fields are joined by the next byte
    back = load(blob, SETTINGS)
    # Every field, derived ones included, as the writer had it.
    assert [fields(b) for b in back] == [fields(one), fields(two)]
    assert back[0].etag == b'W/"v1"' and back[0].swr == 30 and back[0].sie == 90
    assert back[1].select_values == (None, b"gzip") and back[0].select_values == (b"fr", b"")


def test_a_reader_with_other_settings_derives_the_facts_again() -> None:
    other = Settings(heuristic_ttl=5, max_ttl=20, default_swr=1, default_sie=2)
    blob = dump([rich_entry(), entry()], SETTINGS)
    assert blob is not None
    back = load(blob, other)
    assert [fields(b) for b in back] == [fields(rich_entry(other)), fields(entry_with(other))]
    assert back[0].lifetime == 20  # capped by the reader's max_ttl, not the writer's


def entry_with(settings: Settings) -> Entry:
    e = entry()
    return Entry(url=e.url, host=e.host, status=e.status, reason=e.reason, headers=e.headers,
                 body=e.body, request_time=e.request_time, response_time=e.response_time,
                 age_value=e.age_value, select_names=e.select_names,
                 select_values=e.select_values, tags=e.tags, heuristics=e.heuristics,
                 settings=settings)  # fmt: skip


def test_unreadable_shared_values_are_misses() -> None:
    blob = dump([entry()], SETTINGS)
    assert blob is not None
    assert load(b"", SETTINGS) == [] and load(b"GWC1" + blob[4:], SETTINGS) == []
    # The format before GWC2: a JSON list after a length.
    assert load(b"GWC1\x00\x00\x00\x02[]", SETTINGS) == []
    assert load(blob[:-10], SETTINGS) == []  # a truncated body
    assert load(blob + b"x", SETTINGS) == []  # trailing bytes
    assert load(blob[:60], SETTINGS) == []  # a truncated record
    two = dump([entry(), entry()], SETTINGS)
    assert two is not None
    assert load(two[:4] + b"\x03" + two[5:], SETTINGS) == []  # a variant missing
    # One separator less: the block no longer has the fields its counts announce.
    at = blob.index(b"\x00/a")
    broken = blob[:at] + b"-" + blob[at + 1 :]
    assert load(broken, SETTINGS) == []


def test_values_the_format_cannot_hold_are_not_written() -> None:
    every_byte = bytes(range(256))
    odd = Entry(url="/", host="", status=200, reason=b"OK",
                headers=[(b"x-all", every_byte), (b"cache-control", b"max-age=60")], body=b"",
                request_time=T0, response_time=T0, age_value=0, select_names=(),
                select_values=(), tags=(), heuristics=True, settings=SETTINGS)  # fmt: skip
    assert dump([odd], SETTINGS) is None and dump([], SETTINGS) is None


def test_l1_is_bounded_by_bytes_least_recently_used_first() -> None:
    changes: list[tuple[int, int, int]] = []
    size = entry(url="/0").size
    l1 = MemoryTier(3 * size, lambda *c: changes.append(c))
    for i in range(3):
        assert l1.put(f"/{i}", (entry(url=f"/{i}"),))
    assert len(l1) == 3 and l1.bytes == 3 * size
    assert l1.get("/0", T0) is not None  # /0 is now the most recently used
    l1.put("/3", (entry(url="/3"),))
    assert "/1" not in l1 and "/0" in l1 and "/3" in l1  # /1 was least recently used
    assert changes[-1] == (3 * size, 3, 1)  # bytes, entries, evicted
    assert l1.bytes <= l1.max_bytes


def test_l1_refuses_what_cannot_fit_and_expires_lazily() -> None:
    l1 = MemoryTier(1000)
    assert not l1.put("/big", (entry(body=b"x" * 2000),))
    assert l1.put("/a", (entry(max_age=10),))
    assert l1.get("/a", T0 + 5) is not None
    assert l1.get("/a", T0 + 11) is None and len(l1) == 0 and l1.bytes == 0


def test_l1_refusals_change_nothing_unless_they_replace() -> None:
    changes: list[tuple[int, int, int]] = []
    l1 = MemoryTier(1000, lambda *c: changes.append(c))
    big = (entry(body=b"x" * 2000),)
    assert not l1.put("/big", big) and not l1.put("/big", ()) and changes == []
    assert l1.put("/a", (entry(),)) and len(changes) == 1
    assert not l1.put("/a", big)  # a refused replacement still drops the old copy
    assert "/a" not in l1 and changes[-1] == (0, 0, 0)


def test_l1_url_index_and_selective_removal() -> None:
    l1 = MemoryTier(1 << 20)
    l1.put("a.example/p", (entry(url="/p", tags=("t",)),))
    l1.put("b.example/p", (entry(url="/p"),))
    l1.put("/q", (entry(url="/q", tags=("t",)), entry(url="/q", values=(b"x",))))
    assert sorted(l1.keys_for_url("/p")) == ["a.example/p", "b.example/p"]
    removed = l1.remove_where(Matcher(Invalidation.new("tag", "t", None, T0)))
    assert removed == 2
    assert "a.example/p" not in l1 and "b.example/p" in l1
    remaining = l1.peek("/q")
    assert remaining is not None and len(remaining) == 1  # the untagged variant stays
    assert l1.keys_for_url("/p") == ["b.example/p"]
    l1.clear()
    assert len(l1) == 0 and l1.bytes == 0


def test_matchers() -> None:
    e = entry(url="/shop/items/7?c=red", tags=("item-7", "shop"), host="a.example")

    def match(kind: str, value: str, host: str | None = None) -> bool:
        return Matcher(Invalidation.new(kind, value, host, T0))(e)  # type: ignore[arg-type]

    assert match("url", "/shop/items/7?c=red") and not match("url", "/shop/items/7")
    assert match("prefix", "/shop/") and not match("prefix", "/cart")
    assert match("glob", "/shop/*?c=*") and not match("glob", "/shop/*/8*")
    assert match("tag", "item-7") and not match("tag", "item")
    assert match("all", "") and not match("all", "", host="b.example")
    assert match("tag", "shop", host="A.example")


def test_bans_block_only_entries_stored_before_them() -> None:
    bans = BanList(max_bans=3)
    ban = Invalidation.new("prefix", "/a", None, T0 + 10)
    bans.add(ban, until=T0 + 1000, now=T0 + 10)
    to_matcher = Matcher
    assert bans.blocks(entry(url="/a/1", t=T0), T0 + 20, to_matcher)
    assert not bans.blocks(entry(url="/b", t=T0), T0 + 20, to_matcher)
    assert not bans.blocks(entry(url="/a/1", t=T0 + 100), T0 + 120, to_matcher)
    assert not bans.blocks(entry(url="/a/1", t=T0), T0 + 1001, to_matcher)  # ban expired


def test_too_many_bans_collapse_into_one_that_over_invalidates() -> None:
    bans = BanList(max_bans=3)
    for i in range(5):
        bans.add(Invalidation.new("tag", f"t{i}", None, T0 + i), T0 + 1000, T0 + i)
    assert len(bans) == 3
    # Entries older than the collapsed bans are refused whatever their tags.
    assert bans.blocks(entry(url="/z", t=T0 - 5), T0 + 10, Matcher)
    assert bans.blocks(entry(url="/z", t=T0 + 3.5, tags=("t4",)), T0 + 10, Matcher)


class FailingStore(MemoryStore):
    async def get(self, key: str) -> bytes | None:
        raise StoreError("down")

    async def set(self, key: str, value: bytes, ttl: float) -> None:
        raise StoreError("down")


def test_two_tiers_promote_and_degrade() -> None:
    async def go() -> None:
        mono = [0.0]
        shared = MemoryStore("shared", StoreSpec(url="memory://"), lambda: mono[0])
        guard = StoreGuard(Metrics(), "shared", "cache")
        reads: list[str] = []
        l1 = MemoryTier(1 << 20)
        tiers = Tiers(l1, shared, guard, SETTINGS, lambda: mono[0], on_l2=reads.append)
        assert await tiers.put("/a", entry(url="/a"), T0) == (True, True)
        l1.clear()
        found, tier = await tiers.get("/a", T0 + 1)
        assert tier == "l2" and found[0].body == entry().body and "/a" in l1
        found, tier = await tiers.get("/a", T0 + 1)
        assert tier == "l1" and reads == ["hit"]
        # Another replica's tier has no L1: only the shared copy serves it.
        other = Tiers(None, shared, guard, SETTINGS, lambda: mono[0])
        assert (await other.get("/a", T0 + 2))[1] == "l2"
        assert await other.delete("/a")
        assert (await other.get("/a", T0 + 2)) == ((), "")

        failing = FailingStore("shared", StoreSpec(url="memory://"), lambda: mono[0])
        metrics = Metrics()
        broken = Tiers(MemoryTier(1 << 20), failing, StoreGuard(metrics, "shared", "cache"),
                       SETTINGS, lambda: mono[0])  # fmt: skip
        assert await broken.put("/b", entry(url="/b"), T0) == (True, False)
        assert (await broken.get("/b", T0))[1] == "l1"  # L1 keeps serving
        assert not broken.l2_usable  # skipped for a while after the failure
        mono[0] += 5
        assert broken.l2_usable
        errors = metrics.store_errors.labels("shared", "cache")._value.get()
        assert errors == 1

    asyncio.run(go())


def test_variants_share_one_key_and_are_capped() -> None:
    async def go() -> None:
        l1 = MemoryTier(1 << 22)
        tiers = Tiers(l1, None, None, SETTINGS, lambda: 0.0)
        for lang in (b"fr", b"en", b"fr"):
            await tiers.put("/a", entry(values=(lang,), body=lang), T0)
        variants = l1.peek("/a")
        assert variants is not None
        assert [v.body for v in variants] == [b"fr", b"en"]  # newest first, one per value
        for i in range(40):
            await tiers.put("/a", entry(values=(b"%d" % i,)), T0)
        variants = l1.peek("/a")
        assert variants is not None and len(variants) == 16

    asyncio.run(go())
