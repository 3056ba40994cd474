"""Failures as production meets them: a backend killed mid-export, clients that leave, pool health."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from exporter.config import Settings
from tests.conftest import Database
from tests.helpers import export_log, wait_for
from tests.servers import ChunkedReader, ServerThread

Serve = Callable[[Settings], ServerThread]

SLOW = {"slow": {"table": "slow", "key": "id"}}
BUSY_STATES = "('active', 'idle in transaction', 'idle in transaction (aborted)')"


@pytest.fixture
def pg(pg: Database) -> Database:
    """PostgreSQL with the view `slow`: rows trickle out in key order (every 1000th waits 20 ms) over an
    index, so an export of it streams and is still running when the test acts."""
    pg.execute(
        "DROP VIEW IF EXISTS slow", "DROP TABLE IF EXISTS slow_rows",
        "CREATE TABLE slow_rows AS SELECT g::bigint AS id, md5(g::text) AS digest FROM generate_series(1, 200000) g",
        "ALTER TABLE slow_rows ADD PRIMARY KEY (id)",
        "CREATE VIEW slow AS SELECT * FROM slow_rows WHERE id % 1000 <> 0 OR pg_sleep(0.02)::text = ''",
        "DELETE FROM export_log",
    )
    return pg


@pytest.fixture(params=["copy", "generic"])
def path(request: pytest.FixtureRequest) -> str:
    """Each failure test runs on both export paths: PostgreSQL's COPY and cursor + serializer."""
    return str(request.param)


def busy_backends(pg: Database) -> list[int]:
    """Our backends that are running a query or holding a transaction open."""
    rows = pg.execute(
        f"SELECT pid FROM pg_stat_activity WHERE application_name = 'exporter' AND datname = current_database()"
        f" AND state IN {BUSY_STATES} AND pid <> pg_backend_pid()"
    )
    return [row.pid for row in rows]


def pool_idle(server: ServerThread) -> bool:
    engine: AsyncEngine = server.app.state.services.engine
    return engine.pool.checkedout() == 0  # type: ignore[attr-defined]


def terminate_exports(pg: Database) -> None:
    pg.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'exporter'"
               " AND datname = current_database() AND pid <> pg_backend_pid()")


@pytest.mark.parametrize(("filename", "starts_with"), [("slow.csv", b"id,digest\n"), ("slow.ndjson", b'{"id":1,'),
                                                       ("slow.csv.gz", b"\x1f\x8b")])
def test_terminated_backend_mid_export_makes_curl_exit_with_an_incomplete_transfer(
    pg: Database, serve: Serve, tmp_path: Path, filename: str, starts_with: bytes, path: str
) -> None:
    server = serve(pg.settings(batch_rows=100, datasets=SLOW, copy_fast_path=path == "copy"))
    output = tmp_path / filename
    curl = subprocess.Popen(["curl", "-sS", "-o", str(output), f"{server.url}/exports/{filename}"],
                            stderr=subprocess.PIPE)
    wait_for(lambda: output.exists() and output.stat().st_size > 0 and busy_backends(pg))
    terminate_exports(pg)
    _, stderr = curl.communicate(timeout=60)
    assert curl.returncode == 18, stderr  # CURLE_PARTIAL_FILE: the chunked body never ended
    assert output.read_bytes().startswith(starts_with)
    entry = wait_for(lambda: export_log(pg, "slow"))[0]
    assert (entry["outcome"], entry["path"]) == ("failed", path)
    assert entry["error"]
    wait_for(lambda: pool_idle(server))
    after = httpx.get(f"{server.url}/exports/slow.csv", params={"limit": "1"})
    assert after.text == "id,digest\n1,c4ca4238a0b923820dcc509a6f75849b\n"


@pytest.mark.parametrize(("filename", "starts_with"), [("slow.parquet", b"PAR1"), ("slow.arrow", b"\xff\xff\xff\xff"),
                                                       ("slow.xlsx", b"PK\x03\x04")])
def test_terminated_backend_mid_export_of_a_typed_format_makes_curl_exit_with_an_incomplete_transfer(
    pg: Database, serve: Serve, tmp_path: Path, filename: str, starts_with: bytes
) -> None:
    server = serve(pg.settings(batch_rows=100, parquet_row_group_rows=1000, datasets=SLOW))
    output = tmp_path / filename
    curl = subprocess.Popen(["curl", "-sS", "-o", str(output), f"{server.url}/exports/{filename}"],
                            stderr=subprocess.PIPE)
    wait_for(lambda: output.exists() and output.stat().st_size > 1000 and busy_backends(pg))
    terminate_exports(pg)
    _, stderr = curl.communicate(timeout=60)
    assert curl.returncode == 18, stderr  # CURLE_PARTIAL_FILE: the chunked body never ended
    assert output.read_bytes().startswith(starts_with)
    entry = wait_for(lambda: export_log(pg, "slow"))[0]
    fmt = filename.split(".", 1)[1]
    assert (entry["outcome"], entry["path"], entry["format"]) == ("failed", "generic" if fmt == "xlsx" else "adbc", fmt)
    wait_for(lambda: pool_idle(server) and not busy_backends(pg))


