"""What every policy is: a frozen config model and one coroutine in the onion.

``async def __call__(self, exchange, call_next) -> Response``: answer by itself,
call ``call_next`` once or several times, or replace the response on the way out
(or add fields to whatever answer the request gets: ``exchange.add_response_fields``).
``mode: shadow`` is handled by the chain runner (gateway.chain), not by policies.
"""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Literal, TypeVar

from pydantic import BaseModel, Field

from gateway.config.models import Model

if TYPE_CHECKING:
    from gateway.exchange import Exchange, Response
    from gateway.observability.metrics import Metrics
    from gateway.stores import Stores
    from gateway.types import Clock, Handler


class PolicyConfig(Model):
    """Fields every policy config has."""

    mode: Literal["enforce", "shadow"] = Field(
        "enforce",
        description="`enforce` applies the policy; `shadow` decides, counts and logs, but never "
        "changes the request or the response.",
    )


@dataclass
class BuildContext:
    """Long-lived resources a policy may use, handed in when a snapshot is built."""

    route: str
    upstream: str
    stores: Stores
    metrics: Metrics
    clock: Clock
    base_dir: Path
    replicas: int = 1
    extra: dict[str, Any] = field(default_factory=dict)
    #: Worker processes per replica (``workers``): each has its own memory store.
    workers: int = 1


C = TypeVar("C", bound=BaseModel)


class Later:
    """The type of :data:`LATER`."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "LATER"


#: :meth:`Policy.decide_now`'s "not without awaiting": run the policy as a coroutine.
LATER = Later()


class Policy(Generic[C]):
    """Base class. Subclasses set ``name`` and ``config_model`` and implement ``__call__``.

    All compiling happens in ``__init__``; ``__call__`` keeps no state on ``self``.
    """

    name: ClassVar[str]
    config_model: ClassVar[type[BaseModel]]

    #: Whether :meth:`decide_now` may be asked (set by a policy that has one).
    decides_now: bool = False

    def __init__(self, config: C, ctx: BuildContext) -> None:
        self.config = config
        self.route = ctx.route

    def decide_now(self, exchange: Exchange) -> Response | Later | None:
        """Decide without awaiting, before any coroutine runs: the answer, None (passed,
        with its decision recorded and its response fields added), or :data:`LATER`
        (the policy runs as usual, from ``__call__``, which is then the next thing to run
        for this request). Asked only when ``decides_now`` is true, the policy enforces,
        and every policy above it passed. A policy that must wait may start here what it
        waits for (a rate limiter's store call, kept in ``exchange.store_call``) and
        return LATER: the wait then overlaps the request's way down to ``__call__``.
        """
        return LATER

    @classmethod
    def build(cls, config: Any, ctx: BuildContext) -> list[Policy[Any]]:
        """Chain elements for one config entry; a list-valued config may yield several."""
        return [cls(config, ctx)]

    @property
    def label(self) -> str:
        """Name shown in metrics, logs and explain (``rate_limit:per-ip`` for named entries)."""
        return self.name

    @property
    def shadow(self) -> bool:
        return getattr(self.config, "mode", "enforce") == "shadow"

    def explain(self, exchange: Exchange) -> str:
        """One line for ``gateway explain``: what this policy would key on or do."""
        return ""

    def bind_next(self, call_next: Handler) -> None:
        """Called once when the chain is built, with the handler below this policy.

        For work a policy starts by itself outside any request (cache warming);
        requests still get their own ``call_next``.
        """

    async def start(self) -> None:
        """Called once when the snapshot holding this policy goes live."""

    async def stop(self) -> None:
        """Called once when the snapshot holding this policy is retired."""

    def __call__(self, exchange: Exchange, call_next: Handler) -> Awaitable[Response]:
        """Usually an ``async def``. A policy that decides without waiting may be a plain
        method returning ``call_next(exchange)`` itself, which spares the request's task a
        coroutine frame on every resume."""
        raise NotImplementedError  # pragma: no cover - abstract
