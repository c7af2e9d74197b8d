from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.harness import Gateway, Redis, Upstream, base_config

FRONTENDS = ["native", "asgi"]


@pytest.fixture(scope="session")
def upstream() -> Iterator[Upstream]:
    server = Upstream()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[Redis]:
    server = Redis()
    yield server
    server.stop()


@pytest.fixture(params=FRONTENDS)
def frontend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


GatewayFactory = Callable[..., Gateway]


@pytest.fixture
def start_gateway(tmp_path: Path, upstream: Upstream, frontend: str) -> Iterator[GatewayFactory]:
    started: list[Gateway] = []

    def start(
        config: dict[str, Any] | None = None, env: dict[str, str] | None = None, **overrides: Any
    ) -> Gateway:
        cfg = config if config is not None else base_config(upstream.url, frontend, **overrides)
        directory = tmp_path / f"gw{len(started)}"
        directory.mkdir()
        gw = Gateway(cfg, directory, env)
        started.append(gw)
        return gw

    yield start
    for gw in started:
        gw.stop()


@pytest.fixture
def gateway(start_gateway: GatewayFactory) -> Gateway:
    return start_gateway()
