"""The server's log as an operator reads it: `exporter serve` with EXPORTER_LOG_FORMAT=json, on PostgreSQL."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.conftest import Database
from tests.helpers import bearer, create_key, wait_for
from tests.jobs.test_jobs import make_slow
from tests.servers import free_port

EXPORTER = Path(sys.executable).with_name("exporter")


def test_json_logs_carry_the_request_id_never_a_token_and_a_failure_once(pg: Database, tmp_path: Path) -> None:
    pg.execute("DELETE FROM api_keys", "DELETE FROM export_log")
    pg.seed_demo(100)
    make_slow(pg)
    token = create_key(pg, "analyst", "dataset:*")
    config = tmp_path / "exporter.toml"
    config.write_text('[datasets.orders]\ntable = "orders"\nkey = "id"\nfilterable = ["status"]\n'
                      '[datasets.slow]\ntable = "slow"\nkey = "id"\n')
    port = free_port()
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("EXPORTER_")},
           "EXPORTER_DATABASE_URL": pg.url, "EXPORTER_CONFIG": str(config), "EXPORTER_LOG_FORMAT": "json",
           "EXPORTER_JOBS_DIR": str(tmp_path / "jobs"), "EXPORTER_BATCH_ROWS": "100"}
    server = subprocess.Popen([EXPORTER, "serve", "--port", str(port)], env=env, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _up(url), 30)
        kept = httpx.get(f"{url}/exports/orders.csv", params={"status": "paid"},
                         headers={**bearer(token), "X-Request-ID": "nightly-2026.12.01_a"})
        assert kept.headers["x-request-id"] == "nightly-2026.12.01_a"
        replaced = httpx.get(f"{url}/healthz", headers={"X-Request-ID": "no spaces allowed"})
        assert replaced.headers["x-request-id"] != "no spaces allowed" and len(replaced.headers["x-request-id"]) <= 64
        assert httpx.get(f"{url}/datasets", headers={"Authorization": f"Bearer {token}x"}).status_code == 401
        assert httpx.get(f"{url}/datasets?access_token={token}").status_code == 400
        output = tmp_path / "slow.csv"
        curl = subprocess.Popen(["curl", "-sS", "-o", str(output), "-H", f"Authorization: Bearer {token}",
                                 "-H", "X-Request-ID: broken-one", f"{url}/exports/slow.csv"])
        wait_for(lambda: output.exists() and output.stat().st_size > 0)
        pg.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'exporter'"
                   " AND datname = current_database() AND pid <> pg_backend_pid()")
        assert curl.wait(timeout=60) == 18
        time.sleep(0.5)  # let the last lines be written
    finally:
        server.terminate()
        _, stderr = server.communicate(timeout=30)

    lines = [json.loads(line) for line in stderr.splitlines()]  # every line is one JSON object
    assert token not in stderr and token[4:30] not in stderr
    assert any(line["logger"].startswith("uvicorn") for line in lines)
    access = [line for line in lines if line["logger"] == "exporter.access"]
    export = next(line for line in access if line["request_id"] == "nightly-2026.12.01_a")
    assert (export["method"], export["path"], export["query"], export["status"], export["key"],
            export["outcome"]) == ("GET", "/exports/orders.csv", ["status"], 200, "analyst", "completed")
    assert export["bytes"] > 0 and export["duration_seconds"] >= 0
    broken = [line for line in lines if line.get("request_id") == "broken-one"]
    failures = [line for line in broken if line["level"] == "error"]
    assert len(failures) == 1, failures
    assert "failed after" in failures[0]["message"] and "Unavailable" in failures[0]["message"]  # with its cause
    assert "Traceback" not in stderr and "Exception in ASGI application" not in stderr
    assert next(line for line in broken if line["logger"] == "exporter.access")["outcome"] == "failed"
    rows = pg.execute("SELECT request_id, outcome FROM export_log WHERE request_id IS NOT NULL ORDER BY id")
    assert {(r.request_id, r.outcome) for r in rows} >= {("nightly-2026.12.01_a", "completed"),
                                                          ("broken-one", "failed")}


def _up(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz").status_code == 200
    except httpx.TransportError:
        return False


def test_serve_with_two_workers_shares_the_port_and_metrics_count_both(pg: Database, tmp_path: Path) -> None:
    pg.seed_demo(100)
    port = free_port()
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("EXPORTER_")},
           "EXPORTER_DATABASE_URL": pg.url, "EXPORTER_AUTH": "off", "EXPORTER_LOG_FORMAT": "json",
           "EXPORTER_JOBS_DIR": str(tmp_path / "jobs")}
    server = subprocess.Popen([EXPORTER, "serve", "--port", str(port), "--workers", "2"], env=env,
                              stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _up(url), 60)
        before = _downloads(url)
        for _ in range(40):  # a new connection each: the kernel hands them to either process
            assert httpx.get(f"{url}/exports/orders.csv", params={"limit": "3"},
                             headers={"Connection": "close"}).status_code == 200
        wait_for(lambda: _downloads(url) - before == 40)
    finally:
        server.terminate()
        _, stderr = server.communicate(timeout=60)
    assert server.returncode == 0
    lines = [json.loads(line) for line in stderr.splitlines()]
    served_by = {line["pid"] for line in lines if line["logger"] == "exporter.access" and
                 line["path"] == "/exports/orders.csv"}
    assert len(served_by) == 2


def _downloads(url: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{url}/metrics", headers={"Connection": "close"}).text
    return sum(sample.value for family in text_string_to_metric_families(text) for sample in family.samples
               if sample.name == "exporter_downloads_total" and sample.labels["dataset_or_root"] == "orders")
