"""Export jobs across replicas: real `exporter serve` and `exporter worker` processes on one PostgreSQL, sharing
the jobs, their events and the results directory; killed and terminated as production kills them."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from httpx_sse import ServerSentEvent, connect_sse
from sqlalchemy.engine import make_url

from exporter.config import DEFAULT_CONFIG
from exporter.jobs.wakeups import CHANNEL, QUEUE
from tests.conftest import Database
from tests.helpers import wait_for
from tests.servers import free_port

EXPORTER = str(Path(sys.executable).with_name("exporter"))
LIFECYCLE = ("queued", "running", "succeeded")
SLOW_PARAMS = {"columns": "id,digest"}


@pytest.fixture
def pg(pg: Database) -> Database:
    """PostgreSQL with no jobs left by other tests, the demo orders, and the view `slow`: rows trickle out in key
    order (every 1000th waits 20 ms, about 4 s in all), so a job of it is still running when the test acts."""
    pg.execute(
        "DELETE FROM jobs", "DELETE FROM export_log",
        "DROP VIEW IF EXISTS slow", "DROP TABLE IF EXISTS slow_rows",
        "CREATE TABLE slow_rows AS SELECT g::bigint AS id, md5(g::text) AS digest FROM generate_series(1, 200000) g",
        "ALTER TABLE slow_rows ADD PRIMARY KEY (id)",
        "CREATE VIEW slow AS SELECT * FROM slow_rows WHERE id % 1000 <> 0 OR pg_sleep(0.02)::text = ''",
    )
    pg.seed_demo(20_000)
    return pg


@dataclass
class Replica:
    """One `exporter` process; `url` is None for `exporter worker`, which serves no HTTP."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path
    url: str | None

    @property
    def pid(self) -> int:
        return self.process.pid

    def output(self) -> str:
        """The end of its log, for failure messages."""
        return f"--- {self.name} (pid {self.pid}) ---\n" + self.log.read_text(errors="replace")[-6000:]

    def http(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        assert self.url is not None
        return httpx.request(method, f"{self.url}{path}", timeout=30, **kwargs)


@dataclass
class Replicas:
    """Starts replicas on one database and one jobs directory; kills every one still running at the end."""

    database_url: str
    tmp_path: Path
    started: list[Replica] = field(default_factory=list)

    @property
    def jobs_dir(self) -> Path:
        return self.tmp_path / "jobs"

    def environ(self, **settings: str) -> dict[str, str]:
        config = self.tmp_path / "exporter.toml"
        if not config.exists():
            config.write_text(DEFAULT_CONFIG.read_text() + '\n[datasets.slow]\ntable = "slow"\nkey = "id"\n')
        env = {name: value for name, value in os.environ.items() if not name.startswith("EXPORTER_")}
        # The lease is the service's default unless a test is about leases: a replica stalled for a moment on
        # this shared machine must not lose its job to another and turn a test about something else flaky.
        env.update({"EXPORTER_DATABASE_URL": self.database_url, "EXPORTER_CONFIG": str(config), "EXPORTER_AUTH": "off",
                    "EXPORTER_JOBS_DIR": str(self.jobs_dir)})
        env.update({f"EXPORTER_{name.upper()}": value for name, value in settings.items()})
        return env

    def serve(self, name: str, **settings: str) -> Replica:
        """`exporter serve` on a free port, once /healthz answers (its lifespan, workers included, has started)."""
        port = free_port()
        replica = self._start(name, ["serve", "--host", "127.0.0.1", "--port", str(port)], settings)
        replica.url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{replica.url}/healthz", timeout=5).status_code == 200:
                    return replica
            except httpx.TransportError:
                pass
            if replica.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"{name} did not start\n{replica.output()}")
            time.sleep(0.05)

    def worker(self, name: str, **settings: str) -> Replica:
        return self._start(name, ["worker"], settings)

    def _start(self, name: str, args: list[str], settings: dict[str, str]) -> Replica:
        log = self.tmp_path / f"{name}.log"
        with log.open("wb") as output:
            process = subprocess.Popen([EXPORTER, *args], env=self.environ(**settings), stdout=output,
                                       stderr=subprocess.STDOUT)
        replica = Replica(name, process, log, None)
        self.started.append(replica)
        return replica

    def logs(self) -> str:
        return "\n".join(replica.output() for replica in self.started)

    def kill_all(self) -> None:
        for replica in self.started:
            if replica.process.poll() is None:
                replica.process.kill()
        for replica in self.started:
            replica.process.wait(timeout=30)


