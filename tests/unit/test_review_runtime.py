"""Review findings on the runtime: pools retired by a reload are closed at shutdown."""

from __future__ import annotations

import asyncio
from pathlib import Path

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
