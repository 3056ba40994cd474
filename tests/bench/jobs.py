"""`python -m tests.bench.jobs`: export jobs against the same export streamed, job events across replicas, and
server memory while jobs run (issue 8).

Seeds its own PostgreSQL database with ROWS orders (tests.bench.exports' helpers), starts `exporter serve`
processes on 127.0.0.1 and measures, each against a reference taken in the same run:

1. a ROWS-row CSV job, from POST /jobs to its `succeeded` event, against `curl` of the same export to /dev/null,
   alternating run by run, on the COPY fast path and (on SAMPLE_ROWS rows, as it is several times slower) on
   the generic path, with the CPU time each run cost the server and the database (target: job/stream ≤ 1.1);
2. when a job's events arrive on a replica that does not run it, woken by LISTEN/NOTIFY, and on one whose LISTEN
   connection cannot connect (so it polls), against a stream on the replica that runs the job (woken in-process)
   and against the job's own started_at / finished_at (one machine, one clock);
3. a server's peak RSS growth (VmHWM, reset through /proc/PID/clear_refs, and VmRSS sampled) while 4 jobs run
   at once, against 4 concurrent streamed exports of the same size on a second server without workers.

Prints tables and writes every raw number to bench-jobs-results.json. Timings are reported, never asserted:
the run exits 1 only if a job or an export fails.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import statistics
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from httpx_sse import aconnect_sse

from tests.bench.exports import (
    MB,
    PG_SERVER_URL,
    PSQL,
    REPO,
    ROWS,
    SAMPLE_ROWS,
    WORK,
    Case,
    Memory,
    Run,
    Server,
    bench_env,
    code_version,
    create_pg_database,
    curl,
    curl_args,
    exporter_server,
    measure,
    measure_memory,
    migrate_and_seed,
    note,
    parse_curl,
    print_table,
)

DATABASE = "exporter_bench_jobs"
PG_URL = f"{PG_SERVER_URL}/{DATABASE}"
# SQLAlchemy's asyncpg dialect takes this URL parameter for itself, but asyncpg.connect() sends it to the server
# as a setting, which PostgreSQL rejects: the replica's pool works, its LISTEN connection never connects, and its
# event streams fall back to polling. The service is not changed for it.
NO_LISTEN = "?prepared_statement_cache_size=100"
JOBS_DIR = REPO / "var" / "bench-jobs"
RESULTS = REPO / "bench-jobs-results.json"
EXPORT_PATH = "/exports/orders.csv"
JOB_BODY = {"dataset": "orders", "format": "csv", "params": {}}
TERMINAL = ("succeeded", "failed", "cancelled", "expired")
WARM_UP_ROWS = 50_000
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
CONCURRENT_JOBS = 4
SAMPLE_SECONDS = 0.02  # VmRSS sampling interval during the memory loads
SETTLE_SECONDS = 1.0  # before an idle RSS is read: the previous load's jobs are deleted, its streams closed
JOB_TIMEOUT_SECONDS = 300.0
RUNS = 7  # job/stream rounds on the COPY path, and jobs watched for event latency
GENERIC_RUNS = 5  # on the generic path, which is several times slower, of its first --generic-rows rows
MEMORY_RUNS = 3


# --- jobs over HTTP -----------------------------------------------------------------------------------------


@dataclass
class MeasuredRun(Run):
    """A run with the CPU time it cost the server process and the database's backends (all of its sessions:
    the export's and the jobs' bookkeeping), which the machine's other load does not change much."""

    server_cpu_seconds: float | None = None
    postgres_cpu_seconds: float | None = None


@dataclass
class JobRun(MeasuredRun):
    """A job's run: `seconds` from the POST to its terminal event; from the job's own timestamps, the time it
    waited to be claimed and the time it ran (claim to finish)."""

    queued_seconds: float | None = None
    running_seconds: float | None = None


def seconds_between(job: dict[str, Any], start: str, end: str) -> float | None:
    if job.get(start) is None or job.get(end) is None:
        return None
    return (datetime.fromisoformat(job[end]) - datetime.fromisoformat(job[start])).total_seconds()


