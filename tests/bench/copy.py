"""`python -m tests.bench.copy`: parallel COPY against psql, by number of parts, size and cores.

Seeds its own database (`exporter_bench_copy`, 1M `orders` rows), then, each part alternating its cases run by run:
- parts: psql `\\copy` of the plain table (the reference) against `exporter serve` with EXPORTER_COPY_PARALLEL
  1, 2, 3 and 4, for CSV and NDJSON (reference: PostgreSQL's own row_to_json through COPY); also the service with
  every part buffered in memory (its backend waiting on the socket) instead of spooled to a file, patched here only;
- threshold: exports of N rows (limit=N), serial against two parts, to place EXPORTER_COPY_PARALLEL_MIN_ROWS;
- memory: the service's peak RSS growth for one parallel export, read fast and read at 5 MB/s;
- cores: with `taskset`, PostgreSQL's new backends and the service on one core, then on two; and the CPU each
  part's backend and the service spend per export, from /proc, for the curve on more cores.
Timings are reported, never asserted: the run exits 1 only if an export fails.

`python -m tests.bench.copy bounded --port P` serves the service with the spool replaced by bounded buffers.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from tests.bench.exports import (
    EXPORTER,
    MB,
    NDJSON_COPY_OPTIONS,
    PG_SERVER_URL,
    PLAIN_SELECT,
    PSQL,
    REPO,
    WORK,
    Case,
    Run,
    Server,
    bench_env,
    create_pg_database,
    curl,
    measure,
    migrate_and_seed,
    note,
    serve,
    status_kib,
)

DATABASE = "exporter_bench_copy"
URL = f"{PG_SERVER_URL}/{DATABASE}"
ROWS = 1_000_000
RUNS = 5
PARTS = (1, 2, 3, 4)
THRESHOLD_ROWS = (10_000, 25_000, 50_000, 100_000, 250_000)
RESULTS = REPO / "bench-copy-results.json"
MEASURED: list[Case] = []  # every case, to report failed runs at the end


def timed(label: str, cases: list[Case], runs: int) -> None:
    measure(label, cases, runs)
    MEASURED.extend(cases)


def psql(select: str, options: str, cpus: str | None = None) -> Callable[[], Run]:
    """psql `\\copy (select) to stdout` into /dev/null, wall-clock timed; its size from one untimed run."""
    command = [*PSQL, "-d", DATABASE, "-c", f"\\copy ({select}) to stdout with ({options})"]
    if cpus is not None:
        command = ["taskset", "-c", cpus, *command]
    env = bench_env(PGTZ="UTC")
    size = len(subprocess.run(command, capture_output=True, env=env, check=True).stdout)

    def fetch() -> Run:
        started = time.perf_counter()
        done = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
        return Run(time.perf_counter() - started, None, size,
                   f"psql exit {done.returncode}: {done.stderr}" if done.returncode else None)

    return fetch


def exporter(name: str, cpus: str | None = None, bounded: bool = False, **settings: str) -> Any:
    env = bench_env(EXPORTER_DATABASE_URL=URL, **settings)
    command = ([sys.executable, "-m", "tests.bench.copy", "bounded"] if bounded
               else [str(EXPORTER), "serve", "--host", "127.0.0.1"])
    if cpus is not None:
        command = ["taskset", "-c", cpus, *command]
    return serve(name, command, env, "/exports/orders.csv?limit=10")


def export(server: Server, path: str, *options: str) -> Callable[[], Run]:
    return lambda: curl(server.url + path, *options)


def ratios(cases: Sequence[Case], reference: Case) -> list[dict[str, Any]]:
    rows = []
    for case in cases:
        seconds = case.median_seconds
        first = [run.first_byte_seconds for run in case.runs if run.first_byte_seconds is not None]
        rows.append({"case": case.name, "median_seconds": round(seconds, 3),
                     "rows_per_second": round(case.rows / seconds),
                     "mb_per_second": round(case.bytes / MB / seconds, 1),
                     "ratio": round(reference.median_seconds / seconds, 2),
                     "first_byte_ms": round(statistics.median(first) * 1000, 1) if first else None})
        note(f"  {case.name:58} {seconds:6.2f} s  {case.rows / seconds:12,.0f} rows/s  ratio "
             f"{reference.median_seconds / seconds:5.2f}" + (f"  first byte {rows[-1]['first_byte_ms']} ms"
                                                              if first else ""))
    return rows


def parts_section(runs: int) -> dict[str, Any]:
    with ExitStack() as stack:
        servers = {parts: stack.enter_context(exporter(f"parts-{parts}", EXPORTER_COPY_PARALLEL=str(parts)))
                   for parts in PARTS}
        bounded = stack.enter_context(exporter("bounded-2", bounded=True, EXPORTER_COPY_PARALLEL="2"))
        results = {}
        for fmt, reference in (("csv", Case("psql \\copy plain table, csv", ROWS,
                                             psql(PLAIN_SELECT, "format csv, header"))),
                               ("ndjson", Case("psql COPY row_to_json of the plain table", ROWS,
                                               psql(f"select row_to_json(o) from ({PLAIN_SELECT}) o",
                                                    NDJSON_COPY_OPTIONS)))):
            cases = [reference, *(Case(f"exporter {fmt}, {parts} part{'s' if parts > 1 else ''}", ROWS,
                                       export(server, f"/exports/orders.{fmt}")) for parts, server in servers.items()),
                     Case(f"exporter {fmt}, 2 parts, bounded buffers (no spool)", ROWS,
                          export(bounded, f"/exports/orders.{fmt}"))]
            timed(f"parts {fmt}", cases, runs)
            note(f"{fmt}: against {reference.name}")
            results[fmt] = ratios(cases, reference)
        return results


def threshold_section(runs: int) -> list[dict[str, Any]]:
    results = []
    with exporter("serial", EXPORTER_COPY_PARALLEL="1") as serial, \
            exporter("two-parts", EXPORTER_COPY_PARALLEL="2", EXPORTER_COPY_PARALLEL_MIN_ROWS="1") as parallel:
        for rows in THRESHOLD_ROWS:
            path = f"/exports/orders.csv?limit={rows}"
            cases = [Case(f"serial, {rows:,} rows", rows, export(serial, path)),
                     Case(f"2 parts, {rows:,} rows", rows, export(parallel, path))]
            timed(f"threshold {rows}", cases, runs * 2)
            results.append({"rows": rows, "serial_seconds": cases[0].median_seconds,
                            "parallel_seconds": cases[1].median_seconds,
                            "ratio": round(cases[0].median_seconds / cases[1].median_seconds, 2)})
            note(f"  {rows:>9,} rows: serial {cases[0].median_seconds * 1000:.0f} ms, two parts "
                 f"{cases[1].median_seconds * 1000:.0f} ms, ratio {results[-1]['ratio']}")
    return results


def memory_section() -> dict[str, float]:
    results = {}
    with exporter("memory", EXPORTER_COPY_PARALLEL="2") as server:
        for name, options in (("fast client", ()), ("client at 5 MB/s", ("--limit-rate", "5M"))):
            pid = server.process.pid
            Path(f"/proc/{pid}/clear_refs").write_text("5")
            before = status_kib(pid, "VmRSS")
            run = curl(server.url + "/exports/orders.csv", *options)
            results[name] = round((status_kib(pid, "VmHWM") - before) * 1024 / MB, 1)
            note(f"[memory] {name}: {results[name]:+.1f} MB peak RSS growth, {run.bytes / MB:.0f} MB in "
                 f"{run.seconds:.1f} s")
    return results


def postmaster_pid() -> int:
    found = subprocess.run(["pgrep", "-o", "-x", "postgres"], capture_output=True, text=True, check=True)
    return int(found.stdout.split()[0])


@contextmanager
def backends_on(cpus: str) -> Iterator[None]:
    """New PostgreSQL backends (forked from the postmaster) run on `cpus`; all CPUs again on exit."""
    pid = postmaster_pid()
    subprocess.run(["taskset", "-pc", cpus, str(pid)], check=True, capture_output=True)
    try:
        yield
    finally:
        subprocess.run(["taskset", "-pc", f"0-{(os.cpu_count() or 1) - 1}", str(pid)], check=True,
                       capture_output=True)


def cpu_seconds(pids: Sequence[int]) -> float:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except FileNotFoundError:
            pass
    return total / os.sysconf("SC_CLK_TCK")


def backend_pids() -> list[int]:
    out = subprocess.run([*PSQL, "-d", DATABASE, "-Atc", "SELECT pid FROM pg_stat_activity WHERE application_name ="
                          " 'exporter' AND datname = current_database()"], capture_output=True, text=True,
                         env=bench_env(), check=True)
    return [int(pid) for pid in out.stdout.split()]


def cores_section(runs: int) -> dict[str, Any]:
    """CSV in two parts and psql on one core, then on two; then the CPU time per export of each part's backend
    and of the service."""
    results: dict[str, Any] = {}
    for cpus in ("0", f"0-{(os.cpu_count() or 1) - 1}"):
        with backends_on(cpus), exporter(f"cores-{cpus}", cpus, EXPORTER_COPY_PARALLEL="2") as server:
            cases = [Case(f"psql csv on cpus {cpus}", ROWS, psql(PLAIN_SELECT, "format csv, header", cpus)),
                     Case(f"exporter csv, 2 parts, on cpus {cpus}", ROWS, export(server, "/exports/orders.csv"))]
            timed(f"cores {cpus}", cases, runs)
            note(f"cpus {cpus}:")
            results[cpus] = ratios(cases, cases[0])
    for parts in (1, 2):
        with exporter(f"cpu-{parts}", EXPORTER_COPY_PARALLEL=str(parts)) as server:
            for fmt in ("csv", "ndjson"):
                samples = []
                for _ in range(runs):
                    backends = {pid: cpu_seconds([pid]) for pid in backend_pids()}
                    service = cpu_seconds([server.process.pid])
                    run = curl(f"{server.url}/exports/orders.{fmt}")
                    # A backend that started during the export counts from zero.
                    used = sum(cpu_seconds([pid]) - backends.get(pid, 0.0) for pid in backend_pids())
                    samples.append((used, cpu_seconds([server.process.pid]) - service, run.seconds))
                backend, service, wall = (statistics.median(s[i] for s in samples) for i in range(3))
                results[f"cpu {fmt} {parts} part(s)"] = {"backend_cpu_seconds": backend,
                                                        "service_cpu_seconds": service, "wall_seconds": wall}
                note(f"[cpu] {fmt}, {parts} part(s): backends {backend:.2f} s CPU, service {service:.2f} s CPU, "
                     f"wall {wall:.2f} s")
    return results


def serve_bounded(port: int) -> None:
    """The service with every part's output buffered in memory, as the first part's is: later parts wait on their
    socket once MEMORY_BYTES are unsent, instead of spooling."""
    import uvicorn

    from exporter.cli.serve import app_from_environ
    from exporter.export import parallel

    original = parallel._Output.__init__

    def bounded(self: Any, changed: Any, spooled: bool) -> None:
        original(self, changed, False)

    parallel._Output.__init__ = bounded  # type: ignore[method-assign]
    uvicorn.run(app_from_environ(), host="127.0.0.1", port=port, log_level="warning")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.copy")
    commands = parser.add_subparsers(dest="command")
    bounded = commands.add_parser("bounded", help="serve the service with bounded buffers instead of the spool")
    bounded.add_argument("--port", type=int, required=True)
    parser.add_argument("--runs", type=int, default=RUNS)
    parser.add_argument("--sections", default="parts,threshold,memory,cores")
    parser.add_argument("--reuse", action="store_true", help="keep the database of an earlier run")
    args = parser.parse_args(argv)
    if args.command == "bounded":
        serve_bounded(args.port)
        return 0
    WORK.mkdir(parents=True, exist_ok=True)
    if not args.reuse:
        create_pg_database(DATABASE)
        migrate_and_seed("postgresql", URL, ROWS)
    subprocess.run([*PSQL, "-d", DATABASE, "-c", "VACUUM ANALYZE orders"], check=True, capture_output=True)
    sections = args.sections.split(",")
    results: dict[str, Any] = {"machine": {"cpus": os.cpu_count(), "load": os.getloadavg()}, "rows": ROWS}
    for name, run in (("parts", parts_section), ("threshold", threshold_section), ("cores", cores_section)):
        if name in sections:
            results[name] = run(args.runs)
    if "memory" in sections:
        results["memory"] = memory_section()
    RESULTS.write_text(json.dumps(results, indent=2))
    note(f"wrote {RESULTS}")
    failed = [failure for case in MEASURED for failure in case.failures()]
    for failure in failed:
        note(f"FAILED: {failure}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
