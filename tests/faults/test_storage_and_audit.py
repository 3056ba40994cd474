"""A results folder on a small tmpfs fills up: the job fails with storage_full and leaves no file behind, its
export log row says it failed, the service stays healthy, and a job runs once space is free again."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from exporter.config import Settings
from tests.conftest import Database
from tests.helpers import wait_for
from tests.servers import ServerThread

Serve = Callable[[Settings], ServerThread]
DISK_BYTES = 1024 * 1024
ROOM_BYTES = 64 * 1024  # what the filler leaves free: less than either job's result, more than a small one's
ROWS = 150_000  # about 2.2 MB of Parquet and more of CSV: neither fits the empty disk
# Results under a write's megabyte (WRITE_BYTES) that overflow the room: written at once after the last chunk.
UNDER_A_WRITE = {"limit": "8000"}
TERMINAL = {"succeeded", "failed", "cancelled", "expired"}


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs, nearly filled by the file `filler` (ROOM_BYTES stay free)."""
    folder = tmp_path / "jobs"
    folder.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={DISK_BYTES}", "tmpfs", str(folder)], check=True)
    try:
        (folder / "filler").write_bytes(b"\0" * (DISK_BYTES - ROOM_BYTES))
        yield folder
    finally:
        subprocess.run(["umount", "--lazy", str(folder)], check=True)


def submit(server: ServerThread, fmt: str, params: dict[str, str] | None = None) -> str:
    response = httpx.post(f"{server.url}/jobs", json={"dataset": "orders", "format": fmt, "params": params or {}})
    assert response.status_code == 202, response.text
    job_id: str = response.json()["id"]
    return job_id


def finished(server: ServerThread, job_id: str) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        found: dict[str, Any] = httpx.get(f"{server.url}/jobs/{job_id}").json()
        return found if found["state"] in TERMINAL else None

    found: dict[str, Any] = wait_for(done, 120)
    return found


def job_runs(db: Database, job_id: str) -> list[dict[str, Any]]:
    rows = db.execute("SELECT * FROM export_log WHERE kind = 'job_run' AND resource = :id ORDER BY id", id=job_id)
    return [dict(row._mapping) for row in rows]


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
@pytest.mark.parametrize("room", ["nearly_full", "empty"])
def test_a_job_whose_results_disk_fills_fails_with_storage_full_and_the_service_stays_healthy(
        faulty: Database, serve: Serve, small_disk: Path, fmt: str, room: str) -> None:
    # nearly_full: the whole result is one write after the last chunk (where its row used to say completed);
    # empty: the disk fills in the middle of the result.
    if room == "empty":
        (small_disk / "filler").unlink()
    faulty.seed_demo(ROWS)
    server = serve(faulty.settings(jobs_dir=str(small_disk), job_workers=1))

    job = finished(server, submit(server, fmt, UNDER_A_WRITE if room == "nearly_full" else None))

    assert job["state"] == "failed" and job["error"]["code"] == "storage_full", (job["bytes"], job["rows"], job)
    assert "/" not in job["error"]["message"]  # no server path in what the client reads
    assert sorted(p.name for p in small_disk.iterdir()) == ([] if room == "empty" else ["filler"])
    result = httpx.get(f"{server.url}/jobs/{job['id']}/result")
    assert (result.status_code, result.json()["error"]["code"]) == (409, "job_failed")
    assert httpx.get(f"{server.url}/healthz").status_code == 200
    assert httpx.get(f"{server.url}/readyz").status_code == 200
    runs = wait_for(lambda: job_runs(faulty, job["id"]))
    assert [(r["outcome"], (r["error"] or "").split(":")[0]) for r in runs] == [("failed", "StorageFull")]

    (small_disk / "filler").unlink(missing_ok=True)
    small = finished(server, submit(server, fmt, {"limit": "10"}))
    assert small["state"] == "succeeded", small
    assert httpx.get(f"{server.url}/jobs/{small['id']}/result").status_code == 200
    assert [r["outcome"] for r in wait_for(lambda: job_runs(faulty, small["id"]))] == ["completed"]
