"""Parallel COPY: the parts of an export, each on its own connection in one snapshot, give the serial export's
bytes; a failing or abandoned part ends them all; and the parts partition the rows whatever the key looks like."""

from __future__ import annotations

import gzip
import os
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import zstandard
from prometheus_client import REGISTRY
from sqlalchemy.ext.asyncio import AsyncEngine

from exporter.config import Settings
from exporter.export.parts import split_query
from exporter.export.queries import build_query
from exporter.sources.datasets import Catalog
from exporter.sources.engines import open_snapshot
from tests.conftest import Database
from tests.export.test_copy import QUERIES, fill_all_types
from tests.export.test_export_failures import busy_backends, pool_idle
from tests.helpers import bearer, create_key, export_log, wait_for
from tests.jobs.test_jobs import TERMINAL, sha256
from tests.servers import ChunkedReader, ServerThread

Serve = Callable[[Settings], ServerThread]

# Dense, sparse, far away and at both ends of bigint: equal widths of the key would put nearly every row in one
# part, so the histogram has to split it.
GAPS = """
CREATE TABLE gaps AS SELECT id, md5(id::text) AS digest, id % 7 = 0 AS sevens FROM (
    SELECT g AS id FROM generate_series(1, 2000) g
    UNION ALL SELECT 1000000 + g * 1000 FROM generate_series(1, 50) g
    UNION ALL SELECT 1000000000000 + g FROM generate_series(1, 3000) g
    UNION ALL SELECT -9223372036854775807 UNION ALL SELECT 9223372036854775807) s"""
DATASETS = {
    "all_types": {"table": "all_types", "key": "id", "filterable": ["id", "t", "d", "tstz", "bo", "n"]},
    "all_types_sql": {"sql": "SELECT * FROM all_types", "key": "id"},
    "gaps": {"table": "gaps", "key": "id", "filterable": ["id", "digest", "sevens"]},
    "slowly": {"table": "slowly", "key": "id"},
    "slowly_rows": {"table": "slowly_rows", "key": "id"},  # the same rows at once
}
GAPS_QUERIES = [
    "gaps.csv", "gaps.ndjson", "gaps.csv?order=-id", "gaps.ndjson?order=-id&limit=2500", "gaps.csv?limit=1",
    "gaps.csv?limit=2001", "gaps.csv?limit=5050&order=id", "gaps.csv?after=1500", "gaps.csv?after=1500&order=-id",
    "gaps.csv?sevens=true", "gaps.csv?sevens=true&limit=300&after=-1", "gaps.csv?id__gte=1000000000001",
    "gaps.csv?id=2000", "gaps.csv?id__gt=9223372036854775806", "gaps.csv?id=5", "gaps.csv?digest=nothing",
    "gaps.csv?header=false&delimiter=%3B", "gaps.csv?bom=true&null=NULL", "gaps.csv.gz", "gaps.ndjson.zst",
    "gaps.csv?columns=digest,id", "gaps.csv?order=digest",
]
KEY_QUERIES = [
    "all_types.csv?order=-id", "all_types.ndjson?order=-id&limit=150", "all_types.csv?limit=5",
    "all_types.csv?after=120&limit=60", "all_types.csv?after=300&order=-id&formula_guard=true",
    "all_types.ndjson?d__gt=0", "all_types.csv?after=6", "all_types.csv?after=101&order=-id",
]


def parts_run() -> float:
    """How many COPY parts the fast path has run in this process (the exporter_copy_parts histogram's sum)."""
    return REGISTRY.get_sample_value("exporter_copy_parts_sum") or 0.0


@pytest.fixture
def tables(pg: Database) -> Database:
    fill_all_types(pg)
    pg.execute("DROP TABLE IF EXISTS gaps", GAPS, "ALTER TABLE gaps ADD PRIMARY KEY (id)", "ANALYZE gaps")
    return pg


@pytest.fixture
def servers(tables: Database, serve: Serve) -> Iterator[tuple[ServerThread, ServerThread]]:
    """The same service twice: four parts for any export of a row or more, and one COPY."""
    parallel = serve(tables.settings(datasets=DATASETS, copy_parallel=4, copy_parallel_min_rows=1))
    serial = serve(tables.settings(datasets=DATASETS, copy_parallel=1))
    yield parallel, serial


