"""The service's PostgreSQL restarted (fast, immediate) or stopped for a few seconds under a running server: job
workers survive, interrupted jobs run again, event streams resume, the API answers 503 database_unavailable, and
/readyz and /metrics say what is down (issue 19, point 1)."""

from __future__ import annotations

import contextlib
import hashlib
import re
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from httpx_sse import connect_sse

from exporter.config import Settings
from exporter.jobs.queue import MAX_ATTEMPTS
from tests.conftest import Database
from tests.faults.cluster import Cluster
from tests.helpers import wait_for
from tests.servers import ServerThread

Serve = Callable[[Settings], ServerThread]
TERMINAL = {"succeeded", "failed", "cancelled", "expired"}
SLOW = {"slow": {"table": "slow", "key": "id"}}
SLOW_ROWS = 100_000
OUTAGES = ["restart-fast", "restart-immediate", "stopped-3s"]
DEADLINE_SECONDS = 120  # against hangs only: the machine is shared and slow


def make_slow(db: Database) -> None:
    """The view `slow`: SLOW_ROWS rows in key order, every 500th waits 20 ms, so a job of it runs for seconds."""
    db.execute(
        "CREATE TABLE slow_rows AS SELECT g::bigint AS id, md5(g::text) AS digest FROM generate_series(1, "
        f"{SLOW_ROWS}) g",
        "ALTER TABLE slow_rows ADD PRIMARY KEY (id)",
        "CREATE VIEW slow AS SELECT * FROM slow_rows WHERE id % 500 <> 0 OR pg_sleep(0.02)::text = ''",
    )


def settings(db: Database, tmp_path: Path, **overrides: Any) -> Settings:
    # A short lease, so that leases run out during the outage and the janitor races the workers' own writes.
    values: dict[str, Any] = {"jobs_dir": str(tmp_path / "jobs"), "datasets": SLOW, "job_lease_seconds": 2,
                              "job_progress_seconds": 0.2}
    return db.settings(**{**values, **overrides})


@contextlib.contextmanager
def outage(cluster: Cluster, kind: str) -> Iterator[None]:
    """The service's database goes away as `kind` says; the block runs while it is away (or just after, for a
    restart, which returns when the database is back)."""
    if kind == "stopped-3s":
        with cluster.down(3, "fast"):
            yield
        return
    cluster.restart(kind.removeprefix("restart-"))
    yield


def submit(server: ServerThread, fmt: str, dataset: str = "slow", params: dict[str, str] | None = None) -> str:
    response = httpx.post(f"{server.url}/jobs", json={"dataset": dataset, "format": fmt, "params": params or {}},
                          timeout=30)
    assert response.status_code == 202, response.text
    job_id: str = response.json()["id"]
    return job_id


def job(server: ServerThread, job_id: str) -> dict[str, Any]:
    """The job, asking again while the database is still coming back."""
    def found() -> dict[str, Any] | None:
        response = httpx.get(f"{server.url}/jobs/{job_id}", timeout=30)
        return response.json() if response.status_code == 200 else None

    answer: dict[str, Any] = wait_for(found, DEADLINE_SECONDS)
    return answer


def finished(server: ServerThread, job_id: str) -> dict[str, Any]:
    done: dict[str, Any] = wait_for(lambda: (found := job(server, job_id))["state"] in TERMINAL and found,
                                    DEADLINE_SECONDS)
    return done


def a_new_job_succeeds(server: ServerThread) -> None:
    done = finished(server, submit(server, "csv", "orders", {"limit": "10"}))
    assert (done["state"], done["rows"]) == ("succeeded", 10), done


