"""Request bodies an attacker sends: 50 MB to POST /jobs and /sign-in, with a Content-Length or chunked, with a token
or none. Each is answered (413 body_too_large, or 401 first) while the client still has most of it unsent: the
server never reads it (issue 18, item 2)."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable, Iterator

import httpx
import pytest

from tests.conftest import Database
from tests.helpers import bearer, create_key
from tests.servers import ServerThread

Secured = Callable[..., ServerThread]
PIECE = 64 * 1024
HUGE = 50 * 1024 * 1024
JOB = {"dataset": "orders", "format": "csv", "params": {"limit": "5"}}


def _pieces(chunked: bool) -> Iterator[bytes]:
    for _ in range(HUGE // PIECE):
        yield b"%x\r\n%s\r\n" % (PIECE, b" " * PIECE) if chunked else b" " * PIECE
    if chunked:
        yield b"0\r\n\r\n"


def _post_huge(server: ServerThread, path: str, headers: dict[str, str], chunked: bool) -> tuple[int, dict, int]:
    """POST a 50 MB body piece by piece from a thread while reading the answer; the status, the JSON body, and how
    many body bytes had been handed to the socket when the status line arrived."""
    conn = socket.create_connection(("127.0.0.1", server.port), timeout=30)  # the timeout: a deadline against hangs
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, PIECE)  # keep the kernel from taking much of it unread
    framing = {"Transfer-Encoding": "chunked"} if chunked else {"Content-Length": str(HUGE)}
    head = "".join(f"{name}: {value}\r\n" for name, value in {**headers, **framing}.items())
    conn.sendall(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{head}\r\n".encode())
    sent = [0]
    answered = threading.Event()

    def send_body() -> None:
        for piece in _pieces(chunked):
            if answered.is_set():
                return
            try:
                conn.sendall(piece)
            except OSError:  # the server closed the connection after its answer
                return
            sent[0] += len(piece)

    sender = threading.Thread(target=send_body, daemon=True)
    sender.start()
    stream = conn.makefile("rb")
    try:
        status_line = stream.readline()
        sent_when_answered = sent[0]
        answered.set()
        length = 0
        while (line := stream.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            if name.lower() == "content-length":
                length = int(value)
        body = json.loads(stream.read(length))
    finally:
        answered.set()
        stream.close()
        conn.close()
        sender.join(timeout=30)
    return int(status_line.split()[1]), body, sent_when_answered


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
@pytest.mark.parametrize("path", ["/jobs", "/sign-in"])
def test_a_50_mb_body_gets_413_while_most_of_it_is_unsent(
    pg: Database, secured: Secured, path: str, chunked: bool
) -> None:
    server = secured(job_workers=0)
    token = create_key(pg, "analyst", "dataset:*")
    content_type = "application/json" if path == "/jobs" else "application/x-www-form-urlencoded"
    status, body, sent = _post_huge(server, path, {**bearer(token), "Content-Type": content_type}, chunked)
    assert status == 413 and body["error"]["code"] == "body_too_large", body
    assert sent < HUGE // 4, sent


def test_a_body_without_a_token_gets_401_before_it_is_read(pg: Database, secured: Secured) -> None:
    server = secured(job_workers=0, max_body_bytes=2 * HUGE)  # the cap does not hide the order: auth comes first
    create_key(pg, "analyst", "dataset:*")
    status, body, sent = _post_huge(server, "/jobs", {"Content-Type": "application/json"}, chunked=False)
    assert status == 401 and body["error"]["code"] == "missing_token", body
    assert sent < HUGE // 4, sent


def test_the_cap_lets_a_body_of_exactly_max_body_bytes_through(pg: Database, secured: Secured) -> None:
    server = secured(job_workers=0, max_body_bytes=1000)
    token = create_key(pg, "analyst", "dataset:*", max_concurrent=10)
    document = json.dumps(JOB).encode()
    at_cap, over = document.ljust(1000), document.ljust(1001)
    assert httpx.post(f"{server.url}/jobs", content=at_cap, headers=bearer(token)).status_code == 202
    refused = httpx.post(f"{server.url}/jobs", content=over, headers=bearer(token))
    assert refused.status_code == 413 and refused.json()["error"]["code"] == "body_too_large"
    assert "1000 bytes" in refused.json()["error"]["message"]
    # chunked: no Content-Length to go by, so the bytes are counted as they are read
    assert httpx.post(f"{server.url}/jobs", content=iter([at_cap[:500], at_cap[500:]]),
                      headers=bearer(token)).status_code == 202
    chunked = httpx.post(f"{server.url}/jobs", content=iter([over[:500], over[500:]]), headers=bearer(token))
    assert chunked.status_code == 413 and chunked.json()["error"]["code"] == "body_too_large"


def test_an_invalid_job_body_is_still_a_400_naming_the_field(pg: Database, secured: Secured) -> None:
    server = secured(job_workers=0)
    token = create_key(pg, "analyst", "dataset:*")
    missing = httpx.post(f"{server.url}/jobs", json={"format": "csv"}, headers=bearer(token))
    assert missing.status_code == 400 and missing.json()["error"]["code"] == "invalid_parameter"
    assert missing.json()["error"]["message"].startswith("body.dataset")
    broken = httpx.post(f"{server.url}/jobs", content=b"{", headers=bearer(token))
    assert broken.status_code == 400 and broken.json()["error"]["code"] == "invalid_parameter"
    schema = httpx.get(f"{server.url}/openapi.json", headers=bearer(token)).json()
    body = schema["paths"]["/jobs"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert set(body["required"]) == {"dataset", "format"}
