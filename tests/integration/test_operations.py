"""Admin port, metrics, access log, hot reload and graceful drain, with real processes."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import threading
import time
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.conftest import GatewayFactory
from tests.integration.harness import ADMIN_TOKEN, Gateway, base_config, wait_until

pytestmark = pytest.mark.integration


def test_health_ready_and_metrics_are_open(gateway: Gateway) -> None:
    assert gateway.admin("/healthz", token=None)[0] == 200
    assert gateway.admin("/readyz", token=None)[0] == 200
    gateway.request("GET", "/users/7")
    status, headers, body = gateway.admin("/metrics", token=None)
    assert status == 200 and headers["content-type"].startswith("text/plain")
    families = {f.name for f in text_string_to_metric_families(body.decode())}
    for name in (
        "gateway_requests",
        "gateway_request_duration_seconds",
        "gateway_upstream_duration_seconds",
        "gateway_requests_in_flight",
        "gateway_upstream_errors",
        "gateway_config_reloads",
        "gateway_policy_decisions",
    ):
        assert name in families, name
    assert gateway.metric("gateway_requests_total", route="users", status_class="2xx") == 1
    if shutil.which("promtool"):
        check = subprocess.run(["promtool", "check", "metrics"], input=body, capture_output=True)
        assert check.returncode == 0, check.stdout + check.stderr


def test_admin_api_needs_the_token(gateway: Gateway) -> None:
    assert gateway.admin("/admin/config", token=None)[0] == 401
    assert gateway.admin("/admin/config", token="wrong")[0] == 401
    status, _, body = gateway.admin("/admin/routes")
    assert status == 200
    assert [r["name"] for r in json.loads(body)["routes"]] == ["users", "everything-else"]


def test_admin_bearer_scheme_is_case_insensitive(gateway: Gateway) -> None:
    # RFC 9110 11.1: `bearer` is `Bearer`; it got 401.
    for value in (f"bearer {ADMIN_TOKEN}", f"BEARER  {ADMIN_TOKEN}"):
        headers = {"Authorization": value}
        assert (
            gateway.request("GET", "/admin/routes", headers=headers, port=gateway.admin_port)[0]
            == 200
        )
    for value in (f"Basic {ADMIN_TOKEN}", ADMIN_TOKEN, f"Bearer {ADMIN_TOKEN.upper()}"):
        headers = {"Authorization": value}
        assert (
            gateway.request("GET", "/admin/routes", headers=headers, port=gateway.admin_port)[0]
            == 401
        )


def test_admin_errors_are_problem_json(gateway: Gateway) -> None:
    # They were text/plain `Not Found` / `Method Not Allowed`.
    status, headers, body = gateway.admin("/nope", token=None)
    assert status == 404 and headers["content-type"] == "application/problem+json"
    assert json.loads(body)["detail"] == "the admin port has no /nope"
    status, headers, body = gateway.admin("/admin/reload")  # GET
    assert status == 405 and headers["content-type"] == "application/problem+json"
    assert headers["allow"] == "POST"
    assert json.loads(body)["type"].endswith("/method-not-allowed")
    assert "GET is not allowed on /admin/reload" in json.loads(body)["detail"]


def test_refused_admin_reload_says_why(
    start_gateway: GatewayFactory, upstream: Any, frontend: str
) -> None:
    gw = start_gateway(base_config(upstream.url, frontend, reload={"watch": False}))
    running = json.loads(gw.admin("/admin/reload", method="POST")[2])["digest"]
    changed = dict(gw.config)
    changed["routes"] = [{"name": "r", "match": {"prefix": "/", "bogus": 1}, "upstream": "nope"}]
    gw.write(changed)
    status, headers, body = gw.admin("/admin/reload", method="POST")
    assert status == 422 and headers["content-type"] == "application/problem+json"
    problem = json.loads(body)
    assert problem["type"].endswith("/reload-refused")
    assert problem["reloaded"] is False and problem["digest"] == running
    assert len(problem["errors"]) == 2
    for error in problem["errors"]:
        assert error.startswith(f"{gw.path}:") and error in problem["detail"]
    assert any("unknown key 'bogus'" in e for e in problem["errors"])
    assert any("'nope' is not in `upstreams`" in e for e in problem["errors"])


def test_admin_api_off_without_token(start_gateway: GatewayFactory) -> None:
    gw = start_gateway(env={"GATEWAY_ADMIN_TOKEN": ""})
    assert gw.admin("/admin/config")[0] == 404
    assert gw.admin("/healthz", token=None)[0] == 200


def test_nothing_administrative_on_the_proxy_port(gateway: Gateway) -> None:
    # Everything on the proxy port goes to the upstream (the catch-all route), never the admin.
    for path in ("/admin/config", "/metrics", "/readyz"):
        status, _, body = gateway.request(
            "GET", path, headers={"Authorization": "Bearer test-admin-token"}
        )
        assert status == 200 and json.loads(body)["target"] == path


def test_admin_config_masks_secrets(
    start_gateway: GatewayFactory, upstream: Any, frontend: str
) -> None:
    config = base_config(
        upstream.url, frontend, stores={"shared": "redis://:hunter2@127.0.0.1:1/0"}
    )
    gw = start_gateway(config)
    status, _, body = gw.admin("/admin/config")
    assert status == 200
    assert b"hunter2" not in body and b"***" in body


def test_access_log_line(gateway: Gateway) -> None:
    gateway.request(
        "POST",
        "/users/x?q=1",
        body=b"12345",
        headers={"Authorization": "Bearer sekret", "Cookie": "sid=sekret"},
    )
    assert wait_until(lambda: len(gateway.access_lines()) >= 1)
    line = gateway.access_lines()[-1]
    for key in (
        "time",
        "route",
        "method",
        "path",
        "status",
        "bytes_in",
        "bytes_out",
        "duration_ms",
        "upstream_ms",
        "client_ip",
        "trace_id",
    ):
        assert key in line, key
    assert line["method"] == "POST" and line["bytes_in"] == 5 and line["route"] == "everything-else"
    assert "sekret" not in gateway.stdout() + gateway.stderr()


def test_trace_id_taken_from_traceparent(gateway: Gateway) -> None:
    tid = "4bf92f3577b34da6a3ce929d0e0e4736"
    gateway.request("GET", "/users/1/x", headers={"traceparent": f"00-{tid}-00f067aa0ba902b7-01"})
    assert wait_until(lambda: any(line["trace_id"] == tid for line in gateway.access_lines()))


def test_reload_on_file_change_and_bad_file_keeps_config(gateway: Gateway) -> None:
    config = dict(gateway.config)
    config["routes"] = [{"name": "only-users", "match": {"path": "/users/{id}"}, "upstream": "app"}]
    gateway.write(config)
    assert wait_until(lambda: gateway.request("GET", "/other")[0] == 404, timeout=10)
    assert gateway.metric("gateway_config_reloads_total", result="success") == 1
    gateway.write("version: 1\nroutes: [ {broken\n")
    assert wait_until(lambda: gateway.metric("gateway_config_reloads_total", result="failure") >= 1)
    assert gateway.request("GET", "/users/1")[0] == 200
    assert gateway.request("GET", "/other")[0] == 404
    assert "reload" in gateway.stderr() and "keeping the running config" in gateway.stderr()
    assert gateway.admin("/readyz", token=None)[0] == 200


def test_reload_through_symlink_swap(
    start_gateway: GatewayFactory, upstream: Any, frontend: str, tmp_path: Any
) -> None:
    """Kubernetes updates a ConfigMap by swapping the symlink of the directory."""
    import os

    import yaml

    gw = start_gateway()
    data1 = gw.directory / "..data1"
    data1.mkdir()
    (data1 / "gateway.yaml").write_text(gw.path.read_text())
    link = gw.directory / "..data"
    os.symlink(data1.name, link)
    gw.path.unlink()
    os.symlink("..data/gateway.yaml", gw.path)
    time.sleep(0.5)
    assert gw.request("GET", "/other")[0] == 200
    config = yaml.safe_load((data1 / "gateway.yaml").read_text())
    config["routes"] = config["routes"][:1]
    data2 = gw.directory / "..data2"
    data2.mkdir()
    (data2 / "gateway.yaml").write_text(yaml.safe_dump(config))
    tmp_link = gw.directory / "..data_tmp"
    os.symlink(data2.name, tmp_link)
    os.replace(tmp_link, link)
    assert wait_until(lambda: gw.request("GET", "/other")[0] == 404, timeout=10)


def test_sighup_reloads(start_gateway: GatewayFactory, upstream: Any, frontend: str) -> None:
    config = base_config(upstream.url, frontend, reload={"watch": False})
    gw = start_gateway(config)
    changed = dict(gw.config)
    changed["routes"] = changed["routes"][:1]
    gw.write(changed)
    time.sleep(0.3)
    assert gw.request("GET", "/other")[0] == 200  # not watched: unchanged until SIGHUP
    gw.send_signal(signal.SIGHUP)
    assert wait_until(lambda: gw.request("GET", "/other")[0] == 404)


def test_sigterm_drains_in_flight_requests(start_gateway: GatewayFactory) -> None:
    gw = start_gateway(shutdown={"pre_stop_delay": "1s", "drain_timeout": "10s"})
    results: list[int] = []

    def slow() -> None:
        results.append(gw.request("GET", "/slow?delay=2", timeout=10)[0])

    thread = threading.Thread(target=slow)
    thread.start()
    time.sleep(0.3)
    gw.send_signal(signal.SIGTERM)
    assert wait_until(lambda: gw.admin("/readyz", token=None)[0] == 503, timeout=2)
    # still serving during the pre-stop delay
    assert gw.request("GET", "/echo")[0] == 200
    thread.join(10)
    assert results == [200]
    assert gw.proc.wait(15) == 0


def test_sigterm_under_load_loses_nothing(start_gateway: GatewayFactory) -> None:
    gw = start_gateway(shutdown={"pre_stop_delay": "500ms", "drain_timeout": "10s"})
    stop = threading.Event()
    outcomes: list[Any] = []

    def client() -> None:
        import http.client

        while not stop.is_set():
            conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=5)
            try:
                conn.request("GET", "/slow?delay=0.05")
                resp = conn.getresponse()
                resp.read()
                outcomes.append(resp.status)
            except ConnectionRefusedError:
                return  # the listener has closed: a load balancer would have moved on
            except Exception as exc:
                outcomes.append(repr(exc))
            finally:
                conn.close()
            if gw.admin("/readyz", token=None)[0] != 200 if gw.proc.poll() is None else True:
                return  # readiness turned false: a load balancer stops sending here

    threads = [threading.Thread(target=client) for _ in range(8)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    gw.send_signal(signal.SIGTERM)
    for t in threads:
        t.join(15)
    stop.set()
    assert gw.proc.wait(15) == 0
    assert outcomes and all(o == 200 for o in outcomes), [o for o in outcomes if o != 200][:5]
