"""`make bench`: export speed and server memory, measured against psql and a per-row "tutorial" app.

`python -m tests.bench.exports [--parts ab]` seeds its own databases, starts the servers, prints tables and writes
every raw number to bench-results.json (`--parts` runs only some of the parts, see PARTS);
`python -m tests.bench.exports tutorial --port P --database-url URL` serves the tutorial app.
Timings are reported, never asserted: the run exits 1 only if an export fails.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import io
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack, asynccontextmanager, contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI
from fastapi.responses import JSONResponse, StreamingResponse
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from exporter.config import Settings
from exporter.export.copy import copy_query_text

REPO = Path(__file__).resolve().parents[2]
WORK = REPO / "var" / "bench"
RESULTS = REPO / "bench-results.json"
EXPORTER = Path(sys.executable).with_name("exporter")
PG_DATABASE = "exporter_bench"
PSQL = ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p", "5432", "-U", "postgres"]
PG_SERVER_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432"
PG_URL = f"{PG_SERVER_URL}/{PG_DATABASE}"
SQLITE_URL = f"sqlite+aiosqlite:///{WORK / 'orders.db'}"
ROWS = 1_000_000
BIG_ROWS = 5_000_000
SAMPLE_ROWS = 200_000  # the tutorial pattern needs about a minute for 1M rows, so it is compared on fewer
SLOW_CLIENT_SECONDS = 15
CONCURRENT_EXPORTS = 8
MB = 1_000_000
CURL_FORMAT = "%{time_total} %{time_starttransfer} %{size_download} %{http_code}"
PLAIN_SELECT = "SELECT * FROM orders ORDER BY id"
ROW_TO_JSON_SELECT = f"SELECT row_to_json(o) FROM ({PLAIN_SELECT}) o"  # PostgreSQL's own JSON of each row
PARTS = "abcdef"  # a, b: psql; c, d: the generic path and SQLite against the tutorial app; e, f: memory
NDJSON_COPY_OPTIONS = "format csv, quote e'\\x01', delimiter e'\\x02'"  # one JSON column, written verbatim


def note(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --- the tutorial app -------------------------------------------------------------------------------------


def create_tutorial_app(database_url: str) -> FastAPI:
    """The pattern tutorials teach: SQLAlchemy async stream() over the table, one write and one yield per row."""
    engine = create_async_engine(database_url)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await engine.dispose()

    app = FastAPI(lifespan=lifespan)

    def orders_query(limit: int | None) -> Any:
        if limit is None:
            return text(PLAIN_SELECT)
        return text(PLAIN_SELECT + " LIMIT :limit").bindparams(limit=limit)

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
        return JSONResponse({"status": "ok"})

    @app.get("/orders.csv")
    async def orders_csv(limit: int | None = None) -> StreamingResponse:
        async def rows() -> AsyncIterator[str]:
            async with engine.connect() as conn:
                result = await conn.stream(orders_query(limit))
                buffer = io.StringIO()
                writer = csv.writer(buffer)
                writer.writerow(result.keys())
                async for row in result:
                    writer.writerow(row)
                    yield buffer.getvalue()
                    buffer.seek(0)
                    buffer.truncate()

        return StreamingResponse(rows(), media_type="text/csv")

    @app.get("/orders.ndjson")
    async def orders_ndjson(limit: int | None = None) -> StreamingResponse:
        async def rows() -> AsyncIterator[str]:
            async with engine.connect() as conn:
                result = await conn.stream(orders_query(limit))
                async for row in result:
                    yield json.dumps(dict(row._mapping), default=str) + "\n"

        return StreamingResponse(rows(), media_type="application/x-ndjson")

    return app


# --- timed runs -------------------------------------------------------------------------------------------


@dataclass
class Run:
    """One timed transfer. `bytes` of a psql run come from its untimed sizing run; `error` means it failed."""

    seconds: float
    first_byte_seconds: float | None
    bytes: int
    error: str | None = None


@dataclass
class Case:
    """One thing to time: `fetch` performs a run; `reference` names the case its throughput is compared with."""

    name: str
    rows: int
    fetch: Callable[[], Run]
    reference: str | None = None
    runs: list[Run] = field(default_factory=list)

    @property
    def median_seconds(self) -> float:
        return statistics.median(run.seconds for run in self.runs)

    @property
    def bytes(self) -> int:
        return max(run.bytes for run in self.runs)

    def failures(self) -> list[str]:
        """Runs that failed, or that delivered fewer bytes than this case's longest run (a short transfer)."""
        return [f"{self.name} run {i + 1}: {run.error or f'short: {run.bytes} of {self.bytes} bytes'}"
                for i, run in enumerate(self.runs) if run.error or run.bytes < self.bytes]

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "reference": self.reference, "rows": self.rows,
                "median_seconds": self.median_seconds, "runs": [asdict(run) for run in self.runs]}


