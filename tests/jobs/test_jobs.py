"""Export jobs over a real uvicorn server: submit, follow the event stream, download the checksummed result."""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import zstandard
from httpx_sse import ServerSentEvent, connect_sse

from exporter.config import Settings
from exporter.formats import FORMATS
from exporter.jobs.queue import MAX_ATTEMPTS
from tests.conftest import Database
from tests.helpers import wait_for
from tests.servers import ServerThread

Serve = Callable[[Settings], ServerThread]
PARAMS = {"status": "paid", "columns": "id,customer_id,amount,created_at,shipped_at,note,is_gift"}
SLOW = {"slow": {"table": "slow", "key": "id"}}
TERMINAL = {"succeeded", "failed", "cancelled", "expired"}


@pytest.fixture(params=[("postgresql", "copy"), ("postgresql", "generic"), ("sqlite", "generic")],
                ids=["postgresql-copy", "postgresql-generic", "sqlite"])
def source(request: pytest.FixtureRequest) -> tuple[Database, bool]:
    """A database and whether the COPY fast path is on: every export path a job can take."""
    dialect, path = request.param
    db = Database(dialect, request.getfixturevalue(f"{'postgres' if dialect == 'postgresql' else 'sqlite'}_url"))
    return db, path == "copy"


_USED: list[Database] = []


@pytest.fixture(autouse=True)
def no_jobs_left() -> Iterator[None]:
    """Each test starts with no jobs and leaves none queued for the servers of later tests."""
    yield
    for db in _USED:
        db.execute("DELETE FROM job_events", "DELETE FROM jobs")
    _USED.clear()


def settings(db: Database, tmp_path: Path, **overrides: Any) -> Settings:
    if db not in _USED:
        db.execute("DELETE FROM job_events", "DELETE FROM jobs")
        _USED.append(db)
    return db.settings(jobs_dir=str(tmp_path / "jobs"), **overrides)


def make_slow(pg: Database, sleep_seconds: float = 0.02) -> None:
    """The view `slow`: 200,000 rows in key order, every 1000th waits 20 ms, so a job of it runs for seconds."""
    pg.execute(
        "DROP VIEW IF EXISTS slow", "DROP TABLE IF EXISTS slow_rows",
        "CREATE TABLE slow_rows AS SELECT g::bigint AS id, md5(g::text) AS digest FROM generate_series(1, 200000) g",
        "ALTER TABLE slow_rows ADD PRIMARY KEY (id)",
        f"CREATE VIEW slow AS SELECT * FROM slow_rows WHERE id % 1000 <> 0 OR pg_sleep({sleep_seconds})::text = ''",
    )


def submit(server: ServerThread, dataset: str = "orders", fmt: str = "csv", params: dict[str, str] | None = None,
           **kwargs: Any) -> httpx.Response:
    body = {"dataset": dataset, "format": fmt, "params": PARAMS if params is None else params}
    return httpx.post(f"{server.url}/jobs", json=body, **kwargs)


def job(server: ServerThread, job_id: str) -> dict[str, Any]:
    response = httpx.get(f"{server.url}/jobs/{job_id}")
    assert response.status_code == 200, response.text
    found: dict[str, Any] = response.json()
    return found


def wait_state(server: ServerThread, job_id: str, *states: str, seconds: float = 60) -> dict[str, Any]:
    return wait_for(lambda: (found := job(server, job_id))["state"] in states and found, seconds)  # type: ignore


def events(server: ServerThread, job_id: str, *, headers: dict[str, str] | None = None,
           params: dict[str, str] | None = None, stop: Callable[[ServerSentEvent], bool] | None = None
           ) -> list[ServerSentEvent]:
    """The job's events as a WHATWG parser reads them, until the server closes the stream (or `stop`)."""
    received = []
    with httpx.Client(timeout=60) as client, connect_sse(client, "GET", f"{server.url}/jobs/{job_id}/events",
                                                          headers=headers or {}, params=params) as source:
        assert source.response.status_code == 200
        for event in source.iter_sse():
            if not event.data and event.retry is not None:
                continue  # only sets the reconnection time: WHATWG dispatches no event without data
            received.append(event)
            if stop is not None and stop(event):
                break
    return received


