import asyncio
import json
import os
import signal
from pathlib import Path

import pytest

from gateway.cli import main

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "policies" / "example.yaml"


def test_check_ok(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", str(EXAMPLE)]) == 0
    assert "ok" in capsys.readouterr().out


def test_check_reports_every_error_with_position(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        EXAMPLE.read_text().replace("read: 30s", "read: soon").replace("prefix: /", "prefx: /")
    )
    assert main(["check", str(EXAMPLE), str(bad)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2
    assert all(line.startswith(f"{bad}:") for line in err)
    assert any("timeouts.read" in line and "not a duration" in line for line in err)
    assert any("unknown key 'prefx'" in line for line in err)


def test_check_unreadable_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", str(tmp_path / "missing.yaml")]) == 1
    assert "cannot read the file" in capsys.readouterr().err


def test_schema_describes_every_field(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert schema["title"] == "Policy gateway configuration"
    policies = schema["$defs"]["Route"]["properties"]["policies"]
    assert "noop" in policies["properties"] and policies["additionalProperties"] is False

    def walk(node: object, path: str) -> None:
        if isinstance(node, dict):
            for name, prop in (node.get("properties") or {}).items():
                assert prop.get("description"), f"{path}.{name} has no description"
                walk(prop, f"{path}.{name}")
            for key in ("$defs", "anyOf", "items", "additionalProperties"):
                if key in node:
                    walk(node[key], path)
            if "$defs" in node:
                for sub in node["$defs"].values():
                    walk(sub, path)
        elif isinstance(node, list):
            for item in node:
                walk(item, path)

    walk(schema, "")


def test_explain_route_and_policies(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "g.yaml"
    config.write_text(
        EXAMPLE.read_text().replace(
            "    policies: {}              # cache, rate_limit, validate, ... "
            "(see docs/policies.md)",
            "    policies:\n      noop: {mode: shadow, respond: 429}",
        )
    )
    assert main(["explain", "-c", str(config), "GET", "/users/42?x=1", "-H", "Accept: a/b"]) == 0
    out = capsys.readouterr().out
    assert "route:    users" in out and "id=42" in out
    assert "1. noop [shadow]: answers 429" in out
    assert main(["explain", "-c", str(config), "DELETE", "/users/42", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["route"] == "everything-else" and report["policies"] == []


def test_explain_404_and_405(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "g.yaml"
    text = EXAMPLE.read_text()
    config.write_text(text[: text.index("  - name: everything-else")])
    assert main(["explain", "-c", str(config), "POST", "/users/1"]) == 0
    assert "405" in capsys.readouterr().out
    assert main(["explain", "-c", str(config), "GET", "/nope"]) == 0
    assert "404" in capsys.readouterr().out
    assert main(["explain", "-c", str(config), "GET", "/nope", "-H", "bad"]) == 2


def test_explain_applies_what_the_front_ends_refuse(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # explain routed requests the front-ends never route: CONNECT, unknown methods,
    # malformed targets; and it took an absolute-form target's authority for nothing.
    config = tmp_path / "g.yaml"
    config.write_text(EXAMPLE.read_text())
    refused = [
        (["CONNECT", "example.com:443"], "501", "CONNECT is not served"),
        (["BREW", "/pot"], "501", "method BREW is not implemented"),
        (["G(T", "/x"], "400", "Invalid method"),
        (["GET", "users/1"], "400", "must be a path or an absolute URL"),
    ]
    for args, status, detail in refused:
        assert main(["explain", "-c", str(config), *args]) == 0
        out = capsys.readouterr().out
        assert f"refused by the front-end: {status}" in out and detail in out, out
    assert main(["explain", "-c", str(config), "GET", "http://api.example/users/7", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["route"] == "users" and report["path"] == "/users/7"
    assert report["params"] == {"id": "7"}


def test_mask_secrets() -> None:
    from gateway.admin.app import mask_secrets

    doc = {
        "stores": {"shared": {"url": "redis://:hunter2@h:6379/0"}},
        "rate_limit": [{"key": "ip", "secret": "s3"}],
        "match": {"headers": {"Authorization": "Bearer t"}},
    }
    masked = mask_secrets(doc)
    assert masked["stores"]["shared"]["url"] == "redis://:***@h:6379/0"
    assert masked["rate_limit"] == [{"key": "ip", "secret": "***"}]
    assert masked["match"]["headers"]["Authorization"] == "***"


def test_store_that_cannot_be_built_is_a_config_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "g.yaml"
    config.write_text(
        EXAMPLE.read_text().replace("stores: {}", "stores: {s: 'redis+sentinel://h:26379'}")
    )
    assert main(["check", str(config)]) == 1
    err = capsys.readouterr().err
    assert "stores.s" in err and "service_name" in err and "Traceback" not in err


def test_a_sighup_before_the_handlers_is_kept_for_one_reload() -> None:
    from gateway import launch
    from gateway.server import Signals

    before = signal.signal(signal.SIGHUP, launch._note)
    try:
        os.kill(os.getpid(), signal.SIGHUP)  # delivered here: noted, not fatal

        async def install() -> bool:
            signals = Signals(lambda: None, _no_reload)
            try:
                return signals._pending_reload
            finally:
                signals.undo()

        assert asyncio.run(install()) is True
        assert launch.take_early_reload() is False  # taken once
    finally:
        signal.signal(signal.SIGHUP, before)


async def _no_reload() -> None:
    return None
