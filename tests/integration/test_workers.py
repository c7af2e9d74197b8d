"""``workers: 2`` with the native front-end, as real processes (issue 3, point 2).

The supervisor owns the admin port and merges the workers' metrics, each sample
labelled ``worker="<index>"``: that label is how these tests tell the workers apart.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from tests.integration.conftest import GatewayFactory
from tests.integration.harness import (
    BROKEN_CONFIG,
    Gateway,
    base_config,
    free_port,
    per_worker,
    stop_process,
    wait_for_port,
    wait_until,
)

pytestmark = pytest.mark.integration

BROKEN = BROKEN_CONFIG


@pytest.fixture
def frontend() -> str:
    """Several workers exist for the native front-end only (overrides the conftest one)."""
    return "native"


def worker_pids(gw: Gateway) -> list[int]:
    """Live worker processes: children of the supervisor running ``worker_main``."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            stat = (entry / "stat").read_text()
            state, ppid = stat.rpartition(")")[2].split()[:2]
            if int(ppid) != gw.proc.pid or state == "Z":
                continue
            if b"worker_main" in (entry / "cmdline").read_bytes():
                pids.append(int(entry.name))
    return sorted(pids)


def gone(pid: int) -> bool:
    """Reaped by the supervisor. A zombie leader is not enough: the worker's other threads
    (asyncio's executor) may still hold its listening socket for a few milliseconds, and a
    connection queued there then is reset."""
    return not Path(f"/proc/{pid}").exists()


def started(gw: Gateway) -> Gateway:
    """Wait until the gateway has logged that it listens: only then are its signal
    handlers in place (the ports answer a little earlier; see the test at the end)."""
    assert wait_until(lambda: "gateway listening on" in gw.stderr(), timeout=10), gw.stderr()
    return gw


def serve_fresh(gw: Gateway, count: int, path: str = "/echo", expect: int = 200) -> None:
    """``count`` requests, each on a fresh connection (the kernel picks a worker per one)."""
    for i in range(count):
        status, _, body = gw.request("GET", f"{path}?fresh={i}", timeout=10)
        assert status == expect, (i, body[:300])


def both_served(gw: Gateway) -> bool:
    counts = per_worker(gw, "gateway_requests_total")
    return set(counts) == {"0", "1"} and all(v > 0 for v in counts.values())


def test_both_workers_serve(start_gateway: GatewayFactory) -> None:
    gw = start_gateway(workers=2)
    assert len(worker_pids(gw)) == 2
    sent = 0
    while sent < 200:
        serve_fresh(gw, 20)
        sent += 20
        if wait_until(lambda: both_served(gw), timeout=1):
            break
    assert both_served(gw), per_worker(gw, "gateway_requests_total")
    assert wait_until(lambda: sum(per_worker(gw, "gateway_requests_total").values()) == sent)
    status, _, _ = gw.admin("/readyz", token=None)
    assert status == 200
    assert "Traceback" not in gw.stderr()


def test_sighup_reload_reaches_every_worker(start_gateway: GatewayFactory) -> None:
    gw = started(start_gateway(workers=2, reload={"watch": False}))
    serve_fresh(gw, 5, "/other")
    changed = dict(gw.config)
    changed["routes"] = changed["routes"][:1]
    gw.write(changed)
    gw.send_signal(signal.SIGHUP)
    assert wait_until(
        lambda: (
            per_worker(gw, "gateway_config_reloads_total", result="success") == {"0": 1.0, "1": 1.0}
        ),
        timeout=10,
    ), per_worker(gw, "gateway_config_reloads_total")
    serve_fresh(gw, 30, "/other", expect=404)
    serve_fresh(gw, 5, "/users/1")


def test_bad_file_reaches_no_worker(start_gateway: GatewayFactory) -> None:
    gw = started(start_gateway(workers=2, reload={"watch": False}))
    gw.write(BROKEN)
    gw.send_signal(signal.SIGHUP)
    assert wait_until(lambda: "keeping the running config" in gw.stderr(), timeout=10)
    time.sleep(0.5)  # a forwarded SIGHUP would have been handled by now
    assert gw.stderr().count("keeping the running config") == 1, "only the supervisor tried"
    # Counted once, by the supervisor (its own series); no worker tried or applied it.
    reloads = per_worker(gw, "gateway_config_reloads_total")
    assert {k: v for k, v in reloads.items() if v} == {"supervisor": 1.0}, reloads
    serve_fresh(gw, 20, "/other")  # the old config, everywhere
    assert gw.admin("/readyz", token=None)[0] == 200
    # A good file afterwards still reaches both.
    changed = dict(gw.config)
    changed["routes"] = changed["routes"][:1]
    gw.write(changed)
    gw.send_signal(signal.SIGHUP)
    assert wait_until(
        lambda: (
            per_worker(gw, "gateway_config_reloads_total", result="success") == {"0": 1.0, "1": 1.0}
        ),
        timeout=10,
    )
    serve_fresh(gw, 20, "/other", expect=404)


