"""/proxy over a real uvicorn server in front of real upstreams on loopback: byte-identical relays, ranges and
conditional requests, header hygiene, compression, redirects, traversal attempts, each failure as curl sees it,
clients that leave or stop reading, the concurrency cap, an event stream, and memory over several GiB."""

from __future__ import annotations

import gzip
import hashlib
import json
import random
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest

from exporter.config import Settings
from tests.helpers import wait_for
from tests.servers import ServerThread
from tests.serving.test_file_downloads import raw_get, vm_kib
from tests.upstreams import (
    GZIPPED,
    PLAIN,
    Origin,
    RawServer,
    closed_port,
    drop,
    endless,
    files_upstream,
    sendfile,
    silent,
    sparse_file,
    stall,
    unanswered_port,
)

Serve = Callable[[Settings], ServerThread]
TOKEN = "Bearer service-token-7f3a"
TOKEN_VARIABLE = "EXPORTER_TEST_ORIGIN_TOKEN"
DATA = random.Random(23).randbytes(24 * 1024 * 1024 + 12_345)


def proxy_settings(tmp_path: Path, **upstreams: dict[str, Any]) -> Settings:
    return Settings.from_dict({"database_url": f"sqlite+aiosqlite:///{tmp_path / 'service.db'}", "auth": "off",
                               "upstreams": upstreams}, {TOKEN_VARIABLE: TOKEN})


@pytest.fixture
def files(tmp_path: Path) -> Iterator[ServerThread]:
    """The service's own /files as the upstream file server, with data.bin (24 MiB of random bytes)."""
    directory = tmp_path / "upstream-files"
    directory.mkdir()
    (directory / "data.bin").write_bytes(DATA)
    (directory / "report.csv").write_bytes(b"a,b\n1,2\n")
    with files_upstream(directory, tmp_path / "upstream.db") as server:
        yield server


@pytest.fixture
def origin() -> Iterator[Origin]:
    upstream = Origin()
    with ServerThread(upstream.app) as server:
        upstream.url = server.url
        yield upstream
        upstream.release.set()


@pytest.fixture
def proxy(serve: Serve, tmp_path: Path, files: ServerThread, origin: Origin) -> ServerThread:
    """`files` relays the file server's root r; `origin` the ASGI origin's /base, with a token from the
    environment and an extra header added."""
    return serve(proxy_settings(
        tmp_path,
        files={"base_url": f"{files.url}/files/r/"},
        origin={"base_url": f"{origin.url}/base",
                "headers": {"Authorization": {"env": TOKEN_VARIABLE}, "X-Api-Key": "key-1"},
                "forward_headers": ["Accept", "If-None-Match", "Range", "X-Request-Id"]},
    ))


def error_code(body: bytes) -> str:
    code: str = json.loads(body)["error"]["code"]
    return code


def test_a_large_file_relays_byte_identical_with_the_upstreams_headers_and_head_matches(
    proxy: ServerThread, files: ServerThread, tmp_path: Path
) -> None:
    output = tmp_path / "data.bin"
    curl = subprocess.run(["curl", "-fsS", "-o", str(output), f"{proxy.url}/proxy/files/data.bin"],
                          capture_output=True, text=True, timeout=60)
    assert curl.returncode == 0, curl.stderr
    assert hashlib.sha256(output.read_bytes()).hexdigest() == hashlib.sha256(DATA).hexdigest()
    direct = httpx.head(f"{files.url}/files/r/data.bin").headers
    status, relayed, _ = raw_get(proxy, "/proxy/files/data.bin", method="HEAD")
    assert status == 200
    for name in ("content-type", "content-length", "content-disposition", "etag", "last-modified", "accept-ranges",
                 "cache-control"):
        assert relayed[name] == direct[name], name
    assert relayed["x-accel-buffering"] == "no"
    assert "transfer-encoding" not in relayed
    get = httpx.get(f"{proxy.url}/proxy/files/data.bin")
    skip = {"date", "x-request-id"}  # a request id is each request's own
    assert {k: v for k, v in get.headers.items() if k not in skip} == {
        k: v for k, v in relayed.items() if k not in (*skip, "connection")}


