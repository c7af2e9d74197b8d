"""A stored response that is not fresh for the request at hand.

Served stale where that is allowed (the request's ``max-stale``; the response's
``stale-while-revalidate``, with one background refresh per key), otherwise revalidated
with the upstream (RFC 9111 §4.3): the entry's validators are sent, a 304 freshens it
(§4.3.4), a full response replaces it, and a failure within ``stale-if-error`` is
answered with the stale entry (RFC 5861 §4).
"""

from __future__ import annotations

import logging

from gateway.errors import UpstreamError
from gateway.exchange import Exchange, Response
from gateway.policies.cache.coalesce import BackgroundTasks, Flight
from gateway.policies.cache.entry import Entry, merged_headers
from gateway.policies.cache.fields import etag_matches
from gateway.policies.cache.fill import Filler
from gateway.policies.cache.keys import selected_values
from gateway.policies.cache.request import Ask, stale_on_error, validating_headers
from gateway.policies.cache.rules import (
    NO_RULES,
    RequestRules,
    is_failure,
    not_storable,
    response_facts,
)
from gateway.policies.cache.status import FWD_STALE
from gateway.types import Handler, Headers

log = logging.getLogger("gateway.cache")


class Revalidator:
    def __init__(self, filler: Filler, background: BackgroundTasks) -> None:
        self.filler = filler
        self.background = background
        self.policy = filler.policy
        self.answers = filler.answers
        self.tiers = filler.tiers
        self.coalescer = filler.coalescer
        self.settings = filler.settings
        self.stats = filler.stats
        self.wall = filler.wall

    async def stale(self, ask: Ask, entry: Entry, now: float, ttl: float) -> Response:
        """Answer with ``entry`` (remaining freshness ``ttl``), which is not fresh for ``ask``."""
        rules = ask.rules
        answers = self.answers
        client_forced = rules.no_cache or (ttl > 0 and not entry.no_cache)
        if not entry.no_cache and not client_forced:
            staleness = -ttl
            if rules.max_stale is not None and entry.max_stale_ok and staleness <= rules.max_stale:
                ask.exchange.decide(self.policy, "hit", "max-stale")
                cs = answers.status(hit=True, ttl=ttl, detail="max-stale")
                return answers.serve(ask, entry, now, cs)
            swr = entry.swr
            if swr > 0 and staleness <= swr and rules.max_age is None and rules.min_fresh is None:
                self._refresh_later(ask, entry)
                ask.exchange.decide(self.policy, "stale", "while-revalidate")
                cs = answers.status(hit=True, ttl=ttl, detail="stale-while-revalidate")
                return answers.serve(ask, entry, now, cs)
        if rules.only_if_cached:
            return answers.only_if_cached(ask)
        coalesce = self.filler.coalesce and not rules.no_cache
        return await self.filler.upstream(
            ask, FWD_STALE, coalesce, lambda: self._revalidate(ask, entry)
        )

    async def _revalidate(self, ask: Ask, entry: Entry) -> Response:
        """Ask the upstream whether ``entry`` is still good (RFC 9111 §4.3.1)."""
        exchange = ask.exchange
        answers = self.answers
        request_time = self.wall()
        try:
            response = await self.filler.send(ask, validating_headers(exchange.headers, entry))
        except UpstreamError as exc:
            now = self.wall()
            if stale_on_error(entry, ask.rules, now):
                exchange.decide(self.policy, "stale", f"if-error:{exc.kind}")
                ask.failed = True
                cs = answers.status(fwd=FWD_STALE, ttl=entry.ttl(now), detail="stale-if-error")
                return answers.serve(ask, entry, now, cs)
            raise
        response_time = self.wall()
        status = response.status
        if status == 304:
            await response.aclose()
            tag = response.header(b"etag")
            if tag is None or entry.etag is None or etag_matches(tag, entry.etag):
                received, cookies = self._own_cookies(response.headers)
                fresh, reason = await self._freshen(
                    exchange, ask.primary, entry, received, ask.rules, request_time,
                    response_time,
                )  # fmt: skip
                exchange.decide(self.policy, "revalidated", reason or "")
                cs = answers.status(fwd=FWD_STALE, fwd_status=304, ttl=fresh.ttl(response_time),
                                    stored=reason is None, detail=reason)  # fmt: skip
                served = answers.serve(ask, fresh, response_time, cs)
                if cookies:  # for the client whose request revalidated, and no other
                    served.headers.extend(cookies)
                return served
            # A 304 for another representation: ours cannot be used; ask plainly.
            return await self.filler.fetch(ask, FWD_STALE)
        if is_failure(status):
            ask.failed = True
        if ask.failed and stale_on_error(entry, ask.rules, response_time):
            await response.aclose()
            exchange.decide(self.policy, "stale", f"if-error:{status}")
            cs = answers.status(fwd=FWD_STALE, fwd_status=status, ttl=entry.ttl(response_time),
                                detail="stale-if-error")  # fmt: skip
            return answers.serve(ask, entry, response_time, cs)
        return await self.filler.complete(
            ask, response, request_time, response_time, FWD_STALE, entry
        )

    def _own_cookies(self, received: Headers) -> tuple[Headers, Headers]:
        """(a 304's fields to merge, its ``Set-Cookie`` lines kept out of the entry).

        Without ``store_set_cookie`` a cookie is never stored: one that comes with a 304
        is the revalidating client's own, not something to replay to every later one.
        """
        if self.filler.store_set_cookie or not any(k.lower() == b"set-cookie" for k, _ in received):
            return received, []
        merged = [(k, v) for k, v in received if k.lower() != b"set-cookie"]
        return merged, [(k, v) for k, v in received if k.lower() == b"set-cookie"]

    async def _freshen(
        self, exchange: Exchange, primary: str, entry: Entry, received: Headers,
        rules: RequestRules, request_time: float, response_time: float,
    ) -> tuple[Entry, str | None]:  # fmt: skip
        """``entry`` updated by the 304 (``received``) that answered ``exchange``
        (RFC 9111 §4.3.4), and why it was not stored (None: it was).

        The merged response is judged as a new one, on what the response says: a 304
        may make it ``no-store`` or ``private`` (§3, §5.2.2.5, §5.2.2.7), then ``entry``
        is dropped; or change its ``Vary``, then it is stored as the variant the new
        ``Vary`` selects for this request, in place of ``entry``. What the request
        says (its ``no-store``, its ``Authorization``) keeps the merged response from
        being stored but leaves ``entry`` as it was: a request's ``no-store`` "does not
        apply to the already stored response" (§5.2.1.5), and any client may send one.
        """
        filler = self.filler
        headers = merged_headers(entry.headers, received, response_time)
        facts = response_facts(entry.status, headers)
        unstorable = not_storable(
            "GET", facts, NO_RULES, authorization=False, heuristics=entry.heuristics,
            store_set_cookie=filler.store_set_cookie,
        )  # fmt: skip
        # Only the request's no-store and Authorization rules can object now.
        not_now = unstorable or not_storable(
            "GET", facts, rules, authorization=exchange.header(b"authorization") is not None,
            heuristics=entry.heuristics, store_set_cookie=filler.store_set_cookie,
        )  # fmt: skip
        names = filler.keys.selection(facts.vary)
        fresh = Entry(
            url=entry.url,
            host=entry.host,
            status=entry.status,
            reason=entry.reason,
            headers=filler.shaped(headers, facts, response_time),
            body=entry.body,
            request_time=request_time,
            response_time=response_time,
            age_value=response_facts(304, received).age,
            select_names=names,
            select_values=selected_values(exchange.headers, names),
            tags=entry.tags,
            heuristics=entry.heuristics,
            settings=self.settings,
        )
        if unstorable is not None:
            await self.tiers.delete(primary)
            return fresh, unstorable
        if not_now is not None:
            return fresh, not_now
        in_l1, in_l2 = await self.tiers.put(primary, fresh, response_time)
        return fresh, None if in_l1 or in_l2 else "unavailable"

    def _refresh_later(self, ask: Ask, entry: Entry) -> None:
        """stale-while-revalidate: one background refresh per key at a time."""
        if self.coalescer.flight(ask.primary) is not None:
            return
        lead = self.coalescer.lead(ask.primary)
        assert lead is not None
        source = ask.exchange
        clone = Exchange(
            "GET",
            source.raw_target,
            validating_headers(source.headers, entry),
            source.peer_ip,
            scheme=source.scheme,
            http_version=source.http_version,
        )
        clone.client_ip = source.client_ip
        clone.route = source.route
        clone.path_params = source.path_params
        clone.trace_id = source.trace_id
        work = self._refresh(clone, ask.call_next, ask.primary, ask.url, ask.host, entry, lead)
        if not self.background.spawn(work):
            self.stats.background("refresh", "skipped")
            self.coalescer.land(ask.primary, lead)

    async def _refresh(
        self, clone: Exchange, call_next: Handler, primary: str, url: str, host: str,
        entry: Entry, lead: Flight,
    ) -> None:  # fmt: skip
        result = "error"
        try:
            request_time = self.wall()
            response = await call_next(clone)
            response_time = self.wall()
            if response.status == 304:
                await response.aclose()
                received, _ = self._own_cookies(response.headers)  # nobody to give them to
                _, reason = await self._freshen(
                    clone, primary, entry, received, NO_RULES, request_time, response_time
                )
                result = "ok" if reason is None else "not-stored"
            elif is_failure(response.status):
                await response.aclose()
            else:
                reason, _ = await self.filler.consider(
                    clone, primary, url, host, NO_RULES, response, request_time, response_time
                )
                await response.aclose()
                result = "ok" if reason is None else "not-stored"
        except UpstreamError as exc:
            log.info("cache: background refresh of %s failed: %s", url, exc)
        finally:
            self.coalescer.land(primary, lead)
            self.stats.background("refresh", result)