def curl_args(url: str, *options: str) -> list[str]:
    return ["curl", "-sS", *options, "-o", "/dev/null", "-w", CURL_FORMAT, url]


def parse_curl(returncode: int, stdout: str, stderr: str, accepted_returncodes: tuple[int, ...] = (0,)) -> Run:
    """curl's own timings and size; an error unless it got a 200 and exited with an accepted code."""
    total, first_byte, size, status = stdout.split()
    error = None
    if returncode not in accepted_returncodes or status != "200":
        error = f"curl exit {returncode}, HTTP {status}: {stderr.strip()}"
    return Run(float(total), float(first_byte), int(size), error)


def curl(url: str, *options: str, accepted_returncodes: tuple[int, ...] = (0,)) -> Run:
    done = subprocess.run(curl_args(url, *options), capture_output=True, text=True)
    return parse_curl(done.returncode, done.stdout, done.stderr, accepted_returncodes)


def psql_copy(select: str, options: str) -> Callable[[], Run]:
    """A psql `\\copy (select) to stdout` to /dev/null, timed by the wall clock (psql's start-up included).

    Its size is measured once, untimed, when this is called; that run also warms the caches."""
    command = [*PSQL, "-d", PG_DATABASE, "-c", f"\\copy ({select}) to stdout with ({options})"]
    # The service's connections run with TimeZone=UTC; so must psql, or its timestamps would differ.
    env = bench_env(PGTZ="UTC")
    size = 0
    with subprocess.Popen(command, stdout=subprocess.PIPE, env=env) as sizing:
        assert sizing.stdout is not None
        while chunk := sizing.stdout.read(1 << 20):
            size += len(chunk)
    if sizing.returncode:
        raise RuntimeError(f"psql exited with {sizing.returncode}: {command}")

    def fetch() -> Run:
        started = time.perf_counter()
        done = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
        error = f"psql exit {done.returncode}: {done.stderr.strip()}" if done.returncode else None
        return Run(time.perf_counter() - started, None, size, error)

    return fetch


def measure(label: str, cases: Sequence[Case], repeats: int) -> None:
    """Run every case `repeats` times, alternating them run by run (reversed every other round, so a drift in
    the machine's speed favours neither), and append to each case's runs."""
    for round_number in range(repeats):
        order = cases if round_number % 2 == 0 else list(reversed(cases))
        for case in order:
            run = case.fetch()
            case.runs.append(run)
            status = run.error or f"{run.seconds:.2f} s, {run.bytes / MB:.1f} MB"
            note(f"[{label}] {round_number + 1}/{repeats} {case.name}: {status}")


# --- servers ----------------------------------------------------------------------------------------------