def run_job(server: ServerThread, fmt: str) -> tuple[httpx.Response, dict[str, Any], httpx.Response]:
    """Submit a job of `orders.{fmt}` with PARAMS, wait for it to succeed, download its result: the answer to the
    submission, the finished job, the download."""
    created = submit(server, fmt=fmt)
    assert created.status_code == 202
    done = wait_state(server, created.json()["id"], *TERMINAL)
    assert done["state"] == "succeeded", done
    return created, done, httpx.get(f"{server.url}{done['result']['url']}")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def plain(data: bytes, fmt: str) -> bytes:
    return gzip.decompress(data) if fmt.endswith(".gz") else data


@pytest.mark.parametrize("fmt", ["parquet", "arrow", "xlsx", "csv.zst"])
def test_a_job_in_a_typed_or_zstd_format_gives_the_bytes_of_the_streamed_export(
    source: tuple[Database, bool], serve: Serve, tmp_path: Path, fmt: str
) -> None:
    db, copy = source
    db.seed_demo(3000)
    server = serve(settings(db, tmp_path, batch_rows=100, copy_fast_path=copy))
    streamed = httpx.get(f"{server.url}/exports/orders.{fmt}", params=PARAMS).content
    _, done, result = run_job(server, fmt)
    assert result.headers["content-type"] == FORMATS[fmt].media_type
    if fmt == "csv.zst":  # compressed bytes depend on where chunks were flushed; the file does not
        unzstd = zstandard.ZstdDecompressor().decompressobj
        assert unzstd().decompress(result.content) == unzstd().decompress(streamed)
    else:
        assert sha256(result.content) == sha256(streamed)
    assert done["result"]["sha256"] == sha256(result.content)


@pytest.mark.parametrize("fmt", ["csv", "ndjson", "csv.gz", "ndjson.gz"])
def test_a_job_result_has_the_bytes_and_sha256_of_the_streamed_export(
    source: tuple[Database, bool], serve: Serve, tmp_path: Path, fmt: str
) -> None:
    db, copy = source
    db.seed_demo(3000)
    server = serve(settings(db, tmp_path, batch_rows=100, copy_fast_path=copy))
    streamed = httpx.get(f"{server.url}/exports/orders.{fmt}", params=PARAMS).content

    created, done, result = run_job(server, fmt)
    assert created.headers["location"] == f"/jobs/{created.json()['id']}"

    assert result.status_code == 200
    assert plain(result.content, fmt) == plain(streamed, fmt)
    if not fmt.endswith(".gz"):
        assert sha256(result.content) == sha256(streamed)
    assert done["result"]["sha256"] == sha256(result.content)
    assert done["result"]["size"] == len(result.content) == int(result.headers["content-length"]) == done["bytes"]
    rows = plain(streamed, fmt).count(b"\n") - (1 if fmt.startswith("csv") else 0)
    assert done["result"]["rows"] == done["rows"] == int(result.headers["x-export-rows"]) == rows
    digest = base64.b64encode(hashlib.sha256(result.content).digest()).decode()
    assert result.headers["repr-digest"] == f"sha-256=:{digest}:"
    assert result.headers["content-disposition"] == f'attachment; filename="orders.{fmt}"'
    assert result.headers["content-type"] == done["result"]["content_type"]
    assert done["result"]["filename"] == f"orders.{fmt}"
    assert done["attempt"] == 1 and done["error"] is None
    assert done["created_at"] <= done["started_at"] <= done["finished_at"] < done["expires_at"]


def test_the_job_json_has_every_documented_field(db: Database, serve: Serve, tmp_path: Path) -> None:
    db.seed_demo(10)
    server = serve(settings(db, tmp_path, job_workers=0))
    created = submit(server, fmt="ndjson", params={"limit": "5"}).json()
    assert set(created) == {"id", "dataset", "format", "params", "state", "rows", "bytes", "created_at",
                            "started_at", "finished_at", "expires_at", "attempt", "error", "result", "events_url"}
    assert (created["dataset"], created["format"], created["params"]) == ("orders", "ndjson", [["limit", "5"]])
    assert (created["state"], created["rows"], created["bytes"], created["attempt"]) == ("queued", 0, 0, 0)
    assert created["events_url"] == f"/jobs/{created['id']}/events"
    assert len(base64.urlsafe_b64decode(created["id"] + "==")) >= 16  # at least 128 random bits, URL-safe
    assert job(server, created["id"]) == created


