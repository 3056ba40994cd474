"""A token never gets written down: not in the access log, an error's body, the audit rows or a job's parameters,
wherever in the request it was put (issue 18, item 6). Unauthenticated requests and failed sign-ins are audited
with bounded rows that hold no parameter values and no token text."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from urllib.parse import quote

import httpx
import pytest

from exporter.access.tokens import new_token
from exporter.redaction import REDACTED, contains_token, redact_tokens
from tests.conftest import Database
from tests.helpers import bearer, create_key
from tests.security.conftest import audit
from tests.servers import ServerThread

# The parameters a refused request may leave in its audit row, JSON-encoded (names only, truncated).
MAX_REFUSAL_PARAMETERS_BYTES = 600


def written_down(db: Database, caplog: pytest.LogCaptureFixture) -> str:
    """Every audit row and job, and every log line with its fields, as one text."""
    rows = [*audit(db), *(dict(row._mapping) for row in db.execute("SELECT * FROM jobs")),
            *(dict(row._mapping) for row in db.execute("SELECT * FROM job_events"))]
    lines = [f"{record.getMessage()} {getattr(record, 'fields', '')}" for record in caplog.records
             if not record.name.startswith("httpx")]  # the test's own client logs the URLs it sends
    return json.dumps(rows, default=str) + "\n".join(lines)


def query_forms(token: str) -> list[str]:
    """The ways the review put a token into a query string, and a few more."""
    return [
        f"{token}=1", f"status__in=paid,{token}", f"status=%20{token}", f"status={quote(token)}",
        f"status=paid%2C{token}", f"x{token}=1", f"status=exp%5F{token[4:]}", f"status=%65xp_{token[4:]}",
        f"status+{token}=1", f"status__ne=a;{token}", f"limit=1&{token}", f"status={token}",
    ]


def test_the_redaction_hides_every_token_and_what_is_left_of_one_cut_short() -> None:
    for _ in range(200):
        token = new_token()[1]
        for text in (token, f"a,{token},b", f"x{token}y", token[:-12], f" {token}"):
            assert token[4:36] not in redact_tokens(text) and REDACTED in redact_tokens(text)
            assert contains_token(text)
    for harmless in ("exp_", "exp_date", "paid,shipped", "exp_shipping_address_line", "EXP_" + "A" * 50):
        assert redact_tokens(harmless) == harmless and not contains_token(harmless)


def test_a_token_anywhere_in_the_query_is_refused_and_written_nowhere(
    pg: Database, secured: Callable[..., ServerThread], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    server = secured()
    token = create_key(pg, "analyst", "dataset:*", "files:*", "proxy:*")
    for query in query_forms(token):
        for path in ("/exports/orders.csv", "/files/r/a.txt", "/proxy/up/a.txt", "/jobs", "/nowhere"):
            for headers in (bearer(token), {}):
                response = httpx.get(f"{server.url}{path}?{query}", headers=headers)
                assert (response.status_code, response.json()["error"]["code"]) == (400, "token_in_url"), query
                assert token[4:] not in response.text
    assert token[4:36] not in written_down(pg, caplog)


@pytest.mark.parametrize("suffix", [";access_token={t}", ";a={t}", "/{t}", ";access_token=x", "%3Baccess_token={t}"])
def test_a_token_in_the_path_is_refused_and_written_nowhere(
    pg: Database, secured: Callable[..., ServerThread], caplog: pytest.LogCaptureFixture, suffix: str
) -> None:
    caplog.set_level(logging.INFO)
    server = secured()
    token = create_key(pg, "analyst", "dataset:*", "files:*")
    for path in ("/exports/orders.csv", "/files/r/a.txt", "/datasets"):
        for headers in (bearer(token), {}):
            response = httpx.get(server.url + path + suffix.format(t=token), headers=headers)
            assert (response.status_code, response.json()["error"]["code"]) == (400, "token_in_url"), path
            assert token[4:] not in response.text
    assert token[4:36] not in written_down(pg, caplog)


def test_a_job_with_a_token_in_its_parameters_is_refused_and_stored_nowhere(
    pg: Database, secured: Callable[..., ServerThread], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    server = secured()
    token = create_key(pg, "analyst", "dataset:*")
    for params in ({"status": token}, {"status__in": f"paid,{token}"}, {token: "1"}, {"status": f" {token}"}):
        response = httpx.post(f"{server.url}/jobs", json={"dataset": "orders", "format": "csv", "params": params},
                              headers=bearer(token))
        assert (response.status_code, response.json()["error"]["code"]) == (400, "token_in_url"), params
        assert token[4:] not in response.text
        async_export = httpx.get(f"{server.url}/exports/orders.csv?status={token}",
                                 headers={**bearer(token), "Prefer": "respond-async"})
        assert async_export.status_code == 400
    assert pg.execute("SELECT count(*) FROM jobs")[0][0] == 0
    assert token[4:36] not in written_down(pg, caplog)


def test_a_token_as_request_id_is_replaced_and_written_nowhere(
    pg: Database, secured: Callable[..., ServerThread], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    server = secured()
    token = create_key(pg, "analyst", "dataset:*")
    for headers in ({}, bearer(token)):
        response = httpx.get(f"{server.url}/datasets/nowhere", headers={**headers, "X-Request-ID": token})
        assert response.status_code in (401, 403, 404)
        assert token not in response.headers["x-request-id"]
    assert token[4:36] not in written_down(pg, caplog)


def test_an_unauthenticated_request_is_audited_with_parameter_names_only_and_bounded(
    pg: Database, secured: Callable[..., ServerThread]
) -> None:
    server = secured()
    create_key(pg, "analyst", "dataset:*")
    long_value = "v" * 20_000
    names = "&".join(f"name{n}=x" for n in range(500))
    response = httpx.get(f"{server.url}/exports/orders.csv?status=secret-value&note={long_value}&{names}",
                         headers={"Authorization": "Bearer not-a-token"})
    assert response.status_code == 401
    response = httpx.get(f"{server.url}/files/r/{'d' * 3000}/a.txt?status=secret-value")
    assert response.status_code == 401
    rows = [row for row in audit(pg) if row["outcome"] == "denied"]
    assert len(rows) == 2
    for row in rows:
        stored = json.dumps(row["parameters"])
        assert "secret-value" not in stored and long_value not in stored
        assert len(stored.encode()) <= MAX_REFUSAL_PARAMETERS_BYTES
        assert len(row["resource"] or "") <= 256 and len(row["error"] or "") <= 512
    assert "status" in json.dumps(rows[0]["parameters"])


def test_a_failed_sign_in_is_audited_without_the_token(pg: Database, secured: Callable[..., ServerThread]) -> None:
    server = secured()
    token = create_key(pg, "analyst", "dataset:*")
    wrong = "exp_" + token[4:-1] + ("A" if token[-1] != "A" else "B")
    for attempt in (wrong, "not-a-token", token[:-3], "exp_" + "é" * 50):
        response = httpx.post(f"{server.url}/sign-in", data={"token": attempt, "next": "/"})
        assert response.status_code == 401
    assert httpx.post(f"{server.url}/sign-in", data={"token": token, "next": "/"}).status_code == 303
    rows = audit(pg)
    denied = [row for row in rows if row["outcome"] == "denied"]
    assert len(denied) == 4 and all(row["kind"] == "sign_in" for row in denied)
    assert token[4:36] not in json.dumps(rows, default=str) and "not-a-token" not in json.dumps(rows, default=str)