def metric(server: ServerThread, name: str, loop: str) -> float:
    text = httpx.get(f"{server.url}/metrics", timeout=30).text
    found = re.search(rf'^{name}{{loop="{loop}"}} (\S+)$', text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def ready(server: ServerThread) -> httpx.Response:
    return httpx.get(f"{server.url}/readyz", timeout=30)


@pytest.mark.parametrize("kind", OUTAGES)
def test_running_and_queued_jobs_all_succeed_after_the_database_goes_away(
    cluster: Cluster, faulty: Database, serve: Serve, tmp_path: Path, kind: str
) -> None:
    make_slow(faulty)
    faulty.seed_demo(100)
    server = serve(settings(faulty, tmp_path))
    jobs = {submit(server, fmt): fmt for fmt in ("csv", "parquet", "csv", "parquet")}
    first = list(jobs)[:2]  # the two workers take the oldest
    wait_for(lambda: all(job(server, job_id)["rows"] > 0 for job_id in first), DEADLINE_SECONDS)
    assert [job(server, job_id)["state"] for job_id in list(jobs)[2:]] == ["queued", "queued"]

    with outage(cluster, kind):
        pass

    done = {job_id: finished(server, job_id) for job_id in jobs}
    assert {job_id: found["state"] for job_id, found in done.items()} == dict.fromkeys(jobs, "succeeded")
    assert [done[job_id]["attempt"] for job_id in jobs] == [2, 2, 1, 1]  # the interrupted ones ran again
    files = {path.name: path for path in (tmp_path / "jobs").iterdir()}
    assert set(files) == {f"{job_id}.{fmt}" for job_id, fmt in jobs.items()}  # no .part left behind
    for job_id, fmt in jobs.items():
        content = files[f"{job_id}.{fmt}"].read_bytes()
        assert (len(content), hashlib.sha256(content).hexdigest()) == (done[job_id]["result"]["size"],
                                                                      done[job_id]["result"]["sha256"])
        assert done[job_id]["result"]["rows"] == SLOW_ROWS
    a_new_job_succeeds(server)


@pytest.mark.parametrize("kind", OUTAGES)
def test_with_nothing_running_the_workers_survive_and_a_new_job_succeeds(
    cluster: Cluster, faulty: Database, serve: Serve, tmp_path: Path, kind: str
) -> None:
    faulty.seed_demo(100)
    server = serve(settings(faulty, tmp_path))
    a_new_job_succeeds(server)
    with outage(cluster, kind):
        pass
    a_new_job_succeeds(server)
    wait_for(lambda: ready(server).status_code == 200, DEADLINE_SECONDS)


class ReconnectingEvents:
    """A client of a job's event stream that does what EventSource does: on a dropped stream, or an error
    answer, it connects again with Last-Event-ID, until the job's terminal event. Runs in a thread."""

    def __init__(self, server: ServerThread, job_id: str) -> None:
        self.url = f"{server.url}/jobs/{job_id}/events"
        self.received: list[tuple[int, str]] = []  # without the snapshot that starts each reconnection
        self.resumed: list[tuple[str, int]] = []  # each reconnection's Last-Event-ID and its snapshot's id
        self.first_event = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        stop = threading.Event()
        while not (self.received and self.received[-1][1] in TERMINAL):
            last = str(self.received[-1][0]) if self.received else None
            headers = {} if last is None else {"Last-Event-ID": last}  # connect_sse adds to it
            try:
                with httpx.Client(timeout=30) as client, connect_sse(client, "GET", self.url,
                                                                      headers=headers) as source:
                    if source.response.status_code != 200:  # 503 while the database is away
                        stop.wait(0.5)
                        continue
                    for index, event in enumerate(event for event in source.iter_sse() if event.data):
                        if index == 0 and last is not None:
                            self.resumed.append((last, int(event.id)))
                            continue
                        self.received.append((int(event.id), event.event))
                        self.first_event.set()
            except httpx.HTTPError:
                stop.wait(0.2)

    def join(self) -> list[tuple[int, str]]:
        self._thread.join(DEADLINE_SECONDS)
        assert not self._thread.is_alive(), f"the stream never reached the job's end: {self.received}"
        return self.received


@pytest.mark.parametrize("kind", OUTAGES)
def test_an_event_stream_resumes_with_last_event_id_and_reaches_the_jobs_end(
    cluster: Cluster, faulty: Database, serve: Serve, tmp_path: Path, kind: str
) -> None:
    make_slow(faulty)
    faulty.seed_demo(100)
    server = serve(settings(faulty, tmp_path))
    job_id = submit(server, "csv")
    wait_for(lambda: job(server, job_id)["rows"] > 0, DEADLINE_SECONDS)
    stream = ReconnectingEvents(server, job_id)
    assert stream.first_event.wait(DEADLINE_SECONDS)
    with outage(cluster, kind):
        pass
    received = stream.join()
    ids = [event_id for event_id, _ in received]
    assert ids == sorted(set(ids)), received  # nothing twice, in order, across reconnections
    assert received[-1][1] == "succeeded"
    # Each reconnection starts with a snapshot numbered as the Last-Event-ID it sent. A stopped database drops
    # the stream (its poll fails); a fast enough restart may not, as the next poll finds the database back.
    assert all(sent == str(snapshot) for sent, snapshot in stream.resumed), stream.resumed
    if kind == "stopped-3s":
        assert stream.resumed
    assert finished(server, job_id)["attempt"] == 2
    a_new_job_succeeds(server)


def test_while_the_database_is_stopped_the_api_answers_503_database_unavailable_with_retry_after(
    cluster: Cluster, faulty: Database, serve: Serve, tmp_path: Path
) -> None:
    faulty.seed_demo(100)
    server = serve(settings(faulty, tmp_path, job_workers=0))
    job_id = submit(server, "csv", "orders", {"limit": "1"})
    requests = {
        "POST /jobs": lambda: httpx.post(f"{server.url}/jobs", json={"dataset": "orders", "format": "csv"}),
        "GET /jobs": lambda: httpx.get(f"{server.url}/jobs"),
        "GET /jobs/{id}": lambda: httpx.get(f"{server.url}/jobs/{job_id}"),
        "GET /jobs/{id}/events": lambda: httpx.get(f"{server.url}/jobs/{job_id}/events"),
        "respond-async": lambda: httpx.get(f"{server.url}/exports/orders.csv", headers={"Prefer": "respond-async"}),
        "GET /exports": lambda: httpx.get(f"{server.url}/exports/orders.csv"),
    }
    with cluster.down(3, "fast"):
        for name, request in requests.items():
            response = request()
            assert response.status_code == 503, (name, response.text)
            assert response.headers["content-type"] == "application/json", name
            assert response.json()["error"]["code"] == "database_unavailable", name
            assert response.headers["retry-after"] == "5", name
        # from the probe's next round, within a few seconds
        unready = wait_for(lambda: (answer := ready(server)).json()["databases"]["service"] == "unreachable"
                           and answer, DEADLINE_SECONDS)
        assert unready.status_code == 503
    back = wait_for(lambda: (answer := ready(server)).status_code == 200 and answer, DEADLINE_SECONDS)
    assert set(back.json()["loops"].values()) == {"up"}
    assert httpx.get(f"{server.url}/jobs/{job_id}").status_code == 200


def test_a_loop_the_outage_kills_is_started_again_and_counted_in_metrics(
    cluster: Cluster, faulty: Database, serve: Serve, tmp_path: Path
) -> None:
    """The notification listener ends when its connection is lost: the supervisor starts it again."""
    server = serve(settings(faulty, tmp_path))
    before = metric(server, "exporter_background_loop_restarts_total", "job-listener")
    assert metric(server, "exporter_background_loop_up", "job-listener") == 1
    with cluster.down(3, "fast"):
        down = wait_for(lambda: (answer := ready(server)).json()["loops"]["job-listener"] == "down" and answer,
                        DEADLINE_SECONDS)
        assert down.status_code == 503
    wait_for(lambda: ready(server).status_code == 200, DEADLINE_SECONDS)
    assert metric(server, "exporter_background_loop_restarts_total", "job-listener") > before
    assert metric(server, "exporter_background_loop_up", "job-listener") == 1


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_a_job_that_loses_its_database_on_every_attempt_fails_database_unavailable_with_the_cause(
    faulty: Database, serve: Serve, tmp_path: Path, fmt: str
) -> None:
    make_slow(faulty)
    server = serve(settings(faulty, tmp_path, job_lease_seconds=30))
    job_id = submit(server, fmt)
    for attempt in range(1, MAX_ATTEMPTS + 1):
        wait_for(lambda: (found := job(server, job_id))["attempt"] == attempt and found["rows"] > 0,  # noqa: B023
                 DEADLINE_SECONDS)
        faulty.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'exporter'"
                       " AND datname = current_database() AND pid <> pg_backend_pid()")
    done = finished(server, job_id)
    assert (done["state"], done["attempt"], done["error"]["code"]) == ("failed", MAX_ATTEMPTS, "database_unavailable")
    assert "terminating connection due to administrator command" in done["error"]["message"]
    assert not list((tmp_path / "jobs").iterdir())
