"""Numbers and secrets read from a request: a signed link's `expires` and `signature`, Last-Event-ID, dates in
conditional requests, CSRF tokens and bearer tokens. Whatever their bytes, the answer is a 4xx or the header is
ignored, never a 500 (issue 18, item 7)."""

from __future__ import annotations

import re
from collections.abc import Callable

import httpx
import pytest

from tests.conftest import Database
from tests.helpers import bearer, create_key, wait_for
from tests.jobs.test_jobs import TERMINAL
from tests.servers import ServerThread


def finished_job(server: ServerThread, token: str) -> dict[str, object]:
    job_id = httpx.post(f"{server.url}/jobs", json={"dataset": "orders", "format": "csv"},
                        headers=bearer(token)).json()["id"]
    job: dict[str, object] = wait_for(lambda: (j := httpx.get(f"{server.url}/jobs/{job_id}", headers=bearer(token))
                                               .json())["state"] in TERMINAL and j, 60)
    assert job["state"] == "succeeded"
    return job


@pytest.mark.parametrize("expires", ["%C2%B2", "%D9%A3", "%EF%BC%91", "1" * 5000, "9" * 30, "-1", "+1", "%201",
                                     "1_000", ""])
def test_a_link_whose_expires_is_not_plain_digits_is_403(
    pg: Database, secured: Callable[..., ServerThread], expires: str
) -> None:
    server = secured()
    job = finished_job(server, create_key(pg, "analyst", "dataset:orders"))
    url = server.url + str(job["result"]["url"])  # type: ignore[index]
    tampered = re.sub(r"expires=[0-9]+", f"expires={expires}", url)
    response = httpx.get(tampered)
    assert (response.status_code, response.json()["error"]["code"]) == (403, "forbidden"), expires


@pytest.mark.parametrize("signature", ["%C3%A9", "%C3%A9" * 32, "%F0%9F%98%80", "%00", "a" * 5000])
def test_a_link_whose_signature_is_not_ascii_hex_is_403(
    pg: Database, secured: Callable[..., ServerThread], signature: str
) -> None:
    server = secured()
    job = finished_job(server, create_key(pg, "analyst", "dataset:orders"))
    url = server.url + str(job["result"]["url"])  # type: ignore[index]
    tampered = re.sub(r"signature=[0-9a-f]+", f"signature={signature}", url)
    response = httpx.get(tampered)
    assert (response.status_code, response.json()["error"]["code"]) == (403, "forbidden"), signature


@pytest.mark.parametrize("last_event_id", ["²", "٣", "1" * 5000, "99999999999999999999", "-1"])
def test_a_last_event_id_that_is_no_event_number_is_ignored(
    pg: Database, secured: Callable[..., ServerThread], last_event_id: str
) -> None:
    server = secured()
    token = create_key(pg, "analyst", "dataset:orders")
    job = finished_job(server, token)
    with httpx.stream("GET", f"{server.url}/jobs/{job['id']}/events",
                      headers={**bearer(token), "Last-Event-ID": last_event_id.encode()}) as events:
        assert events.status_code == 200
        text = "".join(events.iter_text())
    assert "event: state" in text


@pytest.mark.parametrize("date", ["Mon, 01 Jan 99999999999 00:00:00 GMT", "Mon, 01 Jan 2020 00:00:00 +99999999999999",
                                  "²", "Mon, 99 Foo 2020 99:99:99 GMT"])
def test_an_unreadable_date_in_a_conditional_request_is_ignored(
    pg: Database, secured: Callable[..., ServerThread], date: str
) -> None:
    server = secured()
    token = create_key(pg, "analyst", "files:*", "dataset:orders")
    job = finished_job(server, token)
    for path in ("/files/r/a.txt", f"/jobs/{job['id']}/result"):
        for header in ("If-Modified-Since", "If-Range"):
            headers = {**bearer(token), header: date.encode(), "Range": "bytes=0-1"}
            response = httpx.get(server.url + path, headers=headers)
            assert response.status_code in (200, 206), (path, header, response.text)


@pytest.mark.parametrize("csrf", ["é", "\u00ff" * 64, "x" * 5000])
def test_a_csrf_token_that_is_not_ascii_is_refused_not_a_500(
    pg: Database, secured: Callable[..., ServerThread], csrf: str
) -> None:
    server = secured()
    token = create_key(pg, "analyst", "dataset:orders")
    with httpx.Client(base_url=server.url, follow_redirects=False) as browser:
        signed_in = browser.post("/sign-in", data={"token": token, "next": "/"})
        assert signed_in.status_code == 303
        refused = browser.post("/jobs", json={"dataset": "orders", "format": "csv"},
                               headers={"X-CSRF-Token": csrf.encode()})
        assert (refused.status_code, refused.json()["error"]["code"]) == (403, "invalid_csrf_token")
        signed_out = browser.post("/sign-out", content=f"csrf_token={csrf}".encode(),
                                  headers={"Content-Type": "application/x-www-form-urlencoded"})
        assert signed_out.status_code == 403


@pytest.mark.parametrize("credential", ["exp_" + "é" * 50, "exp_" + "\u00ff" * 50, "é" * 54, "exp_" + "A" * 5000])
def test_a_bearer_token_that_is_not_ascii_is_401(
    pg: Database, secured: Callable[..., ServerThread], credential: str
) -> None:
    server = secured()
    create_key(pg, "analyst", "dataset:orders")
    response = httpx.get(f"{server.url}/datasets", headers={"Authorization": f"Bearer {credential}".encode("latin-1")})
    assert (response.status_code, response.json()["error"]["code"]) == (401, "invalid_token")
    signed_in = httpx.post(f"{server.url}/sign-in", data={"token": credential})
    assert signed_in.status_code == 401


@pytest.mark.parametrize("origin", ["http://[", "http://[::1", "http://a:b:c", "é"])
def test_a_sign_in_with_an_unreadable_origin_is_403_not_a_500(
    pg: Database, secured: Callable[..., ServerThread], origin: str
) -> None:
    server = secured()
    token = create_key(pg, "analyst", "dataset:orders")
    response = httpx.post(f"{server.url}/sign-in", data={"token": token}, headers={"Origin": origin.encode()})
    assert (response.status_code, response.json()["error"]["code"]) == (403, "forbidden")


@pytest.mark.parametrize("query", ["limit=" + "1" * 5000, "limit=%C2%B2", "after=" + "1" * 5000, "after=%C2%B2"])
def test_a_number_in_the_query_with_too_many_or_unicode_digits_is_400(
    pg: Database, secured: Callable[..., ServerThread], query: str
) -> None:
    server = secured()
    token = create_key(pg, "analyst", "dataset:orders")
    response = httpx.get(f"{server.url}/exports/orders.csv?{query}", headers=bearer(token))
    assert response.status_code == 400, response.text
