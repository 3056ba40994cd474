"""Limits over a real server: export slots (503 busy at once, jobs wait), stalled clients (export, file, relay)
cut off after the send timeout, and the statement timeout on the wait for an export's first chunk."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from exporter.config import Settings
from tests.conftest import Database
from tests.export.test_export_failures import SLOW, busy_backends, pg, pool_idle  # noqa: F401 (the `pg` fixture)
from tests.helpers import bearer, create_key, export_log, wait_for
from tests.jobs.test_jobs import settings as job_settings
from tests.jobs.test_jobs import submit, wait_state
from tests.servers import ChunkedReader, ServerThread

Serve = Callable[[Settings], ServerThread]

CLIENT_TIMEOUT = 5.0  # far below the pool's 30 s timeout, so an export that waits for the pool fails the test
LAST_CHUNK = b"0\r\n\r\n"
# A second name for the demo table, reflected only when a test asks for it.
ORDERS_AGAIN = {"orders_again": {"table": "orders", "key": "id"}}


@pytest.fixture(params=["copy", "generic"])
def path(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def stalled(server: ServerThread, path: str) -> ChunkedReader:
    """A client that reads the response's head (and nothing more) through a tiny receive buffer."""
    return ChunkedReader(server.url, path, receive_buffer_bytes=4096)


def error_code(response: httpx.Response) -> str:
    code: str = response.json()["error"]["code"]
    return code


def test_saturated_export_slots_answer_503_busy_at_once_while_health_files_and_datasets_answer(
    db: Database, serve: Serve, tmp_path: Path
) -> None:
    db.seed_demo(50_000)
    db.execute("DELETE FROM export_log")
    (tmp_path / "report.txt").write_bytes(b"still served\n")
    # One reserved connection: /datasets and the export log must make do with it while both slots are taken.
    server = serve(db.settings(batch_rows=100, export_slots=2, reserved_slots=1, datasets=ORDERS_AGAIN,
                               files={"roots": {"reports": str(tmp_path)}}))
    with stalled(server, "/exports/orders.ndjson") as first, stalled(server, "/exports/orders.csv") as second:
        assert first.next_chunk() and second.next_chunk()
        with httpx.Client(base_url=server.url, timeout=CLIENT_TIMEOUT) as client:
            busy = client.get("/exports/orders.csv", params={"limit": "1"})
            assert busy.status_code == 503
            assert error_code(busy) == "busy"
            assert busy.headers["retry-after"] == "1"
            assert client.get("/healthz").status_code == 200
            assert client.get("/files/reports/report.txt").content == b"still served\n"
            assert client.get("/datasets/orders_again").json()["key"] == "id"
            assert {d["name"] for d in client.get("/datasets").json()["datasets"]} >= {"orders", "orders_again"}
            assert client.head("/exports/orders.csv").status_code == 200  # HEAD runs no query
    wait_for(lambda: pool_idle(server))
    after = httpx.get(f"{server.url}/exports/orders.csv", params={"limit": "1"}, timeout=CLIENT_TIMEOUT)
    assert after.status_code == 200
    assert after.text.count("\n") == 2
    # A refusal that sheds load is queued, not awaited: its row is written moments after the answer.
    limited = wait_for(lambda: [e for e in export_log(db, "orders") if e["outcome"] == "limited"])
    assert [(e["rows"], e["bytes"]) for e in limited] == [(0, 0)]
    assert limited[0]["error"].startswith("Busy: ")


def test_a_job_waits_for_a_free_export_slot_instead_of_failing(db: Database, serve: Serve, tmp_path: Path) -> None:
    db.seed_demo(50_000)
    server = serve(job_settings(db, tmp_path, batch_rows=100, export_slots=1))
    with stalled(server, "/exports/orders.ndjson") as holder:
        assert holder.next_chunk()
        submitted = submit(server, params={"limit": "10"})
        assert submitted.status_code == 202
        job_id = submitted.json()["id"]
        wait_state(server, job_id, "running", seconds=10)
        busy = httpx.get(f"{server.url}/exports/orders.csv", timeout=CLIENT_TIMEOUT)
        assert error_code(busy) == "busy"
        assert wait_state(server, job_id, "running", "failed")["state"] == "running"
    done = wait_state(server, job_id, "succeeded", "failed", seconds=30)
    assert (done["state"], done["result"]["rows"]) == ("succeeded", 10)


def test_a_client_that_stops_reading_is_cut_off_and_its_query_ends(db: Database, serve: Serve, path: str) -> None:
    db.seed_demo(50_000)
    db.execute("DELETE FROM export_log")
    server = serve(db.settings(batch_rows=100, send_timeout_seconds=1, copy_fast_path=path == "copy"))
    with stalled(server, "/exports/orders.ndjson") as reader:
        assert reader.next_chunk()
        if db.dialect == "postgresql":
            assert busy_backends(db)
        # Without the send timeout the export would wait for this client for as long as it keeps the connection.
        wait_for(lambda: pool_idle(server) and not (db.dialect == "postgresql" and busy_backends(db)))
        rest = reader.read_rest()
    assert not rest.endswith(LAST_CHUNK)  # an incomplete transfer: the chunked body never ends
    entry = wait_for(lambda: export_log(db, "orders"))[0]
    assert entry["outcome"] == "aborted"
    after = httpx.get(f"{server.url}/exports/orders.csv", params={"limit": "1"}, timeout=CLIENT_TIMEOUT)
    assert after.text.count("\n") == 2


