"""Review findings on the runtime: pools retired by a reload are closed at shutdown."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

from gateway.config.models import Upstream
from gateway.exchange import Response
from gateway.runtime import Runtime
from gateway.transport.base import UpstreamRequest

CONFIG = """
version: 1
listen: 127.0.0.1:0
admin: 127.0.0.1:0
logging: {access_log: false}
reload: {watch: false}
upstreams:
  app: {url: "%s"}
routes:
  - name: all
    match: {prefix: /}
    upstream: app
"""


class RecordingTransport:
    name = "recording"

    def __init__(self, config: Upstream) -> None:
        self.config = config
        self.closed = False

    async def send(self, request: UpstreamRequest) -> Response:
        return Response(200)

    async def close(self) -> None:
        self.closed = True


def test_close_closes_pools_retired_by_a_reload(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(CONFIG % "http://127.0.0.1:9")
    made: list[RecordingTransport] = []

    def factory(config: Upstream) -> RecordingTransport:
        made.append(RecordingTransport(config))
        return made[-1]

    async def scenario() -> None:
        runtime = Runtime.from_file(path, transport_factory=factory)
        await runtime.start()
        path.write_text(CONFIG % "http://127.0.0.1:10")
        assert await runtime.reload()
        assert len(made) == 2
        # Shutdown within the drain grace of the retired pool: it must still be closed.
        await runtime.close()
        assert [t.closed for t in made] == [True, True]

    asyncio.run(scenario())


def _failures(runtime: Runtime) -> float:
    for line in runtime.metrics.render().decode().splitlines():
        if line.startswith('gateway_config_reloads_total{result="failure"}'):
            return float(line.rpartition(" ")[2])
    raise AssertionError("no failure series")


def test_one_bad_file_is_counted_and_logged_once(tmp_path: Path, caplog: Any) -> None:
    # SIGHUP and the watcher both saw the same bad edit: failure went up by 2, logged twice.
    path = tmp_path / "gateway.yaml"
    path.write_text(CONFIG % "http://127.0.0.1:9")

    async def scenario() -> None:
        runtime = Runtime.from_file(path, transport_factory=RecordingTransport)
        await runtime.start()
        with caplog.at_level(logging.ERROR, logger="gateway"):
            path.write_text(CONFIG % "ftp://x")
            assert not await runtime.reload()
            assert not await runtime.reload()
            assert _failures(runtime) == 1
            assert len([r for r in caplog.records if "reload of" in r.getMessage()]) == 1
            errors = runtime.reload_errors
            assert len(errors) == 1 and "not an http:// or https:// URL" in errors[0]
            path.write_text(CONFIG % "ftp://y")  # another bad edit counts
            assert not await runtime.reload()
            assert _failures(runtime) == 2
            path.write_text(CONFIG % "http://127.0.0.1:10")
            assert await runtime.reload() and runtime.reload_errors == []
            path.write_text(CONFIG % "ftp://y")  # the same bad edit again, after a good one
            assert not await runtime.reload()
            assert _failures(runtime) == 3
        await runtime.close()

    asyncio.run(scenario())
