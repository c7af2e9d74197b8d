"""The ``gateway`` command's first step, before anything heavy is imported.

A reload signal (SIGHUP from a ConfigMap reloader or an operator) may come while the
process is still importing and loading its file, before the gateway's own handlers are
in place (``gateway.server.Signals``, installed before the ports listen); its default
action would kill the process. From this module's first line a SIGHUP is only noted,
and ``Signals`` applies a noted one as one reload once the gateway is up (the file may
have changed after it was read).
"""

from __future__ import annotations

import signal

_noted = False


def _note(signum: int, frame: object) -> None:
    global _noted
    _noted = True


def take_early_reload() -> bool:
    """Whether a SIGHUP came before the gateway's own handlers; forgotten once asked."""
    global _noted
    noted, _noted = _noted, False
    return noted


def main() -> int:
    signal.signal(signal.SIGHUP, _note)
    from gateway.cli import main as cli_main

    return cli_main()
