"""SIGTERM to `exporter serve` during a 1,000,000-row export: the drain, as curl and a load balancer see it."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import Database
from tests.helpers import wait_for
from tests.servers import free_port

EXPORTER = Path(sys.executable).with_name("exporter")
ROWS = 1_000_000


@pytest.fixture(scope="module")
def million(postgres_url: str) -> Database:
    db = Database("postgresql", postgres_url)
    db.seed_demo(ROWS)
    return db


def start(db: Database, tmp_path: Path, drain_seconds: float) -> tuple[subprocess.Popen[str], str]:
    port = free_port()
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("EXPORTER_")}, "EXPORTER_DATABASE_URL": db.url,
           "EXPORTER_AUTH": "off", "EXPORTER_JOBS_DIR": str(tmp_path / "jobs"),
           "EXPORTER_DRAIN_SECONDS": str(drain_seconds), "EXPORTER_LOG_FORMAT": "text"}
    server = subprocess.Popen([EXPORTER, "serve", "--port", str(port)], env=env, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    wait_for(lambda: _up(url), 30)
    return server, url


@pytest.fixture
def stopped() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=30)


def test_a_long_drain_lets_the_export_finish_whole_and_refuses_new_work(
    million: Database, tmp_path: Path, stopped: list[subprocess.Popen[str]]
) -> None:
    server, url = start(million, tmp_path, drain_seconds=120)
    stopped.append(server)
    whole = hashlib.sha256(httpx.get(f"{url}/exports/orders.csv", timeout=120).content).hexdigest()
    output = tmp_path / "orders.csv"
    curl = subprocess.Popen(["curl", "-sS", "--limit-rate", "20M", "-o", str(output), f"{url}/exports/orders.csv"],
                            stderr=subprocess.PIPE)
    wait_for(lambda: output.exists() and output.stat().st_size > 1_000_000)
    server.send_signal(signal.SIGTERM)

    ready = wait_for(lambda: (r := httpx.get(f"{url}/readyz")).status_code == 503 and r)
    assert ready.json()["status"] == "draining"
    refused = httpx.get(f"{url}/exports/orders.csv", params={"limit": "1"})
    assert (refused.status_code, refused.json()["error"]["code"]) == (503, "shutting_down")
    assert int(refused.headers["retry-after"]) > 0
    assert httpx.get(f"{url}/healthz").status_code == 200

    _, stderr = curl.communicate(timeout=120)
    assert curl.returncode == 0, stderr
    assert hashlib.sha256(output.read_bytes()).hexdigest() == whole
    assert server.wait(timeout=60) == 0


def test_a_short_drain_stops_the_export_as_an_incomplete_transfer(
    million: Database, tmp_path: Path, stopped: list[subprocess.Popen[str]]
) -> None:
    server, url = start(million, tmp_path, drain_seconds=1)
    stopped.append(server)
    output = tmp_path / "orders.csv"
    curl = subprocess.Popen(["curl", "-sS", "--limit-rate", "5M", "-o", str(output), f"{url}/exports/orders.csv"],
                            stderr=subprocess.PIPE)
    wait_for(lambda: output.exists() and output.stat().st_size > 0)
    server.send_signal(signal.SIGTERM)
    _, stderr = curl.communicate(timeout=60)
    assert curl.returncode == 18, stderr  # the body never ended: never a clean end of a cut file
    assert server.wait(timeout=60) == 0
    _, log = server.communicate(timeout=30)
    assert "stopping 1 downloads" in log


def _up(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz").status_code == 200
    except httpx.TransportError:
        return False
