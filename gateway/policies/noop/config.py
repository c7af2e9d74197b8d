from __future__ import annotations

from pydantic import Field

from gateway.config.units import Size
from gateway.policies.base import PolicyConfig


class NoopConfig(PolicyConfig):
    """A diagnostic policy that proves the chain: it can answer by itself, buffer the
    request body, tag the response on the way out, and run work after the response."""

    respond: int | None = Field(
        None,
        ge=200,
        le=599,
        description="Answer with this status (problem+json) instead of calling the upstream.",
    )
    response_header: str | None = Field(
        None, description="`Name: value` added to the response on the way out."
    )
    buffer_body: Size | None = Field(
        None,
        description="Read the request body whole up to this size and report its length in "
        "the decision; larger bodies stream on untouched.",
    )