@dataclass
class Server:
    name: str
    url: str
    process: subprocess.Popen[bytes]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def bench_env(**settings: str) -> dict[str, str]:
    """This process's environment without inherited EXPORTER_* variables, plus `settings`."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("EXPORTER_")}
    env["EXPORTER_AUTH"] = "off"  # the benchmarks measure the data paths
    return env | settings


@contextmanager
def serve(name: str, command: list[str], env: dict[str, str], warm_path: str) -> Iterator[Server]:
    """Start `command --port P` on a free port, wait for /readyz, GET `warm_path` once (first-request set-up
    stays out of the timings) and yield the server; it is stopped on exit however the block ends."""
    port = free_port()
    log_path = WORK / f"{name}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen([*command, "--port", str(port)], cwd=REPO, env=env, stdout=log,
                                   stderr=subprocess.STDOUT)
        try:
            server = Server(name, f"http://127.0.0.1:{port}", process)
            wait_ready(server, log_path)
            with urllib.request.urlopen(server.url + warm_path, timeout=30) as response:
                response.read()
            note(f"started {name} on port {port} (pid {process.pid})")
            yield server
        finally:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def wait_ready(server: Server, log_path: Path, timeout_seconds: float = 60) -> None:
    deadline = time.monotonic() + timeout_seconds
    while True:
        if server.process.poll() is not None:
            raise RuntimeError(f"{server.name} exited with {server.process.returncode}; see {log_path}")
        try:
            with urllib.request.urlopen(server.url + "/readyz", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{server.name} not ready after {timeout_seconds} s; see {log_path}")
        time.sleep(0.1)


def exporter_server(name: str, env: dict[str, str]) -> AbstractContextManager[Server]:
    return serve(name, [str(EXPORTER), "serve", "--host", "127.0.0.1"], env, "/exports/orders.csv?limit=10")


def tutorial_server(name: str, database_url: str) -> AbstractContextManager[Server]:
    command = [sys.executable, "-m", "tests.bench.exports", "tutorial", "--database-url", database_url]
    return serve(name, command, bench_env(), "/orders.csv?limit=10")


# --- memory -----------------------------------------------------------------------------------------------


@dataclass
class Memory:
    """A server's memory around one load: VmRSS just before it, VmHWM (peak) after it, in KiB."""

    scenario: str
    server: str
    rss_before_kib: int
    hwm_kib: int
    runs: list[Run]
    wall_seconds: float

    @property
    def growth_mb(self) -> float:
        return (self.hwm_kib - self.rss_before_kib) * 1024 / MB

    def to_json(self) -> dict[str, Any]:
        return asdict(self) | {"growth_mb": self.growth_mb}


def status_kib(pid: int, field_name: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field_name} in /proc/{pid}/status")


def measure_memory(scenario: str, server: Server, load: Callable[[Server], list[Run]]) -> Memory:
    """Reset the server's peak RSS (clear_refs 5), run `load(server)`, and read the new peak."""
    pid = server.process.pid
    Path(f"/proc/{pid}/clear_refs").write_text("5")
    before = status_kib(pid, "VmRSS")
    started = time.perf_counter()
    runs = load(server)
    wall_seconds = time.perf_counter() - started
    memory = Memory(scenario, server.name, before, status_kib(pid, "VmHWM"), runs, wall_seconds)
    note(f"[memory] {scenario} on {server.name}: {memory.growth_mb:+.1f} MB")
    return memory


def memory_failures(memory: Memory, expected_bytes: int | None) -> list[str]:
    """Failed runs, and complete exports shorter than `expected_bytes` (a slow client is stopped on purpose)."""
    return [f"memory {memory.scenario} on {memory.server}: {run.error or f'short: {run.bytes} bytes'}"
            for run in memory.runs if run.error or (expected_bytes is not None and run.bytes < expected_bytes)]


# --- the run ----------------------------------------------------------------------------------------------


