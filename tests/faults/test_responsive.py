"""Staying responsive (issue 19, point 4): 20 Parquet exports leave the event loop free to answer a balancer's
/healthz and a refused download, and SIGTERM ends the process within EXPORTER_DRAIN_SECONDS plus a second, even
with a client that stopped reading."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import Database
from tests.faults.serving import exporter_serve
from tests.servers import ChunkedReader

ROWS = 200_000
EXPORTS = 20  # the export slots of a PostgreSQL database
# A deadline against a hang, not a latency check: the targets (100 ms for /healthz, 200 ms for a 503 busy at p99)
# are measured by tests/bench/responsive.py, since a timed assertion fails on a loaded machine (a 2 s bound failed
# once in CI, at 2.46 s for one busy, while 4 test workers shared 2 cores with the 20 exports). The CPU share below
# is the assertion, and it does not depend on the machine's speed.
PROMPT_SECONDS = 15.0
# The share of the server's CPU time spent on its event loop's thread during the exports (the rest: the ADBC
# readers' and the encoders' threads). With the Parquet encoding and the Arrow conversion on the loop's thread it
# measured 0.26; in worker threads, 0.09 to 0.11. A ratio of CPU times, it does not depend on the machine's load.
MOST_LOOP_SHARE = 0.18
DRAIN_SECONDS = 2.0
# The process must exit within the drain plus 1 s; this much more is allowed for the interpreter's own exit and a
# loaded machine's scheduling. Before the fix it never exited while the client did not read.
EXIT_ALLOWANCE_SECONDS = 1.0


@pytest.fixture
def orders(faulty: Database) -> Database:
    faulty.seed_demo(ROWS)
    return faulty


def cpu_ticks(pid: int, tid: int | None = None) -> int:
    """User and system CPU time, in clock ticks, of process `pid` (all its threads) or of its thread `tid`."""
    path = f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat"
    fields = Path(path).read_text().rpartition(")")[2].split()
    return int(fields[11]) + int(fields[12])  # utime and stime, fields 14 and 15 of proc(5)


class Downloads:
    """`count` clients downloading `path` in full at once, each in a thread; `started` once every one has its
    first bytes, `first_done` once any has finished."""

    def __init__(self, url: str, path: str, count: int) -> None:
        self.started = threading.Barrier(count + 1)
        self.first_done = threading.Event()
        self.results: list[tuple[int, bytes]] = []
        self._threads = [threading.Thread(target=self._download, args=(url + path,), daemon=True)
                         for _ in range(count)]
        for thread in self._threads:
            thread.start()

    def _download(self, url: str) -> None:
        tail = b""
        try:
            with httpx.stream("GET", url, timeout=300) as response:
                chunks = response.iter_bytes()
                tail = next(chunks, b"")
                self.started.wait(timeout=120)
                for chunk in chunks:
                    tail = chunk or tail
                self.results.append((response.status_code, tail[-4:]))
        finally:
            self.first_done.set()

    def join(self) -> None:
        for thread in self._threads:
            thread.join(timeout=300)


def test_twenty_parquet_exports_leave_the_event_loop_free_for_healthz_and_a_503_busy(
    orders: Database, tmp_path: Path
) -> None:
    with exporter_serve(orders, tmp_path, export_slots=str(EXPORTS), job_workers="0") as (server, url):
        downloads = Downloads(url, "/exports/orders.parquet", EXPORTS)
        downloads.started.wait(timeout=120)
        loop_ticks, process_ticks = cpu_ticks(server.pid, server.pid), cpu_ticks(server.pid)
        probes: dict[str, list[float]] = {"healthz": [], "busy": []}
        with httpx.Client(base_url=url, timeout=60) as client:
            while not downloads.first_done.is_set():
                started = time.monotonic()
                assert client.get("/healthz").status_code == 200
                probes["healthz"].append(time.monotonic() - started)
                started = time.monotonic()
                busy = client.get("/exports/orders.parquet", params={"limit": "1"})
                if not downloads.first_done.is_set():  # every slot was still taken
                    assert (busy.status_code, busy.json()["error"]["code"]) == (503, "busy")
                    probes["busy"].append(time.monotonic() - started)
        loop_ticks, process_ticks = (cpu_ticks(server.pid, server.pid) - loop_ticks,
                                     cpu_ticks(server.pid) - process_ticks)
        downloads.join()
    assert downloads.results == [(200, b"PAR1")] * EXPORTS  # each file whole, to its footer's magic bytes
    assert probes["healthz"] and probes["busy"]
    assert loop_ticks / process_ticks < MOST_LOOP_SHARE, (loop_ticks, process_ticks)
    assert max(probes["healthz"]) < PROMPT_SECONDS, sorted(probes["healthz"])[-5:]
    assert max(probes["busy"]) < PROMPT_SECONDS, sorted(probes["busy"])[-5:]


def test_sigterm_exits_within_the_drain_and_a_second_cutting_off_a_client_that_stopped_reading(
    orders: Database, tmp_path: Path
) -> None:
    with exporter_serve(orders, tmp_path, drain_seconds=str(DRAIN_SECONDS), job_workers="0") as (server, url):
        # The CSV export (about 18 MB) is far more than the socket buffers hold: the server is left waiting to send.
        with ChunkedReader(url, "/exports/orders.csv") as stalled:
            assert stalled.status_line.startswith(b"HTTP/1.1 200")
            assert stalled.next_chunk()
            signalled = time.monotonic()
            server.send_signal(signal.SIGTERM)
            status = server.wait(timeout=DRAIN_SECONDS + 60)
            exited_after = time.monotonic() - signalled
            assert not ended_cleanly(stalled)
    assert status == 0
    assert exited_after < DRAIN_SECONDS + 1 + EXIT_ALLOWANCE_SECONDS, exited_after


def ended_cleanly(reader: ChunkedReader) -> bool:
    """Whether the rest of the body arrives, up to its final zero-length chunk."""
    try:
        while reader.next_chunk() is not None:
            pass
    except (OSError, ValueError):  # reset, or the connection closed mid-chunk or between chunks
        return False
    return True
