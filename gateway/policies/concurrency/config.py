"""Config of ``concurrency``."""

from __future__ import annotations

from pydantic import Field

from gateway.config.units import Duration
from gateway.policies.base import PolicyConfig


class ConcurrencyConfig(PolicyConfig):
    """At most `max_in_flight` requests of the route are inside the gateway at once (from
    admission to the last response byte); more wait in a FIFO queue of `queue` places
    for up to `queue_timeout`, and beyond that get 503 problem+json."""

    max_in_flight: int = Field(
        64, ge=1, description="Requests of this route served at once, per gateway process."
    )
    queue: int = Field(
        0,
        ge=0,
        le=10_000,
        description="Requests that may wait for a slot, first in first out; 0 answers 503 "
        "at once when every slot is taken.",
    )
    queue_timeout: Duration = Field(
        1.0, description="Longest a queued request waits for a slot before its 503."
    )
