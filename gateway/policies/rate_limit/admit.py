"""An admitted request goes upstream from the callback that reads the store's reply.

When a limiter on Redis is the last policy before the upstream, it prepares the request
for the wire (:meth:`Forwarder.arm`) while Redis answers, and hands the store a hook for
the reply. The store's read callback calls the hook before the reply's future resolves:
an admitting verdict writes the request at once, and the request's task, when it wakes,
only completes the bookkeeping and awaits the upstream's answer. The time between the
reply and the upstream write is then the reply's parse and one write, as in the least a
proxy can do. A refusing verdict, an error reply, a failed or timed-out call never fire:
the upstream never sees a request that was not admitted.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from gateway.exchange import Exchange
from gateway.transport.forward import Forwarder
from gateway.transport.native import Outgoing

#: A store's ``on_reply``: have a hook called with the call's reply as soon as it is read.
OnReply = Callable[[Awaitable[object], Callable[[object], None]], bool]


#: Items in a verdict: allowed, remaining, reset ms, retry-after ms, token.
VERDICT_ITEMS = 5


class FireIfAdmitted:
    """The hook: a verdict (``[allowed, remaining, reset, retry, token]``) that admits
    fires the request. Anything else fires nothing; the limiter then decides as usual
    once the reply resolves (and may fail on a malformed one, with nothing sent)."""

    __slots__ = ("outgoing",)

    def __init__(self, outgoing: Outgoing) -> None:
        self.outgoing = outgoing

    def __call__(self, reply: object) -> None:
        if type(reply) is list and len(reply) == VERDICT_ITEMS and reply[0] == 1:
            self.outgoing.fire()


def arm(
    forwarder: Forwarder, on_reply: OnReply, exchange: Exchange, call: Awaitable[object]
) -> Outgoing | None:
    """The request armed to go upstream when ``call``'s reply admits it; None when the
    forwarder cannot arm it. If the store cannot hook this call, the request is still
    prepared, and written when the limiter sends it (``Forwarder.send_armed``)."""
    armed = forwarder.arm(exchange)
    if armed is not None:
        on_reply(call, FireIfAdmitted(armed))
    return armed