def run_command(command: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, cwd=REPO, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def create_pg_database(database: str) -> None:
    """Drop `database` if it exists and create it empty."""
    run_command([*PSQL, "-d", "postgres", "-c", f"DROP DATABASE IF EXISTS {database} WITH (FORCE)",
                 "-c", f"CREATE DATABASE {database}"], bench_env())


def migrate_and_seed(name: str, url: str, rows: int = ROWS) -> float:
    """`exporter migrate` and `exporter seed-demo --rows rows` on `url`; the seconds the seed took."""
    env = bench_env(EXPORTER_DATABASE_URL=url)
    run_command([str(EXPORTER), "migrate"], env)
    note(f"seeding {name} with {rows:,} rows")
    return run_command([str(EXPORTER), "seed-demo", "--rows", str(rows)], env)


def prepare_databases(sqlite: bool = True) -> dict[str, float]:
    """Fresh `exporter_bench` database and (if `sqlite`) SQLite file, migrated and seeded with ROWS; seconds per
    seed."""
    create_pg_database(PG_DATABASE)
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    urls = [("postgresql", PG_URL), *([("sqlite", SQLITE_URL)] if sqlite else [])]
    return {name: migrate_and_seed(name, url) for name, url in urls}


def copy_queries() -> dict[str, str]:
    settings = Settings.from_environ(bench_env(EXPORTER_DATABASE_URL=PG_URL))

    async def both() -> dict[str, str]:
        return {fmt: await copy_query_text(settings, "orders", fmt) for fmt in ("csv", "ndjson")}

    return asyncio.run(both())


def export_case(name: str, server: Server, path: str, rows: int, reference: str | None = None) -> Case:
    return Case(name, rows, lambda: curl(server.url + path), reference)


Group = tuple[str, list[Case], int]  # progress label, cases alternated run by run, runs per case


def psql_groups(queries: dict[str, str], fast: Server) -> list[Group]:
    """Parts a and b: the service's fast path against what a user would run by hand instead: psql's CSV of the
    plain table (other bytes: `t`/`f`, `2024-01-01 00:00:53+00`), and PostgreSQL's own row_to_json. psql running
    the fast path's own SELECT is an extra row: what rendering the documented formats costs PostgreSQL."""
    return [
        ("a", [Case("psql csv", ROWS, psql_copy(PLAIN_SELECT, "format csv, header")),
               export_case("pg fast path csv", fast, "/exports/orders.csv", ROWS, "psql csv"),
               Case("psql csv of fast path SELECT", ROWS, psql_copy(queries["csv"], "format csv, header"),
                    "psql csv")], 5),
        ("b", [Case("psql ndjson", ROWS, psql_copy(ROW_TO_JSON_SELECT, NDJSON_COPY_OPTIONS)),
               export_case("pg fast path ndjson", fast, "/exports/orders.ndjson", ROWS, "psql ndjson"),
               Case("psql ndjson of fast path SELECT", ROWS, psql_copy(queries["ndjson"], NDJSON_COPY_OPTIONS),
                    "psql ndjson")], 5),
    ]


def tutorial_groups(label: str, database: str, service: Server, tutorial: Server) -> list[Group]:
    """Parts c and d: the generic path against the tutorial app, both on the first SAMPLE_ROWS rows."""
    groups: list[Group] = []
    for fmt in ("csv", "ndjson"):
        reference = f"tutorial {database} {fmt} {SAMPLE_ROWS // 1000}k"
        query = f".{fmt}?limit={SAMPLE_ROWS}"
        groups.append((label, [
            export_case(reference, tutorial, "/orders" + query, SAMPLE_ROWS),
            export_case(f"{database} generic {fmt} {SAMPLE_ROWS // 1000}k", service, "/exports/orders" + query,
                        SAMPLE_ROWS, reference),
        ], 3))
    return groups


def one_export(server: Server) -> list[Run]:
    return [curl(server.url + "/exports/orders.csv")]


def slow_client(server: Server) -> list[Run]:
    # curl ends a --max-time transfer with exit code 28: here that is the expected way to stop reading.
    return [curl(server.url + "/exports/orders.csv", "--limit-rate", "1M", "--max-time", str(SLOW_CLIENT_SECONDS),
                 accepted_returncodes=(0, 28))]


def concurrent_exports(server: Server) -> list[Run]:
    processes = [subprocess.Popen(curl_args(server.url + "/exports/orders.csv"), stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for _ in range(CONCURRENT_EXPORTS)]
    outputs = [process.communicate() for process in processes]
    return [parse_curl(process.returncode, *output) for process, output in zip(processes, outputs, strict=True)]


def run_benchmarks(results: dict[str, Any], parts: str = PARTS) -> tuple[list[Case], list[Memory], list[str]]:
    """The `parts` (letters of PARTS) with the servers they need, stopped however this ends; the cases, the memory
    scenarios and the failures found. Adds seed times and the COPY queries to `results`."""
    results["seed_seconds"] = prepare_databases(sqlite="d" in parts)
    queries = results["copy_queries"] = copy_queries()
    cases: list[Case] = []
    memories: list[Memory] = []
    failures: list[str] = []

    def needs(part_letters: str) -> bool:
        return any(part in parts for part in part_letters)

    with ExitStack() as servers:
        def start(wanted: bool, server: AbstractContextManager[Server]) -> Server | None:
            return servers.enter_context(server) if wanted else None

        fast = start(needs("abef"), exporter_server("pg-fast", bench_env(EXPORTER_DATABASE_URL=PG_URL)))
        generic = start(needs("ce"), exporter_server(
            "pg-generic", bench_env(EXPORTER_DATABASE_URL=PG_URL, EXPORTER_COPY_FAST_PATH="false")))
        sqlite = start(needs("d"), exporter_server("sqlite", bench_env(EXPORTER_DATABASE_URL=SQLITE_URL)))
        tutorial_pg = start(needs("c"), tutorial_server("tutorial-pg", PG_URL))
        tutorial_sqlite = start(needs("d"), tutorial_server("tutorial-sqlite", SQLITE_URL))
        groups: list[Group] = []
        if fast and needs("ab"):
            groups += psql_groups(queries, fast)
        if generic and tutorial_pg:
            groups += tutorial_groups("c", "pg", generic, tutorial_pg)
        if sqlite and tutorial_sqlite:
            groups += [("d", [export_case("sqlite csv", sqlite, "/exports/orders.csv", ROWS),
                              export_case("sqlite ndjson", sqlite, "/exports/orders.ndjson", ROWS)], 3),
                       *tutorial_groups("d", "sqlite", sqlite, tutorial_sqlite)]
        for label, group, repeats in groups:
            if label not in parts:
                continue
            measure(label, group, repeats)
            cases.extend(group)
            failures.extend(failure for case in group for failure in case.failures())

        csv_bytes = next((case.bytes for case in cases if case.name == "pg fast path csv"), None)
        rows = f"{ROWS:,}-row csv"
        scenarios: list[tuple[str, Server, Callable[[Server], list[Run]], int | None]] = []
        if fast and generic and "e" in parts:
            scenarios = [
                (rows, fast, one_export, csv_bytes),
                (rows, generic, one_export, csv_bytes),
                (f"client at 1 MB/s for {SLOW_CLIENT_SECONDS} s", fast, slow_client, None),
                (f"client at 1 MB/s for {SLOW_CLIENT_SECONDS} s", generic, slow_client, None),
                (f"{CONCURRENT_EXPORTS} concurrent {rows}", fast, concurrent_exports, csv_bytes),
            ]
        for scenario, server, load, expected_bytes in scenarios:
            memories.append(measure_memory(scenario, server, load))
            failures.extend(memory_failures(memories[-1], expected_bytes))

        if fast and "f" in parts:
            # The same server process, not a new one, so every number in a run comes from the code it started with.
            note(f"re-seeding postgresql with {BIG_ROWS:,} rows")
            results["seed_seconds"]["postgresql_big"] = run_command(
                [str(EXPORTER), "seed-demo", "--rows", str(BIG_ROWS)], bench_env(EXPORTER_DATABASE_URL=PG_URL))
            memories.append(measure_memory(f"{BIG_ROWS:,}-row csv", fast, one_export))
            failures.extend(memory_failures(memories[-1], None))
    return cases, memories, failures


# --- report -----------------------------------------------------------------------------------------------


def print_table(rows: Sequence[Sequence[str]], text_columns: int = 2) -> None:
    """Columns padded to their widest cell; the first `text_columns` left-aligned, numbers right-aligned."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) if i < text_columns else cell.rjust(width)
                        for i, (cell, width) in enumerate(zip(row, widths, strict=True))).rstrip())
    print()


def print_report(cases: list[Case], memories: list[Memory]) -> list[str]:
    """Print the tables; return notes on exports that should be the same size and are not."""
    by_name = {case.name: case for case in cases}
    speed = [("case", "reference", "median s", "rows/s", "MB/s", "ratio")]
    for case in cases:
        seconds = case.median_seconds
        reference = by_name.get(case.reference or "")
        ratio = f"{reference.median_seconds / seconds:.2f}" if reference else ""
        speed.append((case.name, case.reference or "", f"{seconds:.2f}", f"{case.rows / seconds:,.0f}",
                      f"{case.bytes / MB / seconds:.1f}", ratio))
    print_table(speed)
    print("ratio = reference time / case time (> 1: faster than the reference); MB = 10^6 bytes\n")

    first_byte = [("export", "first byte ms (median)", "min", "max")]
    for case in cases:
        if case.rows == ROWS and case.runs[0].first_byte_seconds is not None:
            times = [(run.first_byte_seconds or 0.0) * 1000 for run in case.runs]
            first_byte.append((case.name, f"{statistics.median(times):.1f}", f"{min(times):.1f}",
                               f"{max(times):.1f}"))
    print_table(first_byte, text_columns=1)

    memory = [("memory scenario", "server", "RSS before MB", "peak MB", "growth MB", "MB/s")]
    for entry in memories:
        total_bytes = sum(run.bytes for run in entry.runs)
        memory.append((entry.scenario, entry.server, f"{entry.rss_before_kib * 1024 / MB:.1f}",
                       f"{entry.hwm_kib * 1024 / MB:.1f}", f"{entry.growth_mb:.1f}",
                       f"{total_bytes / MB / entry.wall_seconds:.1f}"))
    print_table(memory)

    # Exports that should be byte for byte the same (docs: same data, same bytes); a difference is a note.
    sample = f"{SAMPLE_ROWS // 1000}k"
    same_bytes = [("psql csv of fast path SELECT", "pg fast path csv", "sqlite csv"),
                  ("psql ndjson of fast path SELECT", "pg fast path ndjson", "sqlite ndjson"),
                  (f"pg generic csv {sample}", f"sqlite generic csv {sample}"),
                  (f"pg generic ndjson {sample}", f"sqlite generic ndjson {sample}")]
    notes = []
    for names in same_bytes:
        sizes = {name: by_name[name].bytes for name in names if name in by_name}
        if len(set(sizes.values())) > 1:
            notes.append("sizes differ: " + ", ".join(f"{name} {size:,}" for name, size in sizes.items()))
    return notes


def code_version() -> dict[str, str]:
    """The commit measured and any uncommitted changes to the service (others may be editing it)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True).stdout.strip()

    return {"commit": git("rev-parse", "HEAD"), "uncommitted": git("status", "--porcelain", "exporter", "migrations")}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.exports", description=__doc__)
    commands = parser.add_subparsers(dest="command")
    tutorial = commands.add_parser("tutorial", help="serve the per-row tutorial app")
    tutorial.add_argument("--host", default="127.0.0.1")
    tutorial.add_argument("--port", type=int, required=True)
    tutorial.add_argument("--database-url", required=True)
    parser.add_argument("--parts", default=PARTS,
                        help=f"the parts to run, letters of {PARTS} (a, b: psql; c, d: tutorial; e, f: memory)")
    args = parser.parse_args(argv)
    if args.command == "tutorial":
        uvicorn.run(create_tutorial_app(args.database_url), host=args.host, port=args.port, log_level="warning")
        return 0
    if unknown := set(args.parts) - set(PARTS):
        parser.error(f"--parts: unknown part(s) {''.join(sorted(unknown))}; the parts are {PARTS}")

    results: dict[str, Any] = {
        "started_at": datetime.now(UTC).isoformat(),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "rows": ROWS, "sample_rows": SAMPLE_ROWS, "big_rows": BIG_ROWS,
        "units": "seconds, bytes, KiB (memory); psql run bytes come from an untimed sizing run",
        "code": code_version(),
        "parts": args.parts,
        "load_average": {"start": os.getloadavg()},
    }
    cases, memories, failures = run_benchmarks(results, args.parts)
    notes = print_report(cases, memories)
    results |= {"cases": [case.to_json() for case in cases], "memory": [entry.to_json() for entry in memories],
                "notes": notes, "failures": failures, "code_at_end": code_version()}
    results["load_average"]["end"] = os.getloadavg()
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    for line in notes:
        print(f"note: {line}")
    for failure in failures:
        print(f"FAILED: {failure}", file=sys.stderr)
    note(f"raw numbers in {RESULTS.relative_to(REPO)}")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