def open_handles(path: Path) -> int:
    """This process's file descriptors on `path` (the server runs in a thread of the test process)."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            count += os.readlink(f"/proc/self/fd/{fd}") == str(path)
        except OSError:
            pass  # closed meanwhile
    return count


def test_a_stalled_file_download_is_cut_off_and_its_file_closed(serve: Serve, tmp_path: Path) -> None:
    big = tmp_path / "big.bin"
    big.write_bytes(bytes(range(256)) * (64 * 1024))  # 16 MiB, far more than the socket buffers hold
    server = serve(Settings.from_dict({"files": {"roots": {"data": str(tmp_path)}}, "send_timeout_seconds": 1,
                                       "job_workers": 0, "auth": "off"}))
    with stalled(server, "/files/data/big.bin") as reader:
        assert open_handles(big) == 1
        wait_for(lambda: open_handles(big) == 0)
        rest = reader.read_rest()
    assert len(rest) < big.stat().st_size  # short of the Content-Length


def test_a_stalled_relay_is_cut_off_and_its_upstream_request_closed(serve: Serve, tmp_path: Path) -> None:
    big = tmp_path / "big.bin"
    # 64 MiB: more than every buffer between the file and the stalled client can hold (the sockets' kernel buffers,
    # a 2 MiB file chunk, a 256 KiB relay read), which together reached 16 MiB, so the relay has to stall.
    big.write_bytes(bytes(range(256)) * (256 * 1024))
    # The upstream is another server's /files with the default send timeout: it keeps the file open for as long
    # as the relay keeps its request open, so the file's handle shows when the relay lets go.
    upstream = serve(Settings.from_dict({"files": {"roots": {"data": str(tmp_path)}}, "job_workers": 0,
                                         "auth": "off"}))
    proxy = serve(Settings.from_dict({"upstreams": {"store": {"base_url": f"{upstream.url}/files/data"}},
                                      "send_timeout_seconds": 1, "job_workers": 0, "auth": "off"}))
    with stalled(proxy, "/proxy/store/big.bin") as reader:
        assert open_handles(big) == 1
        wait_for(lambda: open_handles(big) == 0)
        rest = reader.read_rest()
    assert len(rest) < big.stat().st_size


def test_the_statement_timeout_answers_504_before_any_byte_and_cancels_the_query(
    pg: Database, serve: Serve, path: str  # noqa: F811 (the fixture from test_export_failures)
) -> None:
    # Ordered by an unindexed column, the slow view is scanned whole (about 40 s of pg_sleep) before its first row.
    pg.execute("CREATE OR REPLACE VIEW slow AS SELECT * FROM slow_rows"
               " WHERE id % 1000 <> 0 OR pg_sleep(0.2)::text = ''")
    server = serve(pg.settings(datasets=SLOW, statement_timeout_seconds=1, copy_fast_path=path == "copy"))
    # gzip included: it sends nothing before the first chunk either.
    response = httpx.get(f"{server.url}/exports/slow.csv.gz", params={"order": "digest"}, timeout=10)
    assert response.status_code == 504
    assert error_code(response) == "statement_timeout"
    wait_for(lambda: not busy_backends(pg) and pool_idle(server), seconds=5)
    entry = wait_for(lambda: export_log(pg, "slow"))[0]
    assert (entry["outcome"], entry["rows"]) == ("failed", 0)


def test_the_statement_timeout_does_not_cut_an_export_that_streams_longer(
    pg: Database, serve: Serve, path: str  # noqa: F811 (the fixture from test_export_failures)
) -> None:
    # 100 pauses of 20 ms: the export streams for about 2 s, twice the statement timeout.
    server = serve(pg.settings(batch_rows=100, datasets=SLOW, statement_timeout_seconds=1,
                               copy_fast_path=path == "copy"))
    response = httpx.get(f"{server.url}/exports/slow.csv", params={"limit": "100000"}, timeout=60)
    assert response.status_code == 200
    assert response.text.count("\n") == 100_001


def test_a_busy_answer_to_a_key_carries_its_ratelimit_headers(db: Database, serve: Serve, tmp_path: Path) -> None:
    db.seed_demo(50_000)
    db.execute("DELETE FROM api_keys")
    server = serve(db.settings(auth="required", batch_rows=100, export_slots=1, reserved_slots=1,
                               jobs_dir=str(tmp_path / "jobs")))
    token = create_key(db, "analyst", "dataset:orders", max_concurrent=3)
    with ChunkedReader(server.url, "/exports/orders.ndjson", receive_buffer_bytes=4096,
                       headers={"Authorization": f"Bearer {token}"}) as holder:
        assert holder.next_chunk()
        busy = httpx.get(f"{server.url}/exports/orders.csv", headers=bearer(token), timeout=CLIENT_TIMEOUT)
    assert (busy.status_code, error_code(busy)) == (503, "busy")
    assert busy.headers["retry-after"] == "1"
    assert busy.headers["ratelimit-policy"] == '"concurrency";q=3'
    assert busy.headers["ratelimit"] == '"concurrency";r=2;t=5'  # the holder takes one; the refused one, none