@pytest.mark.parametrize(
    ("range_header", "start", "stop"),
    [("bytes=0-99", 0, 100), ("bytes=1000000-", 1_000_000, len(DATA)), ("bytes=-100", len(DATA) - 100, len(DATA))],
)
def test_a_range_is_forwarded_and_the_206_relayed_with_exactly_those_bytes(
    proxy: ServerThread, range_header: str, start: int, stop: int
) -> None:
    status, headers, body = raw_get(proxy, "/proxy/files/data.bin", {"Range": range_header})
    assert status == 206
    assert headers["content-range"] == f"bytes {start}-{stop - 1}/{len(DATA)}"
    assert headers["content-length"] == str(stop - start)
    assert body == DATA[start:stop]


def test_several_ranges_relay_as_multipart_and_an_unsatisfiable_one_as_416(proxy: ServerThread) -> None:
    multipart = httpx.get(f"{proxy.url}/proxy/files/report.csv", headers={"Range": "bytes=0-2,-3"})
    assert multipart.status_code == 206
    assert multipart.headers["content-type"].startswith("multipart/byteranges; boundary=")
    assert b"a,b" in multipart.content and b",2\n" in multipart.content
    unsatisfiable = httpx.get(f"{proxy.url}/proxy/files/data.bin", headers={"Range": "bytes=999999999-"})
    assert unsatisfiable.status_code == 416
    assert unsatisfiable.headers["content-range"] == f"bytes */{len(DATA)}"
    assert unsatisfiable.json()["error"]["code"] == "range_not_satisfiable"  # the upstream's own body


def test_conditional_requests_are_forwarded_so_304_and_if_range_reach_the_client(proxy: ServerThread) -> None:
    url = f"{proxy.url}/proxy/files/report.csv"
    current = httpx.head(url).headers
    for method in ("GET", "HEAD"):
        for headers in ({"If-None-Match": current["etag"]}, {"If-Modified-Since": current["last-modified"]}):
            status, received, body = raw_get(proxy, "/proxy/files/report.csv", headers, method)
            assert (status, body) == (304, b"")
            assert received["etag"] == current["etag"]
            assert "content-length" not in received
    assert httpx.get(url, headers={"If-None-Match": '"other"'}).content == b"a,b\n1,2\n"
    fresh = httpx.get(url, headers={"Range": "bytes=0-2", "If-Range": current["etag"]})
    assert (fresh.status_code, fresh.content) == (206, b"a,b")
    stale = httpx.get(url, headers={"Range": "bytes=0-2", "If-Range": '"stale"'})
    assert (stale.status_code, stale.content) == (200, b"a,b\n1,2\n")


def test_curl_resumes_a_broken_relayed_download_to_a_byte_identical_file(proxy: ServerThread, tmp_path: Path) -> None:
    url, output = f"{proxy.url}/proxy/files/data.bin", tmp_path / "resumed.bin"
    with subprocess.Popen(["curl", "-sS", url], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL) as first:
        assert first.stdout is not None
        output.write_bytes(first.stdout.read(5_000_001))
        first.stdout.close()  # curl's next write fails: the download breaks off there
    assert first.returncode == 23  # CURLE_WRITE_ERROR
    resumed = subprocess.run(["curl", "-fsS", "-C", "-", "-o", str(output), "-w", "%{http_code}", url],
                             capture_output=True, text=True, timeout=60)
    assert (resumed.returncode, resumed.stdout) == (0, "206"), resumed.stderr
    assert hashlib.sha256(output.read_bytes()).hexdigest() == hashlib.sha256(DATA).hexdigest()


def test_the_path_is_reencoded_and_the_query_forwarded_as_is(proxy: ServerThread, origin: Origin) -> None:
    status, _, body = raw_get(proxy, "/proxy/origin/echo/a%20b/c%3Fd/Gr%C3%BC%C3%9Fe/x:y/?q=a%2Fb&q=%E9&flag")
    assert status == 200
    echoed = json.loads(body)
    assert echoed["raw_path"] == "/base/echo/a%20b/c%3Fd/Gr%C3%BC%C3%9Fe/x:y/"
    assert echoed["query"] == "q=a%2Fb&q=%E9&flag"
    assert raw_get(proxy, "/proxy/origin/echo/x", method="HEAD")[:1] == (200,)
    assert origin.requests[-1].method == "HEAD"


