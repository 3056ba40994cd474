"""/files over a real uvicorn server: downloads, ranges, conditional requests, listings, traversal attempts,
chunk sizes on the wire, resumed and broken curl transfers, clients that leave, and memory on a big file."""

from __future__ import annotations

import email.parser
import email.policy
import hashlib
import os
import random
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from email.utils import formatdate
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from exporter.app import create_app
from exporter.config import Settings
from tests.helpers import wait_for
from tests.servers import ServerThread

Serve = Callable[[Settings], ServerThread]
DATA = random.Random(7).randbytes(300_000)
SECRET = b"outside the root: must never be sent"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """files/ (the root) next to outside/, which holds a secret that a symlink in the root points at."""
    files, outside = tmp_path / "files", tmp_path / "outside"
    (files / "sub").mkdir(parents=True)
    outside.mkdir()
    (outside / "secret.txt").write_bytes(SECRET)
    (files / "data.bin").write_bytes(DATA)
    (files / "report.csv").write_bytes(b"a,b\n1,2\n")
    (files / "Grüße ✓.txt").write_bytes(b"hello")
    (files / "empty.txt").write_bytes(b"")
    (files / ".secret").write_bytes(SECRET)
    (files / "sub" / "b.txt").write_bytes(b"b")
    (files / "link-out").symlink_to("../outside/secret.txt")
    (files / "link-missing").symlink_to("../outside/nothing.txt")
    (files / "link-in").symlink_to("data.bin")
    for path in [files / "sub", files / "sub" / "b.txt", files / "report.csv", files / "link-in"]:
        os.utime(path, (1_700_000_000, 1_700_000_000), follow_symlinks=False)
    return files


def settings(root: Path, tmp_path: Path, **overrides: Any) -> Settings:
    return Settings.from_dict({"database_url": f"sqlite+aiosqlite:///{tmp_path / 'service.db'}", "auth": "off",
                               "files": {"roots": {"r": str(root)}}, **overrides})


@pytest.fixture
def server(serve: Serve, root: Path, tmp_path: Path) -> ServerThread:
    return serve(settings(root, tmp_path, file_chunk_bytes=64 * 1024))


