"""Helpers the tests of several subsystems share: polling, keys, and the export log (ports: tests.servers)."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from exporter.access.grants import parse_restrictions
from exporter.access.keys import Keys
from tests.conftest import Database


def wait_for(probe: Callable[[], Any], seconds: float = 10) -> Any:
    """Poll until `probe` returns something truthy; a deadline against hangs, not a timing assertion."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if result := probe():
            return result
        time.sleep(0.02)
    raise AssertionError(f"condition not met within {seconds}s")


def export_log(db: Database, dataset: str) -> list[dict[str, Any]]:
    rows = db.execute("SELECT * FROM export_log WHERE dataset = :dataset ORDER BY id", dataset=dataset)
    return [dict(row._mapping) for row in rows]


def create_key(db: Database, name: str, *grants: str, columns: tuple[str, ...] = (),
               row_filters: tuple[str, ...] = (), max_rows: tuple[str, ...] = (), expires_in: timedelta | None = None,
               max_concurrent: int | None = None) -> str:
    restrictions = parse_restrictions(columns, row_filters, max_rows)
    token: str = db.run(lambda engine: Keys(engine).create(name, grants, restrictions, expires_in, max_concurrent))
    return token


def revoke(db: Database, name: str) -> None:
    db.run(lambda engine: Keys(engine).revoke(name))


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
