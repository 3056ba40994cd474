"""relay's pure parts: upstream URLs from a base URL and a decoded path, the paths it refuses, the headers
forwarded each way, and the Location a redirect gets; and, over a real loopback socket, the size of its reads."""

from __future__ import annotations

import asyncio
import random
import ssl
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from exporter.config import Settings, UpstreamConfig
from exporter.errors import InvalidPath, UnknownUpstream, UpstreamRedirect
from exporter.serving.relay import (
    Upstream,
    create_upstreams,
    find_upstream,
    outgoing_headers,
    proxy_location,
    relayed_headers,
    upstream_url,
)
from exporter.serving.transport import UPSTREAM_READ_BYTES
from tests.helpers import wait_for
from tests.upstreams import RawServer, drop


def make_upstream(base_url: str = "http://store.internal:9000/bucket/", **table: Any) -> Upstream:
    config = Settings.from_dict({"upstreams": {"store": {"base_url": base_url, **table}}}).upstreams["store"]
    return Upstream(config)


@pytest.fixture
def store() -> Iterator[Upstream]:
    upstream = make_upstream(headers={"Authorization": "Bearer secret", "X-Api-Key": "k"},
                             forward_headers=["Range", "Accept", "Authorization", "X-Trace"])
    yield upstream
    asyncio.run(upstream.aclose())


@pytest.fixture
def root() -> Iterator[Upstream]:
    """An upstream whose base URL has no path."""
    upstream = make_upstream("https://partner.example")
    yield upstream
    asyncio.run(upstream.aclose())


@pytest.mark.parametrize(
    ("path", "query", "url"),
    [
        ("a.csv", b"", "http://store.internal:9000/bucket/a.csv"),
        ("", b"", "http://store.internal:9000/bucket/"),
        ("2024/06/", b"", "http://store.internal:9000/bucket/2024/06/"),
        ("a b/c?d#e/Grüße ✓.txt", b"", "http://store.internal:9000/bucket/a%20b/c%3Fd%23e/Gr%C3%BC%C3%9Fe%20%E2%9C%93.txt"),
        ("100%.csv", b"", "http://store.internal:9000/bucket/100%25.csv"),
        ("x/2024-01-01T10:00:00+00:00.csv", b"", "http://store.internal:9000/bucket/x/2024-01-01T10:00:00+00:00.csv"),
        ("a.csv", b"v=2&sig=ab%2Fcd%3D&x", "http://store.internal:9000/bucket/a.csv?v=2&sig=ab%2Fcd%3D&x"),
        ("a.csv", b"q=a b#frag\xe9", "http://store.internal:9000/bucket/a.csv?q=a%20b%23frag%E9"),
        ("a.csv", b"/?:@!$&'()*+,;=", "http://store.internal:9000/bucket/a.csv?/?:@!$&'()*+,;="),
    ],
)
def test_the_upstream_url_is_the_base_url_with_each_segment_encoded_and_the_query_as_it_came(
    store: Upstream, path: str, query: bytes, url: str
) -> None:
    built = upstream_url(store, path, query)
    assert str(built) == url
    assert (built.host, built.port) == ("store.internal", 9000)


def test_a_base_url_without_a_path_takes_the_path_from_the_root(root: Upstream) -> None:
    assert str(upstream_url(root, "v1/data.bin", b"")) == "https://partner.example/v1/data.bin"
    assert str(upstream_url(root, "", b"")) == "https://partner.example/"


@pytest.mark.parametrize(
    "path",
    ["..", "../etc/passwd", "a/../../b", "a/..", ".", "./a", "a/./b", "a//b", "/etc/passwd", "//evil.example/x",
     "a\\b", "..\\x", "a\x00b", "http:", "http://evil.example/x", "https:evil.example", "javascript:alert(1)",
     "file:/etc/passwd", "%2e%2e", "%2E%2E/x", "a/%2e", "a%2fb", "a%2F..", "%5c..", "a%00", "a%5cb", "//", "a//"],
)
def test_paths_that_could_leave_the_base_url_are_invalid(store: Upstream, root: Upstream, path: str) -> None:
    for upstream in (store, root):
        with pytest.raises(InvalidPath):
            upstream_url(upstream, path, b"")