async def run_job(client: httpx.AsyncClient, base: str, body: dict[str, Any]) -> JobRun:
    """Submit a job, follow its event stream to the terminal event, then DELETE it (its file goes at once)."""
    started = time.perf_counter()
    job_id = None
    try:
        response = await client.post(f"{base}/jobs", json=body)
        if response.status_code != 202:
            return JobRun(0.0, None, 0, f"POST /jobs: HTTP {response.status_code} {response.text}")
        job_id = response.json()["id"]
        async with aconnect_sse(client, "GET", f"{base}/jobs/{job_id}/events") as source:
            async for event in source.aiter_sse():
                if event.event in TERMINAL:
                    seconds = time.perf_counter() - started
                    job = event.json()
                    break
            else:
                return JobRun(time.perf_counter() - started, None, 0, "event stream ended without a terminal event")
    except httpx.HTTPError as exc:
        return JobRun(time.perf_counter() - started, None, 0, f"{type(exc).__name__}: {exc}")
    finally:
        if job_id is not None:
            await client.delete(f"{base}/jobs/{job_id}")
    error = None if job["state"] == "succeeded" else f"job {job['state']}: {job.get('error')}"
    size = job["result"]["size"] if job["result"] else 0
    return JobRun(seconds, None, size, error, queued_seconds=seconds_between(job, "created_at", "started_at"),
                  running_seconds=seconds_between(job, "started_at", "finished_at"))


def job_body(rows: int | None) -> dict[str, Any]:
    return JOB_BODY if rows is None else JOB_BODY | {"params": {"limit": str(rows)}}


async def run_jobs(base: str, count: int, rows: int | None = None) -> list[Run]:
    async with httpx.AsyncClient(timeout=JOB_TIMEOUT_SECONDS) as client:
        return list(await asyncio.gather(*(run_job(client, base, job_body(rows)) for _ in range(count))))


def one_job(server: Server, rows: int | None = None) -> Run:
    return asyncio.run(run_jobs(server.url, 1, rows))[0]


def one_stream(server: Server, rows: int | None = None) -> Run:
    return curl(server.url + EXPORT_PATH + ("" if rows is None else f"?limit={rows}"), "-f")


def concurrent_jobs(server: Server) -> list[Run]:
    return asyncio.run(run_jobs(server.url, CONCURRENT_JOBS))