def test_request_headers_are_forwarded_by_allow_list_and_the_configured_credential_added(
    proxy: ServerThread, origin: Origin
) -> None:
    sent = {"Authorization": "Bearer caller-token", "Cookie": "caller=1", "Accept": "text/csv",
            "Range": "bytes=0-", "If-None-Match": '"x"', "X-Request-Id": "r-1", "X-Forwarded-For": "10.0.0.9",
            "Accept-Encoding": "gzip, br", "Connection": "If-None-Match", "Proxy-Authorization": "Basic eA==",
            "TE": "trailers", "User-Agent": "caller/1.0", "Referer": "http://intranet/"}
    for _ in range(2):  # the second time as well: the upstream's Set-Cookie was not kept and sent back
        status, _, body = raw_get(proxy, "/proxy/origin/echo/x", sent)
        assert status == 200
        received: dict[str, list[str]] = {}
        for name, value in json.loads(body)["headers"]:
            received.setdefault(name, []).append(value)
        assert received.pop("authorization") == [TOKEN]
        assert received.pop("x-api-key") == ["key-1"]
        assert received.pop("accept") == ["text/csv"]
        assert received.pop("range") == ["bytes=0-"]
        assert received.pop("x-request-id") == ["r-1"]
        assert received.pop("accept-encoding") == ["identity"]
        assert received.pop("user-agent")[0].startswith("exporter/")
        assert received == {"host": [origin.url.removeprefix("http://")], "connection": ["keep-alive"]}


def test_a_forwarded_header_reaches_the_upstream_byte_for_byte_even_beyond_ascii(proxy: ServerThread) -> None:
    status, _, body = raw_get(proxy, "/proxy/origin/echo/x", {"If-None-Match": '"caf\u00e9"', "X-Request-Id": "a\tb"})
    assert status == 200
    received = dict(json.loads(body)["headers"])
    assert (received["if-none-match"], received["x-request-id"]) == ('"caf\u00e9"', "a\tb")  # latin-1 both ways


def test_response_headers_are_allow_listed_without_hop_by_hop_cookies_or_credentials(proxy: ServerThread) -> None:
    status, headers, _ = raw_get(proxy, "/proxy/origin/echo/x")
    assert status == 200
    assert headers.pop("server") == "uvicorn"  # ours, not the upstream's
    headers.pop("date")
    assert len(headers.pop("x-request-id")) == 32  # ours too: the request's id, made here
    assert headers == {
        "content-type": "application/json", "content-length": headers["content-length"], "etag": '"v1"',
        "last-modified": "Tue, 14 Nov 2023 22:13:20 GMT", "cache-control": "max-age=60", "vary": "Accept",
        "content-disposition": 'attachment; filename="echo.json"', "content-language": "en",
        "x-accel-buffering": "no", "connection": "close",  # uvicorn's answer to our Connection: close
        "content-security-policy": "sandbox", "x-content-type-options": "nosniff",  # ours: never active content
    }
    assert TOKEN not in json.dumps(headers)


def test_gzip_from_the_upstream_is_relayed_compressed_under_its_own_encoding_and_length(
    proxy: ServerThread, origin: Origin
) -> None:
    status, headers, body = raw_get(proxy, "/proxy/origin/gzip")
    assert status == 200
    assert (headers["content-encoding"], headers["content-length"]) == ("gzip", str(len(GZIPPED)))
    assert body == GZIPPED
    assert origin.requests[-1].headers["accept-encoding"] == "identity"
    curl = subprocess.run(["curl", "-fsS", "--compressed", f"{proxy.url}/proxy/origin/gzip"], capture_output=True,
                          timeout=30)
    assert (curl.returncode, curl.stdout) == (0, PLAIN)
    assert httpx.get(f"{proxy.url}/proxy/origin/gzip").content == PLAIN  # httpx decodes what it is told is gzip


def test_an_upstream_asked_for_identity_sends_plain_bytes_whatever_the_client_accepts(proxy: ServerThread) -> None:
    status, headers, body = raw_get(proxy, "/proxy/origin/negotiated", {"Accept-Encoding": "gzip"})
    assert (status, body, headers["content-length"]) == (200, PLAIN, str(len(PLAIN)))
    assert "content-encoding" not in headers
    assert gzip.decompress(GZIPPED) == PLAIN


@pytest.mark.parametrize(
    ("location", "rewritten"),
    [("/base/echo/new?x=1", "/proxy/origin/echo/new?x=1"), ("echo/rel", "/proxy/origin/echo/rel"),
     ("{origin}/base/echo/abs", "/proxy/origin/echo/abs"), ("/base/", "/proxy/origin/")],
)
def test_a_redirect_under_the_base_url_is_relayed_with_a_location_under_the_proxy(
    proxy: ServerThread, origin: Origin, location: str, rewritten: str
) -> None:
    to = location.format(origin=origin.url)
    for status in (301, 302, 307, 308):
        response = httpx.get(f"{proxy.url}/proxy/origin/redirect", params={"to": to, "status": status})
        assert (response.status_code, response.headers["location"], response.content) == (status, rewritten, b"moved")
    followed = httpx.get(f"{proxy.url}/proxy/origin/redirect", params={"to": "/base/echo/new?x=1"},
                         follow_redirects=True)
    assert followed.json()["raw_path"] == "/base/echo/new"