@pytest.mark.parametrize("analyzed", [True, False], ids=["histogram", "min-max"])
@pytest.mark.parametrize("path", QUERIES + KEY_QUERIES + GAPS_QUERIES)
def test_a_parallel_export_has_the_bytes_of_the_serial_one(
    tables: Database, servers: tuple[ServerThread, ServerThread], path: str, analyzed: bool
) -> None:
    tables.execute("ANALYZE all_types, gaps" if analyzed else "DELETE FROM pg_statistic WHERE starelid IN "
                   "('all_types'::regclass, 'gaps'::regclass)")
    parallel, serial = servers
    fast = httpx.get(f"{parallel.url}/exports/{path}")
    assert fast.status_code == 200, fast.text
    assert sha256(plain(path, fast.content)) == sha256(plain(path, httpx.get(f"{serial.url}/exports/{path}").content))


def plain(path: str, body: bytes) -> bytes:
    """The file inside a .gz or .zst export: compressed bytes depend on where the chunks end, the file does not."""
    name = path.split("?")[0]
    if name.endswith(".gz"):
        return gzip.decompress(body)
    return zstandard.ZstdDecompressor().decompressobj().decompress(body) if name.endswith(".zst") else body


@pytest.mark.parametrize(("path", "parts"), [
    ("gaps.csv", 4), ("gaps.ndjson?order=-id&limit=2500", 4), ("all_types.csv?after=120&limit=60", 4),
    ("gaps.csv?id=5", 1), ("gaps.csv?digest=nothing", 1), ("gaps.csv?order=digest", 1), ("all_types_sql.csv", 1),
    ("gaps.csv?limit=0", 1),
])
def test_key_ordered_exports_of_tables_run_in_parts_and_others_in_one(
    servers: tuple[ServerThread, ServerThread], path: str, parts: int
) -> None:
    before = parts_run()
    assert httpx.get(f"{servers[0].url}/exports/{path}").status_code == 200
    assert parts_run() - before == parts


def test_the_parts_partition_the_rows_and_split_skewed_keys_evenly(tables: Database) -> None:
    """Each part's keys, one part after the other, are the export's keys; on the skewed table the histogram
    gives each of four parts a fair share, where equal widths of the key would give one part almost all."""

    async def work(engine: AsyncEngine) -> None:
        catalog = Catalog(tables.settings(datasets=DATASETS).datasets, {None: engine})
        dataset = await catalog.get("gaps")
        for params in ([], [("order", "-id")], [("limit", "2500")], [("after", "1500"), ("sevens", "true")],
                       [("order", "-id"), ("limit", "4000"), ("after", "1000000000002")]):
            query = build_query(dataset, params, "postgresql")
            key = query.raw("id")
            async with open_snapshot(engine) as conn:
                expected = (await conn.execute(query.statement.with_only_columns(key))).scalars().all()
                parts = await split_query(conn, dataset, query, 4, 1)
                got = [k for part in parts for k in (await conn.execute(
                    part.statement.with_only_columns(key))).scalars().all()]
            assert got == expected, params
            assert len(parts) == 4, params
            if not params:
                sizes = [len(await _keys(engine, part.statement.with_only_columns(key))) for part in parts]
                assert max(sizes) < len(expected) / 2, sizes

    tables.run(work)


async def _keys(engine: AsyncEngine, statement: Any) -> list[Any]:
    async with engine.connect() as conn:
        return list((await conn.execute(statement)).scalars().all())


def test_after_at_a_part_boundary_continues_exactly_there(tables: Database,
                                                          servers: tuple[ServerThread, ServerThread]) -> None:
    async def first_keys(engine: AsyncEngine) -> list[int]:
        catalog = Catalog(tables.settings(datasets=DATASETS).datasets, {None: engine})
        dataset = await catalog.get("gaps")
        query = build_query(dataset, [], "postgresql")
        async with open_snapshot(engine) as conn:
            parts = await split_query(conn, dataset, query, 4, 1)
            return [(await conn.execute(part.statement.with_only_columns(query.raw("id")).limit(1))).scalar_one()
                    for part in parts]

    parallel, serial = servers
    boundaries = tables.run(first_keys)[1:]
    assert len(boundaries) == 3
    for boundary in boundaries:
        for after, order in ((boundary, "id"), (boundary - 1, "id"), (boundary, "-id"), (boundary + 1, "-id")):
            path = f"/exports/gaps.csv?after={after}&order={order}"
            fast = httpx.get(parallel.url + path).content
            assert fast == httpx.get(serial.url + path).content, path


