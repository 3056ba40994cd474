"""`exporter serve` of this checkout as a subprocess, for the fault suite's tests of the whole process."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from tests.conftest import Database
from tests.helpers import wait_for
from tests.servers import free_port

REPO = Path(__file__).resolve().parents[2]


def up(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz").status_code == 200
    except httpx.TransportError:
        return False


@contextmanager
def exporter_serve(db: Database, tmp_path: Path, *args: str,
                   **settings: str) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """`python -m exporter.cli serve` (this checkout, auth off) on `db` with EXPORTER_ `settings`, once /healthz
    answers; stopped on exit (SIGTERM, then SIGKILL) if it still runs. Its log is `tmp_path / "serve.log"`: a
    file, since a pipe nobody reads would fill and stall the server."""
    port = free_port()
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("EXPORTER_")}, "PYTHONPATH": str(REPO),
           "EXPORTER_DATABASE_URL": db.url, "EXPORTER_AUTH": "off", "EXPORTER_JOBS_DIR": str(tmp_path / "jobs"),
           "EXPORTER_LOG_FORMAT": "text", **{f"EXPORTER_{name.upper()}": value for name, value in settings.items()}}
    log = tmp_path / "serve.log"
    with log.open("w") as output:
        server = subprocess.Popen([sys.executable, "-m", "exporter.cli", "serve", "--port", str(port), *args],
                                  env=env, stdout=output, stderr=output, text=True, cwd=tmp_path)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: up(url) or server.poll() is not None, 60)
        assert server.poll() is None, log.read_text()
        yield server, url
    finally:
        if server.poll() is None:
            server.terminate()  # not kill: the parent of --workers N passes it on to its worker processes
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
        server.wait(timeout=30)
