"""The console script as `make run` uses it: migrate, seed-demo, serve; on a fresh SQLite file."""

from __future__ import annotations

import csv
import hashlib
import io
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from exporter.cli.demo import AWKWARD_NOTES
from tests.conftest import Database
from tests.servers import free_port

EXPORTER = str(Path(sys.executable).with_name("exporter"))


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([EXPORTER, *args], env=env, capture_output=True, text=True, timeout=120, check=False)


def test_migrate_seed_and_serve_give_every_seeded_row_to_curl(tmp_path: Path) -> None:
    env = {**os.environ, "EXPORTER_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'var' / 'exporter.db'}",
           "EXPORTER_AUTH": "off", "EXPORTER_JOBS_DIR": str(tmp_path / "jobs")}  # as `make run` serves the demo
    env.pop("EXPORTER_CONFIG", None)
    assert run(env, "migrate").returncode == 0
    assert run(env, "seed-demo", "--if-missing", "--rows", "1500").returncode == 0
    again = run(env, "seed-demo", "--if-missing", "--rows", "10")
    assert "not seeding" in again.stdout
    port = free_port()
    server = subprocess.Popen([EXPORTER, "serve", "--port", str(port)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        curl = subprocess.run(["curl", "-fsS", f"http://127.0.0.1:{port}/exports/orders.csv"],
                              capture_output=True, check=True, timeout=60)
    finally:
        server.terminate()
        _, log = server.communicate(timeout=30)
    assert "EXPORTER_AUTH=off" in log  # the demo warns that anyone may read everything
    rows = list(csv.reader(io.StringIO(curl.stdout.decode(), newline="")))
    assert rows[0][0] == "id"
    assert [int(row[0]) for row in rows[1:]] == list(range(1, 1501))
    notes = {row[8] for row in rows[1:]}
    assert set(AWKWARD_NOTES) <= notes


def test_bad_configuration_is_a_message_and_exit_code_2(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text('[datasets.x]\ntable = "t"\n')
    result = run({**os.environ, "EXPORTER_CONFIG": str(config)}, "migrate")
    assert result.returncode == 2
    assert "key" in result.stderr
    assert "Traceback" not in result.stderr


def _digest(db: Database) -> str:
    rows = db.execute("SELECT * FROM orders ORDER BY id")
    return hashlib.sha256(repr([tuple(r) for r in rows]).encode()).hexdigest()


def test_seed_demo_gives_the_same_rows_for_the_same_count(db: Database) -> None:
    db.seed_demo(3000)
    first = _digest(db)
    db.seed_demo(3000)
    assert _digest(db) == first
    db.seed_demo(3001)
    assert _digest(db) != first


def test_seed_demo_has_the_documented_mix_of_values(db: Database) -> None:
    db.seed_demo(10_000)
    (stats,) = db.execute(
        "SELECT count(*) AS n, sum(CASE WHEN shipped_at IS NULL THEN 1 ELSE 0 END) AS unshipped,"
        " sum(CASE WHEN is_gift THEN 1 ELSE 0 END) AS gifts, count(DISTINCT status) AS statuses FROM orders"
    )
    assert stats.n == 10_000
    assert stats.unshipped == pytest.approx(10_000 / 3, rel=0.05)
    assert stats.gifts == pytest.approx(1000, rel=0.05)
    assert stats.statuses == 5
    awkward = db.execute("SELECT count(*) AS n FROM orders WHERE note IN (" +
                         ", ".join(f":n{i}" for i in range(len(AWKWARD_NOTES))) + ")",
                         **{f"n{i}": note for i, note in enumerate(AWKWARD_NOTES)})
    assert awkward[0].n == pytest.approx(500, rel=0.05)


def test_check_config_lists_what_would_be_served_and_exits_1_on_a_problem(pg: Database, tmp_path: Path) -> None:
    pg.seed_demo(10)
    (tmp_path / "reports").mkdir()
    config = tmp_path / "exporter.toml"
    config.write_text(f'[datasets.orders]\ntable = "orders"\nkey = "id"\n[datasets.ghost]\ntable = "no_such_table"\n'
                      f'key = "id"\n[files.roots]\nreports = "{tmp_path / "reports"}"\n')
    env = {**os.environ, "EXPORTER_DATABASE_URL": pg.url, "EXPORTER_CONFIG": str(config)}
    checked = run(env, "check-config")
    assert checked.returncode == 1
    assert "ok   dataset orders: 10 columns, key id" in checked.stdout
    assert "ok   file root reports" in checked.stdout
    assert "FAIL dataset ghost" in checked.stdout and "Traceback" not in checked.stdout + checked.stderr
    config.write_text('[datasets.orders]\ntable = "orders"\nkey = "id"\n')
    assert run(env, "check-config").returncode == 0
    unreachable = run({**env, "EXPORTER_DATABASE_URL": "postgresql+asyncpg://postgres@127.0.0.1:1/x"},
                      "check-config")
    assert unreachable.returncode == 1 and "cannot connect" in unreachable.stdout
    invalid = run({**env, "EXPORTER_JOB_WORKERS": "many"}, "check-config")
    assert invalid.returncode == 2 and "job_workers" in invalid.stderr