def raw_get(server: ServerThread, target: str, headers: dict[str, str] | None = None,
            method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    """A request sent byte for byte as written (no client normalises `..` or re-encodes), and the response
    read by Content-Length; nothing but a socket in between."""
    lines = [f"{method} {target} HTTP/1.1", "Host: 127.0.0.1", "Connection: close",
             *(f"{k}: {v}" for k, v in (headers or {}).items())]
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as conn:
        conn.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        with conn.makefile("rb") as stream:
            status = int(stream.readline().split()[1])
            received: dict[str, str] = {}
            while (line := stream.readline()) not in (b"\r\n", b""):
                name, _, value = line.decode("latin-1").partition(":")
                received[name.strip().lower()] = value.strip()
            length = int(received.get("content-length", "0")) if method != "HEAD" else 0
            body = stream.read(length)
            assert len(body) == length
            assert stream.read() == b""
    return status, received, body


def test_a_file_downloads_whole_with_its_headers_and_head_gives_the_same_headers(server: ServerThread) -> None:
    get = httpx.get(f"{server.url}/files/r/data.bin")
    assert get.status_code == 200
    assert get.content == DATA
    assert get.headers["content-length"] == str(len(DATA))
    assert "transfer-encoding" not in get.headers
    assert get.headers["content-type"] == "application/octet-stream"
    assert get.headers["content-disposition"] == 'attachment; filename="data.bin"'
    assert get.headers["accept-ranges"] == "bytes"
    assert get.headers["etag"].startswith('"')
    assert get.headers["last-modified"].endswith(" GMT")
    assert get.headers["cache-control"] == "no-cache"
    head = httpx.head(f"{server.url}/files/r/data.bin")
    assert head.status_code == 200
    assert head.content == b""
    skip = {"date", "x-request-id"}  # a request id is each request's own
    assert {k: v for k, v in head.headers.items() if k not in skip} == {
        k: v for k, v in get.headers.items() if k not in skip}


def test_a_file_is_typed_by_its_extension_and_named_for_download_in_ascii_and_utf8(server: ServerThread) -> None:
    report = httpx.get(f"{server.url}/files/r/report.csv")
    assert report.headers["content-type"] == "text/csv"
    assert report.headers["last-modified"] == "Tue, 14 Nov 2023 22:13:20 GMT"
    greeting = httpx.get(f"{server.url}/files/r/Grüße ✓.txt")
    assert greeting.content == b"hello"
    assert greeting.headers["content-disposition"] == (
        "attachment; filename=\"Gr??e ?.txt\"; filename*=UTF-8''Gr%C3%BC%C3%9Fe%20%E2%9C%93.txt")
    empty = httpx.get(f"{server.url}/files/r/empty.txt")
    assert (empty.status_code, empty.content, empty.headers["content-length"]) == (200, b"", "0")


@pytest.mark.parametrize(
    ("range_header", "start", "stop"),
    [("bytes=0-99", 0, 100), ("bytes=100-", 100, len(DATA)), ("bytes=-100", len(DATA) - 100, len(DATA)),
     ("bytes=299990-999999", 299_990, len(DATA)), ("bytes=0-0", 0, 1), ("bytes=-999999", 0, len(DATA)),
     ("bytes=70000-200000", 70_000, 200_001), ("bytes=5-9,7-20", 5, 21)],
)
def test_a_single_range_gets_206_with_content_range_and_exactly_those_bytes(
    server: ServerThread, range_header: str, start: int, stop: int
) -> None:
    status, headers, body = raw_get(server, "/files/r/data.bin", {"Range": range_header})
    assert status == 206
    assert headers["content-range"] == f"bytes {start}-{stop - 1}/{len(DATA)}"
    assert headers["content-length"] == str(stop - start)
    assert headers["content-type"] == "application/octet-stream"
    assert body == DATA[start:stop]


def test_several_ranges_get_a_multipart_byteranges_body_a_mime_parser_reads(server: ServerThread) -> None:
    response = httpx.get(f"{server.url}/files/r/report.csv", headers={"Range": "bytes=0-2, -3,4-4"})
    assert response.status_code == 206
    assert response.headers["content-type"].startswith("multipart/byteranges; boundary=")
    assert int(response.headers["content-length"]) == len(response.content)
    parts = multipart_parts(response)
    assert parts == [("text/csv", "bytes 0-2/8", b"a,b"), ("text/csv", "bytes 5-7/8", b",2\n"),
                     ("text/csv", "bytes 4-4/8", b"1")]
    big = httpx.get(f"{server.url}/files/r/data.bin", headers={"Range": "bytes=1-70000,200000-,-5"})
    assert [part[1:] for part in multipart_parts(big)] == [
        (f"bytes 1-70000/{len(DATA)}", DATA[1:70001]), (f"bytes 200000-{len(DATA) - 1}/{len(DATA)}", DATA[200000:])]


def multipart_parts(response: httpx.Response) -> list[tuple[str, str, bytes]]:
    """The parts as Python's MIME parser reads them (email, with the HTTP policy: no line-length rules)."""
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {response.headers['content-type']}\r\n\r\n".encode() + response.content)
    assert message.is_multipart()
    assert not message.defects
    return [(part.get_content_type(), part["Content-Range"], part.get_payload(decode=True))
            for part in message.iter_parts()]


@pytest.mark.parametrize("range_header", ["bytes=300000-", "bytes=999999-9999999", "bytes=-0"])
def test_an_unsatisfiable_range_gets_416_with_the_current_length(server: ServerThread, range_header: str) -> None:
    response = httpx.get(f"{server.url}/files/r/data.bin", headers={"Range": range_header})
    assert response.status_code == 416
    assert response.headers["content-range"] == f"bytes */{len(DATA)}"
    assert response.json()["error"]["code"] == "range_not_satisfiable"


@pytest.mark.parametrize("range_header", ["bytes=5-2", "items=0-1", "bytes=abc", "bytes=0-1;2-3", "bytes"])
def test_a_malformed_or_foreign_range_is_ignored_and_the_whole_file_sent(
    server: ServerThread, range_header: str
) -> None:
    response = httpx.get(f"{server.url}/files/r/data.bin", headers={"Range": range_header})
    assert (response.status_code, response.content) == (200, DATA)


def test_head_ignores_range_as_only_get_defines_it(server: ServerThread) -> None:
    status, headers, _ = raw_get(server, "/files/r/data.bin", {"Range": "bytes=0-9"}, method="HEAD")
    assert (status, headers["content-length"]) == (200, str(len(DATA)))


def test_if_range_applies_the_range_only_while_the_validator_is_current(server: ServerThread, root: Path) -> None:
    url = f"{server.url}/files/r/report.csv"
    current = httpx.head(url).headers
    for validator in (current["etag"], current["last-modified"]):
        response = httpx.get(url, headers={"Range": "bytes=0-2", "If-Range": validator})
        assert (response.status_code, response.content) == (206, b"a,b")
    older = formatdate(1_700_000_000 - 60, usegmt=True)
    for stale in ('"stale"', "W/" + current["etag"], older):
        response = httpx.get(url, headers={"Range": "bytes=0-2", "If-Range": stale})
        assert (response.status_code, response.content) == (200, b"a,b\n1,2\n")
    (root / "report.csv").write_bytes(b"x,y\n3,4\n")
    response = httpx.get(url, headers={"Range": "bytes=0-2", "If-Range": current["etag"]})
    assert (response.status_code, response.content) == (200, b"x,y\n3,4\n")


def test_if_none_match_and_if_modified_since_give_304_with_validators_and_no_body(server: ServerThread) -> None:
    url = f"{server.url}/files/r/report.csv"
    current = httpx.head(url).headers
    newer, older = formatdate(1_700_000_000 + 60, usegmt=True), formatdate(1_700_000_000 - 60, usegmt=True)
    cases = [({"If-None-Match": current["etag"]}, 304), ({"If-None-Match": f'"x", W/{current["etag"]}'}, 304),
             ({"If-None-Match": "*"}, 304), ({"If-None-Match": '"x"'}, 200),
             ({"If-Modified-Since": current["last-modified"]}, 304), ({"If-Modified-Since": newer}, 304),
             ({"If-Modified-Since": older}, 200), ({"If-Modified-Since": "yesterday"}, 200),
             ({"If-None-Match": '"x"', "If-Modified-Since": newer}, 200)]  # RFC 9110 §13.2.2
    for method in ("GET", "HEAD"):
        for headers, expected in cases:
            status, received, body = raw_get(server, "/files/r/report.csv", headers, method)
            assert status == expected, (method, headers)
            assert received["etag"] == current["etag"]
            assert received["last-modified"] == current["last-modified"]
            if status == 304:
                assert body == b""
                assert "content-length" not in received


@pytest.mark.parametrize(
    ("target", "status"),
    [
        ("/files/r/../outside/secret.txt", 400),
        ("/files/r/sub/../../outside/secret.txt", 400),
        ("/files/r/%2e%2e/outside/secret.txt", 400),
        ("/files/r/%2E%2E%2Foutside%2Fsecret.txt", 400),
        ("/files/r/..%2foutside%2fsecret.txt", 400),
        ("/files/r/sub%2f..%2f..%2foutside%2fsecret.txt", 400),
        ("/files/r/%252e%252e/outside/secret.txt", 404),  # decoded once only: a name `%2e%2e`, which is missing
        ("/files/r/..%5coutside%5csecret.txt", 400),
        ("/files/r/..\\outside\\secret.txt", 400),
        ("/files/r/%2f..%2foutside%2fsecret.txt", 400),
        ("/files/r//etc/passwd", 400),
        ("/files/r/%2fetc%2fpasswd", 400),
        ("/files/r/data.bin%00.txt", 400),
        ("/files/r/link-out", 404),
        ("/files/r/link-missing", 404),
        ("/files/r/.secret", 404),
        ("/files/r/.", 400),
        ("/files/r/data.bin/", 404),
        ("/files/../outside/secret.txt", 404),
        ("/files/nope/data.bin", 404),
    ],
)
def test_traversal_attempts_never_reach_a_file_outside_the_root(
    server: ServerThread, target: str, status: int
) -> None:
    for method in ("GET", "HEAD"):
        received_status, headers, body = raw_get(server, target, method=method)
        assert received_status == status
        assert headers["content-type"] == "application/json"
        assert SECRET not in body
    error = raw_get(server, target)[2]
    assert set(httpx.Response(200, content=error).json()["error"]) == {"code", "message"}


def test_a_symlink_out_of_the_root_answers_exactly_like_a_missing_file(server: ServerThread) -> None:
    existing = raw_get(server, "/files/r/link-out")
    missing = raw_get(server, "/files/r/link-missing")
    assert existing[0] == missing[0] == 404
    skip = {"date", "content-length", "x-request-id"}  # the length differs by the names' lengths; ids by request
    assert {k: v for k, v in existing[1].items() if k not in skip} == {
        k: v for k, v in missing[1].items() if k not in skip}
    assert existing[2].replace(b"link-out", b"PATH") == missing[2].replace(b"link-missing", b"PATH")


def test_directories_list_as_json_and_redirect_to_their_slash_form(server: ServerThread) -> None:
    listing = httpx.get(f"{server.url}/files/r/")
    assert listing.status_code == 200
    assert listing.json()["root"] == "r"
    assert listing.json()["path"] == ""
    assert [(e["name"], e["kind"]) for e in listing.json()["entries"]] == [
        ("Grüße ✓.txt", "file"), ("data.bin", "file"), ("empty.txt", "file"), ("link-in", "file"),
        ("report.csv", "file"), ("sub", "directory")]
    sub = httpx.get(f"{server.url}/files/r/sub/").json()
    assert sub == {"root": "r", "path": "sub/", "entries": [
        {"name": "b.txt", "kind": "file", "size": 1, "modified": "2023-11-14T22:13:20+00:00"}]}
    for path, location in [("/files/r/sub", "sub/"), ("/files/r", "r/")]:
        redirect = httpx.get(server.url + path)
        assert (redirect.status_code, redirect.headers["location"]) == (308, location)
        assert httpx.get(server.url + path, follow_redirects=True).json()["path"] in ("", "sub/")


class RecordBodySizes:
    """ASGI middleware that notes the size of every http.response.body message the app sends."""

    def __init__(self, app: ASGIApp, sizes: list[int]) -> None:
        self.app, self.sizes = app, sizes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def recording_send(message: Message) -> None:
            if message["type"] == "http.response.body" and message.get("body"):
                self.sizes.append(len(message["body"]))
            await send(message)

        await self.app(scope, receive, recording_send)


@pytest.mark.parametrize(
    ("range_header", "start", "stop"),
    [(None, 0, len(DATA)), ("bytes=1000-250000", 1000, 250_001), ("bytes=-65537", len(DATA) - 65537, len(DATA))],
)
def test_every_body_message_is_exactly_the_chunk_size_but_the_last_of_the_range(
    root: Path, tmp_path: Path, range_header: str | None, start: int, stop: int
) -> None:
    sizes: list[int] = []
    app = create_app(settings(root, tmp_path, file_chunk_bytes=65536))
    app.add_middleware(RecordBodySizes, sizes=sizes)
    with ServerThread(app) as server:
        status, _, body = raw_get(server, "/files/r/data.bin", {"Range": range_header} if range_header else {})
    assert status == (206 if range_header else 200)
    assert body == DATA[start:stop]
    full, last = divmod(stop - start, 65536)
    assert sizes == [65536] * full + ([last] if last else [])


def test_curl_resumes_a_broken_download_to_a_byte_identical_file(
    serve: Serve, root: Path, tmp_path: Path
) -> None:
    big = random.Random(11).randbytes(8 * 1024 * 1024)
    (root / "dump.sql.gz").write_bytes(big)
    server = serve(settings(root, tmp_path, file_chunk_bytes=64 * 1024))
    url, output = f"{server.url}/files/r/dump.sql.gz", tmp_path / "dump.sql.gz"
    with subprocess.Popen(["curl", "-sS", url], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL) as first:
        assert first.stdout is not None
        output.write_bytes(first.stdout.read(3_000_001))
        first.stdout.close()  # curl's next write fails: the download breaks off there
    assert first.returncode == 23  # CURLE_WRITE_ERROR
    assert output.stat().st_size == 3_000_001
    resumed = subprocess.run(["curl", "-fsS", "-C", "-", "-o", str(output), "-w", "%{http_code}", url],
                             capture_output=True, text=True, timeout=60)
    assert (resumed.returncode, resumed.stdout) == (0, "206"), resumed.stderr
    assert hashlib.sha256(output.read_bytes()).hexdigest() == hashlib.sha256(big).hexdigest()


@contextmanager
def slow_curl(url: str, output: Path) -> Iterator[subprocess.Popen[bytes]]:
    """curl reading at 8 MB/s, handed over once it has 1 MiB."""
    curl = subprocess.Popen(["curl", "-sS", "--limit-rate", "8M", "-o", str(output), url], stderr=subprocess.PIPE)
    try:
        wait_for(lambda: output.exists() and output.stat().st_size > 1024 * 1024)
        yield curl
    finally:
        if curl.poll() is None:
            curl.kill()
        curl.wait()
        assert curl.stderr is not None
        curl.stderr.close()


@pytest.mark.parametrize("change", ["truncate", "rewrite in place"])
def test_a_file_changed_while_it_is_sent_ends_in_an_incomplete_transfer(
    serve: Serve, root: Path, tmp_path: Path, change: str
) -> None:
    big = random.Random(13).randbytes(48 * 1024 * 1024)
    path = root / "nightly.dump"
    path.write_bytes(big)
    server = serve(settings(root, tmp_path, file_chunk_bytes=64 * 1024))
    output = tmp_path / "nightly.dump"
    with slow_curl(f"{server.url}/files/r/nightly.dump", output) as curl:
        assert handles_on(path)  # the server is still reading the file
        if change == "truncate":
            os.truncate(path, 40 * 1024 * 1024)
        else:
            with path.open("r+b") as file:  # what `cp new nightly.dump` does to a file of the same size
                file.write(bytes(len(big)))
        assert curl.wait(timeout=60) == 18  # CURLE_PARTIAL_FILE: less than the Content-Length arrived
    received = output.read_bytes()
    assert 0 < len(received) < len(big)
    assert received == big[:len(received)]


def test_a_file_replaced_by_rename_while_it_is_sent_arrives_whole_as_it_was(
    serve: Serve, root: Path, tmp_path: Path
) -> None:
    big = random.Random(17).randbytes(24 * 1024 * 1024)
    path = root / "nightly.dump"
    path.write_bytes(big)
    server = serve(settings(root, tmp_path, file_chunk_bytes=64 * 1024))
    with socket.socket() as conn:
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)  # before connect: a small window
        conn.settimeout(30)
        conn.connect(("127.0.0.1", server.port))
        conn.sendall(b"GET /files/r/nightly.dump HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        with conn.makefile("rb") as stream:
            while stream.readline() != b"\r\n":
                pass
            first = stream.read(1024 * 1024)
            assert handles_on(path)  # the server is still reading the file
            replacement = root / "nightly.dump.new"
            replacement.write_bytes(bytes(len(big)))
            replacement.replace(path)
            rest = stream.read()
    assert hashlib.sha256(first + rest).hexdigest() == hashlib.sha256(big).hexdigest()


def handles_on(path: Path) -> list[str]:
    """This process's file descriptors open on `path` (the test server runs in this process)."""
    handles = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") == str(path):
                handles.append(fd)
        except OSError:
            pass  # closed since the listing
    return handles


def busy_executor_threads() -> list[str]:
    """Threads of this process running a job of a concurrent.futures pool, which aiofiles reads use."""
    return [str(thread_id) for thread_id, frame in sys._current_frames().items()
            if any(f.f_code.co_name == "run" and f.f_code.co_filename.endswith("concurrent/futures/thread.py")
                   for f in iter_frames(frame))]


def iter_frames(frame: Any) -> Iterator[Any]:
    while frame is not None:
        yield frame
        frame = frame.f_back


def test_a_client_that_leaves_mid_download_closes_the_file_and_frees_the_reader(
    serve: Serve, root: Path, tmp_path: Path
) -> None:
    path = root / "big.bin"
    with path.open("wb") as file:
        file.truncate(1024**3)
    server = serve(settings(root, tmp_path, file_chunk_bytes=64 * 1024))
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as conn:
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
            conn.sendall(b"GET /files/r/big.bin HTTP/1.1\r\nHost: x\r\n\r\n")
            assert conn.recv(65536).startswith(b"HTTP/1.1 200")
            wait_for(lambda: handles_on(path))
        wait_for(lambda: not handles_on(path))
        wait_for(lambda: not busy_executor_threads())


def vm_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def test_a_file_of_several_gib_streams_while_the_server_peak_rss_stays_flat(
    serve: Serve, root: Path, tmp_path: Path
) -> None:
    size = 3 * 1024**3
    path = root / "huge.bin"
    with path.open("wb") as file:  # sparse: reads as zeros, costs no disk
        file.truncate(size)
        file.seek(size - 16)
        file.write(b"the last sixteen")
    server = serve(settings(root, tmp_path))  # the default chunk size
    url = f"{server.url}/files/r/huge.bin"
    assert httpx.get(url, headers={"Range": "bytes=-16"}).content == b"the last sixteen"
    before = vm_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to the current RSS
    curl = subprocess.run(["curl", "-fsS", "-o", "/dev/null", "-w", "%{size_download}", url],
                          capture_output=True, text=True, timeout=120)
    growth_mib = (vm_kib("VmHWM") - before) / 1024
    assert (curl.returncode, curl.stdout) == (0, str(size)), curl.stderr
    assert growth_mib < 30, f"peak RSS grew by {growth_mib:.1f} MiB while streaming {size} bytes"
