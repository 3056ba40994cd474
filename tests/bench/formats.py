"""`make bench`: each export format on 1,000,000 demo orders from PostgreSQL, against the CSV COPY path.

For each format: rows/s and bytes on the wire (curl to /dev/null, alternating, median of the runs), the
server's peak RSS growth for one export, and the time pandas takes to read the file back. Then the XLSX
writer against openpyxl's write-only mode on the same rows in this process ("the usual way"). Timings are
reported, never asserted; raw numbers go to bench-formats.json. The run exits 1 only if an export fails.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import openpyxl
import pandas
import pyarrow.ipc

from exporter.config import Settings
from exporter.export.cursor import iter_rows
from exporter.export.queries import build_query
from exporter.formats import create_serializer, format_options
from exporter.sources.datasets import Catalog
from exporter.sources.engines import create_db_engine
from tests.bench.exports import (
    EXPORTER,
    MB,
    PSQL,
    Case,
    Run,
    bench_env,
    code_version,
    curl,
    exporter_server,
    measure,
    measure_memory,
    note,
    print_table,
    run_command,
)

REPO = Path(__file__).resolve().parents[2]
WORK = REPO / "var" / "bench-formats"
RESULTS = REPO / "bench-formats.json"
PG_DATABASE = "exporter_bench_formats"
PG_URL = f"postgresql+asyncpg://postgres@127.0.0.1:5432/{PG_DATABASE}"
ROWS = int(os.environ.get("BENCH_ROWS", "1000000"))
REPEATS = int(os.environ.get("BENCH_REPEATS", "3"))
XLSX_PANDAS_ROWS = 100_000  # pandas' read_excel (openpyxl) takes minutes for a million rows: timed on fewer
WRITER_ROWS = 200_000  # the XLSX writers compared in this process, on rows fetched once
# (case, path, reference): the CSV COPY path is the reference for every format.
FORMATS = [
    ("csv (COPY)", "/exports/orders.csv", None),
    ("csv.zst (COPY + zstd)", "/exports/orders.csv.zst", "csv (COPY)"),
    ("ndjson (COPY)", "/exports/orders.ndjson", "csv (COPY)"),
    ("parquet", "/exports/orders.parquet", "csv (COPY)"),
    ("arrow", "/exports/orders.arrow", "csv (COPY)"),
    ("xlsx", "/exports/orders.xlsx", "csv (COPY)"),
]


def prepare_database() -> float:
    run_command([*PSQL, "-d", "postgres", "-c", f"DROP DATABASE IF EXISTS {PG_DATABASE} WITH (FORCE)",
                 "-c", f"CREATE DATABASE {PG_DATABASE}"], bench_env())
    env = bench_env(EXPORTER_DATABASE_URL=PG_URL)
    run_command([str(EXPORTER), "migrate"], env)
    note(f"seeding postgresql with {ROWS:,} rows")
    return run_command([str(EXPORTER), "seed-demo", "--rows", str(ROWS)], env)


def pandas_read_seconds(name: str, path: Path) -> float:
    """pandas reading the file the way an analyst would, best of three."""
    readers: dict[str, Callable[[], Any]] = {
        "csv (COPY)": lambda: pandas.read_csv(path),
        "csv.zst (COPY + zstd)": lambda: pandas.read_csv(path, compression="zstd"),
        "ndjson (COPY)": lambda: pandas.read_json(path, lines=True),
        "parquet": lambda: pandas.read_parquet(path),
        "arrow": lambda: pyarrow.ipc.open_stream(path.read_bytes()).read_pandas(),
        "xlsx": lambda: pandas.read_excel(path, engine="openpyxl"),
    }
    times = []
    for _ in range(1 if name == "xlsx" else 3):
        started = time.perf_counter()
        readers[name]()
        times.append(time.perf_counter() - started)
    return min(times)


def fetch_batches(rows: int, batch_rows: int) -> tuple[Any, list[Any]]:
    """The demo orders' columns and their first `rows` rows as the export reads them, in batches."""
    settings = Settings.from_environ(bench_env(EXPORTER_DATABASE_URL=PG_URL))

    async def fetch() -> tuple[Any, list[Any]]:
        engine = create_db_engine(PG_URL)
        try:
            dataset = await Catalog(settings.datasets, {None: engine}).get("orders")
            query = build_query(dataset, [("limit", str(rows))], "postgresql")
            return query.columns, [list(batch) async for batch in iter_rows(engine, query.statement, batch_rows)]
        finally:
            await engine.dispose()

    return asyncio.run(fetch())