def test_key_restrictions_and_the_row_limit_hold_in_parallel(pg: Database, serve: Serve, tmp_path: Path) -> None:
    pg.execute("DELETE FROM api_keys", "DELETE FROM export_log")
    pg.seed_demo(50_000)
    pg.execute("ANALYZE orders")
    parallel = serve(pg.settings(auth="required", copy_parallel=4, copy_parallel_min_rows=1))
    serial = serve(pg.settings(auth="required", copy_parallel=1))
    limited = create_key(pg, "paid-columns", "dataset:orders", columns=("orders=id,amount,status,created_at",),
                         row_filters=("orders=status=paid",), max_rows=("orders=20000",))
    for params in ({}, {"order": "-id", "limit": "20000"}, {"after": "25000"}, {"columns": "created_at,id"}):
        before = parts_run()
        fast = httpx.get(f"{parallel.url}/exports/orders.csv", params=params, headers=bearer(limited))
        assert fast.status_code == 200
        assert parts_run() - before > 1
        assert fast.content == httpx.get(f"{serial.url}/exports/orders.csv", params=params,
                                         headers=bearer(limited)).content, params
        assert b",shipped," not in fast.content
    capped = create_key(pg, "capped", "dataset:orders", max_rows=("orders=20000",))
    output = tmp_path / "orders.csv"
    curl = subprocess.run(["curl", "-sS", "-H", f"Authorization: Bearer {capped}", "-o", str(output),
                           f"{parallel.url}/exports/orders.csv"], capture_output=True, timeout=60)
    assert curl.returncode == 18, curl.stderr  # 20,001 rows read in parts: aborted, never ended cleanly
    job = httpx.post(f"{parallel.url}/jobs", json={"dataset": "orders", "format": "csv"},
                     headers=bearer(capped)).json()
    failed = wait_for(lambda: (j := httpx.get(f"{parallel.url}/jobs/{job['id']}", headers=bearer(capped)).json())
                      ["state"] in TERMINAL and j, 60)
    assert (failed["state"], failed["error"]["code"]) == ("failed", "row_limit_exceeded")


def test_a_job_runs_in_parts_and_gives_the_serial_export(pg: Database, serve: Serve, tmp_path: Path) -> None:
    pg.execute("DELETE FROM job_events", "DELETE FROM jobs")  # no other test's job runs here too
    pg.seed_demo(30_000)
    pg.execute("ANALYZE orders")
    server = serve(pg.settings(jobs_dir=str(tmp_path / "jobs"), copy_parallel=3, copy_parallel_min_rows=1))
    serial = serve(pg.settings(copy_parallel=1, job_workers=0))  # the job is the other server's to run
    before = parts_run()
    job = httpx.post(f"{server.url}/jobs", json={"dataset": "orders", "format": "ndjson",
                                                 "params": {"status": "paid"}}).json()
    done = wait_for(lambda: (j := httpx.get(f"{server.url}/jobs/{job['id']}").json())["state"] in TERMINAL and j, 60)
    assert done["state"] == "succeeded", done
    assert parts_run() - before == 3
    result = httpx.get(f"{server.url}{done['result']['url']}").content
    assert result == httpx.get(f"{serial.url}/exports/orders.ndjson", params={"status": "paid"}).content


# --- failures ----------------------------------------------------------------------------------------------------


@pytest.fixture
def slowly(pg: Database) -> Database:
    """The view `slowly` over 40,000 rows in key order, where every 100th row past 20,000 waits 20 ms (4 s in all):
    in two parts, the first is done at once and the second still runs when the test acts."""
    pg.execute(
        "DROP VIEW IF EXISTS slowly", "DROP TABLE IF EXISTS slowly_rows",
        "CREATE TABLE slowly_rows AS SELECT g::bigint AS id, md5(g::text) AS digest FROM generate_series(1, 40000) g",
        "ALTER TABLE slowly_rows ADD PRIMARY KEY (id)", "ANALYZE slowly_rows",  # ranges of it stream from the index
        "CREATE VIEW slowly AS SELECT * FROM slowly_rows WHERE id <= 20000 OR id % 100 <> 0"
        " OR pg_sleep(0.02)::text = ''",
        "DELETE FROM export_log",
    )
    return pg


