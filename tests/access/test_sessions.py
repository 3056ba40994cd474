"""Session cookies and CSRF tokens (pure), content negotiation, and the numbers the pages show."""

from __future__ import annotations

import pytest
from starlette.requests import Request

from exporter.access.sessions import csrf_matches, csrf_token, session_key, session_value
from exporter.config import Settings
from exporter.web.rendering import format_bytes, format_count, format_seconds, wants_html

SECRET = b"s" * 32
KEY = "0a1b2c3d4e5f60718293"
SESSION = "5e5510" + "0" * 26


def test_a_session_value_names_its_key_and_session_until_it_expires() -> None:
    value = session_value(SECRET, KEY, SESSION, 1_000)
    assert session_key(SECRET, value, 999.0) == (KEY, SESSION)
    assert session_key(SECRET, value, 1_000.0) is None
    assert session_key(b"t" * 32, value, 0.0) is None  # another database's secret


@pytest.mark.parametrize("change", [
    lambda v: v.replace(".1000.", ".9999."),  # a later expiry
    lambda v: v.replace(SESSION, "f" * 32),  # another session
    lambda v: "ff" + v,  # another key id
    lambda v: v[:-1] + ("0" if v[-1] != "0" else "1"),  # the signature
    lambda v: v + ".x",
    lambda v: "",
    lambda v: v.upper(),
])
def test_a_changed_session_value_is_refused(change: object) -> None:
    value = session_value(SECRET, KEY, SESSION, 1_000)
    assert session_key(SECRET, change(value), 0.0) is None  # type: ignore[operator]


def test_a_csrf_token_fits_only_its_own_session() -> None:
    one, other = session_value(SECRET, KEY, SESSION, 1_000), session_value(SECRET, KEY, "1" * 32, 1_000)
    token = csrf_token(SECRET, one)
    assert csrf_matches(SECRET, one, token)
    assert not csrf_matches(SECRET, other, token)
    assert not csrf_matches(SECRET, one, None)
    assert not csrf_matches(SECRET, one, "")
    assert token not in one


def _request(accept: str | None) -> Request:
    headers = [] if accept is None else [(b"accept", accept.encode())]
    return Request({"type": "http", "method": "GET", "path": "/", "headers": headers, "query_string": b""})


@pytest.mark.parametrize(("accept", "html"), [
    ("text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8", True),  # Chromium
    ("text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8", True),  # Firefox
    ("text/html", True),
    (None, False),  # httpx without headers, many scripts
    ("*/*", False),  # curl, fetch()
    ("application/json", False),
    ("application/json, text/html;q=0.9", False),
    ("text/html;q=0.5, */*", False),
    ("text/html;q=0", False),
    ("text/event-stream", False),  # EventSource
])
def test_only_a_request_that_prefers_html_gets_a_page(accept: str | None, html: bool) -> None:
    assert wants_html(_request(accept)) is html


def test_numbers_are_written_for_people() -> None:
    assert format_count(1_234_567, "row") == "1,234,567 rows"
    assert format_count(1, "row") == "1 row"
    assert format_count(None, "row") == "unknown"
    assert format_bytes(81_400_000) == "81.4 MB"
    assert format_bytes(999) == "999 B"
    assert format_bytes(1_000) == "1.0 kB"
    assert format_bytes(2_500_000_000_000) == "2.5 TB"
    assert format_seconds(12.34) == "12.3 s"


def test_session_hours_comes_from_the_environment() -> None:
    assert Settings.from_environ({}).session_hours == 12
    assert Settings.from_environ({"EXPORTER_SESSION_HOURS": "0.5"}).session_hours == 0.5