@pytest.mark.parametrize(
    ("path", "encoded"),
    [("x/http:y", "x/http:y"), ("%zz", "%25zz"), ("a%20b", "a%2520b"), ("..a", "..a"), ("a..", "a.."),
     ("...", "..."), (".hidden", ".hidden"), ("a;b=c", "a;b=c")],
)
def test_odd_but_harmless_names_are_relayed_encoded(store: Upstream, path: str, encoded: str) -> None:
    assert upstream_url(store, path, b"").raw_path == f"/bucket/{encoded}".encode()


def test_a_first_segment_that_reads_as_a_scheme_is_refused_but_a_later_one_is_not(store: Upstream) -> None:
    with pytest.raises(InvalidPath, match="scheme"):
        upstream_url(store, "a:b", b"")
    assert upstream_url(store, "x/a:b", b"").path == "/bucket/x/a:b"
    assert upstream_url(store, "1:2", b"").path == "/bucket/1:2"  # a scheme starts with a letter (RFC 3986 §3.1)


def test_outgoing_headers_forward_the_allow_list_add_the_configured_ones_and_ask_for_identity(
    store: Upstream
) -> None:
    incoming = [("host", "exporter"), ("range", "bytes=0-9"), ("accept", "text/csv"), ("accept", "*/*"),
                ("authorization", "Bearer caller"), ("cookie", "a=1"), ("x-trace", "t1"), ("connection", "x-trace"),
                ("accept-encoding", "gzip"), ("te", "trailers"), ("x-forwarded-for", "10.1.2.3")]
    headers = outgoing_headers(store.config, incoming)
    assert [(name.lower(), value) for name, value in headers if name.lower() != "user-agent"] == [
        ("accept-encoding", "identity"), ("range", "bytes=0-9"), ("accept", "text/csv"), ("accept", "*/*"),
        ("authorization", "Bearer secret"), ("x-api-key", "k")]


def test_a_forwarded_accept_encoding_replaces_identity() -> None:
    upstream = make_upstream(forward_headers=["Accept-Encoding"])
    try:
        assert ("accept-encoding", "gzip") in outgoing_headers(upstream.config, [("accept-encoding", "gzip")])
        assert ("accept-encoding", "identity") in outgoing_headers(upstream.config, [])
    finally:
        asyncio.run(upstream.aclose())


def answer(status: int, headers: list[tuple[str, str]], url: str = "http://store.internal:9000/bucket/a/b.csv"
           ) -> httpx.Response:
    return httpx.Response(status, headers=headers, request=httpx.Request("GET", url))


def test_relayed_headers_keep_the_allow_list_and_drop_hop_by_hop_cookies_and_credentials(store: Upstream) -> None:
    response = answer(200, [
        ("Content-Type", "text/csv"), ("Content-Length", "10"), ("ETag", '"e"'), ("Last-Modified", "x"),
        ("Accept-Ranges", "bytes"), ("Cache-Control", "private"), ("Cache-Control", "max-age=5"), ("Vary", "Accept"),
        ("Content-Encoding", "gzip"), ("Content-Disposition", "attachment"), ("Expires", "0"), ("Retry-After", "3"),
        ("Set-Cookie", "s=1"), ("Connection", "keep-alive, ETag"), ("Keep-Alive", "timeout=5"),
        ("Transfer-Encoding", "chunked"), ("Trailer", "X"), ("Upgrade", "h2c"), ("Proxy-Authenticate", "Basic"),
        ("Authorization", "Bearer secret"), ("X-Api-Key", "k"), ("Server", "minio"), ("Date", "today"),
        ("WWW-Authenticate", "Bearer"), ("X-Amz-Request-Id", "r"), ("Content-Language", "en"),
    ])
    assert relayed_headers(store, response, "/proxy/store/") == {
        "content-type": "text/csv", "content-length": "10", "last-modified": "x", "accept-ranges": "bytes",
        "cache-control": "private, max-age=5", "vary": "Accept", "content-encoding": "gzip",
        "content-disposition": "attachment", "expires": "0", "retry-after": "3", "content-language": "en",
        "x-accel-buffering": "no", "content-security-policy": "sandbox", "x-content-type-options": "nosniff",
    }


def test_a_header_the_service_adds_is_never_relayed_back_even_if_allow_listed() -> None:
    upstream = make_upstream(headers={"Cache-Control": "no-cache"})
    try:
        assert "cache-control" not in relayed_headers(upstream, answer(200, [("Cache-Control", "x")]), "/p/")
    finally:
        asyncio.run(upstream.aclose())


