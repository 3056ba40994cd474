"""The supervising parent of `exporter serve --workers N` (issue 19, point 5): it imports only what supervising
needs, and each worker process imports the app itself."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import Database
from tests.faults.serving import exporter_serve

MOST_PARENT_RSS_KIB = 60 * 1024  # it was 202 MB with the whole app imported; about 35 MB with uvicorn alone
# Compiled libraries that only the app loads: Arrow (pyarrow), pydantic (fastapi) and asyncpg (the database).
APP_LIBRARIES = ("pyarrow", "pydantic_core", "asyncpg")


def status_kib(pid: int, name: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {name} in /proc/{pid}/status")


def mapped_files(pid: int) -> set[str]:
    return {line.split()[-1] for line in Path(f"/proc/{pid}/maps").read_text().splitlines() if "/" in line}


def test_the_parent_of_two_worker_processes_loads_none_of_the_app_and_holds_a_few_tens_of_mb(
    faulty: Database, tmp_path: Path
) -> None:
    with exporter_serve(faulty, tmp_path, "--workers", "2", job_workers="0") as (parent, _):
        loaded = [path for path in mapped_files(parent.pid) if any(lib in path for lib in APP_LIBRARIES)]
        rss_kib = status_kib(parent.pid, "VmRSS")
        children = Path(f"/proc/{parent.pid}/task/{parent.pid}/children").read_text().split()
        worker_libraries = [path for child in children for path in mapped_files(int(child)) if "pyarrow" in path]
    assert not loaded
    assert rss_kib < MOST_PARENT_RSS_KIB, rss_kib
    assert worker_libraries  # the workers did import the app: the check above looks at the right thing
