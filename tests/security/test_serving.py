"""Active content and path tricks on what the service serves: relayed answers, files and job results never run as
pages of the service's origin (issue 18, item 4), and `..;`-style segments never reach an upstream (item 5)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from exporter.config import Settings
from tests.conftest import Database
from tests.helpers import bearer, create_key, wait_for
from tests.jobs.test_jobs import TERMINAL
from tests.servers import ServerThread

Serve = Callable[[Settings], ServerThread]
HTML = b"<script>fetch('/jobs', {method: 'POST'})</script>"
SVG = b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(document.cookie)</script></svg>'


class ActiveOrigin:
    """An upstream that serves active content inline, as a careless or hostile one would, with validators so that
    conditional requests and ranges can be asked of it; it records every path it is asked for."""

    def __init__(self) -> None:
        self.paths: list[str] = []
        self.app = Starlette(routes=[Route("/base/{path:path}", self.serve, methods=["GET", "HEAD"])])

    async def serve(self, request: Request) -> Response:
        self.paths.append(request.scope["raw_path"].decode("latin-1"))
        name = request.path_params["path"]
        body, media_type = (SVG, "image/svg+xml") if name.endswith(".svg") else (HTML, "text/html; charset=utf-8")
        headers = {"ETag": '"v1"', "Accept-Ranges": "bytes", "Content-Disposition": "inline"}
        if request.headers.get("if-none-match") == '"v1"':
            return Response(status_code=304, headers=headers)
        if request.headers.get("range") == "bytes=0-3":
            return Response(body[:4], status_code=206, media_type=media_type,
                            headers={**headers, "Content-Range": f"bytes 0-3/{len(body)}"})
        return Response(body, media_type=media_type, headers=headers)


@pytest.fixture
def origin() -> Iterator[tuple[ActiveOrigin, ServerThread]]:
    active = ActiveOrigin()
    with ServerThread(active.app) as server:
        yield active, server


@pytest.fixture
def service(pg: Database, serve: Serve, tmp_path: Path, origin: tuple[ActiveOrigin, ServerThread]
            ) -> Callable[..., ServerThread]:
    """The service with auth on, a file root `r` holding page.html, pic.svg and ünï.html, and two upstreams on
    the active origin: `web` (default: attachment) and `trusted` (`inline = true`)."""
    pg.execute("DELETE FROM api_keys", "DELETE FROM job_events", "DELETE FROM jobs", "DELETE FROM export_log")
    pg.seed_demo(50)
    root = tmp_path / "root"
    root.mkdir()
    (root / "page.html").write_bytes(HTML)
    (root / "pic.svg").write_bytes(SVG)
    (root / "ünï.html").write_bytes(HTML)
    (root / "..;x").write_bytes(b"a file whose name reads as '..' to Tomcat")
    base = f"{origin[1].url}/base"

    def start(**overrides: Any) -> ServerThread:
        return serve(pg.settings(auth="required", jobs_dir=str(tmp_path / "jobs"),
                                 files={"roots": {"r": str(root)}},
                                 upstreams={"web": {"base_url": base}, "trusted": {"base_url": base, "inline": True}},
                                 **overrides))

    return start


def assert_sandboxed(response: httpx.Response, attachment: bool = True) -> None:
    assert response.headers.get("content-security-policy") == "sandbox", response.headers
    assert response.headers.get("x-content-type-options") == "nosniff", response.headers
    if attachment:
        assert response.headers.get("content-disposition", "").startswith("attachment"), response.headers


# --- item 4: active content ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["page.html", "pic.svg"])
def test_relayed_active_content_is_an_attachment_in_a_sandbox(
    pg: Database, service: Callable[..., ServerThread], name: str
) -> None:
    server = service()
    headers = bearer(create_key(pg, "analyst", "proxy:*"))
    url = f"{server.url}/proxy/web/{name}"
    whole = httpx.get(url, headers=headers)
    assert whole.status_code == 200 and whole.content in (HTML, SVG)
    assert_sandboxed(whole)
    assert_sandboxed(httpx.head(url, headers=headers))
    partial = httpx.get(url, headers={**headers, "Range": "bytes=0-3"})
    assert partial.status_code == 206
    assert_sandboxed(partial)
    unchanged = httpx.get(url, headers={**headers, "If-None-Match": '"v1"'})
    assert unchanged.status_code == 304
    assert_sandboxed(unchanged)


def test_an_upstream_configured_inline_keeps_the_sandbox_and_nosniff(
    pg: Database, service: Callable[..., ServerThread]
) -> None:
    server = service()
    response = httpx.get(f"{server.url}/proxy/trusted/page.html", headers=bearer(create_key(pg, "a", "proxy:*")))
    assert response.status_code == 200
    assert_sandboxed(response, attachment=False)
    assert response.headers["content-disposition"] == "inline"


@pytest.mark.parametrize("name", ["page.html", "pic.svg", "ünï.html"])
def test_files_are_attachments_in_a_sandbox_with_their_name(
    pg: Database, service: Callable[..., ServerThread], name: str
) -> None:
    server = service()
    headers = bearer(create_key(pg, "analyst", "files:*"))
    url = f"{server.url}/files/r/{name}"
    whole = httpx.get(url, headers=headers)
    assert whole.status_code == 200
    assert_sandboxed(whole)
    assert "filename" in whole.headers["content-disposition"]
    if not name.isascii():
        assert "filename*=UTF-8''%C3%BCn%C3%AF.html" in whole.headers["content-disposition"]
    assert_sandboxed(httpx.head(url, headers=headers))
    partial = httpx.get(url, headers={**headers, "Range": "bytes=0-3"})
    assert partial.status_code == 206
    assert_sandboxed(partial)
    unchanged = httpx.get(url, headers={**headers, "If-None-Match": whole.headers["etag"]})
    assert unchanged.status_code == 304
    assert_sandboxed(unchanged)


def test_job_results_and_exports_are_attachments_in_a_sandbox(
    pg: Database, service: Callable[..., ServerThread]
) -> None:
    server = service()
    headers = bearer(create_key(pg, "analyst", "dataset:*"))
    for path in ("/exports/orders.csv", "/exports/orders.ndjson"):
        assert_sandboxed(httpx.get(server.url + path, headers=headers))
        assert_sandboxed(httpx.head(server.url + path, headers=headers))
    job_id = httpx.post(f"{server.url}/jobs", json={"dataset": "orders", "format": "csv"}, headers=headers).json()["id"]
    done = wait_for(lambda: (j := httpx.get(f"{server.url}/jobs/{job_id}", headers=headers).json())
                    ["state"] in TERMINAL and j, 60)
    url = f"{server.url}/jobs/{job_id}/result"
    whole = httpx.get(url, headers=headers)
    assert whole.status_code == 200 and done["state"] == "succeeded"
    assert_sandboxed(whole)
    assert_sandboxed(httpx.head(url, headers=headers))
    partial = httpx.get(url, headers={**headers, "Range": "bytes=0-3"})
    assert partial.status_code == 206
    assert_sandboxed(partial)
    unchanged = httpx.get(url, headers={**headers, "If-None-Match": whole.headers["etag"]})
    assert unchanged.status_code == 304
    assert_sandboxed(unchanged)


# --- item 5: path parameters that servlet containers read as dot segments -------------------------------------------

DOT_PARAMETER_PATHS = [
    "..;/secret", "a/..;/secret", "a/..;x=1/secret", ".;/page.html", "a/.;/page.html", "..%3b/secret",
    "..%3B/secret", "%2e%2e;/secret", "%2e%2e%3b/secret", "%2e.;/secret", ".%2e;/secret", "%2e;/page.html",
    "..;", "a/..;", "..%253b/secret", "%252e%252e;/secret", "..;%5csecret", ";/secret", "a/;x/secret",
]


@pytest.mark.parametrize("path", DOT_PARAMETER_PATHS)
def test_dot_segments_with_path_parameters_never_reach_the_upstream(
    pg: Database, service: Callable[..., ServerThread], origin: tuple[ActiveOrigin, ServerThread], path: str
) -> None:
    server = service()
    response = httpx.get(f"{server.url}/proxy/web/{path}", headers=bearer(create_key(pg, "analyst", "proxy:*")))
    assert (response.status_code, response.json()["error"]["code"]) == (400, "invalid_path"), response.text
    assert origin[0].paths == []


@pytest.mark.parametrize("path", [path for path in DOT_PARAMETER_PATHS if "%25" not in path])  # /files decodes once
def test_dot_segments_with_path_parameters_are_refused_by_files_too(
    pg: Database, service: Callable[..., ServerThread], path: str
) -> None:
    server = service()
    response = httpx.get(f"{server.url}/files/r/{path}", headers=bearer(create_key(pg, "analyst", "files:*")))
    assert (response.status_code, response.json()["error"]["code"]) == (400, "invalid_path"), response.text


def test_names_with_a_semicolon_that_are_not_dot_segments_still_relay(
    pg: Database, service: Callable[..., ServerThread], origin: tuple[ActiveOrigin, ServerThread]
) -> None:
    server = service()
    headers = bearer(create_key(pg, "analyst", "proxy:*"))
    for path in ("a;v=1/page.html", "...;/page.html", "a..;/page.html"):
        assert httpx.get(f"{server.url}/proxy/web/{path}", headers=headers).status_code == 200, path