@pytest.mark.parametrize(
    "location",
    ["http://169.254.169.254/latest/meta-data/", "{other}/base/echo/x", "/elsewhere", "/base", "/basement/x",
     "//169.254.169.254/x", "https://{host}/base/echo/x", "http://user@{host}/base/echo/x"],
)
def test_a_redirect_out_of_the_base_url_is_a_502_that_does_not_reveal_where(
    proxy: ServerThread, origin: Origin, files: ServerThread, location: str
) -> None:
    to = location.format(other=files.url, host=origin.url.removeprefix("http://"))
    target = str(httpx.URL("/proxy/origin/redirect", params={"to": to}))
    for method in ("GET", "HEAD"):
        status, headers, body = raw_get(proxy, target, method=method)
        assert status == 502
        assert "location" not in headers
        if method == "GET":
            assert error_code(body) == "upstream_redirect"
            assert to.encode() not in body and b"169.254" not in body and b"127.0.0.1" not in body


def test_a_malformed_location_is_a_502_too_and_is_not_revealed(proxy: ServerThread) -> None:
    status, headers, body = raw_get(proxy, str(httpx.URL("/proxy/origin/redirect", params={"to": "http://[::1"})))
    assert (status, error_code(body)) == (502, "upstream_unreachable")  # httpx refuses the answer as invalid
    assert "location" not in headers
    assert b"::1" not in body


@pytest.mark.parametrize(
    "target",
    ["/proxy/origin/../outside", "/proxy/origin/echo/../../outside", "/proxy/origin/%2e%2e/outside",
     "/proxy/origin/echo/%2E%2E%2F%2E%2E%2Foutside", "/proxy/origin/..%2foutside", "/proxy/origin//outside",
     "/proxy/origin/%2f%2fevil.example/x", "/proxy/origin//evil.example/x", "/proxy/origin/echo//x",
     "/proxy/origin/..\\outside", "/proxy/origin/..%5coutside", "/proxy/origin/echo%00/x",
     "/proxy/origin/http:%2f%2fevil.example/x", "/proxy/origin/http://evil.example/x",
     "/proxy/origin/javascript:alert(1)", "/proxy/origin/%252e%252e/outside", "/proxy/origin/echo/%252fetc",
     "/proxy/origin/./echo/x", "/proxy/origin/echo/."],
)
def test_paths_that_would_leave_the_base_url_are_rejected_before_any_upstream_request(
    proxy: ServerThread, origin: Origin, target: str
) -> None:
    for method in ("GET", "HEAD"):
        status, headers, _ = raw_get(proxy, target, method=method)
        assert status == 400
        assert headers["content-type"] == "application/json"
    assert error_code(raw_get(proxy, target)[2]) == "invalid_path"
    assert origin.requests == []


def test_an_unknown_upstream_is_404_and_no_url_can_be_named(proxy: ServerThread, origin: Origin) -> None:
    for target in ("/proxy/nope/x", f"/proxy/{origin.url}/base/echo/x", "/proxy/http:/x"):
        assert raw_get(proxy, target)[0] == 404
    assert error_code(raw_get(proxy, "/proxy/nope/x")[2]) == "unknown_upstream"
    assert origin.requests == []


def curl(url: str, output: Path | None = None, *options: str) -> subprocess.CompletedProcess[str]:
    """curl -fsS, the body into `output` (or discarded); its exit code is the point."""
    return subprocess.run(["curl", "-fsS", *options, "-o", str(output or "/dev/null"), url], capture_output=True,
                          text=True, timeout=60)


def test_an_unreachable_upstream_is_a_502_json_error_before_any_body(serve: Serve, tmp_path: Path) -> None:
    port = closed_port()
    proxy = serve(proxy_settings(tmp_path, down={"base_url": f"http://127.0.0.1:{port}/x"}))
    status, _, body = raw_get(proxy, "/proxy/down/file.bin")
    assert (status, error_code(body)) == (502, "upstream_unreachable")
    assert str(port).encode() not in body
    assert curl(f"{proxy.url}/proxy/down/file.bin").returncode == 22  # CURLE_HTTP_RETURNED_ERROR