@pytest.fixture
def replicas(pg: Database, tmp_path: Path) -> Iterator[Replicas]:
    started = Replicas(pg.url, tmp_path)
    try:
        yield started
    finally:
        started.kill_all()


class Notifications:
    """The payloads NOTIFYed on the jobs' channel, as a LISTEN connection of the test's own receives them (in a
    thread with its own event loop)."""

    def __init__(self, database_url: str) -> None:
        self.payloads: list[str] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        url = make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False)
        self._conn = self._call(self._listen(url))

    async def _listen(self, url: str) -> asyncpg.Connection:
        conn = await asyncpg.connect(url)
        await conn.add_listener(CHANNEL, lambda _conn, _pid, _channel, payload: self.payloads.append(payload))
        return conn

    def _call(self, work: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(work, self._loop).result(timeout=10)

    def close(self) -> None:
        self._call(self._conn.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()


@pytest.fixture
def notifications(pg: Database) -> Iterator[Notifications]:
    listener = Notifications(pg.url)
    try:
        yield listener
    finally:
        listener.close()


def submit(replica: Replica, dataset: str, fmt: str, params: dict[str, str]) -> dict[str, Any]:
    response = replica.http("POST", "/jobs", json={"dataset": dataset, "format": fmt, "params": params})
    assert response.status_code == 202, response.text
    job: dict[str, Any] = response.json()
    assert job["state"] == "queued"
    return job


def job_on(replica: Replica, job_id: str) -> dict[str, Any]:
    response = replica.http("GET", f"/jobs/{job_id}")
    assert response.status_code == 200, response.text
    job: dict[str, Any] = response.json()
    return job


def wait_for_job(replicas: Replicas, replica: Replica, job_id: str, state: str, seconds: float = 60
                 ) -> dict[str, Any]:
    """The job once `replica` shows it in `state`; the replicas' logs if it never gets there."""
    try:
        job: dict[str, Any] = wait_for(lambda: (job := job_on(replica, job_id))["state"] == state and job, seconds)
    except AssertionError:
        raise AssertionError(f"job {job_id} is {job_on(replica, job_id)}, not {state}\n{replicas.logs()}") from None
    return job


def lease_holder(pg: Database, job_id: str) -> int | None:
    """The pid of the process whose worker runs the job (a lease owner is host:pid:token:worker), if it runs."""
    rows = pg.execute("SELECT lease_owner FROM jobs WHERE id = :id AND state = 'running'", id=job_id)
    return int(rows[0].lease_owner.split(":")[-3]) if rows and rows[0].lease_owner else None


def running_with_rows(pg: Database, replica: Replica, job_id: str) -> int | None:
    """The pid running the job once it has written rows (so it is mid-way), else None."""
    job = job_on(replica, job_id)
    return lease_holder(pg, job_id) if job["state"] == "running" and job["rows"] > 0 else None


def export_backends(pg: Database) -> list[int]:
    """Our sessions that are running an export query or hold its transaction open."""
    rows = pg.execute(
        "SELECT pid FROM pg_stat_activity WHERE application_name = 'exporter' AND datname = current_database()"
        " AND state IN ('active', 'idle in transaction', 'idle in transaction (aborted)') AND pid <> pg_backend_pid()"
    )
    return [row.pid for row in rows]


def export_sha256(replica: Replica, dataset: str, fmt: str, params: dict[str, str]) -> str:
    """The sha256 of the synchronous GET /exports/{dataset}.{fmt} with the same parameters, read as it streams."""
    assert replica.url is not None
    digest = hashlib.sha256()
    # identity: httpx asks for gzip by default, and the service would compress the export for it.
    with httpx.stream("GET", f"{replica.url}/exports/{dataset}.{fmt}", params=params, timeout=60,
                      headers={"Accept-Encoding": "identity"}) as response:
        assert response.status_code == 200
        for chunk in response.iter_raw():
            digest.update(chunk)
    return digest.hexdigest()


def result_sha256(replica: Replica, job: dict[str, Any]) -> str:
    response = replica.http("GET", job["result"]["url"], headers={"Accept-Encoding": "identity"})
    assert response.status_code == 200, response.text
    assert "content-encoding" not in response.headers
    assert len(response.content) == job["result"]["size"]
    return hashlib.sha256(response.content).hexdigest()


@dataclass(frozen=True)
class Event:
    id: int
    type: str
    data: dict[str, Any]


def parse_events(received: Iterator[ServerSentEvent]) -> Iterator[Event]:
    """The dispatched events of a job's stream, after its opening `retry:` field."""
    opening = next(received)
    assert (opening.retry, opening.data) == (3000, "")
    for sse in received:
        yield Event(int(sse.id), sse.event, json.loads(sse.data))


@dataclass
class Stream:
    """A job's event stream read by httpx-sse in a thread, so the test can act while events arrive. `done` is set
    when the server closes the stream; `error` holds what broke it otherwise."""

    url: str
    headers: dict[str, str] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)
    done: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None

    def __post_init__(self) -> None:
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            with httpx.Client(timeout=httpx.Timeout(30)) as client, \
                    connect_sse(client, "GET", self.url, headers=dict(self.headers)) as source:
                assert source.response.status_code == 200
                for event in parse_events(source.iter_sse()):
                    self.events.append(event)
        except BaseException as error:
            self.error = error
        finally:
            self.done.set()

    def wait_closed(self, seconds: float = 60) -> list[Event]:
        """Every event, once the server has closed the stream."""
        assert self.done.wait(seconds), f"the stream is still open after {seconds} s: {self.events}"
        self._thread.join()
        assert self.error is None, repr(self.error)
        return self.events


def stored_events(replica: Replica, job_id: str) -> list[Event]:
    """A finished job's whole history, read from the start (`?last_event_id=0`) after the snapshot."""
    assert replica.url is not None
    with httpx.Client(timeout=30) as client, \
            connect_sse(client, "GET", f"{replica.url}/jobs/{job_id}/events", params={"last_event_id": "0"}) as source:
        events = list(parse_events(source.iter_sse()))
    assert events[0].id == 0  # the snapshot
    return events[1:]


def assert_well_formed(events: list[Event]) -> None:
    """Ids increase strictly; a snapshot opens the stream and exactly one terminal event ends it."""
    ids = [event.id for event in events]
    assert ids == sorted(set(ids)), ids
    assert events[0].type == "state"
    assert events[-1].type in ("succeeded", "failed", "cancelled", "expired")
    assert [event.type for event in events[:-1]].count(events[-1].type) == 0


@pytest.mark.parametrize("copy_fast_path", ["true", "false"], ids=["copy", "generic"])
def test_job_submitted_on_a_replica_without_workers_runs_on_another_and_streams_there_in_order(
    replicas: Replicas, pg: Database, copy_fast_path: str
) -> None:
    a = replicas.serve("a", job_workers="0", copy_fast_path=copy_fast_path)
    b = replicas.serve("b", job_workers="1", copy_fast_path=copy_fast_path)
    job = submit(a, "slow", "csv", SLOW_PARAMS)
    stream = Stream(f"{b.url}{job['events_url']}")
    events = stream.wait_closed()

    assert_well_formed(events)
    assert events[0].data["state"] in ("queued", "running")
    states = [event.data["state"] for event in events if event.type == "state"]
    assert states == sorted(states, key=LIFECYCLE.index), states
    assert any(event.type == "progress" and event.data["rows"] > 0 for event in events), events
    succeeded = events[-1]
    assert succeeded.type == "succeeded"
    # What the stream on B saw live is exactly the end of the history the job stored, without a gap.
    history = stored_events(a, job["id"])
    assert [(e.id, e.type) for e in history if e.id > events[0].id] == [(e.id, e.type) for e in events[1:]]
    assert [e.data["state"] for e in history if e.type == "state"] == list(LIFECYCLE)
    assert succeeded.data["attempt"] == 1  # B's worker took it from the queue once, and A never ran it
    result = succeeded.data["result"]
    assert result["rows"] == 200_000
    expected = export_sha256(a, "slow", "csv", SLOW_PARAMS)
    assert result_sha256(a, succeeded.data) == result["sha256"] == expected
    assert job_on(a, job["id"])["result"] == result
    # The job took the path under test (a job's export has no client address in the export log).
    logged = pg.execute("SELECT path, outcome FROM export_log WHERE dataset = 'slow' AND client_address IS NULL")
    assert [tuple(row) for row in logged] == [("copy" if copy_fast_path == "true" else "generic", "completed")]


def test_kill_9_of_the_process_running_a_job_makes_another_replica_run_it_again(
    replicas: Replicas, pg: Database, notifications: Notifications
) -> None:
    first = replicas.serve("first", job_lease_seconds="2")
    second = replicas.serve("second", job_lease_seconds="2")
    by_pid = {first.pid: first, second.pid: second}
    job = submit(first, "slow", "csv", SLOW_PARAMS)
    holder = by_pid[wait_for(lambda: running_with_rows(pg, first, job["id"]), seconds=30)]
    survivor = second if holder is first else first
    assert list(replicas.jobs_dir.glob("*.part"))  # the killed attempt's partial file

    announced = len(notifications.payloads)
    holder.process.send_signal(signal.SIGKILL)
    holder.process.wait(timeout=10)
    done = wait_for_job(replicas, survivor, job["id"], "succeeded")
    # The replica that found the lost job told every replica's idle workers, not only its own.
    assert QUEUE in notifications.payloads[announced:]

    assert done["attempt"] == 2
    assert done["result"]["rows"] == 200_000
    expected = export_sha256(survivor, "slow", "csv", SLOW_PARAMS)
    assert result_sha256(survivor, done) == done["result"]["sha256"] == expected
    try:
        wait_for(lambda: not list(replicas.jobs_dir.glob("*.part")), seconds=15)
    except AssertionError:
        raise AssertionError(f"left behind: {list(replicas.jobs_dir.glob('*.part'))}\n{replicas.logs()}") from None
    assert sorted(path.name for path in replicas.jobs_dir.iterdir()) == [f"{job['id']}.csv"]
    wait_for(lambda: not export_backends(pg))  # nor did the dead process's export query run on


def test_sigterm_hands_a_running_job_back_at_once_and_the_process_exits_despite_an_open_event_stream(
    replicas: Replicas, pg: Database, notifications: Notifications
) -> None:
    # A lease of a minute: only the hand-back can explain the job running again within the deadlines below.
    first = replicas.serve("first", job_lease_seconds="60")
    second = replicas.serve("second", job_lease_seconds="60")
    by_pid = {first.pid: first, second.pid: second}
    job = submit(first, "slow", "csv", SLOW_PARAMS)
    holder = by_pid[wait_for(lambda: running_with_rows(pg, first, job["id"]), seconds=30)]
    survivor = second if holder is first else first
    stream = Stream(f"{holder.url}{job['events_url']}")
    wait_for(lambda: stream.events)
    announced = len(notifications.payloads)

    holder.process.send_signal(signal.SIGTERM)
    try:
        assert holder.process.wait(timeout=30) == 0
    except subprocess.TimeoutExpired:
        raise AssertionError(f"{holder.name} did not exit on SIGTERM\n{holder.output()}") from None
    stream.done.wait(10)
    assert stream.done.is_set()  # the server ended the stream as it shut down
    # EventSource reconnects with Last-Event-ID, here to the replica that is left.
    resumed = Stream(f"{survivor.url}{job['events_url']}", headers={"Last-Event-ID": str(stream.events[-1].id)})
    rest = resumed.wait_closed()
    done = wait_for_job(replicas, survivor, job["id"], "succeeded", seconds=40)

    assert rest[0].id == stream.events[-1].id and rest[-1].type == "succeeded"
    assert_well_formed(rest)
    history = [(e.id, e.type) for e in stored_events(survivor, job["id"]) if e.id > stream.events[0].id]
    assert [(e.id, e.type) for e in stream.events[1:] + rest[1:]] == history  # no event lost or repeated
    assert done["attempt"] == 1  # the attempt handed back does not count
    # The hand-back woke the other replica's workers; its own were stopping.
    assert QUEUE in notifications.payloads[announced:]
    states = [(e.data["state"], e.data["attempt"]) for e in stored_events(survivor, job["id"]) if e.type == "state"]
    assert states == [("queued", 0), ("running", 1), ("queued", 0), ("running", 1), ("succeeded", 1)]
    expected = export_sha256(survivor, "slow", "csv", SLOW_PARAMS)
    assert result_sha256(survivor, done) == done["result"]["sha256"] == expected


def test_exporter_worker_without_http_runs_a_job_submitted_to_a_server_without_workers(
    replicas: Replicas, pg: Database
) -> None:
    server = replicas.serve("server", job_workers="0")
    params = {"status": "paid", "columns": "id,amount,created_at"}
    job = submit(server, "orders", "ndjson", params)
    worker = replicas.worker("worker", job_workers="1")  # started after the job was queued
    done = wait_for_job(replicas, server, job["id"], "succeeded")

    # The server has no workers and no other process runs any, so the worker ran it.
    assert "job workers: 1 running" in worker.log.read_text()
    assert done["attempt"] == 1
    expected = export_sha256(server, "orders", "ndjson", params)
    assert result_sha256(server, done) == done["result"]["sha256"] == expected
    worker.process.send_signal(signal.SIGTERM)
    assert worker.process.wait(timeout=30) == 0, worker.output()


def test_events_stored_on_one_replica_reach_a_stream_open_on_another_through_listen_notify(
    replicas: Replicas, pg: Database, notifications: Notifications
) -> None:
    a = replicas.serve("a", job_workers="0")
    b = replicas.serve("b", job_workers="0")
    # Each process listens on the channel its changes are announced on.
    listeners = wait_for(lambda: pg.execute(
        "SELECT count(*) AS n FROM pg_stat_activity WHERE datname = current_database()"
        " AND application_name = 'exporter-jobs' AND query LIKE 'LISTEN%'")[0].n == 2, seconds=10)
    assert listeners
    job = submit(a, "orders", "csv", {})
    stream = Stream(f"{b.url}{job['events_url']}")
    wait_for(lambda: stream.events)
    assert stream.events[0].data["state"] == "queued"

    announced = len(notifications.payloads)
    cancelled = a.http("DELETE", f"/jobs/{job['id']}")
    assert cancelled.json()["state"] == "cancelled"
    events = stream.wait_closed(30)

    assert_well_formed(events)
    assert [(e.type, e.data.get("state")) for e in events[1:]] == [("state", "cancelled"), ("cancelled", "cancelled")]
    assert job["id"] in notifications.payloads[announced:]  # A announced them on the channel B listens on


def test_delete_on_one_replica_cancels_the_job_running_on_another_and_leaves_nothing_behind(
    replicas: Replicas, pg: Database
) -> None:
    # A job of about 20 s, not the fixture's 4 s: on a loaded machine the steps up to the DELETE took longer than
    # 4 s, the export ended on its own and was logged completed. Now it ends only if B cancels it.
    pg.execute("CREATE OR REPLACE VIEW slow AS SELECT * FROM slow_rows"
               " WHERE id % 1000 <> 0 OR pg_sleep(0.1)::text = ''")
    a = replicas.serve("a", job_workers="0")
    b = replicas.serve("b", job_workers="1")
    job = submit(a, "slow", "csv", SLOW_PARAMS)
    assert wait_for(lambda: running_with_rows(pg, a, job["id"]), seconds=30) == b.pid
    stream = Stream(f"{b.url}{job['events_url']}")
    wait_for(lambda: stream.events)
    assert export_backends(pg)

    cancelled = a.http("DELETE", f"/jobs/{job['id']}")
    assert cancelled.json()["state"] == "cancelled"

    assert stream.wait_closed(30)[-1].type == "cancelled"
    wait_for(lambda: not export_backends(pg))  # B's query was cancelled, not left to run to its end
    wait_for(lambda: not list(replicas.jobs_dir.iterdir()))  # nor is a partial file left
    logged = wait_for(lambda: pg.execute("SELECT outcome FROM export_log WHERE client_address IS NULL"))
    assert [row.outcome for row in logged] == ["aborted"]
    assert job_on(b, job["id"])["state"] == "cancelled"
    assert b.http("GET", f"/jobs/{job['id']}/result").json()["error"]["code"] == "job_cancelled"


def test_sigterm_to_exporter_worker_puts_its_running_job_back_in_the_queue_before_it_exits(
    replicas: Replicas, pg: Database
) -> None:
    server = replicas.serve("server", job_workers="0", job_lease_seconds="60")
    job = submit(server, "slow", "csv", SLOW_PARAMS)
    first = replicas.worker("first", job_workers="1", job_lease_seconds="60")
    assert wait_for(lambda: running_with_rows(pg, server, job["id"]), seconds=30) == first.pid

    first.process.send_signal(signal.SIGTERM)
    assert first.process.wait(timeout=30) == 0, first.output()

    # Nothing else runs jobs yet, so the job waits in the queue as the worker left it: its attempt not counted,
    # its partial file gone, and no export query of it left running.
    queued = job_on(server, job["id"])
    assert (queued["state"], queued["attempt"], queued["rows"], queued["started_at"]) == ("queued", 0, 0, None)
    assert not list(replicas.jobs_dir.iterdir())
    wait_for(lambda: not export_backends(pg))
    second = replicas.worker("second", job_workers="1", job_lease_seconds="60")
    done = wait_for_job(replicas, server, job["id"], "succeeded")

    assert (done["attempt"], done["result"]["rows"]) == (1, 200_000)
    assert result_sha256(server, done) == done["result"]["sha256"]
    second.process.send_signal(signal.SIGTERM)
    assert second.process.wait(timeout=30) == 0, second.output()
