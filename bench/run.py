"""Benchmark: the gateway beside nginx and the direct upstream, in one run.

    .venv/bin/python bench/run.py [--rounds 3] [--duration 5] [--connections 64]
                                  [--variants native,asgi] [--profile]
    .venv/bin/python bench/run.py --variants cache    # cache hits beside nginx proxy_cache

Starts a fast purpose-written upstream (``bench/upstream.py``), nginx (``proxy_pass``
with upstream keep-alive) and one gateway process per selected variant (one worker,
access log and metrics on), pins the proxy under test to one CPU and wrk plus the
upstream to another, runs wrk rounds interleaved over every target, and prints the
median requests/s, p50 and p99, the ratio to nginx, the proxy's CPU per request, and
the latency added over the direct upstream at one connection. Cache variants also get
a second nginx with ``proxy_cache`` serving hits on the same path (``nginx-cache``), and a
table of hit throughput as ratios to it and to the gateway's pass-through, with the
evidence that the hits were hits (the gateway's cache metrics, nginx's
``$upstream_cache_status``, the upstream's own request count). ``--profile`` instead
runs one round against one gateway variant under a profiler and prints where the time
goes. See ``bench/README.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import pstats
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import limiter_latency
from variants import CACHEABLE_PATH, DEFAULT_VARIANTS, GROUPS, VARIANTS, Variant, expand, fill

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
REPORT_LUA = BENCH / "report.lua"
UPSTREAM_PY = BENCH / "upstream.py"
PROFILE_PY = BENCH / "profile_gateway.py"
FLOOR_PY = BENCH / "floor_proxy.py"
HOST = "127.0.0.1"
START_TIMEOUT = 20.0  # seconds a process gets to become ready
STOP_TIMEOUT = 10.0  # seconds a process gets to exit after SIGTERM (then SIGKILL)
CLK_TCK = os.sysconf("SC_CLK_TCK")


class BenchError(Exception):
    """A failure that ends the whole run with a message (missing tool, dead upstream)."""


class TargetFailed(Exception):
    """One target could not be started or measured; the run carries on without it."""


# ---------------------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Proc:
    """A process started in its own session (so its whole group can be signalled)."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path | None = None

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 15) -> str:
        if self.log is None or not self.log.exists():
            return ""
        text = self.log.read_text(errors="replace").strip().splitlines()
        return "\n".join("    " + line for line in text[-lines:])

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM the process group, wait, then SIGKILL whatever is left."""
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, sig)
            try:
                self.popen.wait(wait)
            except subprocess.TimeoutExpired:
                continue
            # the leader is gone; make sure no child of the group lingers either
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGKILL)
            return


class Processes:
    """Every process this run starts; ``close()`` stops them all, last started first."""

    def __init__(self, taskset: str | None) -> None:
        self.taskset = taskset
        self.procs: list[Proc] = []

    def start(
        self,
        name: str,
        argv: Sequence[str],
        *,
        cpu: int | None,
        log: Path | None = None,
        stdout: int | IO[bytes] | None = None,
        env: dict[str, str] | None = None,
        cwd: Path = ROOT,
    ) -> Proc:
        cmd = list(argv)
        if cpu is not None and self.taskset:
            cmd = [self.taskset, "-c", str(cpu), *cmd]
        err: int | IO[bytes] = subprocess.DEVNULL
        if log is not None:
            err = log.open("wb")
        try:
            popen = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=stdout if stdout is not None else err,
                stderr=err,
                env={**os.environ, **(env or {})},
                cwd=cwd,
                start_new_session=True,
            )
        finally:
            if not isinstance(err, int):
                err.close()
        proc = Proc(name, popen, log)
        self.procs.append(proc)
        return proc

    def stop(self, proc: Proc) -> None:
        proc.stop()
        if proc in self.procs:
            self.procs.remove(proc)

    def close(self) -> None:
        while self.procs:
            self.procs.pop().stop()


def group_cpu_seconds(pgid: int) -> float:
    """User plus system CPU time of every live process in group ``pgid``."""
    total = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            raw = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        fields = raw[raw.rindex(")") + 2 :].split()
        # fields[0] is field 3 (state): pgrp is field 5, utime 14, stime 15
        if int(fields[2]) == pgid:
            total += int(fields[11]) + int(fields[12])
    return total / CLK_TCK


def wait_until(check: Any, proc: Proc, what: str, timeout: float = START_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if not proc.alive():
            raise TargetFailed(
                f"{what} exited with code {proc.popen.returncode} while starting\n"
                + proc.log_tail()
            )
        try:
            if check():
                return
        except (OSError, urllib.error.URLError, ValueError) as exc:
            last = str(exc)
        time.sleep(0.05)
    raise TargetFailed(f"{what} not ready after {timeout:.0f}s ({last})\n" + proc.log_tail())


def http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=2) as response:
        response.read()
        return bool(response.status == 200)


# ---------------------------------------------------------------------------- targets


@dataclass
class Target:
    """Something wrk is pointed at: the upstream itself, nginx, or a gateway variant."""

    name: str
    url: str
    proc: Proc | None = None  # the proxy under test (None for direct)
    note: str = ""
    admin: str | None = None  # the gateway's admin base URL
    failed: str | None = None
    runs: list[dict[str, Any]] = field(default_factory=list)  # c=N throughput rounds
    latency: list[dict[str, Any]] = field(default_factory=list)  # c=1 rounds
    warmups: list[dict[str, Any]] = field(default_factory=list)  # discarded from the figures
    variant: Variant | None = None  # for gateway targets
    count_upstream: bool = False  # count the upstream's /cacheable requests during runs
    upstream_seen: int | None = None  # ... summed over every wrk run of this target
    sample: str | None = None  # one response's status and cache header, after the warm-up
    cache_metrics: dict[str, dict[str, float]] | None = None  # the gateway's, after the run

    @property
    def cache_compared(self) -> bool:
        """Whether the target belongs in the cache table."""
        if self.name == "nginx-cache":
            return True
        v = self.variant
        return v is not None and (v.nginx_cache or v.caches or v.baseline is not None)


NGINX_CONF = """\
worker_processes 1;
daemon off;
master_process on;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{
    worker_connections 4096;
}}
http {{
    access_log off;
    client_body_temp_path {tmp}/client_body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    keepalive_requests 100000;   # client side; the default 1000 measures reconnects
    keepalive_timeout 75s;
    upstream app {{
        server {host}:{upstream_port};
        keepalive 64;
        keepalive_requests 100000;   # upstream side; same trap
        keepalive_timeout 75s;
    }}{http_extra}
    server {{
        listen {host}:{port};
        location / {{
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";{location_extra}
        }}
    }}
}}
"""

# The nginx-cache target: the same config plus a proxy_cache. The upstream's
# Cache-Control (max-age=3600 on /cacheable) is honoured; proxy_cache_valid only
# applies to a 200 without caching headers. X-Cache-Status shows HIT / MISS / EXPIRED.
NGINX_CACHE_HTTP = """
    proxy_cache_path {tmp}/cache levels=1:2 keys_zone=bench:1m max_size=64m
                     inactive=1h use_temp_path=off;"""
NGINX_CACHE_LOCATION = """
            proxy_cache bench;
            proxy_cache_valid 200 1h;
            add_header X-Cache-Status $upstream_cache_status always;"""


def start_nginx(
    procs: Processes,
    nginx: str,
    tmp: Path,
    upstream_port: int,
    cpu: int,
    *,
    cache: bool = False,
) -> Target:
    """nginx as a plain reverse proxy, or (``cache``) a second instance, in its own
    directory under ``tmp``, with ``proxy_cache`` on the cacheable path."""
    name = "nginx-cache" if cache else "nginx"
    if cache:
        tmp = tmp / "nginx-cache"
        tmp.mkdir()
        if os.geteuid() == 0:
            # nginx's workers run as `nobody` and write the cache files: let them reach
            # the cache directory (nginx creates it and gives it to them)
            tmp.chmod(0o755)
            tmp.parent.chmod(0o711)
    port = free_port()
    conf = tmp / "nginx.conf"
    conf.write_text(
        NGINX_CONF.format(
            tmp=tmp,
            host=HOST,
            port=port,
            upstream_port=upstream_port,
            http_extra=NGINX_CACHE_HTTP.format(tmp=tmp) if cache else "",
            location_extra=NGINX_CACHE_LOCATION if cache else "",
        )
    )
    proc = procs.start(
        name,
        [nginx, "-p", str(tmp), "-e", str(tmp / "nginx-error.log"), "-c", str(conf)],
        cpu=cpu,
        log=tmp / "nginx.stderr",
    )
    path = CACHEABLE_PATH if cache else "/"
    note = "worker_processes 1" + (", proxy_cache serving hits" if cache else "")
    target = Target(name, f"http://{HOST}:{port}{path}", proc, note=note, count_upstream=cache)
    try:
        wait_until(lambda: http_ok(target.url), proc, name)
    except TargetFailed as exc:
        target.failed = str(exc) + "\n" + _tail(tmp / "nginx-error.log")
    return target


def start_floor(
    procs: Processes, args: argparse.Namespace, tmp: Path, upstream_port: int, redis: str | None
) -> Target:
    """bench/floor_proxy.py on the proxy's CPU: the least a proxy does, with (``redis``)
    or without the Redis limiter's call; the control for a Redis limiter's overhead."""
    name = limiter_latency.FLOOR_REDIS if redis else limiter_latency.FLOOR_PASS
    port = free_port()
    cmd = [args.python, str(FLOOR_PY), "--port", str(port), "--upstream", f"{HOST}:{upstream_port}"]
    if redis:
        cmd += ["--redis", redis]
    proc = procs.start(name, cmd, cpu=args.proxy_cpu, log=tmp / f"{name}.log")
    note = "control: minimal uvloop proxy" + (", one EVALSHA per request" if redis else "")
    target = Target(name, f"http://{HOST}:{port}/", proc, note=note)
    try:
        wait_until(lambda: http_ok(target.url), proc, name)
    except TargetFailed as exc:
        target.failed = str(exc) + "\n" + _tail(tmp / f"{name}.log")
    return target


def _tail(path: Path, lines: int = 10) -> str:
    if not path.exists():
        return ""
    return "\n".join("    " + x for x in path.read_text(errors="replace").splitlines()[-lines:])


def gateway_config(
    variant: Variant, listen: int, admin: int, upstream_port: int, placeholders: dict[str, str]
) -> dict[str, Any]:
    """The policy file for one variant (JSON is YAML, so it is written as JSON)."""
    config: dict[str, Any] = {
        "version": 1,
        "server": variant.server,
        "workers": 1,
        "listen": f"{HOST}:{listen}",
        "admin": f"{HOST}:{admin}",
        "logging": {"level": "warning", "format": "json", "access_log": True},
        "reload": {"watch": False},
        "upstreams": {
            "app": {
                "url": f"http://{HOST}:{upstream_port}",
                "pool": {"max_connections": 256},
            }
        },
        "routes": [
            {
                "name": "bench",
                "match": {"prefix": "/"},
                "upstream": "app",
                "policies": fill(variant.policies, placeholders),
            }
        ],
    }
    if variant.stores:
        config["stores"] = fill(variant.stores, placeholders)
    return config


def gateway_argv(
    args: argparse.Namespace, config_path: Path, profile_out: Path | None
) -> list[str]:
    if profile_out is None:
        return [args.gateway, "run", "-c", str(config_path)]
    if args.profiler_resolved == "cprofile":  # like python -m cProfile -o OUT
        return [
            args.python,
            str(PROFILE_PY),
            "--clock",
            args.profile_clock,
            str(profile_out),
            "run",
            "-c",
            str(config_path),
        ]
    # pyinstrument
    prefix = [args.python, "-m", "pyinstrument", "-r", "text", "-o", str(profile_out)]
    return [*prefix, "-m", "gateway", "run", "-c", str(config_path)]


def start_gateway(
    procs: Processes,
    args: argparse.Namespace,
    name: str,
    variant: Variant,
    tmp: Path,
    upstream_port: int,
    placeholders: dict[str, str],
    profile_out: Path | None = None,
) -> Target:
    listen, admin = free_port(), free_port()
    config_path = tmp / f"gateway-{name}.yaml"
    config = gateway_config(variant, listen, admin, upstream_port, placeholders)
    config_path.write_text(json.dumps(config, indent=2) + "\n")
    target = Target(f"gateway-{name}", f"http://{HOST}:{listen}{variant.path}", variant=variant)
    target.admin = f"http://{HOST}:{admin}"
    target.count_upstream = variant.path.startswith(CACHEABLE_PATH)
    check = subprocess.run(
        [args.gateway, "check", "-q", str(config_path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )
    if check.returncode != 0:
        target.failed = f"gateway check rejected the policy file:\n{check.stderr.strip()}"
        return target
    # stdout is the access log: on, but thrown away; stderr kept for diagnostics
    target.proc = procs.start(
        target.name,
        gateway_argv(args, config_path, profile_out),
        cpu=args.proxy_cpu,
        log=tmp / f"gateway-{name}.stderr",
        stdout=subprocess.DEVNULL,
        env=fill(variant.env, placeholders),
    )
    try:
        wait_until(
            lambda: http_ok(f"http://{HOST}:{admin}/readyz") and http_ok(target.url),
            target.proc,
            target.name,
        )
    except TargetFailed as exc:
        target.failed = str(exc)
        procs.stop(target.proc)
    return target


def start_redis(procs: Processes, tmp: Path, cpu: int) -> str:
    redis = shutil.which("redis-server") or "/usr/bin/redis-server"
    if not os.access(redis, os.X_OK):
        raise BenchError("a selected variant needs redis-server: apt-get install redis-server")
    port = free_port()
    proc = procs.start(
        "redis",
        [
            redis,
            "--bind",
            HOST,
            "--port",
            str(port),
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(tmp),
            "--logfile",
            "",
        ],
        cpu=cpu,
        log=tmp / "redis.log",
    )

    def pong() -> bool:
        with socket.create_connection((HOST, port), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")

    try:
        wait_until(pong, proc, "redis-server")
    except TargetFailed as exc:
        raise BenchError(str(exc)) from exc
    return f"redis://{HOST}:{port}/0"


def metrics_text(admin: str) -> str | None:
    try:
        with urllib.request.urlopen(admin + "/metrics", timeout=5) as response:
            return str(response.read().decode())
    except (OSError, urllib.error.URLError):
        return None


_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def metric_samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    """Every sample of metric ``name`` in Prometheus text format: (labels, value)."""
    out = []
    for line in text.splitlines():
        if not line.startswith(name) or line[len(name) : len(name) + 1] not in ("{", " "):
            continue
        head, _, value = line.rpartition(" ")
        labels = dict(_LABEL.findall(head[len(name) :]))
        out.append((labels, float(value)))
    return out


def metrics_requests(admin: str) -> float | None:
    """``gateway_requests_total`` summed over its labels, from the admin /metrics."""
    text = metrics_text(admin)
    if text is None:
        return None
    values = [v for _, v in metric_samples(text, "gateway_requests_total")]
    return sum(values) if values else None


def cache_metrics(admin: str) -> dict[str, dict[str, float]] | None:
    """The cache policy's counters: decisions by action, shared-tier reads by result,
    stores by outcome (each summed over the other labels)."""
    text = metrics_text(admin)
    if text is None:
        return None
    out: dict[str, dict[str, float]] = {"decisions": {}, "shared_reads": {}, "stores": {}}
    for labels, value in metric_samples(text, "gateway_policy_decisions_total"):
        if labels.get("policy") == "cache":
            action = labels.get("action", "?")
            out["decisions"][action] = out["decisions"].get(action, 0.0) + value
    for key, name, label in (
        ("shared_reads", "gateway_cache_shared_reads_total", "result"),
        ("stores", "gateway_cache_stores_total", "outcome"),
    ):
        for labels, value in metric_samples(text, name):
            what = labels.get(label, "?")
            out[key][what] = out[key].get(what, 0.0) + value
    return out


def upstream_cacheable(port: int) -> int | None:
    """How many /cacheable requests the upstream has answered (one process's count)."""
    try:
        with urllib.request.urlopen(f"http://{HOST}:{port}/__bench/stats", timeout=2) as r:
            return int(json.loads(r.read())["cacheable"])
    except (OSError, urllib.error.URLError, ValueError, KeyError):
        return None


def sample_response(target: Target) -> str:
    """One GET through ``target``: its status and cache header, as one string."""
    try:
        with urllib.request.urlopen(target.url, timeout=5) as response:
            response.read()
            status = response.status
            headers = response.headers
    except urllib.error.HTTPError as exc:
        status, headers = exc.code, exc.headers
    except (OSError, urllib.error.URLError) as exc:
        return f"request failed: {exc}"
    parts = [str(status)]
    for name in ("X-Cache-Status", "Cache-Status", "Age"):
        value = headers.get(name)
        if value is not None:
            parts.append(f"{name}: {value}")
    return ", ".join(parts)


# ---------------------------------------------------------------------------- wrk


def run_wrk(
    args: argparse.Namespace, target: Target, connections: int, duration: int
) -> dict[str, Any]:
    threads = min(args.threads, connections)
    cmd = [
        args.wrk,
        f"-t{threads}",
        f"-c{connections}",
        f"-d{duration}s",
        f"--timeout={args.wrk_timeout}s",
        "-s",
        str(REPORT_LUA),
        target.url,
    ]
    if args.taskset:
        cmd = [args.taskset, "-c", str(args.load_cpu), *cmd]
    cpu_before = group_cpu_seconds(target.proc.pid) if target.proc else 0.0
    try:
        done = subprocess.run(
            cmd, capture_output=True, text=True, timeout=duration + 30, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise TargetFailed(f"wrk against {target.name} did not finish") from exc
    cpu = group_cpu_seconds(target.proc.pid) - cpu_before if target.proc else None
    if target.proc is not None and not target.proc.alive():
        raise TargetFailed(f"{target.name} died during the run\n{target.proc.log_tail()}")
    for line in done.stdout.splitlines():
        if line.startswith("BENCH_JSON "):
            result: dict[str, Any] = json.loads(line.removeprefix("BENCH_JSON "))
            break
    else:
        output = (done.stderr.strip() or done.stdout.strip()).splitlines()[:3]
        raise TargetFailed(f"wrk printed no result (exit {done.returncode}): {' / '.join(output)}")
    if result["requests"] == 0:
        raise TargetFailed(f"no request succeeded against {target.name}: {result}")
    seconds = result["duration_us"] / 1e6
    if cpu is not None:
        result["cpu_s"] = cpu
        result["cpu_share"] = cpu / seconds
        result["cpu_us_per_req"] = cpu / result["requests"] * 1e6
    result["errors"] = sum(
        result[k] for k in ("connect_errors", "read_errors", "write_errors", "timeouts")
    )
    return result


def measure(args: argparse.Namespace, target: Target, kind: str) -> None:
    if target.failed or (kind == "warmup" and args.warmup <= 0):
        return
    port = getattr(args, "upstream_stats_port", None)
    before = upstream_cacheable(port) if port and target.count_upstream else None
    try:
        if kind == "warmup":
            target.warmups.append(run_wrk(args, target, args.connections, args.warmup))
        elif kind == "throughput":
            target.runs.append(run_wrk(args, target, args.connections, args.duration))
        else:
            target.latency.append(run_wrk(args, target, 1, args.latency_duration))
    except TargetFailed as exc:
        target.failed = str(exc)
        print(f"  {target.name}: FAILED ({str(exc).splitlines()[0]})", flush=True)
        return
    if before is not None and port:
        after = upstream_cacheable(port)
        if after is not None:
            target.upstream_seen = (target.upstream_seen or 0) + after - before
    if kind != "warmup":
        last = target.runs[-1] if kind == "throughput" else target.latency[-1]
        cpu = f", proxy CPU {last['cpu_share']:.0%}" if "cpu_share" in last else ""
        print(
            f"  {target.name:<24} c={1 if kind == 'latency' else args.connections:<3} "
            f"{last['rps']:>10,.0f} req/s  p50 {last['p50_us'] / 1000:.3f} ms{cpu}",
            flush=True,
        )


# ---------------------------------------------------------------------------- report


def med(rows: list[dict[str, Any]], key: str) -> float | None:
    values = [row[key] for row in rows if key in row]
    return statistics.median(values) if values else None


def fmt(value: float | None, pattern: str, missing: str = "-") -> str:
    return missing if value is None else format(value, pattern)


def summarize(targets: list[Target]) -> dict[str, Any]:
    by_name = {t.name: t for t in targets}
    nginx_rps = med(by_name["nginx"].runs, "rps") if "nginx" in by_name else None
    nginx_cpu = med(by_name["nginx"].runs, "cpu_us_per_req") if "nginx" in by_name else None
    direct_p50 = med(by_name["direct"].latency, "p50_us") if "direct" in by_name else None
    nginx_p50 = med(by_name["nginx"].latency, "p50_us") if "nginx" in by_name else None
    nginx_added = None if nginx_p50 is None or direct_p50 is None else nginx_p50 - direct_p50
    rows = []
    for t in targets:
        rps = med(t.runs, "rps")
        p50_c1 = med(t.latency, "p50_us")
        added = None if p50_c1 is None or direct_p50 is None else p50_c1 - direct_p50
        rows.append(
            {
                "target": t.name,
                "note": t.note,
                "failed": t.failed,
                "rounds": len(t.runs),
                "rps": rps,
                "ratio_to_nginx": rps / nginx_rps if rps and nginx_rps else None,
                # nginx's CPU per request over this target's: robust to a proxy that was
                # not CPU-bound (a busy load CPU or neighbour), where the req/s ratio is not
                "cpu_ratio_to_nginx": nginx_cpu / cpu_us
                if nginx_cpu and (cpu_us := med(t.runs, "cpu_us_per_req"))
                else None,
                "p50_us": med(t.runs, "p50_us"),
                "p99_us": med(t.runs, "p99_us"),
                "cpu_share": med(t.runs, "cpu_share"),
                "cpu_us_per_req": med(t.runs, "cpu_us_per_req"),
                "errors": sum(r["errors"] for r in t.runs),
                "non2xx": sum(r["non2xx"] for r in t.runs),
                "c1_p50_us": p50_c1,
                "c1_p99_us": med(t.latency, "p99_us"),
                "c1_added_p50_us": added,
                "c1_added_minus_nginx_us": None
                if added is None or nginx_added is None or t.name in ("direct", "nginx")
                else added - nginx_added,
            }
        )
    return {"rows": rows, "cache": summarize_cache(targets, rows)}


def summarize_cache(targets: list[Target], rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Cache rows: hit throughput as ratios to nginx proxy_cache serving hits and to the
    gateway's pass-through on the same path, with the evidence that hits were hits."""
    by_row = {r["target"]: r for r in rows}
    ref = by_row.get("nginx-cache")
    baselines = {t.variant.baseline for t in targets if t.variant and t.variant.baseline}
    out = []
    for t in targets:
        if not t.cache_compared:
            continue
        r = by_row[t.name]
        base = None
        if t.variant is not None and t.variant.baseline:
            base = by_row.get(f"gateway-{t.variant.baseline}")
        elif t.name.removeprefix("gateway-") in baselines:
            base = r
        metrics = t.cache_metrics or {}
        decisions = metrics.get("decisions", {})
        out.append(
            {
                "target": t.name,
                "failed": r["failed"],
                "rounds": r["rounds"],
                "rps": r["rps"],
                "cpu_us_per_req": r["cpu_us_per_req"],
                "cpu_share": r["cpu_share"],
                "x_nginx_cache": _ratio(r["rps"], ref and ref["rps"]),
                "x_nginx_cache_cpu": _ratio(ref and ref["cpu_us_per_req"], r["cpu_us_per_req"]),
                "baseline": base["target"] if base else None,
                "x_pass": _ratio(r["rps"], base and base["rps"]),
                "x_pass_cpu": _ratio(base and base["cpu_us_per_req"], r["cpu_us_per_req"]),
                "wrk_requests": sum(x["requests"] for x in t.warmups + t.runs + t.latency),
                "decisions": decisions,
                "hits": decisions.get("hit"),
                "shared_reads": metrics.get("shared_reads", {}),
                "stores": metrics.get("stores", {}),
                "upstream_requests": t.upstream_seen,
                "sample": t.sample,
                "errors": r["errors"],
                "non2xx": r["non2xx"],
                "caches": t.variant is not None and t.variant.caches,
            }
        )
    return out


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


def print_table(summary: dict[str, Any], args: argparse.Namespace) -> None:
    rows = summary["rows"]
    print()
    print(
        f"Throughput: wrk -t{args.threads} -c{args.connections} -d{args.duration}s, "
        f"median of {args.rounds} interleaved round(s)"
    )
    head = (
        "target",
        "req/s",
        "x nginx",
        "x nginx CPU",
        "p50 ms",
        "p99 ms",
        "proxy CPU",
        "CPU us/req",
        "err",
        "non-2xx",
    )
    lines: list[tuple[str, ...]] = [head]
    for r in rows:
        if r["failed"] and not r["rounds"]:
            lines.append((r["target"], "FAILED", *[""] * (len(head) - 2)))
            continue
        lines.append(
            (
                r["target"],
                fmt(r["rps"], ",.0f"),
                fmt(r["ratio_to_nginx"], ".3f"),
                fmt(r["cpu_ratio_to_nginx"], ".3f"),
                fmt(r["p50_us"] and r["p50_us"] / 1000, ".2f"),
                fmt(r["p99_us"] and r["p99_us"] / 1000, ".2f"),
                fmt(r["cpu_share"], ".0%"),
                fmt(r["cpu_us_per_req"], ".1f"),
                str(r["errors"]),
                str(r["non2xx"]),
            )
        )
    _print_markdown(lines)
    for r in rows:
        if r["rounds"] and r["cpu_share"] is not None and r["cpu_share"] < 0.9:
            print(
                f"warning: {r['target']} used only {r['cpu_share']:.0%} of its CPU: the load "
                "side or another process limited it, so its req/s (and every ratio to it) "
                "understates it; trust 'x nginx CPU' more, and rerun on a quiet machine"
            )
    if args.latency_duration > 0:
        _print_latency(rows, args)
    if summary.get("cache"):
        _print_cache(summary["cache"], args)
    failed = [r for r in rows if r["failed"]]
    if failed:
        print()
        for r in failed:
            print(f"FAILED {r['target']}: {r['failed']}")


def _print_latency(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    print()
    print(
        f"Added latency at 1 connection: wrk -t1 -c1 -d{args.latency_duration}s, "
        f"median p50 of {args.rounds} round(s), minus the direct upstream's p50"
    )
    lines = [("target", "p50 ms", "p99 ms", "added p50 ms", "added - nginx's ms")]
    for r in rows:
        if r["c1_p50_us"] is None:
            lines.append((r["target"], "FAILED" if r["failed"] else "-", "", "", ""))
            continue
        lines.append(
            (
                r["target"],
                fmt(r["c1_p50_us"] / 1000, ".3f"),
                fmt(r["c1_p99_us"] and r["c1_p99_us"] / 1000, ".3f"),
                fmt(r["c1_added_p50_us"] and r["c1_added_p50_us"] / 1000, "+.3f")
                if r["target"] != "direct"
                else "0",
                fmt(r["c1_added_minus_nginx_us"] and r["c1_added_minus_nginx_us"] / 1000, "+.3f"),
            )
        )
    _print_markdown(lines)


HIT_TARGET = 0.35  # issue 5: an L1 hit at >= 0.35 of nginx proxy_cache's hit rate


def _print_cache(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    print()
    print(
        f"Cache hits: GET {CACHEABLE_PATH}, same runs (wrk -c{args.connections} "
        f"-d{args.duration}s, median of {args.rounds} round(s)); x nginx-cache = over nginx "
        "proxy_cache serving hits; x pass = over the gateway's pass-through on the same "
        "path; CPU ratios are the other's CPU per request over this one's (> 1: cheaper)"
    )
    head = (
        "target",
        "req/s",
        "x nginx-cache",
        "x nginx-cache CPU",
        "x pass",
        "x pass CPU",
        "CPU us/req",
        "cache hits",
        "L2 reads hit",
        "upstream reqs",
        "non-2xx",
    )
    lines: list[tuple[str, ...]] = [head]
    for r in rows:
        if r["failed"] and not r["rounds"]:
            lines.append((r["target"], "FAILED", *[""] * (len(head) - 2)))
            continue
        decided = sum(r["decisions"].values())
        hits = (
            f"{r['hits'] / decided:.2%} of {decided:,.0f}"
            if r["caches"] and decided and r["hits"] is not None
            else ("0" if r["caches"] else "-")
        )
        lines.append(
            (
                r["target"],
                fmt(r["rps"], ",.0f"),
                fmt(r["x_nginx_cache"], ".3f"),
                fmt(r["x_nginx_cache_cpu"], ".3f"),
                fmt(r["x_pass"], ".3f"),
                fmt(r["x_pass_cpu"], ".3f"),
                fmt(r["cpu_us_per_req"], ".1f"),
                hits,
                fmt(r["shared_reads"].get("hit"), ",.0f") if r["shared_reads"] else "-",
                fmt(r["upstream_requests"], ",d"),
                str(r["non2xx"]),
            )
        )
    _print_markdown(lines)
    print(
        "(cache hits: the cache policy's hit decisions over all its decisions, from "
        "/metrics; L2 reads hit: gateway_cache_shared_reads_total{result=hit}; upstream "
        f"reqs: {CACHEABLE_PATH} requests the upstream answered during this target's wrk "
        "runs, warm-up and latency pass included)"
    )
    for r in rows:
        if not r["caches"] or not r["rounds"]:
            continue
        hits = r["hits"] or 0.0
        tier = "L2" if hits and r["shared_reads"].get("hit", 0.0) >= hits / 2 else "L1"
        verdict = [f"{tier} hits"]
        ratio, cpu_ratio = r["x_nginx_cache"], r["x_nginx_cache_cpu"]
        if ratio is not None:
            text = (
                f"{ratio:.3f} of nginx proxy_cache's hit rate "
                f"({fmt(cpu_ratio, '.3f')} by CPU per request)"
            )
            if tier == "L1":
                by_rps, by_cpu = ratio >= HIT_TARGET, (cpu_ratio or 0.0) >= HIT_TARGET
                met = (
                    "met"
                    if by_rps and by_cpu
                    else "NOT met"
                    if not (by_rps or by_cpu)
                    else f"met by {'req/s' if by_rps else 'CPU per request'} only"
                )
                text += f", target >= {HIT_TARGET}: {met}"
            verdict.append(text)
        if r["x_pass"] is not None and r["x_pass_cpu"] is not None:
            cheaper = r["x_pass_cpu"] >= 1
            verdict.append(
                f"pass-through's CPU per request over this one's {r['x_pass_cpu']:.3f}, "
                f"req/s {r['x_pass']:.3f} x the pass-through's: a hit costs no more than "
                f"a pass-through: {'yes' if cheaper else 'NO'}"
            )
        print(f"{r['target']}: " + "; ".join(verdict))


def _print_markdown(lines: Sequence[Sequence[str]]) -> None:
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]

    def row(cells: Sequence[str]) -> str:
        out = [
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "| " + " | ".join(out) + " |"

    print(row(lines[0]))
    print("|" + "|".join(("-" * (w + 1)) + (":" if i else "-") for i, w in enumerate(widths)) + "|")
    for line in lines[1:]:
        print(row(line))


# ---------------------------------------------------------------------------- profile


FuncKey = tuple[str, int, str]


def print_cprofile(
    path: Path, requests: int, top: int, clock: str, baseline_us: float | None
) -> None:
    stats = pstats.Stats(str(path))
    entries: dict[FuncKey, Any] = stats.stats  # type: ignore[attr-defined]
    total = sum(v[2] for v in entries.values())
    print(
        f"\ncProfile, top {top} by own time (tottime); per request = time / {requests:,} "
        f"requests (start-up and warm-up included); {clock} clock; profiled total "
        f"{total / requests * 1e6:.1f} us/req. cProfile inflates Python call costs: "
        f"compare shares, not absolutes. The event loop's row is uvloop's C code "
        f"(epoll, socket reads, callback dispatch) that no Python function owns"
        f"{'' if clock == 'cpu' else ', plus its idle time (wall clock)'}."
    )
    ranked = sorted(entries.items(), key=lambda kv: kv[1][2], reverse=True)[:top]
    lines: list[tuple[str, ...]] = [("function", "calls/req", "own us/req", "own %", "cum us/req")]
    for key, (_cc, ncalls, tottime, cumtime, _callers) in ranked:
        filename, lineno, func = key
        where = _short(filename)
        name = f"{func} ({where}:{lineno})" if lineno else f"{func} {where}".strip()
        lines.append(
            (
                name[:90],
                f"{ncalls / requests:.2f}",
                f"{tottime / requests * 1e6:.2f}",
                f"{tottime / total * 100:.1f}",
                f"{cumtime / requests * 1e6:.2f}",
            )
        )
    _print_markdown(lines)

    # own time summed by component; a built-in's time goes to its callers' components
    # in proportion to the time each caller spent in it
    by_component: dict[str, float] = {}
    for key, (_cc, _nc, tottime, _ct, callers) in entries.items():
        if key[0] != "~":
            shares = {_component(key): tottime}
        else:
            weights = {caller: v[3] for caller, v in callers.items()}
            weight = sum(weights.values())
            if not weight:
                shares = {"builtins (no caller)": tottime}
            else:
                shares = {}
                for caller, w in weights.items():
                    name = _component(caller)
                    shares[name] = shares.get(name, 0.0) + tottime * w / weight
        for name, value in shares.items():
            by_component[name] = by_component.get(name, 0.0) + value
    print(
        "\nOwn time by component (built-ins charged to their callers); 'est. us/req' is the "
        f"share times the unprofiled CPU per request ({fmt(baseline_us, '.1f')} us)"
    )
    lines = [("component", "profiled us/req", "own %", "est. us/req")]
    for name, value in sorted(by_component.items(), key=lambda kv: kv[1], reverse=True):
        if value / total < 0.002:
            continue
        share = value / total
        estimate = fmt(baseline_us and share * baseline_us, ".1f")
        lines.append((name, f"{value / requests * 1e6:.2f}", f"{share * 100:.1f}", estimate))
    _print_markdown(lines)


_STDLIB = re.compile(r"/lib/python3\.\d+/")


def _component(key: FuncKey) -> str:
    filename, _lineno, func = key
    if filename.endswith("asyncio/runners.py") and func == "run":
        return "event loop (uvloop C: epoll, socket I/O)"
    if "site-packages/" in filename:
        return filename.split("site-packages/", 1)[1].split("/")[0].removesuffix(".py")
    match = _STDLIB.search(filename)
    if match:
        return "stdlib " + filename[match.end() :].split("/")[0].removesuffix(".py")
    with contextlib.suppress(ValueError):
        parts = Path(filename).relative_to(ROOT).with_suffix("").parts
        return ".".join(parts[:2])
    return filename


def _short(filename: str) -> str:
    if filename == "~":
        return ""
    if "site-packages/" in filename:
        return filename.split("site-packages/", 1)[1]
    match = _STDLIB.search(filename)
    if match:
        return filename[match.end() :]
    with contextlib.suppress(ValueError):
        return str(Path(filename).relative_to(ROOT))
    return filename


def print_pyspy(path: Path, requests: int, rate: int, top: int) -> None:
    """Own and total samples per function from py-spy's collapsed-stack output."""
    own: dict[str, int] = {}
    total: dict[str, int] = {}
    samples = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        samples += count
        frames = stack.split(";")
        own[frames[-1]] = own.get(frames[-1], 0) + count
        for frame in set(frames):
            total[frame] = total.get(frame, 0) + count
    if not samples:
        print("py-spy recorded no samples")
        return
    print(
        f"\npy-spy, top {top} by own samples ({samples:,} samples at {rate}/s; "
        f"per request = samples / rate / {requests:,} requests)"
    )
    lines: list[tuple[str, ...]] = [("function", "own us/req", "own %", "total us/req")]
    for frame, count in sorted(own.items(), key=lambda kv: kv[1], reverse=True)[:top]:
        lines.append(
            (
                frame[:90],
                f"{count / rate / requests * 1e6:.2f}",
                f"{count / samples * 100:.1f}",
                f"{total[frame] / rate / requests * 1e6:.2f}",
            )
        )
    _print_markdown(lines)


def run_profile(
    args: argparse.Namespace,
    procs: Processes,
    tmp: Path,
    upstream_port: int,
    placeholders: dict[str, str],
) -> int:
    name = args.profile_variant or args.variant_names[0]
    variant = VARIANTS[name]
    profiler = args.profiler_resolved
    out = tmp / f"profile-{name}.{'pstats' if profiler == 'cprofile' else 'txt'}"
    print(
        f"profiling gateway-{name} with {profiler}: one round, wrk -c{args.connections} "
        f"-d{args.duration}s",
        flush=True,
    )
    # an unprofiled round first: its CPU per request scales the profile's shares to
    # microseconds, since every profiler inflates what it measures
    baseline_us: float | None = None
    plain = start_gateway(procs, args, name, variant, tmp, upstream_port, placeholders)
    measure(args, plain, "warmup")
    measure(args, plain, "throughput")
    if plain.runs:
        baseline_us = plain.runs[0].get("cpu_us_per_req")
        print(f"  unprofiled: {fmt(baseline_us, '.1f')} us CPU per request", flush=True)
    if plain.proc is not None:
        procs.stop(plain.proc)

    in_process = profiler in ("cprofile", "pyinstrument")
    target = start_gateway(
        procs,
        args,
        name,
        variant,
        tmp,
        upstream_port,
        placeholders,
        profile_out=out if in_process else None,
    )
    if target.failed or target.proc is None:
        print(f"FAILED gateway-{name}: {target.failed}", file=sys.stderr)
        return 1
    measure(args, target, "warmup")
    spy: subprocess.Popen[bytes] | None = None
    if profiler == "py-spy":
        spy = subprocess.Popen(
            [
                args.py_spy,
                "record",
                "--pid",
                str(target.proc.pid),
                "--rate",
                str(args.spy_rate),
                "--duration",
                str(int(args.duration) + 1),
                "--format",
                "raw",
                "--output",
                str(out),
                "--nonblocking",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        time.sleep(0.5)
    measure(args, target, "throughput")
    if spy is not None:
        try:
            _, err = spy.communicate(timeout=args.duration + 30)
        except subprocess.TimeoutExpired:
            spy.kill()
            _, err = spy.communicate()
        if spy.returncode != 0:
            print(f"py-spy failed: {err.decode(errors='replace').strip()}", file=sys.stderr)
    if not target.runs:
        print(f"FAILED gateway-{name}: {target.failed}", file=sys.stderr)
        return 1
    run = target.runs[0]
    # the profile spans start-up, the readiness probe, the warm-up and the measured round
    requests = 1 + sum(r["requests"] for r in target.warmups + target.runs)
    print(
        f"  CPU per request of the profiled process during the round: "
        f"{run.get('cpu_us_per_req', 0):.1f} us (profiler overhead included); "
        f"{requests:,} requests served in all"
    )
    procs.stop(target.proc)  # SIGTERM: the gateway drains and the profiler writes its file
    if not out.exists():
        print(f"the profiler wrote no output to {out}\n{target.proc.log_tail()}", file=sys.stderr)
        return 1
    if profiler == "cprofile":
        print_cprofile(out, requests, args.top, args.profile_clock, baseline_us)
    elif profiler == "py-spy":
        print_pyspy(out, requests, args.spy_rate, args.top)
    else:
        print(
            f"\npyinstrument report ({requests:,} requests during the measured round, "
            "plus warm-up and start-up):"
        )
        print("\n".join(out.read_text().splitlines()[:120]))
    if args.keep_profile:
        kept = Path(args.keep_profile)
        shutil.copyfile(out, kept)
        print(f"\nprofile saved to {kept}")
    return 0


# ---------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="bench/run.py",
        description=(__doc__ or "").split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median taken)")
    p.add_argument("--duration", type=int, default=5, help="seconds per throughput run")
    p.add_argument("--connections", type=int, default=64, help="wrk connections")
    p.add_argument("--threads", type=int, default=1, help="wrk threads (they share one CPU)")
    p.add_argument(
        "--latency-duration",
        type=int,
        default=3,
        help="seconds per 1-connection latency run; 0 skips the latency pass",
    )
    p.add_argument("--warmup", type=int, default=1, help="seconds of warm-up per target")
    p.add_argument("--wrk-timeout", type=int, default=2, help="wrk's per-request timeout")
    p.add_argument(
        "--variants",
        default=",".join(DEFAULT_VARIANTS),
        help=f"gateway variants, comma-separated, or 'all'; known: {', '.join(VARIANTS)}; "
        f"groups: {'; '.join(g + ' = ' + ','.join(m) for g, m in GROUPS.items())}",
    )
    p.add_argument("--list-variants", action="store_true", help="describe the variants and exit")
    p.add_argument("--no-direct", action="store_true", help="skip the direct-upstream target")
    p.add_argument("--no-nginx", action="store_true", help="skip nginx (no ratio then)")
    p.add_argument(
        "--no-nginx-cache",
        action="store_true",
        help="skip the nginx proxy_cache target that cache variants are compared with",
    )
    p.add_argument(
        "--no-floor",
        action="store_true",
        help="skip the minimal-proxy controls (bench/floor_proxy.py) run beside a Redis limiter",
    )
    p.add_argument("--proxy-cpu", type=int, default=0, help="CPU for the proxy under test")
    p.add_argument("--load-cpu", type=int, default=1, help="CPU for wrk and the upstream")
    p.add_argument("--no-pin", action="store_true", help="do not use taskset")
    p.add_argument(
        "--upstream-workers",
        type=int,
        default=1,
        help="upstream processes sharing the port (SO_REUSEPORT)",
    )
    p.add_argument(
        "--profile",
        action="store_true",
        help="instead of the comparison, profile one gateway variant for one round",
    )
    p.add_argument("--profile-variant", help="variant to profile (default: the first selected)")
    p.add_argument(
        "--profiler",
        choices=("auto", "py-spy", "pyinstrument", "cprofile"),
        default="auto",
        help="auto: py-spy if installed, else pyinstrument if importable, else cProfile",
    )
    p.add_argument(
        "--profile-clock",
        choices=("cpu", "wall"),
        default="cpu",
        help="cProfile's clock: cpu (event-loop idle not counted) or wall (lower overhead)",
    )
    p.add_argument("--spy-rate", type=int, default=1000, help="py-spy samples per second")
    p.add_argument("--top", type=int, default=25, help="functions shown by --profile")
    p.add_argument("--keep-profile", metavar="FILE", help="copy the raw profile output here")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    p.add_argument("--keep-tmp", action="store_true", help="keep the temp dir (configs, logs)")
    p.add_argument("--python", default=str(ROOT / ".venv/bin/python"))
    p.add_argument("--gateway", default=str(ROOT / ".venv/bin/gateway"))
    p.add_argument("--nginx", default=shutil.which("nginx") or "/usr/sbin/nginx")
    p.add_argument("--wrk", default=shutil.which("wrk") or "/usr/bin/wrk")
    args = p.parse_args(argv)
    names = expand(
        list(VARIANTS)
        if args.variants == "all"
        else [v.strip() for v in args.variants.split(",") if v.strip()]
    )
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        p.error(f"unknown variant(s) {unknown}; known: {', '.join(VARIANTS)}")
    if args.profile_variant and args.profile_variant not in VARIANTS:
        p.error(f"unknown --profile-variant {args.profile_variant!r}")
    if args.profile and not names and not args.profile_variant:
        p.error("--profile needs a gateway variant")
    if args.rounds < 1 or args.duration <= 0 or args.connections < 1:
        p.error("--rounds, --duration and --connections must be positive")
    args.variant_names = names
    return args


def check_tools(args: argparse.Namespace) -> None:
    missing = [
        name
        for name, path in (("nginx", args.nginx), ("wrk", args.wrk))
        if not (os.path.isfile(path) and os.access(path, os.X_OK))
    ]
    if args.profile:
        missing = [m for m in missing if m != "nginx"]
    if missing:
        raise BenchError(
            f"{' and '.join(missing)} not found; install with: apt-get install nginx wrk"
        )
    for path, what in ((args.python, "--python"), (args.gateway, "--gateway")):
        if not os.access(path, os.X_OK):
            raise BenchError(f"{what} {path} is not executable; set up the venv first")
    args.taskset = None if args.no_pin else shutil.which("taskset")
    if not args.no_pin:
        cpus = os.sched_getaffinity(0)
        if args.taskset is None:
            print("warning: taskset not found, processes are not pinned", file=sys.stderr)
        elif not {args.proxy_cpu, args.load_cpu} <= cpus or args.proxy_cpu == args.load_cpu:
            raise BenchError(
                f"--proxy-cpu {args.proxy_cpu} and --load-cpu {args.load_cpu} must be two "
                f"different CPUs of {sorted(cpus)} (or pass --no-pin)"
            )
    profiler = args.profiler
    if profiler == "auto":
        if shutil.which("py-spy"):
            profiler = "py-spy"
        elif _importable(args.python, "pyinstrument"):
            profiler = "pyinstrument"
        else:
            profiler = "cprofile"
    if profiler == "py-spy":
        args.py_spy = shutil.which("py-spy")
        if args.py_spy is None:
            raise BenchError("py-spy not found (pip install py-spy), try --profiler cprofile")
    if profiler == "pyinstrument" and not _importable(args.python, "pyinstrument"):
        raise BenchError("pyinstrument is not importable, try --profiler cprofile")
    args.profiler_resolved = profiler


def _importable(python: str, module: str) -> bool:
    code = f"import {module}"
    return subprocess.run([python, "-c", code], capture_output=True, check=False).returncode == 0


def fast_path_status(python: str) -> str:
    parts = []
    for module, what, fallback in (
        ("gateway.frontends.native", "native front-end", "server: native falls back to ASGI"),
        ("gateway.transport.native", "native transport", "the transport falls back to aiohttp"),
    ):
        ok = _importable(python, module)
        parts.append(f"{what}: {'present' if ok else 'MISSING, ' + fallback}")
    code = "from gateway import build; print(build.describe())"
    build = subprocess.run([python, "-c", code], capture_output=True, text=True, check=False)
    parts.append(f"build: {build.stdout.strip() or 'unknown'}")
    return "; ".join(parts)


def describe_machine(args: argparse.Namespace) -> str:
    nginx = subprocess.run([args.nginx, "-v"], capture_output=True, text=True, check=False)
    wrk = subprocess.run([args.wrk, "-v"], capture_output=True, text=True, check=False)
    wrk_version = (wrk.stdout + wrk.stderr).splitlines()[0].split(" Copyright")[0]
    load = Path("/proc/loadavg").read_text().split()[:3]
    return (
        f"{platform.node()}: {os.cpu_count()} CPUs, load {' '.join(load)}, "
        f"{platform.python_implementation()} {platform.python_version()}, "
        f"{nginx.stderr.strip().removeprefix('nginx version: ')}, {wrk_version}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.list_variants:
        for name, variant in VARIANTS.items():
            mark = "*" if name in DEFAULT_VARIANTS else " "
            print(f"{mark} {name:<16} {variant.description}")
        print("(* = default)")
        for group, members in GROUPS.items():
            print(f"group {group}: {', '.join(members)}")
        return 0
    try:
        check_tools(args)
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="gateway-bench-"))
    procs = Processes(args.taskset)
    old_term = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        return _run(args, procs, tmp)
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bench: interrupted", file=sys.stderr)
        return 130
    finally:
        procs.close()
        signal.signal(signal.SIGTERM, old_term)
        if args.keep_tmp:
            print(f"temp dir kept: {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def _describe_cache(t: Target) -> str:
    m = t.cache_metrics
    if m is None:
        return "cache metrics unavailable"

    def counts(d: dict[str, float]) -> str:
        return " ".join(f"{k}={v:,.0f}" for k, v in sorted(d.items())) or "none"

    seen = fmt(t.upstream_seen, ",d", "(not counted)")
    text = (
        f"cache decisions {counts(m['decisions'])}; shared-tier reads "
        f"{counts(m['shared_reads'])}; stores {counts(m['stores'])}; the upstream answered "
        f"{seen} {CACHEABLE_PATH} requests during its runs"
    )
    hits, decided = m["decisions"].get("hit", 0.0), sum(m["decisions"].values())
    if decided and hits / decided < 0.99:
        text += "\n  warning: under 99 % of its cache decisions were hits"
    return text


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _run(args: argparse.Namespace, procs: Processes, tmp: Path) -> int:
    print(describe_machine(args))
    print(fast_path_status(args.python))
    pin = (
        f"proxy on CPU {args.proxy_cpu}, wrk + upstream on CPU {args.load_cpu}"
        if args.taskset
        else "not pinned"
    )
    print(f"pinning: {pin}", flush=True)

    upstream_port = free_port()
    upstream = procs.start(
        "upstream",
        [
            args.python,
            str(UPSTREAM_PY),
            "--host",
            HOST,
            "--port",
            str(upstream_port),
            "--workers",
            str(args.upstream_workers),
        ],
        cpu=args.load_cpu,
        log=tmp / "upstream.log",
    )
    try:
        wait_until(lambda: http_ok(f"http://{HOST}:{upstream_port}/"), upstream, "upstream")
    except TargetFailed as exc:
        raise BenchError(str(exc)) from exc

    selected = [args.profile_variant] if args.profile and args.profile_variant else []
    selected = selected or args.variant_names
    placeholders: dict[str, str] = {}
    if any(VARIANTS[n].needs_redis for n in selected[: 1 if args.profile else None]):
        placeholders["redis"] = start_redis(procs, tmp, args.load_cpu)
        print(f"redis-server: {placeholders['redis']}", flush=True)

    if args.profile:
        return run_profile(args, procs, tmp, upstream_port, placeholders)

    targets: list[Target] = []
    if not args.no_direct:
        targets.append(Target("direct", f"http://{HOST}:{upstream_port}/", note="no proxy"))
    if not args.no_nginx:
        targets.append(start_nginx(procs, args.nginx, tmp, upstream_port, args.proxy_cpu))
    if not args.no_nginx_cache and any(VARIANTS[n].nginx_cache for n in args.variant_names):
        targets.append(
            start_nginx(procs, args.nginx, tmp, upstream_port, args.proxy_cpu, cache=True)
        )
    # the upstream's /cacheable count is one process's: only exact with one worker
    args.upstream_stats_port = upstream_port if args.upstream_workers == 1 else None
    for name in args.variant_names:
        target = start_gateway(procs, args, name, VARIANTS[name], tmp, upstream_port, placeholders)
        target.note = VARIANTS[name].description
        targets.append(target)
    redis_limited = any(limiter_latency.limits(VARIANTS[n]) == "redis" for n in args.variant_names)
    if redis_limited and not args.no_floor:
        for redis in (None, placeholders["redis"]):
            targets.append(start_floor(procs, args, tmp, upstream_port, redis))
    for t in targets:
        if t.failed:
            print(f"  {t.name}: FAILED to start\n{t.failed}", flush=True)

    passes = 2 + args.rounds * (1 + (args.latency_duration > 0))
    estimate = (
        len(targets) * (args.warmup + args.rounds * (args.duration + args.latency_duration))
        + passes
    )
    print(
        f"running {len(targets)} targets x {args.rounds} round(s), about {estimate:.0f}s",
        flush=True,
    )
    if args.warmup > 0:
        for t in targets:
            measure(args, t, "warmup")
    for t in targets:  # one response through each cache target: HIT / hit expected
        if t.cache_compared and not t.failed:
            t.sample = sample_response(t)
            print(f"  {t.name}: sample after warm-up: {t.sample}", flush=True)
    rtts: list[dict[str, Any] | None] = []  # the Redis round trip, once a round
    for round_no in range(1, args.rounds + 1):
        print(f"round {round_no}/{args.rounds}", flush=True)
        for t in targets:
            measure(args, t, "throughput")
        if args.latency_duration > 0:
            for t in targets:
                measure(args, t, "latency")
            if "redis" in placeholders:
                rtts.append(
                    limiter_latency.measure_rtt(
                        args.python,
                        placeholders["redis"],
                        args.latency_duration,
                        args.taskset,
                        args.proxy_cpu,
                    )
                )
    if not upstream.alive():
        raise BenchError("the upstream died during the run\n" + upstream.log_tail())

    for t in targets:
        if t.admin and not t.failed:
            counted = metrics_requests(t.admin)
            served = sum(r["requests"] for r in t.warmups + t.runs + t.latency)
            print(
                f"  {t.name}: /metrics counted {fmt(counted, ',.0f', 'nothing')} requests "
                f"(wrk completed {served:,}, plus probes and requests in flight at the end)"
            )
            if t.variant is not None and t.variant.caches:
                t.cache_metrics = cache_metrics(t.admin)
                print(f"  {t.name}: {_describe_cache(t)}")
        elif t.name == "nginx-cache" and not t.failed:
            seen = fmt(t.upstream_seen, ",d", "(not counted)")
            print(f"  {t.name}: the upstream answered {seen} {CACHEABLE_PATH} requests in its runs")
    summary = summarize(targets)
    summary["rate_limit"] = limiter_latency.summarize(targets, rtts)
    print_table(summary, args)
    if summary["rate_limit"] and args.latency_duration > 0:
        limiter_latency.print_table(
            summary["rate_limit"], args.rounds, args.latency_duration, _print_markdown
        )
    if args.json:
        summary["machine"] = describe_machine(args)
        summary["settings"] = {
            k: getattr(args, k)
            for k in (
                "rounds",
                "duration",
                "connections",
                "threads",
                "latency_duration",
                "warmup",
                "variant_names",
                "proxy_cpu",
                "load_cpu",
                "taskset",
            )
        }
        summary["raw"] = {t.name: {"runs": t.runs, "latency": t.latency} for t in targets}
        summary["raw"]["redis_round_trip"] = rtts
        Path(args.json).write_text(json.dumps(summary, indent=2) + "\n")
    return (
        1
        if all(t.failed for t in targets if t.name.startswith("gateway-"))
        and any(t.name.startswith("gateway-") for t in targets)
        else 0
    )


if __name__ == "__main__":
    sys.exit(main())
