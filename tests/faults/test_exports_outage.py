"""PostgreSQL goes away during streamed exports of every format: the client sees an incomplete transfer, every
download gets its export log row once the database is back (the backlog), and the process serves the next
export. A download that ends during the outage is logged too, and the backlog shows in /metrics."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from exporter.config import Settings
from tests.conftest import Database
from tests.faults.cluster import Cluster
from tests.helpers import wait_for
from tests.servers import ChunkedReader, ServerThread

Serve = Callable[[Settings], ServerThread]
FORMATS = ["csv", "ndjson", "parquet", "arrow", "xlsx"]
# Far more than the socket buffers between the database and a paused client hold, so the export still reads
# from the database when it goes away.
ROWS = 300_000
DOWN_SECONDS = 1.5


def ends_cleanly(reader: ChunkedReader) -> bool:
    """Read the rest of a chunked body: True at its terminating zero-length chunk, False when the connection ends
    or is reset before it. A hang fails the test (the socket's timeout), never counts as incomplete."""
    try:
        while reader.next_chunk() is not None:
            pass
    except (ValueError, ConnectionError):  # ValueError: the connection closed where a chunk's size should be
        return False
    return True


def log_rows(db: Database, **where: str) -> list[dict[str, Any]]:
    condition = " AND ".join(f"{name} = :{name}" for name in where)
    rows = db.execute(f"SELECT * FROM export_log WHERE {condition} ORDER BY id", **where)
    return [dict(row._mapping) for row in rows]


def metric(server: ServerThread, name: str) -> float:
    text = httpx.get(f"{server.url}/metrics").text
    found = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    assert found, f"{name} is not in /metrics"
    return float(found.group(1))


@pytest.mark.parametrize("mode", ["fast", "immediate"])
@pytest.mark.parametrize("fmt", FORMATS)
def test_an_export_cut_by_a_database_outage_is_incomplete_and_logged_failed_once_the_database_is_back(
        cluster: Cluster, faulty: Database, serve: Serve, fmt: str, mode: str) -> None:
    faulty.seed_demo(ROWS)
    server = serve(faulty.settings(job_workers=0, parquet_row_group_rows=5000))

    with ChunkedReader(server.url, f"/exports/orders.{fmt}") as reader:
        assert reader.status_line.startswith(b"HTTP/1.1 200"), reader.status_line
        assert reader.next_chunk()  # streaming; the client pauses while the database goes away
        with cluster.down(DOWN_SECONDS, mode):
            assert not ends_cleanly(reader)

    rows = wait_for(lambda: log_rows(faulty, kind="export", dataset="orders"), 60)
    assert [(r["format"], r["outcome"]) for r in rows] == [(fmt, "failed")]
    assert rows[0]["bytes"] > 0 and rows[0]["error"]

    after = httpx.get(f"{server.url}/exports/orders.{fmt}", params={"limit": "10"}, timeout=60)
    assert after.status_code == 200 and after.content
    outcomes = wait_for(lambda: len(found := log_rows(faulty, kind="export", dataset="orders")) == 2 and found)
    assert [r["outcome"] for r in outcomes] == ["failed", "completed"]  # each download once


def test_downloads_that_end_while_the_database_is_down_get_their_rows_when_it_returns(
        cluster: Cluster, faulty: Database, serve: Serve, tmp_path: Path) -> None:
    # With the service database down, what still runs is what needs no service database: a file, and an export
    # of a dataset on another source.
    root = tmp_path / "files"
    root.mkdir()
    (root / "a.txt").write_bytes(b"hello\n" * 1000)
    lite = Database("sqlite", f"sqlite+aiosqlite:///{tmp_path / 'lite.db'}")
    lite.seed_demo(50)
    server = serve(faulty.settings(
        job_workers=0, files={"roots": {"r": str(root)}}, sources={"lite": {"url": lite.url}},
        datasets={"lite_orders": {"source": "lite", "table": "orders", "key": "id"}}))
    waiting = metric(server, "exporter_export_log_backlog")

    with cluster.down(DOWN_SECONDS, "fast"):
        file = httpx.get(f"{server.url}/files/r/a.txt")
        export = httpx.get(f"{server.url}/exports/lite_orders.csv")
        assert (file.status_code, len(file.content)) == (200, 6000)
        assert export.status_code == 200 and export.text.startswith("id,")
        assert metric(server, "exporter_export_log_backlog") == waiting + 2  # /metrics answers meanwhile

    files = wait_for(lambda: log_rows(faulty, kind="file"), 30)
    exports = wait_for(lambda: log_rows(faulty, kind="export"), 30)
    assert [(r["resource"], r["outcome"], r["bytes"]) for r in files] == [("a.txt", "completed", 6000)]
    assert [(r["dataset"], r["outcome"], r["rows"]) for r in exports] == [("lite_orders", "completed", 50)]
    assert files[0]["id"] < exports[0]["id"]  # in the order they ended
    wait_for(lambda: metric(server, "exporter_export_log_backlog") == waiting)


def test_rows_past_the_backlogs_bound_are_dropped_and_counted(cluster: Cluster, faulty: Database, serve: Serve,
                                                              tmp_path: Path) -> None:
    root = tmp_path / "files"
    root.mkdir()
    (root / "a.txt").write_bytes(b"a")
    server = serve(faulty.settings(job_workers=0, files={"roots": {"r": str(root)}}, export_log_backlog_rows=2))
    dropped = metric(server, "exporter_export_log_backlog_dropped_total")

    with cluster.down(DOWN_SECONDS, "immediate"):
        for _ in range(3):
            assert httpx.get(f"{server.url}/files/r/a.txt").status_code == 200
        assert metric(server, "exporter_export_log_backlog_dropped_total") == dropped + 1

    rows = wait_for(lambda: len(found := log_rows(faulty, kind="file")) >= 2 and found, 30)
    assert [r["outcome"] for r in rows] == ["completed", "completed"]
