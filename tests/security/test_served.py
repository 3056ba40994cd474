"""What `exporter serve` itself decides, attacked through the real console script: whose X-Forwarded-* headers count
(the audit log's client address, the cookie's Secure flag), and log lines a request's path cannot split (issue 18)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.conftest import Database
from tests.helpers import bearer, create_key, wait_for
from tests.servers import free_port

EXPORTER = Path(sys.executable).with_name("exporter")
SPOOFED = {"X-Forwarded-For": "203.0.113.9", "X-Forwarded-Proto": "https"}
TEXT_LINE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ ")  # how every text record starts


class Served:
    url: str
    stderr: str = ""


@contextmanager
def served(pg: Database, tmp_path: Path, **environ: str) -> Iterator[Served]:
    """`exporter serve` on a free loopback port with auth on; its stderr is in .stderr once it has stopped."""
    port = free_port()
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("EXPORTER_")},
           "EXPORTER_DATABASE_URL": pg.url, "EXPORTER_JOBS_DIR": str(tmp_path / "jobs"), **environ}
    process = subprocess.Popen([EXPORTER, "serve", "--port", str(port)], env=env, stderr=subprocess.PIPE, text=True)
    server = Served()
    server.url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _up(server.url), 30)
        yield server
    finally:
        process.terminate()
        server.stderr = process.communicate(timeout=30)[1]


def _up(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz").status_code == 200
    except httpx.TransportError:
        return False


def _export_with_spoofed_headers(pg: Database, url: str, token: str) -> tuple[str, bool]:
    """The client address the audit row of a download records, and whether sign-in's cookie came back Secure."""
    pg.execute("DELETE FROM export_log")
    assert httpx.get(f"{url}/exports/orders.csv?limit=1", headers={**bearer(token), **SPOOFED}).status_code == 200
    rows = wait_for(lambda: pg.execute("SELECT client_address FROM export_log WHERE kind = 'export'"))
    signed_in = httpx.post(f"{url}/sign-in", data={"token": token, "next": "/"}, headers=SPOOFED)
    return rows[0].client_address, "secure" in signed_in.headers["set-cookie"].lower()


@pytest.fixture
def token(pg: Database) -> str:
    pg.execute("DELETE FROM api_keys", "DELETE FROM export_log")
    pg.seed_demo(100)
    return create_key(pg, "analyst", "dataset:*")


def test_forwarded_headers_from_loopback_are_ignored_by_default(pg: Database, tmp_path: Path, token: str) -> None:
    with served(pg, tmp_path) as server:
        assert _export_with_spoofed_headers(pg, server.url, token) == ("127.0.0.1", False)


def test_forwarded_headers_count_from_a_trusted_proxy(pg: Database, tmp_path: Path, token: str) -> None:
    with served(pg, tmp_path, EXPORTER_TRUSTED_PROXIES="10.0.0.0/8, 127.0.0.1") as server:
        assert _export_with_spoofed_headers(pg, server.url, token) == ("203.0.113.9", True)


def test_a_line_break_in_the_path_cannot_forge_a_text_log_line(pg: Database, tmp_path: Path, token: str) -> None:
    forged = "2026-01-01 00:00:00,000 INFO exporter.access [x]: GET /admin 200"
    with served(pg, tmp_path, EXPORTER_LOG_FORMAT="text") as server:
        for path in ("/nope%0a", "/exports/orders.csv%0d%0a", "/healthz%1b[2J%0b%0c%e2%80%a8"):
            httpx.get(f"{server.url}{path}{forged.replace(' ', '%20')}", headers=bearer(token))
    lines = server.stderr.splitlines()
    assert lines and all(TEXT_LINE.match(line) for line in lines), [ln for ln in lines if not TEXT_LINE.match(ln)]
    assert any(f"/nope\\n{forged}" in line for line in lines)  # escaped, and still readable
    assert any(f"/exports/orders.csv\\r\\n{forged}" in line for line in lines)
    assert "\x1b" not in server.stderr and "\u2028" not in server.stderr


def test_a_line_break_in_the_path_stays_inside_its_json_log_line(pg: Database, tmp_path: Path, token: str) -> None:
    with served(pg, tmp_path, EXPORTER_LOG_FORMAT="json") as server:
        httpx.get(f"{server.url}/nope%0a%0d%7B%22level%22%3A%22error%22%7D", headers=bearer(token))
    access = [json.loads(line) for line in server.stderr.splitlines()]  # each line is one whole JSON object
    assert any(line.get("path") == '/nope\n\r{"level":"error"}' for line in access)
