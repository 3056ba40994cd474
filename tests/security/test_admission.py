"""The per-key concurrency limit holds under any concurrency: simultaneous downloads and job submissions of one key,
on one server and across two servers (replicas, or the processes of `--workers N`) sharing one database."""

from __future__ import annotations

import os
import subprocess
import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx

from tests.conftest import Database
from tests.helpers import bearer, create_key, wait_for
from tests.servers import ServerThread, free_port
from tests.test_logs import EXPORTER, _up
from tests.upstreams import sparse_file

RACERS = 12
BIG = "/files/r/big.bin"  # 256 MiB: the admitted download is still being sent while the others are refused
JOB = {"dataset": "orders", "format": "csv"}


@contextmanager
def race(requests: list[Callable[[httpx.Client], httpx.Response]]) -> Iterator[list[httpx.Response]]:
    """Send the requests at once, one thread each, released together by a barrier; yield their answers (heads
    only, the bodies left unread, so an admitted download keeps its place) and close them afterwards."""
    barrier = threading.Barrier(len(requests))
    answers: list[httpx.Response | BaseException] = [RuntimeError("no answer")] * len(requests)
    done = threading.Event()
    heads = threading.Barrier(len(requests) + 1)

    def run(index: int) -> None:
        with httpx.Client(timeout=30) as client:
            barrier.wait()
            try:
                answers[index] = requests[index](client)
            except BaseException as error:  # reported by the test's thread
                answers[index] = error
            heads.wait()
            done.wait(60)
            response = answers[index]
            if isinstance(response, httpx.Response):
                response.close()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(requests))]
    for thread in threads:
        thread.start()
    try:
        heads.wait(60)
        for answer in answers:
            if isinstance(answer, BaseException):
                raise answer
        yield [a for a in answers if isinstance(a, httpx.Response)]
    finally:
        done.set()
        for thread in threads:
            thread.join(60)


def download(server: ServerThread, token: str) -> Callable[[httpx.Client], httpx.Response]:
    def send(client: httpx.Client) -> httpx.Response:
        return client.send(client.build_request("GET", server.url + BIG, headers=bearer(token)), stream=True)

    return send


def submission(server: ServerThread, token: str) -> Callable[[httpx.Client], httpx.Response]:
    return lambda client: client.post(f"{server.url}/jobs", json=JOB, headers=bearer(token))


def statuses(responses: list[httpx.Response]) -> list[int]:
    return sorted(response.status_code for response in responses)


def refusals_are_429_too_many_requests(responses: list[httpx.Response]) -> None:
    for response in responses:
        if response.status_code == 429:
            response.read()
            assert response.json()["error"]["code"] == "too_many_requests"
            assert response.headers["retry-after"] == "5"
            assert response.headers["ratelimit-policy"] == '"concurrency";q=1'


def unfinished_jobs(pg: Database) -> int:
    return int(pg.execute("SELECT count(*) FROM jobs WHERE state IN ('queued', 'running')")[0][0])


def test_simultaneous_downloads_of_a_key_with_max_concurrent_1_admit_exactly_one(
    pg: Database, secured: Callable[..., ServerThread]
) -> None:
    server = secured(job_workers=0)
    token = create_key(pg, "one", "files:r", max_concurrent=1)
    with race([download(server, token)] * RACERS) as responses:
        assert statuses(responses) == [200] + [429] * (RACERS - 1)
        refusals_are_429_too_many_requests(responses)
    wait_for(lambda: httpx.get(server.url + "/files/r/a.txt", headers=bearer(token)).status_code == 200)


def test_simultaneous_job_submissions_of_a_key_with_max_concurrent_1_create_exactly_one_job(
    pg: Database, secured: Callable[..., ServerThread]
) -> None:
    server = secured(job_workers=0)  # no worker: the one job stays queued, and counts
    token = create_key(pg, "one", "dataset:orders", max_concurrent=1)
    with race([submission(server, token)] * RACERS) as responses:
        assert statuses(responses) == [202] + [429] * (RACERS - 1)
        refusals_are_429_too_many_requests(responses)
    assert unfinished_jobs(pg) == 1