def test_prefer_respond_async_on_an_export_url_creates_the_same_job(db: Database, serve: Serve,
                                                                      tmp_path: Path) -> None:
    db.seed_demo(100)
    server = serve(settings(db, tmp_path, job_workers=0))
    url = f"{server.url}/exports/orders.csv.gz"
    created = httpx.get(url, params={"status": "paid", "limit": "7"}, headers={"Prefer": "respond-async, wait=5"})
    assert created.status_code == 202
    assert created.headers["preference-applied"] == "respond-async"
    body = created.json()
    assert created.headers["location"] == f"/jobs/{body['id']}"
    assert (body["dataset"], body["format"]) == ("orders", "csv.gz")
    assert body["params"] == [["status", "paid"], ["limit", "7"]]
    streamed = httpx.get(url, params={"status": "paid", "limit": "7"})
    assert streamed.status_code == 200 and streamed.headers["content-type"] == "application/gzip"


def test_an_idempotency_key_returns_the_same_job_and_refuses_another_body(db: Database, serve: Serve,
                                                                          tmp_path: Path) -> None:
    db.seed_demo(10)
    server = serve(settings(db, tmp_path, job_workers=0))
    key = {"Idempotency-Key": "nightly-2026-12-01"}
    first = submit(server, headers=key)
    again = submit(server, headers=key)
    assert (first.status_code, again.status_code) == (202, 200)
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["location"] == first.headers["location"]
    other = submit(server, params={"status": "open"}, headers=key)
    assert other.status_code == 409
    assert other.json()["error"]["code"] == "idempotency_conflict"
    via_prefer = httpx.get(f"{server.url}/exports/orders.csv", params=PARAMS,
                           headers={**key, "Prefer": "respond-async"})
    assert (via_prefer.status_code, via_prefer.json()["id"]) == (200, first.json()["id"])
    assert len(httpx.get(f"{server.url}/jobs").json()["jobs"]) == 1


@pytest.mark.parametrize(("body", "status", "code"), [
    ({"dataset": "nope", "format": "csv"}, 404, "unknown_dataset"),
    ({"dataset": "orders", "format": "csv", "params": {"colour": "red"}}, 400, "unknown_column"),
    ({"dataset": "orders", "format": "csv", "params": {"amount__gt": "lots"}}, 400, "invalid_value"),
    ({"dataset": "orders", "format": "ndjson", "params": {"delimiter": ";"}}, 400, "invalid_parameter"),
    ({"dataset": "orders", "format": "xls"}, 400, "invalid_parameter"),
    ({"dataset": "orders", "format": "csv", "params": {"limit": 5}}, 400, "invalid_parameter"),
    ({"dataset": "orders"}, 400, "invalid_parameter"),
    ({"dataset": "orders", "format": "csv", "colour": "red"}, 400, "invalid_parameter"),
])
def test_bad_submissions_get_a_json_error_and_create_no_job(db: Database, serve: Serve, tmp_path: Path,
                                                           body: dict[str, Any], status: int, code: str) -> None:
    db.seed_demo(10)
    db.execute("DELETE FROM job_events", "DELETE FROM jobs")  # an earlier test's jobs share this worker's database
    server = serve(settings(db, tmp_path, job_workers=0))
    response = httpx.post(f"{server.url}/jobs", json=body)
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code
    assert httpx.get(f"{server.url}/jobs").json()["jobs"] == []