def concurrent_streams(server: Server) -> list[Run]:
    processes = [subprocess.Popen(curl_args(server.url + EXPORT_PATH, "-f"), stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for _ in range(CONCURRENT_JOBS)]
    outputs = [process.communicate() for process in processes]
    return [parse_curl(process.returncode, *output) for process, output in zip(processes, outputs, strict=True)]


# --- 1. job against stream ----------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of a process; 0 if it has gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def backends_cpu_seconds() -> dict[int, float]:
    """CPU time of each PostgreSQL backend connected to the benchmark's database (same machine)."""
    query = f"SELECT pid FROM pg_stat_activity WHERE datname = '{DATABASE}'"
    done = subprocess.run([*PSQL, "-d", "postgres", "-At", "-c", query], capture_output=True, text=True, check=True)
    return {pid: cpu_seconds(pid) for pid in map(int, done.stdout.split())}


def counting_cpu(server: Server, fetch: Callable[[], Run]) -> Callable[[], Run]:
    """`fetch`, with the CPU time the run cost the server and the database's backends added to its run."""
    def counted() -> Run:
        server_before, backends_before = cpu_seconds(server.process.pid), backends_cpu_seconds()
        run = fetch()
        server_cpu = cpu_seconds(server.process.pid) - server_before
        postgres_cpu = sum(seconds - backends_before.get(pid, 0.0) for pid, seconds in backends_cpu_seconds().items())
        measured = run if isinstance(run, MeasuredRun) else MeasuredRun(**asdict(run))
        return replace(measured, server_cpu_seconds=server_cpu, postgres_cpu_seconds=postgres_cpu)

    return counted


def job_and_stream(path: str, server: Server, runs: int, rows: int) -> tuple[Case, Case]:
    """A short warm-up of each (the first job of the process starts its worker's threads), then `runs`
    alternating rounds of the first `rows` rows."""
    warm_up = [Case(f"stream {path}", WARM_UP_ROWS, lambda: one_stream(server, WARM_UP_ROWS)),
               Case(f"job {path}", WARM_UP_ROWS, lambda: one_job(server, WARM_UP_ROWS))]
    measure(f"{path} warm-up", warm_up, 1)
    limit = None if rows >= ROWS else rows
    stream = Case(f"stream {path}", rows, counting_cpu(server, lambda: one_stream(server, limit)))
    job = Case(f"job {path}", rows, counting_cpu(server, lambda: one_job(server, limit)), reference=stream.name)
    measure(path, [stream, job], runs)
    return stream, job


def job_stream_failures(stream: Case, job: Case) -> list[str]:
    failures = stream.failures() + job.failures()
    if job.bytes != stream.bytes:
        failures.append(f"{job.name}: result of {job.bytes:,} bytes, the stream sent {stream.bytes:,}")
    return failures


# --- 2. event latency across replicas -----------------------------------------------------------------------


@dataclass
class Arrival:
    """A live event as one replica's stream delivered it; `at` is the wall clock (time.time()) on arrival."""

    replica: str
    job_id: str
    event_id: int
    kind: str
    at: float
    changed_at: float | None  # for a state change: the job's started_at or finished_at


def changed_at(kind: str, data: dict[str, Any]) -> float | None:
    """The time the job stamped the change an event reports, just before committing it."""
    stamp = None
    if kind == "state" and data.get("state") == "running":
        stamp = data.get("started_at")
    elif kind in TERMINAL:
        stamp = data.get("finished_at")
    return None if stamp is None else datetime.fromisoformat(stamp).timestamp()


async def watch(client: httpx.AsyncClient, replica: str, base: str, job_id: str, arrivals: list[Arrival]) -> None:
    """Follow a job's stream on one replica to its end, noting each live event (not the opening snapshot)."""
    snapshot_seen = False
    async with aconnect_sse(client, "GET", f"{base}/jobs/{job_id}/events") as source:
        async for event in source.aiter_sse():
            at = time.time()
            if not event.data:
                continue  # the `retry:` field alone
            if not snapshot_seen:
                snapshot_seen = True
                continue
            arrivals.append(Arrival(replica, job_id, int(event.id), event.event, at,
                                    changed_at(event.event, event.json())))
            if event.event in TERMINAL:
                return


async def watch_jobs(runner: Server, replicas: dict[str, Server], count: int) -> tuple[list[Arrival], list[str]]:
    """Submit `count` jobs on `runner` at once (it runs one at a time, so the others wait in the queue and their
    queued → running changes happen live), with each job's stream open on every replica; then delete them."""
    arrivals: list[Arrival] = []
    failures: list[str] = []
    async with httpx.AsyncClient(timeout=JOB_TIMEOUT_SECONDS) as client:
        watchers = []
        job_ids = []
        for _ in range(count):
            response = await client.post(f"{runner.url}/jobs", json=JOB_BODY)
            response.raise_for_status()
            job_ids.append(job_id := response.json()["id"])
            watchers += [asyncio.create_task(watch(client, name, server.url, job_id, arrivals))
                         for name, server in replicas.items()]
        await asyncio.gather(*watchers)
        for job_id in job_ids:
            job = (await client.delete(f"{runner.url}/jobs/{job_id}")).json()
            if job["state"] != "expired":  # a DELETE of a succeeded job expires it
                failures.append(f"latency job {job_id}: {job['state']}, {job.get('error')}")
    return arrivals, failures


@dataclass
class Latency:
    """One replica's event delivery: delays behind the runner's own stream, and behind the change's timestamp."""

    replica: str
    wake_up: str
    events: int = 0  # live events its streams delivered
    behind_runner_ms: list[float] = field(default_factory=list)
    behind_change_ms: list[float] = field(default_factory=list)


def latencies(arrivals: list[Arrival], runner: str, wake_ups: dict[str, str]) -> list[Latency]:
    at_runner = {(a.job_id, a.event_id): a.at for a in arrivals if a.replica == runner}
    result = []
    for replica, wake_up in wake_ups.items():
        latency = Latency(replica, wake_up)
        for arrival in (a for a in arrivals if a.replica == replica):
            latency.events += 1
            reference = at_runner.get((arrival.job_id, arrival.event_id))
            if reference is not None and replica != runner:
                latency.behind_runner_ms.append((arrival.at - reference) * 1000)
            if arrival.changed_at is not None:
                latency.behind_change_ms.append((arrival.at - arrival.changed_at) * 1000)
        result.append(latency)
    return result


def listeners(database: str) -> int:
    """How many sessions LISTEN on `database` now."""
    query = (f"SELECT count(*) FROM pg_stat_activity WHERE datname = '{database}' AND state = 'idle'"
             " AND query ILIKE 'LISTEN %'")
    done = subprocess.run([*PSQL, "-d", "postgres", "-At", "-c", query], capture_output=True, text=True, check=True)
    return int(done.stdout.strip())


# --- 3. memory ----------------------------------------------------------------------------------------------


@contextmanager
def sampled_rss(pid: int) -> Iterator[list[int]]:
    """Sample the process's VmRSS (KiB) every SAMPLE_SECONDS into the yielded list while the block runs."""
    samples: list[int] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(SAMPLE_SECONDS):
            samples.append(rss_kib(pid))

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield samples
    finally:
        stop.set()
        thread.join()


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS in /proc/{pid}/status")


@dataclass
class MemoryRun:
    memory: Memory
    sampled_peak_kib: int

    @property
    def sampled_growth_mb(self) -> float:
        return (self.sampled_peak_kib - self.memory.rss_before_kib) * 1024 / MB


def measure_concurrent(jobs_server: Server, streams_server: Server, rounds: int) -> dict[str, list[MemoryRun]]:
    """One load on each fresh server (its first-use growth), then `rounds` alternating rounds. Two servers, so
    that neither load finds the memory the other one left; streams go to a server without workers."""
    loads: list[tuple[str, Server, Callable[[Server], list[Run]]]] = [
        (f"{CONCURRENT_JOBS} concurrent jobs", jobs_server, concurrent_jobs),
        (f"{CONCURRENT_JOBS} concurrent streams", streams_server, concurrent_streams),
    ]
    runs: dict[str, list[MemoryRun]] = {name: [] for name, _, _ in loads}
    rounds += 1
    for round_number in range(rounds):
        for name, server, load in loads if round_number % 2 == 0 else list(reversed(loads)):
            time.sleep(SETTLE_SECONDS)
            with sampled_rss(server.process.pid) as samples:
                memory = measure_memory(name, server, load)
            runs[name].append(MemoryRun(memory, max(samples, default=memory.rss_before_kib)))
            note(f"[memory] {round_number + 1}/{rounds} {name}: {memory.wall_seconds:.2f} s")
    return runs


def memory_failures(runs: dict[str, list[MemoryRun]], expected_bytes: int) -> list[str]:
    return [f"memory {name}: {run.error or f'short: {run.bytes:,} of {expected_bytes:,} bytes'}"
            for name, entries in runs.items() for entry in entries for run in entry.memory.runs
            if run.error or run.bytes != expected_bytes]


# --- the run ------------------------------------------------------------------------------------------------


def server_env(**settings: str) -> dict[str, str]:
    return bench_env(EXPORTER_DATABASE_URL=PG_URL, EXPORTER_JOBS_DIR=str(JOBS_DIR)) | settings


def run_benchmarks(args: argparse.Namespace, results: dict[str, Any]) -> list[str]:
    """Parts 1-3, each with the servers it needs, stopped when it ends; adds to `results`, returns failures."""
    failures: list[str] = []
    create_pg_database(DATABASE)
    shutil.rmtree(JOBS_DIR, ignore_errors=True)
    WORK.mkdir(parents=True, exist_ok=True)  # the servers' logs
    results["seed_seconds"] = migrate_and_seed("postgresql", PG_URL)

    cases: list[Case] = []
    paths: list[tuple[str, dict[str, str], int, int]] = [("copy", {}, args.runs, ROWS)]
    if args.generic_runs:
        paths.append(("generic", {"EXPORTER_COPY_FAST_PATH": "false"}, args.generic_runs, args.generic_rows))
    for path, settings, runs, rows in paths:
        with exporter_server(f"jobs-{path}", server_env(**settings)) as server:
            stream, job = job_and_stream(path, server, runs, rows)
        cases += [stream, job]
        failures += job_stream_failures(stream, job)
    results["job_vs_stream"] = [case.to_json() for case in cases]

    with ExitStack() as servers:
        runner = servers.enter_context(exporter_server("jobs-runner", server_env(EXPORTER_JOB_WORKERS="1")))
        replica = servers.enter_context(exporter_server("jobs-replica", server_env(EXPORTER_JOB_WORKERS="0")))
        polling = servers.enter_context(exporter_server(
            "jobs-replica-polling", server_env(EXPORTER_JOB_WORKERS="0", EXPORTER_DATABASE_URL=PG_URL + NO_LISTEN)))
        time.sleep(SETTLE_SECONDS)
        listening = listeners(DATABASE)
        note(f"[latency] {listening} LISTEN sessions (expected 2: the runner and one replica)")
        replicas = {"runner": runner, "replica": replica, "replica, LISTEN down": polling}
        arrivals, latency_failures = asyncio.run(watch_jobs(runner, replicas, args.runs))
        failures += latency_failures
    wake_ups = {"runner": "in-process", "replica": "LISTEN/NOTIFY", "replica, LISTEN down": "polling"}
    results["latency"] = {"listen_sessions": listening, "arrivals": [asdict(a) for a in arrivals],
                          "replicas": [asdict(x) for x in latencies(arrivals, "runner", wake_ups)]}

    expected_bytes = next(case.bytes for case in cases if case.name == "stream copy")
    with ExitStack() as servers:
        jobs_server = servers.enter_context(
            exporter_server("jobs-memory", server_env(EXPORTER_JOB_WORKERS=str(CONCURRENT_JOBS))))
        streams_server = servers.enter_context(exporter_server("streams-memory", server_env(EXPORTER_JOB_WORKERS="0")))
        memory = measure_concurrent(jobs_server, streams_server, args.memory_runs)
    failures += memory_failures(memory, expected_bytes)
    results["memory"] = {name: [asdict(run.memory) | {"sampled_peak_kib": run.sampled_peak_kib} for run in runs]
                         for name, runs in memory.items()}

    print_report(cases, latencies(arrivals, "runner", wake_ups), listening, memory)
    return failures


# --- report -------------------------------------------------------------------------------------------------


def ms(values: Sequence[float], pick: Callable[[Sequence[float]], float]) -> str:
    return f"{pick(values):.0f}" if values else "-"


def print_report(cases: list[Case], latency: list[Latency], listening: int,
                 memory: dict[str, list[MemoryRun]]) -> None:
    by_name = {case.name: case for case in cases}
    print("\n1. CSV export: job (POST to its `succeeded` event) against the stream (curl to /dev/null), alternating; "
          f"{os.cpu_count()} CPUs\n")
    table = [("case", "rows", "runs", "median s", "min s", "max s", "MB/s", "queued s", "running s", "server CPU s",
              "postgres CPU s", "job/stream", "per round")]
    for case in cases:
        times = [run.seconds for run in case.runs]
        server_cpu = [run.server_cpu_seconds for run in case.runs
                      if isinstance(run, MeasuredRun) and run.server_cpu_seconds is not None]
        postgres_cpu = [run.postgres_cpu_seconds for run in case.runs
                        if isinstance(run, MeasuredRun) and run.postgres_cpu_seconds is not None]
        jobs = [run for run in case.runs if isinstance(run, JobRun)]
        queued = [run.queued_seconds for run in jobs if run.queued_seconds is not None]
        running = [run.running_seconds for run in jobs if run.running_seconds is not None]
        reference = by_name.get(case.reference or "")
        ratio = rounds = ""
        if reference:
            ratio = f"{case.median_seconds / reference.median_seconds:.2f}"
            paired = [run.seconds / ref.seconds for run, ref in zip(case.runs, reference.runs, strict=True)]
            rounds = f"{statistics.median(paired):.2f}"
        table.append((case.name, f"{case.rows:,}", str(len(times)), f"{statistics.median(times):.2f}",
                      f"{min(times):.2f}", f"{max(times):.2f}", f"{case.bytes / MB / case.median_seconds:.1f}",
                      f"{statistics.median(queued):.3f}" if queued else "",
                      f"{statistics.median(running):.2f}" if running else "", f"{statistics.median(server_cpu):.2f}",
                      f"{statistics.median(postgres_cpu):.2f}", ratio, rounds))
    print_table(table, text_columns=1)
    print("queued / running: the job's own created_at → started_at and started_at → finished_at; CPU: the server "
          "process and\nthe database's backends, from /proc; all medians. job/stream: of the median times "
          "(target ≤ 1.1);\nper round: median of each round's ratio\n")

    print(f"2. event latency: jobs run on `runner`, their streams open on every replica; {listening} sessions "
          "LISTEN (runner and replica)\n")
    delivery = [("replica", "wake-up", "events", "behind runner ms median", "max",
              "state changes", "commit → event ms median", "max")]
    for entry in latency:
        behind, change = entry.behind_runner_ms, entry.behind_change_ms
        delivery.append((entry.replica, entry.wake_up, str(entry.events),
                      ms(behind, statistics.median), ms(behind, max), str(len(change)),
                      ms(change, statistics.median), ms(change, max)))
    print_table(delivery)
    print("behind runner: arrival on the replica minus arrival of the same event on the runner's stream (all live "
          "events);\ncommit → event: arrival minus the job's started_at / finished_at, stamped just before the "
          "change commits\n")

    print(f"3. peak RSS growth of a server while {CONCURRENT_JOBS} {ROWS:,}-row CSV jobs run at once "
          f"(EXPORTER_JOB_WORKERS={CONCURRENT_JOBS}), against\n{CONCURRENT_JOBS} concurrent streams of the same export "
          "on a second server (no workers), alternating\n")
    peaks = [("load", "rounds", "idle RSS MB", "growth MB median", "max", "sampled growth MB max", "wall s median")]
    summary: dict[str, tuple[float, float]] = {}
    for name, runs in memory.items():
        for label, group in ((f"{name}, first on its server", runs[:1]), (name, runs[1:])):
            if not group:
                continue
            growth = [run.memory.growth_mb for run in group]
            wall = [run.memory.wall_seconds for run in group]
            idle_mb = statistics.median(run.memory.rss_before_kib for run in group) * 1024 / MB
            peaks.append((label, str(len(group)), f"{idle_mb:.1f}", f"{statistics.median(growth):.1f}",
                          f"{max(growth):.1f}", f"{max(run.sampled_growth_mb for run in group):.1f}",
                          f"{statistics.median(wall):.2f}"))
            summary[label] = (statistics.median(growth), statistics.median(wall))
    print_table(peaks)
    jobs_wall, streams_wall = (summary.get(name, summary[f"{name}, first on its server"])[1] for name in memory)
    print("growth: VmHWM after the load minus VmRSS before it (the peak reset through clear_refs); sampled: VmRSS "
          f"every {SAMPLE_SECONDS * 1000:.0f} ms.\nwall time jobs/streams: {jobs_wall / streams_wall:.2f}\n")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.jobs", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=RUNS,
                        help="job/stream rounds on the COPY path, and jobs watched for latency (default %(default)s)")
    parser.add_argument("--generic-runs", type=int, default=GENERIC_RUNS,
                        help="job/stream rounds on the generic path; 0 skips it (default %(default)s)")
    parser.add_argument("--generic-rows", type=int, default=SAMPLE_ROWS,
                        help="rows per export on the generic path, several times slower (default %(default)s)")
    parser.add_argument("--memory-runs", type=int, default=MEMORY_RUNS,
                        help="rounds of 4 jobs and 4 streams after the first (default %(default)s)")
    args = parser.parse_args(argv)
    results: dict[str, Any] = {
        "started_at": datetime.now(UTC).isoformat(),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "rows": ROWS, "units": "seconds, bytes, KiB (memory), ms (latency)", "code": code_version(),
        "load_average": {"start": os.getloadavg()},
    }
    started = time.perf_counter()
    failures = run_benchmarks(args, results)
    results |= {"failures": failures, "code_at_end": code_version(), "seconds": time.perf_counter() - started}
    results["load_average"]["end"] = os.getloadavg()
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    for failure in failures:
        print(f"FAILED: {failure}")
    note(f"raw numbers in {RESULTS.relative_to(REPO)}; {results['seconds']:.0f} s")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