def test_the_limit_holds_across_two_servers_on_one_database(
    pg: Database, secured: Callable[..., ServerThread]
) -> None:
    one, two = secured(job_workers=0), secured(job_workers=0)
    token = create_key(pg, "one", "dataset:orders", "files:r", max_concurrent=1)
    with race([download(one, token), download(two, token)] * (RACERS // 2)) as responses:
        assert statuses(responses) == [200] + [429] * (RACERS - 1)
    wait_for(lambda: httpx.get(two.url + "/files/r/a.txt", headers=bearer(token)).status_code == 200)
    with race([submission(one, token), submission(two, token)] * (RACERS // 2)) as responses:
        assert statuses(responses) == [202] + [429] * (RACERS - 1)
    assert unfinished_jobs(pg) == 1
    # The queued job holds the key's one place on both servers, for downloads too.
    for server in (one, two):
        refused = httpx.get(server.url + "/files/r/a.txt", headers=bearer(token))
        assert (refused.status_code, refused.json()["error"]["code"]) == (429, "too_many_requests")


def test_a_download_held_on_one_server_refuses_a_job_on_the_other(
    pg: Database, secured: Callable[..., ServerThread]
) -> None:
    one, two = secured(job_workers=0), secured(job_workers=0)
    token = create_key(pg, "one", "dataset:orders", "files:r", max_concurrent=1)
    with ExitStack() as stack:
        client = stack.enter_context(httpx.Client(timeout=30))
        held = stack.enter_context(client.stream("GET", one.url + BIG, headers=bearer(token)))
        assert held.status_code == 200
        refused = httpx.post(f"{two.url}/jobs", json=JOB, headers=bearer(token))
        assert (refused.status_code, refused.json()["error"]["code"]) == (429, "too_many_requests")
        assert httpx.get(two.url + "/files/r/a.txt", headers=bearer(token)).status_code == 429
    # Released when the download ends, on every server.
    wait_for(lambda: httpx.get(two.url + "/files/r/a.txt", headers=bearer(token)).status_code == 200)
    assert httpx.post(f"{two.url}/jobs", json=JOB, headers=bearer(token)).status_code == 202


def test_simultaneous_submissions_and_downloads_admit_exactly_one_on_either_database(
    db: Database, serve: Callable[..., ServerThread], tmp_path: Path
) -> None:
    db.execute("DELETE FROM api_keys", "DELETE FROM job_events", "DELETE FROM jobs")
    db.seed_demo(50_000)
    server = serve(db.settings(auth="required", job_workers=0, jobs_dir=str(tmp_path / "jobs"), batch_rows=100))
    token = create_key(db, "one", "dataset:orders", max_concurrent=1)
    export = "/exports/orders.ndjson"

    def stream(client: httpx.Client) -> httpx.Response:
        return client.send(client.build_request("GET", server.url + export, headers=bearer(token)), stream=True)

    with race([stream, submission(server, token)] * (RACERS // 2)) as responses:
        assert statuses(responses).count(429) == RACERS - 1
        assert {200, 202} & set(statuses(responses))


def test_the_limit_holds_across_the_processes_of_serve_with_two_workers(
    pg: Database, secured: Callable[..., ServerThread], tmp_path: Path
) -> None:
    secured(job_workers=0)  # the fixture's database (no keys, no jobs, 2,000 orders); the CLI serves it here
    root = tmp_path / "served"
    root.mkdir()
    sparse_file(root / "big.bin", 256 * 1024 * 1024, b"end")
    config = tmp_path / "exporter.toml"
    config.write_text(f'[datasets.orders]\ntable = "orders"\nkey = "id"\n\n[files.roots]\nr = "{root}"\n')
    token = create_key(pg, "one", "dataset:orders", "files:r", max_concurrent=1)
    port = free_port()
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("EXPORTER_")},
           "EXPORTER_DATABASE_URL": pg.url, "EXPORTER_CONFIG": str(config), "EXPORTER_JOB_WORKERS": "0",
           "EXPORTER_JOBS_DIR": str(tmp_path / "jobs")}
    server = subprocess.Popen([EXPORTER, "serve", "--port", str(port), "--workers", "2"], env=env,
                              stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    close = {"Connection": "close"}  # a new connection each: the kernel hands them to either process

    def download(client: httpx.Client) -> httpx.Response:
        return client.send(client.build_request("GET", url + BIG, headers=bearer(token) | close), stream=True)

    def submission(client: httpx.Client) -> httpx.Response:
        return client.post(f"{url}/jobs", json=JOB, headers=bearer(token) | close)

    try:
        wait_for(lambda: _up(url), 60)
        with race([download] * RACERS) as responses:
            assert statuses(responses) == [200] + [429] * (RACERS - 1)
        wait_for(lambda: httpx.get(url + "/files/r/big.bin", headers=bearer(token) | close | {"Range": "bytes=0-0"}
                                   ).status_code == 206)
        with race([submission] * RACERS) as responses:
            assert statuses(responses) == [202] + [429] * (RACERS - 1)
    finally:
        server.terminate()
        server.communicate(timeout=60)
    assert server.returncode == 0
    assert unfinished_jobs(pg) == 1


def test_an_idempotent_retry_at_the_limit_returns_its_job_and_creates_nothing(
    pg: Database, secured: Callable[..., ServerThread]
) -> None:
    server = secured(job_workers=0)
    token = create_key(pg, "one", "dataset:orders", max_concurrent=1)
    headers = bearer(token) | {"Idempotency-Key": "nightly-1"}
    first = httpx.post(f"{server.url}/jobs", json=JOB, headers=headers)
    again = httpx.post(f"{server.url}/jobs", json=JOB, headers=headers)
    assert (first.status_code, again.status_code) == (202, 200)
    assert again.json()["id"] == first.json()["id"]
    assert httpx.post(f"{server.url}/jobs", json=JOB, headers=bearer(token)).status_code == 429
    assert unfinished_jobs(pg) == 1