@pytest.mark.parametrize("content", [b"{not json", b"[]", b""])
def test_malformed_json_is_a_400_and_creates_no_job(db: Database, serve: Serve, tmp_path: Path,
                                                    content: bytes) -> None:
    db.execute("DELETE FROM job_events", "DELETE FROM jobs")  # an earlier test's jobs share this worker's database
    server = serve(settings(db, tmp_path, job_workers=0))
    response = httpx.post(f"{server.url}/jobs", content=content, headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_parameter"
    assert httpx.get(f"{server.url}/jobs").json()["jobs"] == []


def test_a_full_queue_answers_429_with_retry_after(db: Database, serve: Serve, tmp_path: Path) -> None:
    db.seed_demo(10)
    server = serve(settings(db, tmp_path, job_workers=0, job_max_queued=2))
    assert [submit(server).status_code for _ in range(2)] == [202, 202]
    refused = submit(server)
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "too_many_jobs"
    assert int(refused.headers["retry-after"]) > 0


def test_jobs_are_listed_newest_first_and_filtered_by_state(db: Database, serve: Serve, tmp_path: Path) -> None:
    db.seed_demo(10)
    server = serve(settings(db, tmp_path, job_workers=0))
    ids = [submit(server, params={"limit": str(n)}).json()["id"] for n in range(3)]
    httpx.delete(f"{server.url}/jobs/{ids[0]}")
    listed = httpx.get(f"{server.url}/jobs", params={"state": "queued", "limit": "50"}).json()["jobs"]
    assert [j["id"] for j in listed] == [ids[2], ids[1]]
    assert [j["id"] for j in httpx.get(f"{server.url}/jobs", params={"limit": "1"}).json()["jobs"]] == [ids[2]]
    bad = httpx.get(f"{server.url}/jobs", params={"state": "done"})
    assert (bad.status_code, bad.json()["error"]["parameter"]) == (400, "state")


@pytest.mark.parametrize("path", ["/jobs/{id}", "/jobs/{id}/events", "/jobs/{id}/result"])
@pytest.mark.parametrize("method", ["GET", "DELETE"])
def test_an_unknown_job_is_a_404_json_error(db: Database, serve: Serve, tmp_path: Path, path: str,
                                            method: str) -> None:
    if method == "DELETE" and path != "/jobs/{id}":
        return
    server = serve(settings(db, tmp_path, job_workers=0))
    response = httpx.request(method, server.url + path.format(id="AAAAAAAAAAAAAAAAAAAAAA"))
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/json"
    assert response.json()["error"]["code"] == "unknown_job"


# --- the event stream --------------------------------------------------------------------------------------------


def test_the_event_stream_opens_with_retry_and_a_snapshot_and_closes_after_the_terminal_event(
    db: Database, serve: Serve, tmp_path: Path
) -> None:
    db.seed_demo(2000)
    server = serve(settings(db, tmp_path, job_workers=0, batch_rows=50))
    job_id = submit(server).json()["id"]
    with httpx.stream("GET", f"{server.url}/jobs/{job_id}/events") as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["cache-control"] == "no-cache"
        assert response.headers["x-accel-buffering"] == "no"
        assert next(response.iter_raw()).startswith(b"retry: 3000\n\n")
    worker = serve(settings(db, tmp_path, batch_rows=50))  # a second app on the same database runs it
    # From the first stored event on: the job may well have finished before this stream opens.
    received = events(worker, job_id, headers={"Last-Event-ID": "0"})

    assert received[0].event == "state" and received[0].retry is None
    assert json.loads(received[0].data)["id"] == job_id
    ids = [int(event.id) for event in received]
    assert ids == sorted(set(ids))  # strictly increasing
    assert all("\n" not in event.data and json.loads(event.data) is not None for event in received)
    assert [e.event for e in received if e.event in TERMINAL] == ["succeeded"] == [received[-1].event]
    states = [json.loads(e.data)["state"] for e in received if e.event == "state"]
    assert states[-2:] == ["running", "succeeded"]
    result = json.loads(received[-1].data)["result"]
    assert result["sha256"] == sha256(httpx.get(f"{server.url}{result['url']}").content)


def test_progress_events_report_rows_bytes_rate_and_elapsed_time(pg: Database, serve: Serve,
                                                                 tmp_path: Path) -> None:
    make_slow(pg)
    server = serve(settings(pg, tmp_path, datasets=SLOW, batch_rows=100, job_progress_seconds=0.2))
    job_id = submit(server, dataset="slow", params={}).json()["id"]
    received = events(server, job_id, headers={"Last-Event-ID": "0"})
    progress = [json.loads(e.data) for e in received if e.event == "progress"]
    running = [p for p in progress if "position" not in p]
    assert len(running) >= 3
    assert all(set(p) == {"rows", "bytes", "rows_per_second", "elapsed_seconds"} for p in running)
    assert [p["rows"] for p in running] == sorted(p["rows"] for p in running)
    assert running[-1]["rows"] > 0 and running[-1]["bytes"] > 0 and running[-1]["rows_per_second"] > 0
    assert received[-1].event == "succeeded"


def test_a_queued_job_reports_its_position(db: Database, serve: Serve, tmp_path: Path) -> None:
    db.seed_demo(10)
    server = serve(settings(db, tmp_path, job_workers=0))
    first, second = (submit(server).json()["id"] for _ in range(2))
    replay = events(server, second, headers={"Last-Event-ID": "0"}, stop=lambda e: e.event == "progress")
    assert json.loads(replay[-1].data)["position"] == 2
    httpx.delete(f"{server.url}/jobs/{first}")
    moved = events(server, second, headers={"Last-Event-ID": replay[-1].id}, stop=lambda e: e.event == "progress")
    assert json.loads(moved[-1].data)["position"] == 1


def test_resuming_with_last_event_id_or_the_query_parameter_replays_every_later_event_once(
    db: Database, serve: Serve, tmp_path: Path
) -> None:
    db.seed_demo(2000)
    server = serve(settings(db, tmp_path, batch_rows=50))
    job_id = submit(server).json()["id"]
    wait_state(server, job_id, *TERMINAL)
    stored = events(server, job_id, headers={"Last-Event-ID": "0"})[1:]
    assert [int(e.id) for e in stored] == list(range(1, len(stored) + 1))
    middle = stored[len(stored) // 2]
    for resumed in (events(server, job_id, headers={"Last-Event-ID": middle.id}),
                    events(server, job_id, params={"last_event_id": middle.id})):
        assert resumed[0].event == "state" and resumed[0].id == middle.id  # the snapshot first
        assert [(e.id, e.event, e.data) for e in resumed[1:]] == [
            (e.id, e.event, e.data) for e in stored if int(e.id) > int(middle.id)]


def test_a_stream_of_a_finished_job_sends_the_snapshot_and_the_terminal_event(db: Database, serve: Serve,
                                                                              tmp_path: Path) -> None:
    db.seed_demo(100)
    server = serve(settings(db, tmp_path))
    job_id = submit(server).json()["id"]
    wait_state(server, job_id, *TERMINAL)
    received = events(server, job_id)
    assert [e.event for e in received] == ["state", "succeeded"]
    assert json.loads(received[0].data)["state"] == "succeeded"
    assert int(received[0].id) < int(received[1].id)
    # Having seen the end, a reconnecting EventSource is told to stop (WHATWG: 204 No Content).
    done = httpx.get(f"{server.url}/jobs/{job_id}/events", headers={"Last-Event-ID": received[1].id})
    assert done.status_code == 204


def test_a_stream_resumed_while_the_job_runs_misses_nothing_and_repeats_nothing(pg: Database, serve: Serve,
                                                                               tmp_path: Path) -> None:
    make_slow(pg)
    server = serve(settings(pg, tmp_path, datasets=SLOW, batch_rows=100, job_progress_seconds=0.1))
    job_id = submit(server, dataset="slow", params={}).json()["id"]
    seen = events(server, job_id, stop=lambda e: e.event == "progress" and json.loads(e.data)["rows"] > 0)
    while seen[-1].event not in TERMINAL:  # drop the connection again and again, as a flaky network would
        resumed = events(server, job_id, headers={"Last-Event-ID": seen[-1].id},
                         stop=lambda e: e.event == "progress" or e.event in TERMINAL)
        assert resumed[0].id == seen[-1].id and resumed[0].event == "state"
        seen += resumed[1:]
    ids = [int(e.id) for e in seen[1:]]
    assert ids == list(range(ids[0], ids[0] + len(ids)))  # every event once, in order
    assert seen[-1].event == "succeeded"


def test_an_idle_stream_gets_ping_comments(db: Database, serve: Serve, tmp_path: Path) -> None:
    db.seed_demo(10)
    server = serve(settings(db, tmp_path, job_workers=0, sse_ping_seconds=0.2))
    job_id = submit(server).json()["id"]
    lines: list[str] = []
    with httpx.stream("GET", f"{server.url}/jobs/{job_id}/events", timeout=30) as response:
        for line in response.iter_lines():
            lines.append(line)
            if lines.count(": ping") == 3:
                break
    assert lines.count(": ping") == 3


def test_closing_a_stream_never_cancels_the_job(db: Database, serve: Serve, tmp_path: Path) -> None:
    db.seed_demo(100)
    server = serve(settings(db, tmp_path, job_workers=0))
    job_id = submit(server).json()["id"]
    events(server, job_id, stop=lambda e: True)
    assert job(server, job_id)["state"] == "queued"
    serve(settings(db, tmp_path))
    assert wait_state(server, job_id, *TERMINAL)["state"] == "succeeded"


# --- cancel, expiry and the result's errors ------------------------------------------------------------------------


def test_cancelling_a_queued_job(db: Database, serve: Serve, tmp_path: Path) -> None:
    db.seed_demo(10)
    server = serve(settings(db, tmp_path, job_workers=0))
    job_id = submit(server).json()["id"]
    cancelled = httpx.delete(f"{server.url}/jobs/{job_id}")
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
    assert [e.event for e in events(server, job_id)] == ["state", "cancelled"]
    result = httpx.get(f"{server.url}/jobs/{job_id}/result")
    assert (result.status_code, result.json()["error"]["code"]) == (409, "job_cancelled")
    serve(settings(db, tmp_path))  # a worker arrives: it never runs the cancelled job
    assert job(server, job_id)["state"] == "cancelled"


@pytest.mark.parametrize("copy", [True, False], ids=["copy", "generic"])
def test_cancelling_a_running_job_stops_its_query_and_leaves_no_file(pg: Database, serve: Serve, tmp_path: Path,
                                                                     copy: bool) -> None:
    make_slow(pg)
    server = serve(settings(pg, tmp_path, datasets=SLOW, batch_rows=100, copy_fast_path=copy))
    job_id = submit(server, dataset="slow", params={}).json()["id"]
    wait_for(lambda: job(server, job_id)["rows"] > 0)
    jobs_dir = tmp_path / "jobs"
    assert [p.name for p in jobs_dir.iterdir()] == [f"{job_id}.1.part"]  # never under its final name early
    assert export_queries(pg)

    assert httpx.delete(f"{server.url}/jobs/{job_id}").json()["state"] == "cancelled"
    wait_for(lambda: not export_queries(pg))
    wait_for(lambda: not list(jobs_dir.iterdir()))
    assert job(server, job_id)["state"] == "cancelled"


def export_queries(pg: Database) -> list[int]:
    """Export backends running a query or holding a transaction (the jobs' own bookkeeping is exporter-jobs)."""
    rows = pg.execute("SELECT pid FROM pg_stat_activity WHERE application_name = 'exporter' AND pid <> "
                      "pg_backend_pid() AND datname = current_database() AND state <> 'idle'")
    return [row.pid for row in rows]


def test_a_job_whose_backend_is_terminated_on_every_attempt_fails_and_its_result_says_so(
        pg: Database, serve: Serve, tmp_path: Path) -> None:
    make_slow(pg)
    server = serve(settings(pg, tmp_path, datasets=SLOW, batch_rows=100))
    job_id = submit(server, dataset="slow", params={}).json()["id"]
    for attempt in range(1, MAX_ATTEMPTS + 1):  # a lost connection is retried, like a lost worker (issue 19)
        wait_for(lambda: (found := job(server, job_id))["attempt"] == attempt and found["rows"] > 0)  # noqa: B023
        pg.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'exporter'"
                   " AND datname = current_database() AND pid <> pg_backend_pid()")
    failed = wait_state(server, job_id, *TERMINAL)
    assert (failed["state"], failed["attempt"]) == ("failed", MAX_ATTEMPTS)
    assert failed["error"]["code"] == "database_unavailable"
    assert [e.event for e in events(server, job_id)] == ["state", "failed"]
    result = httpx.get(f"{server.url}/jobs/{job_id}/result")
    assert (result.status_code, result.json()["error"]["code"]) == (409, "job_failed")
    assert not list((tmp_path / "jobs").iterdir())


def test_the_result_of_an_unfinished_job_is_409_with_retry_after(db: Database, serve: Serve,
                                                                 tmp_path: Path) -> None:
    db.seed_demo(10)
    server = serve(settings(db, tmp_path, job_workers=0))
    job_id = submit(server).json()["id"]
    for method in ("GET", "HEAD"):
        response = httpx.request(method, f"{server.url}/jobs/{job_id}/result")
        assert response.status_code == 409
        assert int(response.headers["retry-after"]) > 0
    assert httpx.get(f"{server.url}/jobs/{job_id}/result").json()["error"]["code"] == "job_not_finished"


def test_a_result_expires_after_its_time_to_live(db: Database, serve: Serve, tmp_path: Path) -> None:
    db.seed_demo(100)
    server = serve(settings(db, tmp_path, job_ttl_hours=0.0005))  # 1.8 s
    job_id = submit(server).json()["id"]
    done = wait_state(server, job_id, *TERMINAL)
    assert httpx.get(f"{server.url}{done['result']['url']}").status_code == 200
    expired = wait_state(server, job_id, "expired", seconds=30)  # the janitor's round
    assert expired["result"] is None
    gone = httpx.get(f"{server.url}/jobs/{job_id}/result")
    assert (gone.status_code, gone.json()["error"]["code"]) == (410, "job_expired")
    assert not list((tmp_path / "jobs").iterdir())
    assert [e.event for e in events(server, job_id)] == ["state", "expired"]


def test_deleting_a_finished_job_deletes_its_file_early(db: Database, serve: Serve, tmp_path: Path) -> None:
    db.seed_demo(100)
    server = serve(settings(db, tmp_path))
    job_id = submit(server).json()["id"]
    wait_state(server, job_id, *TERMINAL)
    assert httpx.delete(f"{server.url}/jobs/{job_id}").json()["state"] == "expired"
    assert httpx.get(f"{server.url}/jobs/{job_id}/result").status_code == 410
    assert not list((tmp_path / "jobs").iterdir())


# --- the result download ---------------------------------------------------------------------------------------


@pytest.fixture
def finished(db: Database, serve: Serve, tmp_path: Path) -> Iterator[tuple[str, bytes]]:
    """The result URL and bytes of a succeeded CSV job."""
    db.seed_demo(5000)
    server = serve(settings(db, tmp_path))
    done = wait_state(server, submit(server, params={}).json()["id"], *TERMINAL)
    url = f"{server.url}{done['result']['url']}"
    yield url, httpx.get(url).content


def test_the_result_serves_ranges_if_range_and_304_like_files(finished: tuple[str, bytes]) -> None:
    url, content = finished
    whole = httpx.head(url)
    etag = whole.headers["etag"]
    assert etag.startswith('"') and not etag.startswith("W/")
    assert int(whole.headers["content-length"]) == len(content)
    assert whole.headers["accept-ranges"] == "bytes"

    part = httpx.get(url, headers={"Range": "bytes=100-199"})
    assert (part.status_code, part.content) == (206, content[100:200])
    assert part.headers["content-range"] == f"bytes 100-199/{len(content)}"
    assert "repr-digest" in part.headers  # the digest of the whole representation, also on a part

    several = httpx.get(url, headers={"Range": "bytes=0-9,-10"})
    assert several.status_code == 206
    assert several.headers["content-type"].startswith("multipart/byteranges")
    assert content[:10] in several.content and content[-10:] in several.content

    stale = httpx.get(url, headers={"Range": "bytes=0-9", "If-Range": '"stale"'})
    assert (stale.status_code, stale.content) == (200, content)
    assert httpx.get(url, headers={"Range": "bytes=0-9", "If-Range": etag}).status_code == 206

    assert httpx.get(url, headers={"If-None-Match": etag}).status_code == 304


def test_curl_resumes_a_result_download_with_c(finished: tuple[str, bytes], tmp_path: Path) -> None:
    url, content = finished
    output = tmp_path / "orders.csv"
    output.write_bytes(content[: len(content) // 3])
    subprocess.run(["curl", "-fsS", "-C", "-", "-o", str(output), url], check=True, timeout=60)
    assert sha256(output.read_bytes()) == sha256(content)
    digest = httpx.head(url).headers["repr-digest"]
    assert digest == f"sha-256=:{base64.b64encode(hashlib.sha256(output.read_bytes()).digest()).decode()}:"