def spool_files() -> set[str]:
    """The unnamed temporary files this process holds open (the test servers run in it): parallel COPY's spools."""
    found = set()
    for fd in Path("/proc/self/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue  # closed since the listing
        if target.startswith(tempfile.gettempdir() + "/#") and target.endswith(" (deleted)"):
            found.add(target)
    return found


def copy_backends(pg: Database) -> list[Any]:
    return pg.execute(
        "SELECT pid, state, query FROM pg_stat_activity WHERE application_name = 'exporter'"
        " AND datname = current_database() AND pid <> pg_backend_pid() AND query LIKE 'COPY%' AND state = 'active'")


def test_a_backend_terminated_in_the_second_part_aborts_the_transfer(slowly: Database, serve: Serve,
                                                                      tmp_path: Path) -> None:
    server = serve(slowly.settings(datasets=DATASETS, copy_parallel=2, copy_parallel_min_rows=1))
    spools = spool_files()
    output = tmp_path / "slowly.csv"
    curl = subprocess.Popen(["curl", "-sS", "-o", str(output), f"{server.url}/exports/slowly.csv"],
                            stderr=subprocess.PIPE)
    second = wait_for(lambda: [row.pid for row in copy_backends(slowly) if "slowly.id >= " in row.query])
    slowly.execute(f"SELECT pg_terminate_backend({second[0]})")
    _, stderr = curl.communicate(timeout=60)
    assert curl.returncode == 18, stderr  # CURLE_PARTIAL_FILE: the chunked body never ended
    assert output.read_bytes().startswith(b"id,digest\n1,")
    entry = wait_for(lambda: export_log(slowly, "slowly"))[0]
    assert (entry["outcome"], entry["path"]) == ("failed", "copy")
    wait_for(lambda: pool_idle(server) and not busy_backends(slowly))
    assert spool_files() == spools  # the second part's temporary file is gone


def test_a_client_that_leaves_cancels_every_part(slowly: Database, serve: Serve) -> None:
    slowly.execute("CREATE OR REPLACE VIEW slowly AS SELECT * FROM slowly_rows"
                   " WHERE id % 100 <> 0 OR pg_sleep(0.02)::text = ''")  # 2 s for each of 4 parts
    server = serve(slowly.settings(datasets=DATASETS, copy_parallel=4, copy_parallel_min_rows=1))
    spools = spool_files()
    with ChunkedReader(server.url, "/exports/slowly.ndjson") as reader:
        assert reader.next_chunk()
        wait_for(lambda: len(copy_backends(slowly)) == 4)  # the others start once the first has rows
        assert len(spool_files() - spools) == 3  # one for each part after the first
    wait_for(lambda: not busy_backends(slowly) and pool_idle(server), seconds=2)
    wait_for(lambda: spool_files() == spools)
    entry = wait_for(lambda: export_log(slowly, "slowly"))[0]
    assert (entry["outcome"], entry["path"]) == ("aborted", "copy")


def test_a_parallel_export_is_the_table_as_of_its_start(slowly: Database, serve: Serve) -> None:
    """Rows inserted, updated and deleted in every part's range while the export runs are not in it: all parts
    read one snapshot, taken before the first byte."""
    slowly.execute("CREATE OR REPLACE VIEW slowly AS SELECT * FROM slowly_rows"
                   " WHERE id % 100 <> 0 OR pg_sleep(0.01)::text = ''",  # 1 s for each of 4 parts
                   "DELETE FROM slowly_rows WHERE id % 1000 = 9")
    server = serve(slowly.settings(datasets=DATASETS, copy_parallel=4, copy_parallel_min_rows=1))
    serial = serve(slowly.settings(datasets=DATASETS, copy_parallel=1))
    expected = httpx.get(f"{serial.url}/exports/slowly_rows.csv").content
    changed = threading.Event()

    def change() -> None:
        wait_for(lambda: len(copy_backends(slowly)) == 4)
        slowly.execute("DELETE FROM slowly_rows WHERE id % 1000 = 7",
                       "UPDATE slowly_rows SET digest = 'changed' WHERE id % 1000 = 8",
                       "INSERT INTO slowly_rows SELECT id, 'new' FROM generate_series(9, 40000, 1000) id",
                       "INSERT INTO slowly_rows SELECT 40000 + g, 'after' FROM generate_series(1, 100) g")
        changed.set()

    changer = threading.Thread(target=change)
    with ChunkedReader(server.url, "/exports/slowly.csv") as reader:
        changer.start()
        received = bytearray(reader.next_chunk() or b"")
        assert changed.wait(10)
        while (chunk := reader.next_chunk()) is not None:
            received += chunk
    changer.join()
    assert changed.is_set() and copy_backends(slowly) == []
    assert sha256(bytes(received)) == sha256(expected)
    assert httpx.get(f"{serial.url}/exports/slowly_rows.csv").content != expected  # the changes are there now
