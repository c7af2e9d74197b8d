"""Config of ``adaptive``."""

from __future__ import annotations

from pydantic import Field, model_validator

from gateway.config.units import Duration
from gateway.policies.base import PolicyConfig


class AdaptiveConfig(PolicyConfig):
    """A concurrency limit that finds itself: it moves between `min` and `max` from the
    latency the route observes (AIMD), and requests beyond it get 503 at once."""

    min: int = Field(10, ge=1, description="Lowest the limit goes (requests in flight).")
    max: int = Field(500, ge=1, description="Highest the limit goes (requests in flight).")
    initial: int | None = Field(
        None, ge=1, description="Limit at start (default: 20, kept between min and max)."
    )
    target_latency: Duration = Field(
        description="A response slower than this (time from admission to the response "
        "head) counts as a sign of overload and lowers the limit."
    )
    backoff: float = Field(
        0.9,
        gt=0.0,
        lt=1.0,
        description="Multiplicative decrease: on overload the limit becomes limit * backoff.",
    )

    @model_validator(mode="after")
    def _bounds(self) -> AdaptiveConfig:
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) is above max ({self.max})")
        if self.initial is not None and not self.min <= self.initial <= self.max:
            raise ValueError(f"initial ({self.initial}) must be between min and max")
        if self.target_latency <= 0:
            raise ValueError("target_latency must be above 0")
        return self

    @property
    def start(self) -> int:
        return self.initial if self.initial is not None else min(max(20, self.min), self.max)
