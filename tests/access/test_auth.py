"""Keys, grants, restrictions, per-key limits and the audit log, over a real uvicorn server with auth on."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from exporter.config import Settings
from tests.conftest import Database
from tests.helpers import bearer, create_key, revoke, wait_for
from tests.jobs.test_jobs import SLOW, TERMINAL, make_slow
from tests.servers import ServerThread
from tests.upstreams import files_upstream, sparse_file

Serve = Callable[[Settings], ServerThread]
ENDPOINTS = ["/exports/orders.csv", "/files/r/a.txt", "/proxy/up/a.txt", "/jobs", "/datasets", "/datasets/orders"]
BIG = 256 * 1024 * 1024  # a sparse file that takes long to send at curl's --limit-rate


@pytest.fixture
def upstream(tmp_path: Path) -> Iterator[ServerThread]:
    """A real upstream file server (the service's own /files, auth off) with a.txt and big.bin."""
    directory = tmp_path / "upstream"
    directory.mkdir()
    (directory / "a.txt").write_text("upstream a\n")
    sparse_file(directory / "big.bin", BIG, b"end")
    with files_upstream(directory, tmp_path / "upstream.db") as server:
        yield server


@pytest.fixture
def secured(pg: Database, serve: Serve, tmp_path: Path, upstream: ServerThread) -> Callable[..., ServerThread]:
    """Start the service with auth on, a file root `r` and an upstream `up`; no key exists yet."""
    pg.execute("DELETE FROM api_keys", "DELETE FROM job_events", "DELETE FROM jobs", "DELETE FROM export_log")
    pg.seed_demo(2000)
    root = tmp_path / "root"
    root.mkdir()
    (root / "a.txt").write_text("file a\n")
    sparse_file(root / "big.bin", BIG, b"end")

    def start(**overrides: Any) -> ServerThread:
        return serve(pg.settings(auth="required", jobs_dir=str(tmp_path / "jobs"), files={"roots": {"r": str(root)}},
                                 upstreams={"up": {"base_url": f"{upstream.url}/files/r"}}, **overrides))

    return start


def audit(db: Database) -> list[dict[str, Any]]:
    return [dict(row._mapping) for row in db.execute("SELECT * FROM export_log ORDER BY id")]


# --- tokens ----------------------------------------------------------------------------------------------------


def mangled(token: str) -> dict[str, str]:
    """Tokens that must all be refused, each as a client would send it."""
    body = token.removeprefix("exp_")
    flipped = body[:-1] + ("A" if body[-1] != "A" else "B")  # the checksum no longer matches
    return {
        "malformed": "Bearer not-a-token",
        "wrong scheme": f"Basic {token}",
        "wrong checksum": f"Bearer exp_{flipped}",
        "cut short": f"Bearer {token[:-3]}",
    }


@pytest.mark.parametrize("path", ENDPOINTS)
def test_requests_without_a_usable_token_get_401_with_www_authenticate(
    pg: Database, secured: Callable[..., ServerThread], path: str
) -> None:
    server = secured()
    token = create_key(pg, "analyst", "dataset:*", "files:*", "proxy:*")
    other = create_key(pg, "other", "dataset:*")
    # The same key id with another key's secret, and an id no key has, with valid checksums.
    import base64

    from exporter.access.tokens import ID_BYTES, PREFIX, _check

    def forge(key_id: bytes, secret: bytes) -> str:
        body = key_id + secret
        return PREFIX + base64.urlsafe_b64encode(body + _check(body)).decode().rstrip("=")

    raw, raw_other = (base64.urlsafe_b64decode(t[4:] + "==") for t in (token, other))
    wrong_secret = forge(raw[:ID_BYTES], raw_other[ID_BYTES:-4])
    unknown_id = forge(b"\x00" * ID_BYTES, raw[ID_BYTES:-4])
    expired = create_key(pg, "expired", "dataset:*", "files:*", "proxy:*", expires_in=timedelta(seconds=-1))
    revoked = create_key(pg, "revoked", "dataset:*", "files:*", "proxy:*")
    revoke(pg, "revoked")

    cases = {"no token": ({}, "missing_token"), "wrong secret": (bearer(wrong_secret), "invalid_token"),
             "unknown id": (bearer(unknown_id), "invalid_token"), "expired": (bearer(expired), "expired_token"),
             "revoked": (bearer(revoked), "revoked_token")}
    cases |= {name: ({"Authorization": value}, "invalid_token") for name, value in mangled(token).items()}
    for name, (headers, code) in cases.items():
        response = httpx.get(server.url + path, headers=headers)
        assert response.status_code == 401, name
        assert response.headers["www-authenticate"].startswith("Bearer"), name
        assert response.json()["error"]["code"] == code, name
    assert httpx.get(server.url + path, headers=bearer(token)).status_code == 200


@pytest.mark.parametrize("query", ["access_token=x", "token=exp_abc", "a=1&key=exp_"])
def test_a_token_in_the_query_string_is_refused_before_anything_else(
    pg: Database, secured: Callable[..., ServerThread], query: str
) -> None:
    server = secured()
    token = create_key(pg, "analyst", "dataset:*")
    for path in [*ENDPOINTS, "/healthz"]:
        response = httpx.get(f"{server.url}{path}?{query}", headers=bearer(token))
        assert (response.status_code, response.json()["error"]["code"]) == (400, "token_in_url"), path


def test_health_checks_stay_open(pg: Database, secured: Callable[..., ServerThread]) -> None:
    server = secured()
    assert httpx.get(f"{server.url}/healthz").status_code == 200
    assert httpx.get(f"{server.url}/readyz").status_code == 200


def test_with_no_key_every_request_is_401_and_the_log_says_how_to_create_one(
    pg: Database, secured: Callable[..., ServerThread], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level("WARNING"):
        server = secured()
    assert "exporter keys create" in caplog.text
    assert httpx.get(f"{server.url}/exports/orders.csv").status_code == 401


# --- grants and restrictions -------------------------------------------------------------------------------------


def test_a_key_gets_only_what_it_was_granted(pg: Database, secured: Callable[..., ServerThread]) -> None:
    server = secured(datasets={"other": {"table": "orders", "key": "id"}})
    token = create_key(pg, "orders-only", "dataset:orders")
    for path in ["/exports/other.csv", "/datasets/other", "/files/r/a.txt", "/files/r", "/proxy/up/a.txt"]:
        response = httpx.get(server.url + path, headers=bearer(token))
        assert (response.status_code, response.json()["error"]["code"]) == (403, "forbidden"), path
    refused_job = httpx.post(f"{server.url}/jobs", json={"dataset": "other", "format": "csv"}, headers=bearer(token))
    assert refused_job.status_code == 403
    listed = httpx.get(f"{server.url}/datasets", headers=bearer(token)).json()["datasets"]
    assert [d["name"] for d in listed] == ["orders"]
    assert httpx.get(f"{server.url}/exports/orders.csv", headers=bearer(token)).status_code == 200

    files = create_key(pg, "files", "files:r", "proxy:up")
    assert httpx.get(f"{server.url}/files/r/a.txt", headers=bearer(files)).text == "file a\n"
    assert httpx.get(f"{server.url}/proxy/up/a.txt", headers=bearer(files)).text == "upstream a\n"
    assert httpx.get(f"{server.url}/exports/orders.csv", headers=bearer(files)).status_code == 403
    assert httpx.get(f"{server.url}/datasets", headers=bearer(files)).json() == {"datasets": []}


@pytest.mark.parametrize("copy", [True, False], ids=["copy", "generic"])
def test_a_column_restricted_key_sees_only_its_columns(pg: Database, secured: Callable[..., ServerThread],
                                                      copy: bool) -> None:
    server = secured(copy_fast_path=copy)
    token = create_key(pg, "narrow", "dataset:orders", columns=("orders=id,amount,status",))
    header = httpx.get(f"{server.url}/exports/orders.csv", params={"limit": "2"}, headers=bearer(token))
    assert header.text.splitlines()[0] == "id,amount,status"
    line = httpx.get(f"{server.url}/exports/orders.ndjson", params={"limit": "1"}, headers=bearer(token)).text
    assert list(json.loads(line)) == ["id", "amount", "status"]
    described = httpx.get(f"{server.url}/datasets/orders", headers=bearer(token)).json()
    assert [c["name"] for c in described["columns"]] == ["id", "amount", "status"]
    for params in ({"columns": "id,note"}, {"country": "DE"}, {"order": "-created_at"}, {"note__isnull": "true"}):
        refused = httpx.get(f"{server.url}/exports/orders.csv", params=params, headers=bearer(token))
        assert (refused.status_code, refused.json()["error"]["code"]) == (403, "forbidden"), params
    assert httpx.head(f"{server.url}/exports/orders.csv?columns=note", headers=bearer(token)).status_code == 403


@pytest.mark.parametrize("copy", [True, False], ids=["copy", "generic"])
@pytest.mark.parametrize("extra", [{}, {"status__ne": "paid"}, {"status__in": "paid,open"},
                                   {"status__isnull": "false"}, {"status": "open"}])
def test_a_row_filter_holds_whatever_the_caller_adds(pg: Database, secured: Callable[..., ServerThread],
                                                    copy: bool, extra: dict[str, str]) -> None:
    server = secured(copy_fast_path=copy)
    token = create_key(pg, "paid-only", "dataset:orders", row_filters=("orders=status=paid",))
    text = httpx.get(f"{server.url}/exports/orders.csv", params={"columns": "id,status", **extra},
                     headers=bearer(token)).text
    statuses = {row["status"] for row in csv.DictReader(io.StringIO(text))}
    assert statuses <= {"paid"}
    expected = 0 if extra in ({"status__ne": "paid"}, {"status": "open"}) else 400  # a fifth of 2000 are paid
    assert len(text.splitlines()) - 1 == expected


def test_a_row_filter_and_columns_hold_in_jobs(pg: Database, secured: Callable[..., ServerThread]) -> None:
    server = secured()
    token = create_key(pg, "paid-only", "dataset:orders", columns=("orders=id,status",),
                       row_filters=("orders=status=paid",))
    created = httpx.post(f"{server.url}/jobs", json={"dataset": "orders", "format": "csv",
                                                     "params": {"status__in": "paid,open"}}, headers=bearer(token))
    job_id = created.json()["id"]
    done = wait_for(lambda: (j := httpx.get(f"{server.url}/jobs/{job_id}", headers=bearer(token)).json())["state"]
                    in TERMINAL and j, 60)
    text = httpx.get(f"{server.url}/jobs/{job_id}/result", headers=bearer(token)).text
    rows = list(csv.DictReader(io.StringIO(text)))
    assert done["state"] == "succeeded"
    assert list(rows[0]) == ["id", "status"] and {r["status"] for r in rows} == {"paid"} and len(rows) == 400


@pytest.mark.parametrize("copy", [True, False], ids=["copy", "generic"])
def test_max_rows_aborts_the_transfer_and_never_ends_it_cleanly(pg: Database, secured: Callable[..., ServerThread],
                                                               tmp_path: Path, copy: bool) -> None:
    pg.seed_demo(50_000)
    server = secured(copy_fast_path=copy, batch_rows=500)
    token = create_key(pg, "capped", "dataset:orders", max_rows=("orders=20000",))
    output = tmp_path / "orders.csv"
    curl = subprocess.run(["curl", "-sS", "-H", f"Authorization: Bearer {token}", "-o", str(output),
                           f"{server.url}/exports/orders.csv"], capture_output=True, timeout=60)
    assert curl.returncode == 18, curl.stderr  # the body started and never ended
    within = httpx.get(f"{server.url}/exports/orders.csv", params={"limit": "20000"}, headers=bearer(token))
    assert within.status_code == 200 and len(list(csv.DictReader(io.StringIO(within.text)))) == 20000
    entry = wait_for(lambda: [e for e in audit(pg) if e["outcome"] == "failed"])[0]
    assert "RowLimitExceeded" in entry["error"] and entry["key_name"] == "capped"

    job = httpx.post(f"{server.url}/jobs", json={"dataset": "orders", "format": "csv"}, headers=bearer(token)).json()
    failed = wait_for(lambda: (j := httpx.get(f"{server.url}/jobs/{job['id']}", headers=bearer(token)).json())
                      ["state"] in TERMINAL and j, 60)
    assert (failed["state"], failed["error"]["code"]) == ("failed", "row_limit_exceeded")


# --- jobs and links ----------------------------------------------------------------------------------------------


def test_jobs_belong_to_their_key_and_another_key_gets_404(pg: Database, secured: Callable[..., ServerThread]
                                                           ) -> None:
    server = secured(job_workers=0)
    alice, bob = (create_key(pg, name, "dataset:orders") for name in ("alice", "bob"))
    admin = create_key(pg, "ops", "admin")
    job_id = httpx.post(f"{server.url}/jobs", json={"dataset": "orders", "format": "csv"},
                        headers=bearer(alice)).json()["id"]
    for method, path in [("GET", ""), ("GET", "/events"), ("GET", "/result"), ("DELETE", "")]:
        response = httpx.request(method, f"{server.url}/jobs/{job_id}{path}", headers=bearer(bob))
        assert (response.status_code, response.json()["error"]["code"]) == (404, "unknown_job"), path
    assert httpx.get(f"{server.url}/jobs", headers=bearer(bob)).json() == {"jobs": []}
    assert [j["id"] for j in httpx.get(f"{server.url}/jobs", headers=bearer(admin)).json()["jobs"]] == [job_id]
    assert httpx.get(f"{server.url}/jobs/{job_id}", headers=bearer(admin)).status_code == 200
    # The same Idempotency-Key is each key's own.
    key = {"Idempotency-Key": "nightly"}
    first = httpx.post(f"{server.url}/jobs", json={"dataset": "orders", "format": "csv"}, headers=bearer(alice) | key)
    second = httpx.post(f"{server.url}/jobs", json={"dataset": "orders", "format": "ndjson"},
                        headers=bearer(bob) | key)
    assert (first.status_code, second.status_code) == (202, 202)


def test_a_signed_result_link_works_without_a_header_until_it_expires(
    pg: Database, secured: Callable[..., ServerThread]
) -> None:
    server = secured(link_ttl_seconds=2)
    token = create_key(pg, "analyst", "dataset:orders")
    job_id = httpx.post(f"{server.url}/jobs", json={"dataset": "orders", "format": "csv"},
                        headers=bearer(token)).json()["id"]
    done = wait_for(lambda: (j := httpx.get(f"{server.url}/jobs/{job_id}", headers=bearer(token)).json())
                    ["state"] in TERMINAL and j, 60)
    url = server.url + done["result"]["url"]
    assert "signature=" in url and "exp_" not in url
    downloaded = httpx.get(url)
    assert downloaded.status_code == 200 and downloaded.headers["repr-digest"]
    tampered = httpx.get(url.replace("signature=", "signature=0"))
    assert (tampered.status_code, tampered.json()["error"]["code"]) == (403, "forbidden")
    other_job = url.replace(job_id, "A" * len(job_id))
    assert httpx.get(other_job).status_code == 403
    time.sleep(2.5)  # let the link's two seconds pass (a wait, not a timing assertion)
    expired = httpx.get(url)
    assert (expired.status_code, expired.json()["error"]["code"]) == (403, "link_expired")
    revoke(pg, "analyst")
    fresh = httpx.get(f"{server.url}/jobs/{job_id}", headers=bearer(token))
    assert fresh.status_code == 401


# --- limits and revocation ---------------------------------------------------------------------------------------


def test_one_download_more_than_max_concurrent_is_429_at_once(pg: Database, secured: Callable[..., ServerThread],
                                                             tmp_path: Path) -> None:
    server = secured(job_workers=0)
    token = create_key(pg, "two", "dataset:orders", "files:r", max_concurrent=2)
    slow = ["curl", "-sS", "--limit-rate", "1M", "-o", "/dev/null", "-H", f"Authorization: Bearer {token}",
            f"{server.url}/files/r/big.bin"]
    running = [subprocess.Popen(slow) for _ in range(2)]
    try:
        wait_for(lambda: len([e for e in server.app.state.services.limits._active.values()]) and
                 sum(server.app.state.services.limits._active.values()) == 2)
        for path in ["/files/r/a.txt", "/exports/orders.csv"]:
            refused = httpx.get(server.url + path, headers=bearer(token), timeout=5)
            assert (refused.status_code, refused.json()["error"]["code"]) == (429, "too_many_requests")
            assert int(refused.headers["retry-after"]) > 0
            assert refused.headers["ratelimit-policy"] == '"concurrency";q=2'
            assert refused.headers["ratelimit"].startswith('"concurrency";r=0')
        job = httpx.post(f"{server.url}/jobs", json={"dataset": "orders", "format": "csv"}, headers=bearer(token))
        assert job.status_code == 429
        # 401s never count against a key: a stranger is refused with 401, not 429.
        assert httpx.get(f"{server.url}/files/r/a.txt").status_code == 401
    finally:
        for curl in running:
            curl.kill()
            curl.wait()
    wait_for(lambda: not server.app.state.services.limits._active)
    assert httpx.get(f"{server.url}/files/r/a.txt", headers=bearer(token)).status_code == 200
    wait_for(lambda: {e["outcome"] for e in audit(pg)} >= {"limited", "denied", "completed"})  # written at the end


@pytest.mark.parametrize("path", ["/exports/slow.csv", "/files/r/big.bin", "/proxy/up/big.bin"])
def test_revoking_a_key_aborts_its_running_download(pg: Database, secured: Callable[..., ServerThread],
                                                    tmp_path: Path, path: str) -> None:
    # 16 s of pauses, 4 s in each of 4 parallel COPY parts: the export is still being produced when the watcher
    # sees the revocation (a faster one could sit whole in the sockets' buffers by then, and end cleanly).
    make_slow(pg, sleep_seconds=0.08)
    server = secured(datasets=SLOW, batch_rows=100)
    token = create_key(pg, "leaver", "dataset:slow", "files:r", "proxy:up")
    output = tmp_path / "download"
    curl = subprocess.Popen(["curl", "-sS", "--limit-rate", "2M", "-H", f"Authorization: Bearer {token}", "-o",
                             str(output), server.url + path], stderr=subprocess.PIPE)
    wait_for(lambda: output.exists() and output.stat().st_size > 0)
    revoke(pg, "leaver")
    _, stderr = curl.communicate(timeout=15)  # the watcher looks every 2 s: well within 10 s
    assert curl.returncode == 18, stderr
    assert httpx.get(server.url + path, headers=bearer(token)).json()["error"]["code"] == "revoked_token"


def test_revoking_a_key_fails_its_running_job(pg: Database, secured: Callable[..., ServerThread]) -> None:
    make_slow(pg, sleep_seconds=0.12)  # 24 s in all, 6 s in each of 4 COPY parts: still running when revoked
    server = secured(datasets=SLOW, batch_rows=100)
    token = create_key(pg, "leaver", "dataset:slow")
    admin = create_key(pg, "ops", "admin")
    job_id = httpx.post(f"{server.url}/jobs", json={"dataset": "slow", "format": "csv"},
                        headers=bearer(token)).json()["id"]
    wait_for(lambda: httpx.get(f"{server.url}/jobs/{job_id}", headers=bearer(admin)).json()["rows"] > 0, 30)
    revoke(pg, "leaver")
    failed = wait_for(lambda: (j := httpx.get(f"{server.url}/jobs/{job_id}", headers=bearer(admin)).json())
                      ["state"] in TERMINAL and j, 15)
    assert (failed["state"], failed["error"]["code"]) == ("failed", "revoked_token")
    wait_for(lambda: not list((Path(server.app.state.services.settings.jobs_dir)).iterdir()))


# --- audit ---------------------------------------------------------------------------------------------------------


def test_every_download_and_refusal_is_one_audit_row(pg: Database, secured: Callable[..., ServerThread],
                                                     tmp_path: Path) -> None:
    server = secured()
    token = create_key(pg, "analyst", "dataset:orders", "files:r", "proxy:up")
    h = bearer(token)
    httpx.get(f"{server.url}/exports/orders.csv", params={"status": "paid"}, headers=h)
    httpx.get(f"{server.url}/files/r/a.txt", headers=h)
    httpx.get(f"{server.url}/proxy/up/a.txt", headers=h)
    job_id = httpx.post(f"{server.url}/jobs", json={"dataset": "orders", "format": "csv"}, headers=h).json()["id"]
    wait_for(lambda: httpx.get(f"{server.url}/jobs/{job_id}", headers=h).json()["state"] == "succeeded", 60)
    httpx.get(f"{server.url}/jobs/{job_id}/result", headers=h)
    httpx.get(f"{server.url}/exports/orders.csv", headers={"Authorization": f"Bearer {token[:-1]}x"})
    with httpx.stream("GET", f"{server.url}/files/r/big.bin", headers=h) as response:
        next(response.iter_raw())

    rows = wait_for(lambda: len(found := audit(pg)) >= 8 and found)
    seen = {(r["kind"], r["outcome"]) for r in rows}
    assert {("export", "completed"), ("file", "completed"), ("relay", "completed"), ("job", "completed"),
            ("job_run", "completed"), ("job_result", "completed"), ("export", "denied"),
            ("file", "aborted")} <= seen
    export = next(r for r in rows if r["kind"] == "export" and r["outcome"] == "completed")
    assert (export["key_name"], export["dataset"], export["parameters"]) == ("analyst", "orders",
                                                                           {"status": ["paid"]})
    assert export["rows"] == 400 and export["bytes"] > 0 and export["client_address"] == "127.0.0.1"
    assert next(r for r in rows if r["kind"] == "file" and r["outcome"] == "completed")["resource"] == "a.txt"
    assert next(r for r in rows if r["kind"] == "relay")["resource"] == "a.txt"
    assert next(r for r in rows if r["kind"] == "job_result")["resource"] == job_id
    denied = next(r for r in rows if r["outcome"] == "denied")
    assert denied["key_name"] is None and token[:20] not in json.dumps(denied, default=str)

    command = [sys.executable, "-m", "exporter.cli", "audit", "--key", "analyst", "--outcome", "completed", "--json"]
    printed = subprocess.run(command, env={"EXPORTER_DATABASE_URL": pg.url, "PATH": "/usr/bin:/bin"},
                             capture_output=True, text=True, check=True, timeout=60).stdout
    lines = [json.loads(line) for line in printed.splitlines()]
    assert lines and all(line["key_name"] == "analyst" and line["outcome"] == "completed" for line in lines)
    table = subprocess.run([*command[:-1], "--since", "2026-01-01"], env={"EXPORTER_DATABASE_URL": pg.url},
                           capture_output=True, text=True, check=True, timeout=60).stdout
    assert table.splitlines()[0].split()[:3] == ["started_at", "key_name", "client_address"]


# --- the command line and the mode --------------------------------------------------------------------------------


def run_cli(pg: Database, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "exporter.cli", *args], capture_output=True, text=True, timeout=60,
                          env={"EXPORTER_DATABASE_URL": pg.url, "PATH": "/usr/bin:/bin", **env})


def test_keys_are_created_listed_and_revoked_from_the_command_line(pg: Database) -> None:
    pg.execute("DELETE FROM api_keys")
    created = run_cli(pg, "keys", "create", "nightly", "--grant", "dataset:orders", "--expires-in", "90d",
                      "--max-concurrent", "2", "--columns", "orders=id,amount", "--max-rows", "orders=100000")
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip()
    assert token.startswith("exp_") and len(token) == 54
    listed = run_cli(pg, "keys", "list")
    assert "nightly" in listed.stdout and "dataset:orders" in listed.stdout and token[4:20] not in listed.stdout
    assert pg.execute("SELECT secret_hash FROM api_keys")[0].secret_hash not in (token, token[4:])
    assert run_cli(pg, "keys", "revoke", "nightly").returncode == 0
    assert run_cli(pg, "keys", "revoke", "nightly").returncode == 1
    bad = run_cli(pg, "keys", "create", "x", "--grant", "everything")
    assert bad.returncode == 2 and "not a grant" in bad.stderr
    again = run_cli(pg, "keys", "create", "y", "--grant", "dataset:orders", "--expires-in", "soon")
    assert again.returncode == 2 and "duration" in again.stderr


def test_serve_refuses_auth_off_on_a_public_address_unless_allowed(pg: Database) -> None:
    refused = run_cli(pg, "serve", "--host", "0.0.0.0", EXPORTER_AUTH="off")
    assert refused.returncode == 2 and "--allow-anonymous" in refused.stderr