def compare_xlsx_writers(rows: int, repeats: int) -> dict[str, Any]:
    """Our XLSX writer against openpyxl write-only on the same rows (naive UTC datetimes for openpyxl, which
    refuses aware ones), each writing a whole file; alternating, median."""
    columns, batches = fetch_batches(rows, 500)
    plain = [[v.replace(tzinfo=None) if hasattr(v, "tzinfo") and v.tzinfo else v for v in row]
             for batch in batches for row in batch]

    def ours() -> int:
        serializer = create_serializer(columns, "postgresql", format_options("xlsx", {}))
        size = len(serializer.header())
        for batch in batches:
            size += len(serializer.encode(batch))
        return size + len(serializer.footer())

    def reference() -> int:
        workbook = openpyxl.Workbook(write_only=True)
        sheet = workbook.create_sheet()
        sheet.append([c.name for c in columns])
        for row in plain:
            sheet.append(row)
        with tempfile.TemporaryFile() as file:
            workbook.save(file)
            return file.tell()

    times: dict[str, list[float]] = {"exporter xlsx": [], "openpyxl write-only": []}
    sizes: dict[str, int] = {}
    for round_number in range(repeats):
        order = [("exporter xlsx", ours), ("openpyxl write-only", reference)]
        for name, write in order if round_number % 2 == 0 else reversed(order):
            started = time.perf_counter()
            sizes[name] = write()
            times[name].append(time.perf_counter() - started)
            note(f"[writers] {round_number + 1}/{repeats} {name}: {times[name][-1]:.2f} s")
    medians = {name: statistics.median(values) for name, values in times.items()}
    return {"rows": rows, "seconds": times, "median_seconds": medians, "bytes": sizes,
            "ratio": medians["openpyxl write-only"] / medians["exporter xlsx"]}


def _fetcher(url: str) -> Callable[[], Run]:
    return lambda: curl(url)


def main(argv: Sequence[str] | None = None) -> int:
    WORK.mkdir(parents=True, exist_ok=True)
    (REPO / "var" / "bench").mkdir(parents=True, exist_ok=True)  # where tests.bench.exports' servers log
    results: dict[str, Any] = {"rows": ROWS, "code": code_version(), "machine": {"cpus": os.cpu_count()},
                               "seed_seconds": prepare_database()}
    failures: list[str] = []
    memory: dict[str, float] = {}
    read_seconds: dict[str, float] = {}
    with exporter_server("formats", bench_env(EXPORTER_DATABASE_URL=PG_URL)) as server:
        cases = [Case(name, ROWS, _fetcher(server.url + path), reference) for name, path, reference in FORMATS]
        measure("formats", cases, REPEATS)
        # A compressed stream's size depends on where its chunks were flushed, so only its errors count.
        failures.extend(failure for case in cases for failure in case.failures()
                        if "zst" not in case.name or "short" not in failure)
        for case in cases:
            memory[case.name] = measure_memory(case.name, server, lambda _: [case.fetch()]).growth_mb  # noqa: B023
        for name, path, _ in FORMATS:
            file = WORK / ("orders." + path.rsplit(".", 1)[-1] if "zst" not in path else "orders.csv.zst")
            limit = f"?limit={XLSX_PANDAS_ROWS}" if name == "xlsx" else ""
            subprocess.run(["curl", "-fsS", "-o", str(file), server.url + path + limit], check=True)
            read_seconds[name] = pandas_read_seconds(name, file)
            note(f"[pandas] {name}: {read_seconds[name]:.2f} s")
    writers = compare_xlsx_writers(WRITER_ROWS, REPEATS)

    by_name = {case.name: case for case in cases}
    table = [("format", "median s", "rows/s", "vs csv COPY", "MB on the wire", "RSS growth MB", "pandas read s")]
    for case in cases:
        reference = by_name.get(case.reference or "")
        ratio = f"{reference.median_seconds / case.median_seconds:.2f}" if reference else "1.00"
        pandas_note = f"{read_seconds[case.name]:.2f}" + (f" ({XLSX_PANDAS_ROWS // 1000}k rows)"
                                                           if case.name == "xlsx" else "")
        table.append((case.name, f"{case.median_seconds:.2f}", f"{case.rows / case.median_seconds:,.0f}", ratio,
                      f"{case.bytes / MB:.1f}", f"{memory[case.name]:.1f}", pandas_note))
    print_table(table, text_columns=1)
    print(f"XLSX writers on {writers['rows']:,} rows in one process: exporter "
          f"{writers['rows'] / writers['median_seconds']['exporter xlsx']:,.0f} rows/s, openpyxl write-only "
          f"{writers['rows'] / writers['median_seconds']['openpyxl write-only']:,.0f} rows/s, "
          f"ratio {writers['ratio']:.2f}\n")
    results |= {"cases": [case.to_json() for case in cases], "rss_growth_mb": memory,
                "pandas_read_seconds": read_seconds, "xlsx_writers": writers, "failures": failures}
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    for failure in failures:
        print(f"FAILED: {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