def test_client_disconnect_cancels_the_query_and_returns_the_connection(
    pg: Database, serve: Serve, path: str
) -> None:
    server = serve(pg.settings(batch_rows=100, datasets=SLOW, copy_fast_path=path == "copy"))
    with ChunkedReader(server.url, "/exports/slow.ndjson") as reader:
        assert reader.next_chunk()
        assert busy_backends(pg)
    wait_for(lambda: not busy_backends(pg) and pool_idle(server), seconds=5)
    entry = wait_for(lambda: export_log(pg, "slow"))[0]
    assert (entry["outcome"], entry["path"]) == ("aborted", path)


def test_a_hundred_aborted_downloads_leave_no_query_running_and_no_pool_slot_taken(
    db: Database, serve: Serve, path: str
) -> None:
    db.seed_demo(50_000)
    server = serve(db.settings(batch_rows=200, copy_fast_path=path == "copy"))
    for i in range(100):
        path = "/exports/orders.csv" if i % 2 else "/exports/orders.ndjson.gz"
        with ChunkedReader(server.url, path) as reader:
            assert reader.next_chunk()
    wait_for(lambda: pool_idle(server), seconds=10)
    if db.dialect == "postgresql":
        wait_for(lambda: not busy_backends(db), seconds=10)
    # The service still serves complete exports afterwards.
    assert httpx.get(f"{server.url}/exports/orders.csv", params={"limit": "3"}).text.count("\n") == 4


def test_httpx_sees_an_incomplete_body_when_the_backend_dies(pg: Database, serve: Serve, path: str) -> None:
    server = serve(pg.settings(batch_rows=100, datasets=SLOW, copy_fast_path=path == "copy"))
    with httpx.stream("GET", f"{server.url}/exports/slow.ndjson") as response:
        chunks = response.iter_raw()
        next(chunks)
        terminate_exports(pg)
        started = time.monotonic()
        try:
            for _ in chunks:
                pass
        except httpx.RemoteProtocolError:
            pass
        else:
            raise AssertionError("the body ended cleanly although the export failed")
        assert time.monotonic() - started < 60


def test_client_leaving_while_the_first_rows_are_computed_cancels_the_query(
    pg: Database, serve: Serve, path: str
) -> None:
    # Ordering this view by a non-indexed column makes PostgreSQL run the whole scan (about 40 s of
    # pg_sleep) before the first row; the client gives up long before that.
    pg.execute("CREATE OR REPLACE VIEW slow AS SELECT * FROM slow_rows"
               " WHERE id % 1000 <> 0 OR pg_sleep(0.2)::text = ''")
    server = serve(pg.settings(datasets=SLOW, copy_fast_path=path == "copy"))
    with ChunkedReader.connect(server.url, "/exports/slow.csv?order=digest"):
        wait_for(lambda: busy_backends(pg))
    wait_for(lambda: not busy_backends(pg) and pool_idle(server), seconds=5)
    entry = wait_for(lambda: export_log(pg, "slow"))[0]
    assert entry["outcome"] == "aborted"
    assert entry["rows"] == 0


@pytest.mark.parametrize("filename", ["slow.parquet", "slow.arrow"])
def test_client_leaving_an_adbc_export_cancels_its_query_and_closes_its_connection(
    pg: Database, serve: Serve, filename: str
) -> None:
    # As above: about 40 s of pg_sleep before the first row, in ADBC's own connection and thread.
    pg.execute("CREATE OR REPLACE VIEW slow AS SELECT * FROM slow_rows"
               " WHERE id % 1000 <> 0 OR pg_sleep(0.2)::text = ''")
    server = serve(pg.settings(datasets=SLOW))
    with ChunkedReader.connect(server.url, f"/exports/{filename}?order=digest"):
        wait_for(lambda: busy_backends(pg))
    wait_for(lambda: not busy_backends(pg), seconds=5)
    # The export log's own INSERT may be running for a moment, under the same application name.
    wait_for(lambda: not pg.execute("SELECT pid FROM pg_stat_activity WHERE application_name = 'exporter' AND"
                                    " datname = current_database() AND pid <> pg_backend_pid() AND state <> 'idle'"),
             seconds=5)
    entry = wait_for(lambda: export_log(pg, "slow"))[0]
    assert (entry["outcome"], entry["path"], entry["rows"]) == ("aborted", "adbc", 0)
