"""Slow and stalled clients over a real server and raw sockets with small receive buffers: readers that keep
taking 20, 50 or 100 KB/s are never cut by the send timeout, however long one write waits for them; a reader
that stops is cut soon after the timeout."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from exporter.config import Settings
from tests.access.test_limits import open_handles
from tests.conftest import Database
from tests.export.test_export_failures import busy_backends
from tests.helpers import wait_for
from tests.servers import ServerThread

Serve = Callable[[Settings], ServerThread]

TIMEOUT_SECONDS = 2.0
READ_SECONDS = 4 * TIMEOUT_SECONDS  # each reader reads for several timeouts
RATES = (20_000, 50_000, 100_000)  # bytes a second
RECEIVE_BUFFER_BYTES = 4096  # a 20 KB/s reader frees it five times per timeout, so its window reopens often
PIECE_BYTES = 2048
FILE_BYTES = 24 * 1024 * 1024  # far more than a reader takes, so the response is still going when it stops
CUT_WITHIN_SECONDS = TIMEOUT_SECONDS + 10  # a deadline against a client that is never cut, not a timing target
LAST_CHUNK = b"0\r\n\r\n"


class RawReader:
    """A GET over a raw socket with a small receive buffer, whose body the test takes at a pace it chooses."""

    def __init__(self, url: str, path: str) -> None:
        host, port = url.removeprefix("http://").split(":")
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER_BYTES)
        self.socket.settimeout(30)
        self.socket.connect((host, int(port)))
        self.socket.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        head = b""
        while b"\r\n\r\n" not in head:
            head += self.socket.recv(1)
        self.head = head

    def take(self, rate: int, seconds: float) -> int:
        """Read at `rate` bytes a second for `seconds`; the bytes read, fewer if the server closed the
        connection."""
        start = time.monotonic()
        taken = 0
        while (elapsed := time.monotonic() - start) < seconds:
            ahead = (taken + PIECE_BYTES) / rate - elapsed
            if ahead > 0:
                time.sleep(min(ahead, seconds - elapsed))
                continue
            data = self.socket.recv(PIECE_BYTES)
            if not data:
                break
            taken += len(data)
        return taken

    def read_rest(self) -> bytes:
        """Everything the server still sends, until it closes the connection."""
        rest = bytearray()
        while data := self.socket.recv(256 * 1024):
            rest += data
        return bytes(rest)

    def __enter__(self) -> RawReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.socket.close()


def cut_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "took no data" in r.getMessage()]


def files_server(serve: Serve, root: Path) -> ServerThread:
    return serve(Settings.from_dict({"files": {"roots": {"data": str(root)}}, "job_workers": 0, "auth": "off",
                                     "send_timeout_seconds": TIMEOUT_SECONDS}))


def test_file_readers_taking_20_50_and_100_kb_a_second_are_never_cut(
    serve: Serve, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    for rate in RATES:
        (tmp_path / f"{rate}.bin").write_bytes(bytes(range(256)) * (FILE_BYTES // 256))
    server = files_server(serve, tmp_path)

    def read(rate: int) -> tuple[int, int]:
        """The bytes read at `rate`, and whether the server was still sending the file when the reader stopped
        (its file is still open: a cut closes it)."""
        with RawReader(server.url, f"/files/data/{rate}.bin") as reader:
            taken = reader.take(rate, READ_SECONDS)
            return taken, open_handles(tmp_path / f"{rate}.bin")

    with ThreadPoolExecutor(len(RATES)) as pool:
        results = dict(zip(RATES, pool.map(read, RATES), strict=True))
    assert [rate for rate, (_, still_open) in results.items() if still_open != 1] == []  # none was cut
    assert all(taken >= rate * READ_SECONDS / 2 for rate, (taken, _) in results.items()), results
    assert cut_warnings(caplog) == []


def test_a_csv_export_read_at_20_kb_a_second_is_never_cut_and_its_query_keeps_running(
    pg: Database, serve: Serve, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    pg.seed_demo(150_000)  # about 20 MB of CSV: more than a reader takes plus every buffer on the way
    server = serve(pg.settings(send_timeout_seconds=TIMEOUT_SECONDS))
    with RawReader(server.url, "/exports/orders.csv") as reader:
        assert reader.head.startswith(b"HTTP/1.1 200")
        assert reader.take(20_000, READ_SECONDS) >= 20_000 * READ_SECONDS / 2
        assert busy_backends(pg), "the export's query ended while its client was still reading"
    assert cut_warnings(caplog) == []


def test_a_file_reader_that_stops_is_cut_within_the_timeout_plus_a_few_seconds(
    serve: Serve, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    big = tmp_path / "big.bin"
    big.write_bytes(bytes(range(256)) * (FILE_BYTES // 256))
    server = files_server(serve, tmp_path)
    with RawReader(server.url, "/files/data/big.bin") as reader:
        assert reader.take(100_000, 0.5) > 0
        assert open_handles(big) == 1
        wait_for(lambda: open_handles(big) == 0, seconds=CUT_WITHIN_SECONDS)  # stopped reading: cut
        rest = reader.read_rest()
    assert len(rest) < FILE_BYTES  # the connection closed short of the Content-Length
    assert len(cut_warnings(caplog)) == 1


def test_an_export_reader_that_stops_is_cut_without_the_final_chunk(
    pg: Database, serve: Serve, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    pg.seed_demo(150_000)
    server = serve(pg.settings(send_timeout_seconds=TIMEOUT_SECONDS))
    with RawReader(server.url, "/exports/orders.csv") as reader:
        assert reader.take(100_000, 0.5) > 0
        wait_for(lambda: cut_warnings(caplog), seconds=CUT_WITHIN_SECONDS)  # stopped reading: cut
        rest = reader.read_rest()
    assert not rest.endswith(LAST_CHUNK)  # an incomplete transfer: the chunked body never ends
    wait_for(lambda: not busy_backends(pg))
