"""The edges of the HTTP API an attacker probes first: 405s and their Allow header, the API docs without a key,
jobs made by a session's GET without its CSRF token, and the statuses the OpenAPI document lists (issue 18)."""

from __future__ import annotations

import re
from collections.abc import Callable

import httpx
import pytest

from tests.conftest import Database
from tests.helpers import bearer, create_key
from tests.servers import ServerThread

Secured = Callable[..., ServerThread]
BROWSER_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"


@pytest.mark.parametrize(("method", "path", "allowed"), [
    ("POST", "/exports/orders.csv", {"GET", "HEAD"}),
    ("PUT", "/jobs", {"GET", "POST"}),
    ("PATCH", "/jobs/abc", {"GET", "DELETE"}),
    ("DELETE", "/healthz", {"GET"}),
    ("POST", "/proxy/up/a.txt", {"GET", "HEAD"}),
])
def test_every_405_lists_the_methods_of_its_path(
    pg: Database, secured: Secured, method: str, path: str, allowed: set[str]
) -> None:
    server = secured()
    token = create_key(pg, "analyst", "dataset:*", "proxy:*")
    for headers in ({}, bearer(token)):
        response = httpx.request(method, server.url + path, headers=headers)
        assert response.status_code == 405
        assert response.json()["error"]["code"] == "method_not_allowed"
        assert set(re.split(r",\s*", response.headers["allow"])) == allowed, response.headers


def test_the_openapi_document_lists_readyz_503(pg: Database, secured: Secured) -> None:
    server = secured()
    token = create_key(pg, "analyst", "dataset:*")
    readyz = httpx.get(f"{server.url}/openapi.json", headers=bearer(token)).json()["paths"]["/readyz"]["get"]
    assert "503" in readyz["responses"]
    assert "security" not in readyz  # still open


@pytest.mark.parametrize("path", ["/openapi.json", "/docs", "/redoc", "/docs/oauth2-redirect"])
def test_the_api_docs_need_a_key(pg: Database, secured: Secured, path: str) -> None:
    server = secured()
    response = httpx.get(server.url + path)
    assert response.status_code in (401, 404), response.status_code  # the HTML pages are gone; the document needs a key
    assert "swagger" not in response.text.lower() and "cdn.jsdelivr" not in response.text
    if path == "/openapi.json":
        assert response.status_code == 401 and response.json()["error"]["code"] == "missing_token"
        assert httpx.get(server.url + path, headers={"Authorization": "Bearer exp_nope"}).status_code == 401


def test_the_api_document_is_served_to_any_valid_key_and_a_session(pg: Database, secured: Secured) -> None:
    server = secured()
    token = create_key(pg, "nobody")  # no grant at all: the document is no secret from a key holder
    document = httpx.get(f"{server.url}/openapi.json", headers=bearer(token))
    assert document.status_code == 200 and "/exports/{filename}" in document.json()["paths"]
    signed_in = httpx.post(f"{server.url}/sign-in", data={"token": token, "next": "/"})
    cookies = {"exporter_session": signed_in.cookies["exporter_session"]}
    assert httpx.get(f"{server.url}/openapi.json", cookies=cookies).status_code == 200
    assert httpx.get(f"{server.url}/docs", headers=bearer(token)).status_code == 404  # no page loads a CDN's script


def test_the_api_docs_stay_open_with_auth_off(pg: Database, serve: Callable[..., ServerThread]) -> None:
    server = serve(pg.settings())
    assert httpx.get(f"{server.url}/openapi.json").status_code == 200


def _session(server: ServerThread, token: str) -> tuple[dict[str, str], str]:
    """A browser session's cookie and the CSRF token its pages carry."""
    cookies = {"exporter_session": httpx.post(f"{server.url}/sign-in", data={"token": token, "next": "/"})
               .cookies["exporter_session"]}
    page = httpx.get(f"{server.url}/jobs", cookies=cookies, headers={"Accept": BROWSER_ACCEPT})
    match = re.search(r'data-csrf="([0-9a-f]+)"', page.text)
    assert match is not None
    return cookies, match[1]


def test_a_job_from_a_sessions_get_needs_the_csrf_token(pg: Database, secured: Secured) -> None:
    server = secured(job_workers=0)
    token = create_key(pg, "analyst", "dataset:*", max_concurrent=10)
    cookies, csrf = _session(server, token)
    url = f"{server.url}/exports/orders.csv?limit=5"
    respond_async = {"Prefer": "respond-async"}

    refused = httpx.get(url, cookies=cookies, headers=respond_async)
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "invalid_csrf_token"
    wrong = httpx.get(url, cookies=cookies, headers={**respond_async, "X-CSRF-Token": "0" * 64})
    assert wrong.status_code == 403
    assert pg.execute("SELECT count(*) FROM jobs")[0][0] == 0
    created = httpx.get(url, cookies=cookies, headers={**respond_async, "X-CSRF-Token": csrf})
    assert created.status_code == 202
    assert httpx.get(url, headers={**respond_async, **bearer(token)}).status_code == 202  # Bearer: no CSRF token
    assert httpx.get(url, cookies=cookies).status_code == 200  # a plain download changes nothing: no token needed