@pytest.mark.parametrize("status", [204, 304])
def test_an_answer_without_a_body_relays_no_content_length(store: Upstream, status: int) -> None:
    headers = relayed_headers(store, answer(status, [("Content-Length", "10"), ("ETag", '"e"')]), "/p/")
    assert headers == {"etag": '"e"', "x-accel-buffering": "no", "content-disposition": "attachment",
                       "content-security-policy": "sandbox", "x-content-type-options": "nosniff"}


@pytest.mark.parametrize(
    ("location", "rewritten"),
    [("/bucket/c.csv", "/proxy/store/c.csv"), ("c.csv?x=1", "/proxy/store/a/c.csv?x=1"),
     ("../d/", "/proxy/store/d/"), ("http://store.internal:9000/bucket/a%20b", "/proxy/store/a%20b"),
     ("/bucket/", "/proxy/store/"), ("//store.internal:9000/bucket/x", "/proxy/store/x")],
)
def test_a_redirect_under_the_base_url_points_under_the_proxy(store: Upstream, location: str, rewritten: str) -> None:
    request_url = httpx.URL("http://store.internal:9000/bucket/a/b.csv")
    assert proxy_location(store, request_url, location, "/proxy/store/") == rewritten
    response = answer(302, [("Location", location)])
    assert relayed_headers(store, response, "/proxy/store/")["location"] == rewritten


@pytest.mark.parametrize(
    "location",
    ["http://169.254.169.254/", "https://store.internal:9000/bucket/x", "http://store.internal/bucket/x",
     "http://store.internal:9000/bucketx", "/bucket", "/other/x", "//evil.example/bucket/x",
     "http://user@store.internal:9000/bucket/x", "/bucket/../etc"],
)
def test_a_redirect_out_of_the_base_url_is_an_upstream_redirect_that_does_not_name_the_target(
    store: Upstream, location: str
) -> None:
    with pytest.raises(UpstreamRedirect) as raised:
        relayed_headers(store, answer(301, [("Location", location)]), "/proxy/store/")
    assert raised.value.status == 502
    assert location not in raised.value.message


def test_a_304_with_a_location_is_not_a_redirect(store: Upstream) -> None:
    assert "location" not in relayed_headers(store, answer(304, [("Location", "http://elsewhere/")]), "/p/")


def test_upstreams_are_created_per_config_found_by_name_and_closed() -> None:
    configs = {"a": UpstreamConfig("a", "http://a.internal"), "b": UpstreamConfig("b", "http://b.internal")}
    upstreams = create_upstreams(configs)
    assert find_upstream(upstreams, "a").config is configs["a"]
    with pytest.raises(UnknownUpstream, match="no upstream named 'c'"):
        find_upstream(upstreams, "c")

    async def close() -> None:
        for upstream in upstreams.values():
            await upstream.aclose()

    asyncio.run(close())
    assert all(upstream.client.is_closed for upstream in upstreams.values())


def test_the_upstream_is_read_more_than_httpcores_64_kib_at_a_time_when_that_much_is_waiting() -> None:
    body = random.Random(13).randbytes(1024 * 1024)
    with RawServer(drop(body, len(body))) as origin, asyncio.Runner() as runner:
        upstream = make_upstream(origin.url)
        try:
            request = upstream.client.build_request("GET", f"{origin.url}/x")
            response = runner.run(upstream.client.send(request, stream=True))
            # Between runs the loop reads nothing, so the whole body waits in loopback's socket buffers.
            wait_for(lambda: origin.bytes_sent == len(body))
            chunks = runner.run(collect(response.aiter_raw()))
        finally:
            runner.run(upstream.aclose())
    assert b"".join(chunks) == body
    assert 64 * 1024 < max(len(chunk) for chunk in chunks) <= UPSTREAM_READ_BYTES


async def collect(chunks: AsyncIterator[bytes]) -> list[bytes]:
    return [chunk async for chunk in chunks]


def test_an_https_upstream_is_verified_against_certifi_not_a_ca_named_by_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # would make the self-signed certificate trusted
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)

    async def fetch() -> None:
        async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            writer.close()

        server = await asyncio.start_server(answer, "127.0.0.1", 0, ssl=context)
        port = server.sockets[0].getsockname()[1]
        upstream = make_upstream(f"https://127.0.0.1:{port}")
        try:
            async with server:
                await upstream.client.get(f"https://127.0.0.1:{port}/x")
        finally:
            await upstream.aclose()

    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        asyncio.run(fetch())
