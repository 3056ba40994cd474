"""Issue 18, item 3: a column a key may not read never influences the answer, and its name cannot be probed.

A key restricted to `amount,status` of `orders` tries every way a request touches a column: filters, `order=`,
`after=`, `columns=`, the estimate, the dataset's description and page, and the text of every error."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from exporter.config import Settings
from tests.conftest import Database
from tests.helpers import bearer, create_key
from tests.servers import ServerThread

Serve = Callable[[Settings], ServerThread]
HIDDEN = ("id", "customer_id", "currency", "created_at", "shipped_at", "country", "note", "is_gift")


@pytest.fixture
def narrow(db: Database, serve: Serve, tmp_path: Path) -> Iterator[tuple[ServerThread, dict[str, str]]]:
    """An auth-on server on `db` (PostgreSQL and SQLite) with 2,000 orders, and a key that reads amount and status."""
    db.execute("DELETE FROM api_keys", "DELETE FROM job_events", "DELETE FROM jobs", "DELETE FROM export_log")
    db.seed_demo(2000)
    server = serve(db.settings(auth="required", jobs_dir=str(tmp_path / "jobs")))
    yield server, bearer(create_key(db, "narrow", "dataset:orders", columns=("orders=amount,status",)))


def refused_alike(response: httpx.Response, name: str) -> None:
    """403 forbidden, whose text names only what the request named, and no column's type."""
    assert response.status_code == 403, response.text
    error = response.json()["error"]
    assert error["code"] == "forbidden"
    for word in ("bigint", "integer", "timestamp", "numeric", "text", "boolean", "char"):
        assert word not in error["message"].lower(), error
    for hidden in HIDDEN:
        if hidden not in name:
            assert hidden not in error["message"], error


def shape(response: httpx.Response, name: str) -> tuple[int, str, str]:
    error = response.json()["error"]
    return response.status_code, error["code"], error["message"].replace(name, "NAME")


@pytest.mark.parametrize("template", [
    "{c}=1", "{c}__gt=1", "{c}__in=1,2", "{c}__isnull=true", "{c}__bogus=1", "columns=amount,{c}", "columns={c}",
    "order={c}", "order=-{c}", "order=amount,{c}",
])
def test_a_hidden_column_and_an_absent_one_are_refused_alike(narrow: tuple[ServerThread, dict[str, str]],
                                                             template: str) -> None:
    server, auth = narrow
    for path in ("/exports/orders.csv", "/exports/orders.parquet", "/datasets/orders/estimate"):
        hidden = httpx.get(f"{server.url}{path}?{template.format(c='id')}", headers=auth)
        absent = httpx.get(f"{server.url}{path}?{template.format(c='colour')}", headers=auth)
        refused_alike(hidden, "id")
        refused_alike(absent, "colour")
        assert shape(hidden, "id") == shape(absent, "colour"), (path, template)
    job = httpx.post(f"{server.url}/jobs", headers=auth, json={
        "dataset": "orders", "format": "csv", "params": dict([template.format(c="colour").split("=", 1)])})
    refused_alike(job, "colour")


def test_after_on_a_hidden_key_is_403_whatever_its_value(narrow: tuple[ServerThread, dict[str, str]]) -> None:
    server, auth = narrow
    answers = set()
    for value in ("1", "1999", "99999", "abc", "", "-5", "1.5"):
        for extra in ("", "&limit=1", "&order=amount", "&order=-amount"):
            response = httpx.get(f"{server.url}/exports/orders.csv?after={value}{extra}", headers=auth)
            refused_alike(response, "")
            answers.add(response.content)
    assert len(answers) == 1  # the same bytes: nothing about the key's values or name


def test_the_description_and_page_do_not_name_a_hidden_key(narrow: tuple[ServerThread, dict[str, str]]) -> None:
    server, auth = narrow
    described = httpx.get(f"{server.url}/datasets/orders", headers=auth).json()
    assert described["key"] is None
    assert {c["name"] for c in described["columns"]} == {"amount", "status"}
    listed = httpx.get(f"{server.url}/datasets", headers=auth).json()["datasets"][0]
    assert listed["key"] is None
    page = httpx.get(f"{server.url}/datasets/orders", headers={**auth, "Accept": "text/html"}).text
    for hidden in ("customer_id", "created_at", "shipped_at", "is_gift", 'data-key="id"', "id (the key)"):
        assert hidden not in page


def test_the_default_order_by_a_hidden_key_shows_no_key_values(narrow: tuple[ServerThread, dict[str, str]]) -> None:
    server, auth = narrow
    text = httpx.get(f"{server.url}/exports/orders.csv?limit=3", headers=auth).text
    assert text.splitlines()[0] == "amount,status"
    assert len(text.splitlines()) == 4