def test_an_upstream_that_does_not_accept_the_connection_in_time_is_a_504(serve: Serve, tmp_path: Path) -> None:
    with unanswered_port() as port:
        proxy = serve(proxy_settings(tmp_path, slow={"base_url": f"http://127.0.0.1:{port}",
                                                      "connect_timeout_seconds": 0.3}))
        status, _, body = raw_get(proxy, "/proxy/slow/file.bin")
        assert (status, error_code(body)) == (504, "upstream_timeout")
        assert curl(f"{proxy.url}/proxy/slow/file.bin").returncode == 22


def test_an_upstream_that_never_answers_is_a_504(serve: Serve, tmp_path: Path) -> None:
    with RawServer(silent) as upstream:
        proxy = serve(proxy_settings(tmp_path, mute={"base_url": upstream.url, "read_timeout_seconds": 0.3}))
        status, _, body = raw_get(proxy, "/proxy/mute/file.bin")
        assert (status, error_code(body)) == (504, "upstream_timeout")
        wait_for(lambda: upstream.peer_closed == 1)  # the relay gave up on the connection


@pytest.mark.parametrize("content_length", [len(DATA), None], ids=["content-length", "chunked"])
def test_an_upstream_that_stalls_mid_body_aborts_the_transfer_and_curl_exits_18(
    serve: Serve, tmp_path: Path, content_length: int | None
) -> None:
    with RawServer(stall(DATA[:1_000_000], content_length)) as upstream:
        proxy = serve(proxy_settings(tmp_path, stuck={"base_url": upstream.url, "read_timeout_seconds": 0.5}))
        output = tmp_path / "partial.bin"
        result = curl(f"{proxy.url}/proxy/stuck/file.bin", output)
        assert result.returncode == 18, result.stderr  # CURLE_PARTIAL_FILE: the transfer did not end cleanly
        assert output.read_bytes() == DATA[:1_000_000]
        wait_for(lambda: upstream.peer_closed == 1)


@pytest.mark.parametrize("content_length", [len(DATA), None], ids=["content-length", "chunked"])
def test_an_upstream_that_drops_mid_body_aborts_the_transfer_and_curl_exits_18(
    serve: Serve, tmp_path: Path, content_length: int | None
) -> None:
    with RawServer(drop(DATA[:1_000_000], content_length)) as upstream:
        proxy = serve(proxy_settings(tmp_path, flaky={"base_url": upstream.url}))
        output = tmp_path / "partial.bin"
        result = curl(f"{proxy.url}/proxy/flaky/file.bin", output)
        assert result.returncode == 18, result.stderr
        assert output.read_bytes() == DATA[:1_000_000]


def test_an_upstream_that_stalls_before_its_first_body_byte_is_a_504(serve: Serve, tmp_path: Path) -> None:
    with RawServer(stall(b"", 1000)) as upstream:
        proxy = serve(proxy_settings(tmp_path, stuck={"base_url": upstream.url, "read_timeout_seconds": 0.3}))
        status, _, body = raw_get(proxy, "/proxy/stuck/file.bin")
        assert (status, error_code(body)) == (504, "upstream_timeout")
        wait_for(lambda: upstream.peer_closed == 1)


def test_an_upstream_that_drops_before_its_first_body_byte_is_a_502(serve: Serve, tmp_path: Path) -> None:
    with RawServer(drop(b"", 1000)) as upstream:
        proxy = serve(proxy_settings(tmp_path, flaky={"base_url": upstream.url}))
        status, _, body = raw_get(proxy, "/proxy/flaky/file.bin")
        assert (status, error_code(body)) == (502, "upstream_unreachable")


@pytest.fixture
def endless_upstream() -> Iterator[RawServer]:
    with RawServer(endless) as upstream:
        yield upstream


def test_a_client_that_leaves_closes_the_upstream_connection_at_once_and_frees_its_slot(
    serve: Serve, tmp_path: Path, endless_upstream: RawServer
) -> None:
    proxy = serve(proxy_settings(tmp_path, stream={"base_url": endless_upstream.url, "max_concurrent_relays": 1}))
    for round_ in range(1, 4):
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=30) as conn:
            conn.sendall(b"GET /proxy/stream/x HTTP/1.1\r\nHost: x\r\n\r\n")
            received = b""
            while len(received) < 1_000_000:
                received += conn.recv(65536)
            assert received.startswith(b"HTTP/1.1 200")
        wait_for(lambda round_=round_: endless_upstream.peer_closed == round_)
    assert len(endless_upstream.requests) == 3  # the slot was free again each time


