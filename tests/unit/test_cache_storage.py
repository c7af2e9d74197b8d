"""The stored entry, its shared-tier format, the byte-bounded LRU (L1), bans and tiers."""

from __future__ import annotations

import asyncio

from gateway.config.models import StoreSpec
from gateway.errors import StoreError
from gateway.observability.metrics import Metrics
from gateway.policies.cache.entry import Entry, Settings, dump, load, parse_tags, stored_headers
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


def test_shared_format_round_trip() -> None:
    one = entry(url="/a?x=1", body=b"one", values=(b"fr", None), tags=("t1",), host="h")
    two = entry(url="/a?x=1", body=b"\x00\xff two", values=(b"en", b"gzip"))
    back = load(dump([one, two]), SETTINGS)
    assert [b.body for b in back] == [b"one", b"\x00\xff two"]
    assert back[0].select_values == (b"fr", None) and back[0].tags == ("t1",)
    assert back[0].host == "h" and back[0].headers == one.headers
    assert back[0].lifetime == one.lifetime and back[0].initial_age == one.initial_age


def test_unreadable_shared_values_are_misses() -> None:
    blob = dump([entry()])
    assert load(b"", SETTINGS) == [] and load(b"GWC2" + blob[4:], SETTINGS) == []
    assert load(blob[:-10], SETTINGS) == []  # a truncated body
    assert load(blob[:12] + b"{" + blob[13:], SETTINGS) == []  # broken JSON


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
