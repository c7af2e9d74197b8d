"""Run ``gateway`` under cProfile with a CPU-time clock; write the stats when it exits.

    python bench/profile_gateway.py [--clock cpu|wall] OUT.pstats run -c POLICY_FILE

Like ``python -m cProfile -o OUT -m gateway ...``, except that the default clock is the
process's CPU time: with the wall clock (cProfile's default, ``--clock wall``), the time
the event loop sleeps in epoll waiting for work is charged to the loop's own row. The
CPU clock costs a system call per reading, so it inflates Python call costs more (about
3x the unprofiled CPU per request here, against about 2x with the wall clock).
Stop the gateway with SIGTERM (it drains and exits normally); the stats are written then.
"""

from __future__ import annotations

import cProfile
import sys
import time


def main() -> int:
    args = sys.argv[1:]
    clock = "cpu"
    if args[:1] == ["--clock"] and len(args) > 1:
        clock, args = args[1], args[2:]
    if len(args) < 2 or clock not in ("cpu", "wall"):
        print(__doc__, file=sys.stderr)
        return 2
    out, argv = args[0], args[1:]
    from gateway.cli import main as gateway_main

    if clock == "cpu":
        profile = cProfile.Profile(time.process_time_ns, 1e-9)
    else:
        profile = cProfile.Profile()
    code = 1
    try:
        code = profile.runcall(gateway_main, argv)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    finally:
        profile.dump_stats(out)
    return code


if __name__ == "__main__":
    sys.exit(main())