def test_relays_beyond_the_cap_get_429_with_retry_after_until_one_ends(
    serve: Serve, tmp_path: Path, endless_upstream: RawServer
) -> None:
    proxy = serve(proxy_settings(tmp_path, stream={"base_url": endless_upstream.url, "max_concurrent_relays": 2}))
    with ExitStack() as stack:
        holders = [stack.enter_context(socket.create_connection(("127.0.0.1", proxy.port), timeout=30))
                   for _ in range(2)]
        for holder in holders:
            holder.sendall(b"GET /proxy/stream/x HTTP/1.1\r\nHost: x\r\n\r\n")
            assert holder.recv(65536).startswith(b"HTTP/1.1 200")
        for method in ("GET", "HEAD"):
            status, headers, _ = raw_get(proxy, "/proxy/stream/x", method=method)
            assert (status, headers["retry-after"]) == (429, "1")
        assert error_code(raw_get(proxy, "/proxy/stream/x")[2]) == "too_many_relays"
        assert len(endless_upstream.requests) == 2
        holders[0].close()
        wait_for(lambda: endless_upstream.peer_closed == 1)
        with httpx.stream("GET", f"{proxy.url}/proxy/stream/x") as response:
            assert response.status_code == 200
            assert len(next(response.iter_raw())) > 0


def test_an_event_stream_reaches_the_client_event_by_event_before_the_upstream_ends(
    proxy: ServerThread, origin: Origin
) -> None:
    with httpx.stream("GET", f"{proxy.url}/proxy/origin/events", timeout=30) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["x-accel-buffering"] == "no"
        chunks = response.iter_raw()
        first = b""
        while not first.endswith(b"\n\n"):
            first += next(chunks)
        assert first == b"event: first\ndata: 1\n\n"
        assert not origin.events_finished.is_set()  # the upstream is still waiting to send the second event
        origin.release.set()
        assert b"".join(chunks) == b"event: second\ndata: 2\n\n"
    assert origin.events_finished.is_set()


def test_a_client_that_stops_reading_pauses_the_upstream_instead_of_buffering_its_body(
    serve: Serve, tmp_path: Path, endless_upstream: RawServer
) -> None:
    proxy = serve(proxy_settings(tmp_path, stream={"base_url": endless_upstream.url}))
    with socket.socket() as conn:
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)  # before connect: a small window
        conn.settimeout(30)
        conn.connect(("127.0.0.1", proxy.port))
        conn.sendall(b"GET /proxy/stream/x HTTP/1.1\r\nHost: x\r\n\r\n")
        assert conn.recv(65536).startswith(b"HTTP/1.1 200")

        def settled() -> bool:  # no more bytes leave the upstream
            before = endless_upstream.bytes_sent
            time.sleep(0.2)
            return 0 < before == endless_upstream.bytes_sent

        wait_for(settled)
        # In flight: the kernel's socket buffers (about 10 MiB on loopback here; Linux autotunes them up to
        # tcp_rmem/tcp_wmem) and a chunk in the relay. A relay that buffered would read the endless body on.
        assert endless_upstream.bytes_sent < 64 * 1024 * 1024


def test_several_gib_relay_while_the_servers_peak_rss_stays_flat(serve: Serve, tmp_path: Path) -> None:
    size = 3 * 1024**3
    huge = sparse_file(tmp_path / "huge.bin", size, b"the last sixteen")
    with RawServer(sendfile(huge)) as upstream:
        proxy = serve(proxy_settings(tmp_path, big={"base_url": upstream.url}))
        url = f"{proxy.url}/proxy/big/huge.bin"
        assert httpx.head(url).headers["content-length"] == str(size)
        before = vm_kib("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to the current RSS
        result = subprocess.run(["curl", "-fsS", "-o", "/dev/null", "-w", "%{size_download}", url],
                                capture_output=True, text=True, timeout=120)
        growth_mib = (vm_kib("VmHWM") - before) / 1024
    assert (result.returncode, result.stdout) == (0, str(size)), result.stderr
    assert growth_mib < 30, f"peak RSS grew by {growth_mib:.1f} MiB while relaying {size} bytes"
