"""Failed authentication is throttled per client address: after a few 401s (failed sign-ins included) within a
window, further failures wait, then get 429 too_many_failed_attempts, and those 429s do not each add an audit row;
a valid key from the same address is let through, and the address is free again once the window has passed."""

from __future__ import annotations

from collections.abc import Callable

import httpx

from exporter.access.throttle import FailedAuthThrottle
from tests.conftest import Database
from tests.helpers import bearer, create_key, wait_for
from tests.security.conftest import audit
from tests.servers import ServerThread

LIMIT = 6
WRONG = bearer("exp_" + "A" * 46)  # well formed but no key's token


def throttled(response: httpx.Response) -> bool:
    return response.status_code == 429 and response.json()["error"]["code"] == "too_many_failed_attempts"


def test_repeated_401s_from_one_address_turn_into_429_with_retry_after_and_stop_adding_audit_rows(
    pg: Database, secured: Callable[..., ServerThread]
) -> None:
    server = secured(job_workers=0, failed_auth_limit=LIMIT, failed_auth_window_seconds=600,
                     failed_auth_delay_seconds=0.05)
    token = create_key(pg, "analyst", "dataset:orders")
    answers = [httpx.get(f"{server.url}/exports/orders.csv", headers=WRONG) for _ in range(50)]
    assert [a.status_code for a in answers] == [401] * LIMIT + [429] * (50 - LIMIT)
    assert all(throttled(a) for a in answers[LIMIT:])
    assert 0 < int(answers[-1].headers["retry-after"]) <= 600
    assert "www-authenticate" not in answers[-1].headers
    missing = httpx.get(f"{server.url}/datasets")  # no token at all is a failure too
    assert throttled(missing)
    # A valid key from the same address is let through: throttling failures only, so that one client behind a
    # shared address cannot lock the others out.
    assert httpx.get(f"{server.url}/exports/orders.csv?limit=1", headers=bearer(token)).status_code == 200
    rows = wait_for(lambda: [r for r in audit(pg) if r["key_name"] is None and len(audit(pg)) >= LIMIT + 2])
    assert [r["outcome"] for r in rows] == ["denied"] * LIMIT + ["limited"]  # one row when throttling begins


def test_failed_sign_ins_count_and_are_throttled_too(pg: Database, secured: Callable[..., ServerThread]) -> None:
    server = secured(job_workers=0, failed_auth_limit=LIMIT, failed_auth_window_seconds=600,
                     failed_auth_delay_seconds=0.05)
    token = create_key(pg, "analyst", "dataset:orders")
    statuses = [httpx.post(f"{server.url}/sign-in", data={"token": "exp_" + "B" * 46}).status_code
                for _ in range(LIMIT + 3)]
    assert statuses == [401] * LIMIT + [429] * 3
    assert httpx.get(f"{server.url}/datasets", headers=WRONG).status_code == 429
    assert httpx.post(f"{server.url}/sign-in", data={"token": token}).status_code == 303


def test_an_address_is_free_again_once_its_window_has_passed(
    pg: Database, secured: Callable[..., ServerThread]
) -> None:
    server = secured(job_workers=0, failed_auth_limit=2, failed_auth_window_seconds=1,
                     failed_auth_delay_seconds=0.01)
    token = create_key(pg, "analyst", "dataset:orders")
    while httpx.get(f"{server.url}/datasets", headers=WRONG).status_code != 429:
        pass
    wait_for(lambda: httpx.get(f"{server.url}/datasets", headers=WRONG).status_code == 401)
    assert httpx.get(f"{server.url}/datasets", headers=bearer(token)).status_code == 200


def test_the_table_of_addresses_is_bounded() -> None:
    throttle = FailedAuthThrottle(limit=3, window_seconds=60, delay_seconds=0, max_addresses=100)
    for number in range(1000):
        throttle.count(f"10.0.{number // 256}.{number % 256}", now=0.0)
    assert len(throttle) == 100
    # IPv6 clients are counted by their /64, which one host can fill with addresses.
    for number in range(10):
        throttle.count(f"2001:db8::{number:x}", now=0.0)
    assert throttle.count("2001:db8::ffff", now=0.0).failures == 11
