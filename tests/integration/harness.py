"""Real processes on 127.0.0.1 for the integration tests: upstream, redis, gateway."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
UPSTREAM_SCRIPT = Path(__file__).with_name("upstream_server.py")
ADMIN_TOKEN = "test-admin-token"


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A port below the kernel's ephemeral range that nothing listens on.

    Port 0 would hand out an ephemeral port, and the many outgoing connections
    the tests make draw from that same range: one of them could take the port
    between this check and the server's bind. Below the range only a listener
    can hold a port, and every port is handed out once per test run.
    """
    low = _ephemeral_low()
    rng = random.Random()
    for _ in range(1000):
        port = rng.randrange(max(1024, low - 12000), low)
        if port in _HANDED_OUT:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _HANDED_OUT.add(port)
        return port
    raise RuntimeError("no free port below the ephemeral range")


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def wait_for_port(
    port: int, proc: subprocess.Popen[bytes] | None = None, timeout: float = 15
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            out = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
            err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
            raise RuntimeError(f"process exited with {proc.returncode}:\n{out}\n{err}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


def stop_process(
    proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 10
) -> int:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()
    return proc.returncode


class Upstream:
    def __init__(self) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen(
            [sys.executable, str(UPSTREAM_SCRIPT), "--port", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,  # a pipe nobody reads would fill and block it
            start_new_session=True,
        )
        wait_for_port(self.port, self.proc)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        stop_process(self.proc)


class Redis:
    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed; the test command installs it")
        self.port = free_port()
        self.proc = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        wait_for_port(self.port, self.proc)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        stop_process(self.proc)


def base_config(upstream_url: str, server: str, **overrides: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "version": 1,
        "server": server,
        "listen": "127.0.0.1:0",
        "admin": "127.0.0.1:0",
        "logging": {"level": "info"},
        "reload": {"watch": True, "interval": "200ms"},
        "upstreams": {"app": {"url": upstream_url, "timeouts": {"connect": "1s", "read": "3s"}}},
        "routes": [
            {
                "name": "users",
                "match": {"path": "/users/{id}", "methods": ["GET", "HEAD"]},
                "upstream": "app",
            },
            {"name": "everything-else", "match": {"prefix": "/"}, "upstream": "app"},
        ],
    }
    config.update(overrides)
    return config


class Gateway:
    """``gateway run`` in a subprocess with a policy file written for the test."""

    def __init__(self, config: dict[str, Any], directory: Path, env: dict[str, str] | None = None):
        self.port = free_port()
        self.admin_port = free_port()
        config = dict(config)
        config["listen"] = f"127.0.0.1:{self.port}"
        config["admin"] = f"127.0.0.1:{self.admin_port}"
        self.config = config
        self.directory = directory
        self.path = directory / "gateway.yaml"
        self.write(config)
        self.log_path = directory / f"gateway-{self.port}.out"
        self.err_path = directory / f"gateway-{self.port}.err"
        full_env = dict(os.environ, GATEWAY_ADMIN_TOKEN=ADMIN_TOKEN, PYTHONUNBUFFERED="1")
        full_env.update(env or {})
        self._out = open(self.log_path, "wb")  # noqa: SIM115 - kept open for the process
        self._err = open(self.err_path, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "run", "-c", str(self.path)],
            stdout=self._out,
            stderr=self._err,
            start_new_session=True,
            cwd=str(ROOT),
            env=full_env,
        )
        try:
            wait_for_port(self.admin_port, self.proc)
            wait_for_port(self.port, self.proc)
        except Exception as exc:
            self.stop()
            raise RuntimeError(f"gateway failed to start: {exc}\n{self.stderr()}") from exc

    def write(self, config: dict[str, Any] | str) -> None:
        text = config if isinstance(config, str) else yaml.safe_dump(config, sort_keys=False)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(self.path)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        headers: dict[str, str] | None = None,
        port: int | None = None,
        timeout: float = 10,
    ) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", port or self.port, timeout=timeout)
        try:
            chunked = any(v.lower() == "chunked" for v in (headers or {}).values())
            conn.request(method, path, body=body, headers=headers or {}, encode_chunked=chunked)
            resp = conn.getresponse()
            data = resp.read()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data
        finally:
            conn.close()

    def admin(
        self, path: str, token: str | None = ADMIN_TOKEN, method: str = "GET"
    ) -> tuple[int, dict[str, str], bytes]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return self.request(method, path, headers=headers, port=self.admin_port)

    def metrics(self) -> str:
        return self.request("GET", "/metrics", port=self.admin_port)[2].decode()

    def metric(self, name: str, **labels: str) -> float:
        total = 0.0
        for line in self.metrics().splitlines():
            if not line.startswith(name):
                continue
            head, _, value = line.rpartition(" ")
            if head.split("{")[0] != name:
                continue
            if all(f'{k}="{v}"' in head for k, v in labels.items()):
                total += float(value)
        return total

    def stdout(self) -> str:
        if not self._out.closed:
            self._out.flush()
        return self.log_path.read_text(errors="replace")

    def stderr(self) -> str:
        if not self._err.closed:
            self._err.flush()
        return self.err_path.read_text(errors="replace")

    def access_lines(self) -> list[dict[str, Any]]:
        out = []
        for line in self.stdout().splitlines():
            with contextlib.suppress(ValueError):
                doc = json.loads(line)
                if doc.get("type") == "access":
                    out.append(doc)
        return out

    def send_signal(self, sig: int) -> None:
        os.kill(self.proc.pid, sig)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> int:
        code = stop_process(self.proc, sig, timeout)
        self._out.close()
        self._err.close()
        return code


def wait_until(predicate: Any, timeout: float = 10, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


@contextlib.contextmanager
def raw_connection(port: int, timeout: float = 5) -> Iterator[socket.socket]:
    sock = socket.create_connection(("127.0.0.1", port), timeout)
    try:
        yield sock
    finally:
        sock.close()


def read_until_close(sock: socket.socket, limit: int = 1 << 24) -> bytes:
    chunks = []
    size = 0
    while size < limit:
        try:
            data = sock.recv(65536)
        except (TimeoutError, ConnectionResetError):
            break
        if not data:
            break
        chunks.append(data)
        size += len(data)
    return b"".join(chunks)


BROKEN_CONFIG = "version: 1\nroutes: [ {broken\n"


def per_worker(gw: Gateway, name: str, **labels: str) -> dict[str, float]:
    """``name``'s samples matching ``labels``, summed per ``worker`` label (workers: N)."""
    out: dict[str, float] = {}
    for line in gw.metrics().splitlines():
        head, _, value = line.rpartition(" ")
        if head.split("{")[0] != name or not all(f'{k}="{v}"' in head for k, v in labels.items()):
            continue
        worker = head.partition('worker="')[2].partition('"')[0]
        assert worker, f"a sample without a worker label: {line}"
        out[worker] = out.get(worker, 0.0) + float(value)
    return out
