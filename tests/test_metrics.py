"""GET /metrics over a real server: every download is counted once, however it ended, for each kind."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from exporter.config import Settings
from tests.conftest import Database
from tests.helpers import bearer, create_key, wait_for
from tests.jobs.test_jobs import SLOW, TERMINAL, make_slow
from tests.servers import ChunkedReader, ServerThread
from tests.upstreams import RawServer, closed_port, drop, endless, files_upstream, sparse_file

Serve = Callable[[Settings], ServerThread]


def samples(server: ServerThread, headers: dict[str, str] | None = None) -> dict[tuple[str, frozenset[Any]], float]:
    response = httpx.get(f"{server.url}/metrics", headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(response.text) for sample in family.samples}


def value(found: dict[tuple[str, frozenset[Any]], float], name: str, **labels: str) -> float:
    return found.get((name, frozenset(labels.items())), 0.0)


@pytest.fixture
def upstream(tmp_path: Path) -> Iterator[ServerThread]:
    directory = tmp_path / "upstream"
    directory.mkdir()
    (directory / "a.txt").write_text("upstream a\n")
    with files_upstream(directory, tmp_path / "upstream.db") as server:
        yield server


def test_downloads_are_counted_once_by_kind_and_outcome(pg: Database, serve: Serve, tmp_path: Path,
                                                        upstream: ServerThread) -> None:
    pg.seed_demo(1000)
    make_slow(pg)
    root = tmp_path / "root"
    root.mkdir()
    (root / "a.txt").write_text("file a\n")
    sparse_file(root / "big.bin", 64 * 1024 * 1024, b"end")
    server = serve(pg.settings(datasets=SLOW, batch_rows=100, jobs_dir=str(tmp_path / "jobs"),
                               files={"roots": {"r": str(root)}},
                               upstreams={"up": {"base_url": f"{upstream.url}/files/r"},
                                          "down": {"base_url": f"http://127.0.0.1:{closed_port()}"}}))
    before = samples(server)

    assert httpx.get(f"{server.url}/exports/orders.csv", params={"limit": "10"}).status_code == 200
    with httpx.stream("GET", f"{server.url}/exports/slow.csv") as response:  # the client leaves
        next(response.iter_raw())
    output = tmp_path / "slow.csv"
    curl = subprocess.Popen(["curl", "-sS", "-o", str(output), f"{server.url}/exports/slow.ndjson"])
    wait_for(lambda: output.exists() and output.stat().st_size > 0)
    pg.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'exporter'"
               " AND datname = current_database() AND pid <> pg_backend_pid()")
    assert curl.wait(timeout=60) == 18
    assert httpx.get(f"{server.url}/files/r/a.txt").text == "file a\n"
    with httpx.stream("GET", f"{server.url}/files/r/big.bin") as response:
        next(response.iter_raw())
    assert httpx.get(f"{server.url}/proxy/up/a.txt").text == "upstream a\n"
    assert httpx.get(f"{server.url}/proxy/down/a.txt").status_code == 502
    job = httpx.post(f"{server.url}/jobs", json={"dataset": "orders", "format": "csv"}).json()
    done = wait_for(lambda: (j := httpx.get(f"{server.url}/jobs/{job['id']}").json())["state"] in TERMINAL and j, 60)
    result = httpx.get(server.url + done["result"]["url"])

    expected = [("export", "orders", "csv", "completed"), ("export", "slow", "csv", "aborted"),
                ("export", "slow", "ndjson", "failed"), ("file", "r", "file", "completed"),
                ("file", "r", "file", "aborted"), ("relay", "up", "relay", "completed"),
                ("job_result", "orders", "csv", "completed")]
    # The relay's upstream is the service's own /files in this process (root `r` too), so its file download is
    # counted in the same registry: two completed file downloads of `r`.
    times = {("file", "r", "file", "completed"): 2}

    def moved() -> bool:
        after = samples(server)
        return all(value(after, "exporter_downloads_total", kind=k, dataset_or_root=n, format=f, outcome=o)
                   - value(before, "exporter_downloads_total", kind=k, dataset_or_root=n, format=f, outcome=o)
                   == times.get((k, n, f, o), 1) for k, n, f, o in expected)

    wait_for(moved)  # each row is counted as its stream closes
    after = samples(server)
    assert value(after, "exporter_rows_sent_total", dataset="orders") - value(
        before, "exporter_rows_sent_total", dataset="orders") >= 10
    assert value(after, "exporter_bytes_sent_total", kind="job_result") - value(
        before, "exporter_bytes_sent_total", kind="job_result") == len(result.content)
    assert value(after, "exporter_upstream_errors_total", upstream="down", reason="unreachable") - value(
        before, "exporter_upstream_errors_total", upstream="down", reason="unreachable") == 1
    assert value(after, "exporter_download_duration_seconds_count", kind="export") - value(
        before, "exporter_download_duration_seconds_count", kind="export") == 3
    assert value(after, "exporter_first_byte_seconds_count", kind="file") > 0
    assert value(after, "exporter_jobs", state="succeeded") >= 1
    assert value(after, "exporter_job_queue_wait_seconds_count") >= 1
    assert ("exporter_active_streams", frozenset({("kind", "export")})) in after
    assert ("exporter_db_pool_in_use", frozenset({("database", "service")})) in after
    assert value(after, "process_resident_memory_bytes") > 0
    assert "token" not in httpx.get(f"{server.url}/metrics").text.lower()


def test_metrics_need_the_metrics_grant_and_count_refusals(pg: Database, serve: Serve, tmp_path: Path) -> None:
    pg.execute("DELETE FROM api_keys")
    server = serve(pg.settings(auth="required", jobs_dir=str(tmp_path / "jobs")))
    reader = create_key(pg, "reader", "dataset:orders")
    prometheus = create_key(pg, "prometheus", "metrics")
    assert httpx.get(f"{server.url}/metrics").status_code == 401
    assert httpx.get(f"{server.url}/metrics", headers=bearer(reader)).status_code == 403
    before = samples(server, bearer(prometheus))
    assert httpx.get(f"{server.url}/exports/orders.csv").status_code == 401
    after = samples(server, bearer(prometheus))
    labels = {"kind": "export", "dataset_or_root": "orders", "format": "", "outcome": "denied"}
    assert value(after, "exporter_downloads_total", **labels) - value(before, "exporter_downloads_total", **labels) == 1


def test_relays_files_and_results_that_break_off_or_are_left_are_counted_too(
    pg: Database, serve: Serve, tmp_path: Path
) -> None:
    pg.seed_demo(100_000)  # a result of several file chunks
    root = tmp_path / "root"
    root.mkdir()
    big = sparse_file(root / "big.bin", 256 * 1024 * 1024, b"end")
    with RawServer(drop(b"x" * 100_000, 1_000_000)) as dropping, RawServer(endless) as forever:
        server = serve(pg.settings(jobs_dir=str(tmp_path / "jobs"), files={"roots": {"r": str(root)}},
                                   file_chunk_bytes=1024 * 1024,
                                   upstreams={"drops": {"base_url": dropping.url},
                                              "endless": {"base_url": forever.url}}))
        job = httpx.post(f"{server.url}/jobs", json={"dataset": "orders", "format": "csv"}).json()
        done = wait_for(lambda: (j := httpx.get(f"{server.url}/jobs/{job['id']}").json())["state"] in TERMINAL and j,
                        60)
        result_url = server.url + done["result"]["url"]
        before = samples(server)

        with pytest.raises(httpx.HTTPError), httpx.stream("GET", f"{server.url}/proxy/drops/x") as response:
            response.read()
        with httpx.stream("GET", f"{server.url}/proxy/endless/x") as response:
            next(response.iter_raw())
        with ChunkedReader.connect(server.url, done["result"]["url"]):  # a small receive buffer, never read
            wait_for(lambda: value(samples(server), "exporter_active_streams", kind="job_result") == 1)
        for url, path in ((f"{server.url}/files/r/big.bin", big),
                          (result_url, tmp_path / "jobs" / f"{job['id']}.csv")):
            with pytest.raises(httpx.HTTPError), httpx.stream("GET", url) as response:
                chunks = response.iter_raw()
                next(chunks)
                os.truncate(path, 1024)  # the file changes under the download: it fails, never ends cleanly
                for _ in chunks:
                    pass

        expected = [("relay", "drops", "failed"), ("relay", "endless", "aborted"), ("job_result", "orders", "aborted"),
                    ("file", "r", "failed"), ("job_result", "orders", "failed")]

        def moved() -> bool:
            after = samples(server)
            return all(sum(v for (name, labels), v in after.items() if name == "exporter_downloads_total"
                           and {("kind", k), ("dataset_or_root", n), ("outcome", o)} <= labels)
                       - sum(v for (name, labels), v in before.items() if name == "exporter_downloads_total"
                             and {("kind", k), ("dataset_or_root", n), ("outcome", o)} <= labels) == 1
                       for k, n, o in expected)

        wait_for(moved)
        after = samples(server)
        assert value(after, "exporter_upstream_errors_total", upstream="drops", reason="broke_off") - value(
            before, "exporter_upstream_errors_total", upstream="drops", reason="broke_off") == 1
