"""A session ends at sign-out, on every replica: a saved cookie is refused afterwards."""

from __future__ import annotations

import re
from collections.abc import Callable

import httpx

from tests.conftest import Database
from tests.helpers import create_key
from tests.servers import ServerThread

BROWSER = {"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}


def sign_in(server: ServerThread, token: str) -> str:
    response = httpx.post(f"{server.url}/sign-in", data={"token": token, "next": "/"})
    assert response.status_code == 303
    return response.cookies["exporter_session"]


def csrf(server: ServerThread, value: str) -> str:
    page = httpx.get(f"{server.url}/jobs", cookies={"exporter_session": value}, headers=BROWSER)
    match = re.search(r'data-csrf="([0-9a-f]+)"', page.text)
    assert match is not None
    return match[1]


def test_a_cookie_saved_before_sign_out_is_refused_on_every_replica(
    pg: Database, secured: Callable[..., ServerThread]
) -> None:
    one, two = secured(job_workers=0), secured(job_workers=0)
    token = create_key(pg, "analyst", "dataset:orders")
    saved = sign_in(one, token)
    other = sign_in(one, token)  # another browser's session of the same key
    cookies = {"exporter_session": saved}
    for server in (one, two):
        assert httpx.get(f"{server.url}/datasets", cookies=cookies).status_code == 200
    signed_out = httpx.post(f"{two.url}/sign-out", cookies=cookies, data={"csrf_token": csrf(two, saved)})
    assert signed_out.status_code == 303
    for server in (one, two):
        refused = httpx.get(f"{server.url}/datasets", cookies=cookies)
        assert (refused.status_code, refused.json()["error"]["code"]) == (401, "invalid_token")
        assert httpx.get(f"{server.url}/exports/orders.csv?limit=1", cookies=cookies).status_code == 401
        # The other session lives on: signing out ends one session, not the key's others.
        assert httpx.get(f"{server.url}/datasets", cookies={"exporter_session": other}).status_code == 200


def test_a_sign_out_without_the_csrf_token_ends_nothing(pg: Database, secured: Callable[..., ServerThread]) -> None:
    server = secured(job_workers=0)
    saved = sign_in(server, create_key(pg, "analyst", "dataset:orders"))
    cookies = {"exporter_session": saved}
    assert httpx.post(f"{server.url}/sign-out", cookies=cookies).status_code == 403
    assert httpx.get(f"{server.url}/datasets", cookies=cookies).status_code == 200


def test_expired_sessions_are_pruned_when_someone_signs_in(pg: Database, secured: Callable[..., ServerThread]) -> None:
    server = secured(job_workers=0)
    token = create_key(pg, "analyst", "dataset:orders")
    sign_in(server, token)
    pg.execute("UPDATE sessions SET expires_at = now() - interval '1 minute'")
    sign_in(server, token)
    assert pg.execute("SELECT count(*) FROM sessions")[0][0] == 1