def test_sigterm_drains_every_worker_and_exits_0(start_gateway: GatewayFactory) -> None:
    gw = started(
        start_gateway(workers=2, shutdown={"pre_stop_delay": "300ms", "drain_timeout": "10s"})
    )
    pids = worker_pids(gw)
    assert len(pids) == 2
    results: list[object] = []
    lock = threading.Lock()

    def slow(i: int) -> None:
        try:
            outcome: object = gw.request("GET", f"/slow?delay=2&i={i}", timeout=15)[0]
        except Exception as exc:
            outcome = repr(exc)
        with lock:
            results.append(outcome)

    def busy() -> dict[str, float]:
        return per_worker(gw, "gateway_requests_in_flight")

    threads: list[threading.Thread] = []
    # Open slow requests until both workers hold at least one (each on a fresh connection).
    while len(threads) < 24:
        thread = threading.Thread(target=slow, args=(len(threads),))
        thread.start()
        threads.append(thread)
        if len(threads) >= 4 and wait_until(
            lambda: sum(v >= 1 for v in busy().values()) == 2, timeout=0.3
        ):
            break
    assert sum(v >= 1 for v in busy().values()) == 2, busy()
    gw.send_signal(signal.SIGTERM)
    assert wait_until(lambda: gw.admin("/readyz", token=None)[0] == 503, timeout=2)
    for thread in threads:
        thread.join(15)
    assert results == [200] * len(threads), results
    assert gw.proc.wait(20) == 0
    assert all(gone(pid) for pid in pids)
    assert "Traceback" not in gw.stderr()


def test_killed_worker_is_restarted_and_the_port_keeps_serving(
    start_gateway: GatewayFactory,
) -> None:
    gw = started(start_gateway(workers=2))
    pids = worker_pids(gw)
    assert len(pids) == 2
    victim = pids[0]
    os.kill(victim, signal.SIGKILL)
    assert wait_until(lambda: gone(victim), timeout=5)
    serve_fresh(gw, 20)  # the survivor takes every new connection meanwhile
    assert wait_until(
        lambda: len(worker_pids(gw)) == 2 and victim not in worker_pids(gw), timeout=10
    ), worker_pids(gw)
    assert wait_until(lambda: len(per_worker(gw, "gateway_requests_in_flight")) == 2, timeout=10)
    sent = 0
    while not both_served(gw) and sent < 200:
        serve_fresh(gw, 20)
        sent += 20
    assert both_served(gw), per_worker(gw, "gateway_requests_total")
    assert gw.admin("/readyz", token=None)[0] == 200
    assert "Traceback" not in gw.stderr()
    gw.send_signal(signal.SIGTERM)
    assert gw.proc.wait(20) == 0, gw.stderr()[-3000:]


def test_restarted_worker_keeps_the_running_config(start_gateway: GatewayFactory) -> None:
    """A file the supervisor refused (or was not told to load) must not reach a worker
    that happens to restart: it serves what its siblings serve."""
    gw = started(start_gateway(workers=2, reload={"watch": False}))
    gw.write(BROKEN)
    gw.send_signal(signal.SIGHUP)
    assert wait_until(lambda: "keeping the running config" in gw.stderr(), timeout=10)
    victim = worker_pids(gw)[0]
    os.kill(victim, signal.SIGKILL)
    assert wait_until(lambda: gone(victim), timeout=5)
    assert wait_until(
        lambda: (
            len(worker_pids(gw)) == 2
            and victim not in worker_pids(gw)
            and len(per_worker(gw, "gateway_requests_in_flight")) == 2
        ),
        timeout=8,
    ), f"the worker did not come back: {gw.stderr()[-2000:]}"
    serve_fresh(gw, 30, "/other")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "systemd"])
def test_signal_to_the_process_group_exits_0(start_gateway: GatewayFactory, sig: int) -> None:
    """Ctrl-C in a terminal (SIGINT) and systemd's default KillMode=control-group (SIGTERM)
    signal every process of the gateway at once, workers included: still a clean stop."""
    gw = started(start_gateway(workers=2, shutdown={"pre_stop_delay": "0s", "drain_timeout": "5s"}))
    pids = worker_pids(gw)
    serve_fresh(gw, 4)
    os.killpg(gw.proc.pid, sig)
    code = gw.proc.wait(20)
    assert code == 0, gw.stderr()[-3000:]
    assert wait_until(lambda: all(gone(pid) for pid in pids), timeout=5)


@pytest.mark.parametrize("workers", [1, 2])
def test_sighup_as_soon_as_the_ports_answer(start_gateway: GatewayFactory, workers: int) -> None:
    """A reload signal (a ConfigMap reloader, an operator) may come as soon as the gateway
    answers on its ports; it must never kill it. The window is a race: a few tries."""
    for _ in range(5):
        gw = start_gateway(workers=workers, reload={"watch": False})
        gw.send_signal(signal.SIGHUP)
        time.sleep(0.3)
        assert gw.proc.poll() is None, f"killed by SIGHUP (exit {gw.proc.returncode})"
        assert gw.admin("/readyz", token=None)[0] == 200
        gw.stop()


@pytest.mark.parametrize("workers", [1, 2])
def test_sighup_while_the_process_still_starts(tmp_path: Path, workers: int) -> None:
    """Before the gateway's handlers are in place (imports, loading the file), a SIGHUP
    is noted, not fatal: the process comes up and serves. (The interpreter's own start,
    before gateway.launch runs, is the one window left: the delays stay past it.)"""
    port, admin = free_port(), free_port()
    config = base_config("http://127.0.0.1:9", "native", workers=workers)
    config.update(listen=f"127.0.0.1:{port}", admin=f"127.0.0.1:{admin}")
    config["reload"] = {"watch": False}
    config["shutdown"] = {"pre_stop_delay": "0s", "drain_timeout": "1s"}
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    for delay in (0.1, 0.2):
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "run", "-c", str(path)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # stop_process signals the group, workers included
        )
        try:
            time.sleep(delay)
            proc.send_signal(signal.SIGHUP)
            wait_for_port(admin, proc)
            assert proc.poll() is None, f"killed by SIGHUP (exit {proc.returncode})"
        finally:
            stop_process(proc)
