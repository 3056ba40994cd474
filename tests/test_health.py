from __future__ import annotations

from collections.abc import Callable

import httpx

from exporter.config import Settings
from tests.conftest import Database
from tests.servers import ServerThread


def test_healthz_and_readyz_answer_when_the_database_is_reachable(
    db: Database, serve: Callable[[Settings], ServerThread]
) -> None:
    server = serve(db.settings())
    assert httpx.get(f"{server.url}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{server.url}/readyz")
    assert ready.status_code == 200
    loops = ["job-worker-0", "job-worker-1", "job-janitor", "download-watch", "database-probe", "event-loop-lag",
             "export-log-flusher"]
    loops += ["job-listener"] if db.dialect == "postgresql" else []
    assert ready.json() == {"status": "ok", "databases": {"service": "ok"}, "loops": dict.fromkeys(loops, "up")}


def test_readyz_is_503_when_a_source_database_is_unreachable(
    db: Database, serve: Callable[[Settings], ServerThread]
) -> None:
    server = serve(db.settings(sources={"replica": {"url": "postgresql+asyncpg://postgres@127.0.0.1:1/none"}}))
    assert httpx.get(f"{server.url}/healthz").status_code == 200
    ready = httpx.get(f"{server.url}/readyz")
    assert ready.status_code == 503
    assert ready.json()["databases"] == {"service": "ok", "replica": "unreachable"}


def test_unknown_paths_get_the_json_error_shape(db: Database, serve: Callable[[Settings], ServerThread]) -> None:
    server = serve(db.settings())
    response = httpx.get(f"{server.url}/nowhere")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"
