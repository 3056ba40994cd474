"""`python -m tests.bench.responsive`: how promptly the service answers a balancer's probes and a refused download
while 20 Parquet exports run, against the same probes with nothing running.

Seeds `exporter_bench_responsive` (ROWS `orders` rows), starts `exporter serve` from this checkout (20 export
slots, the PostgreSQL default), then alternates idle and loaded rounds. A loaded round keeps LOADERS clients
downloading `orders.parquet` at full speed (each starts another as soon as one ends), so every export slot is
taken. In every round a prober sends, one after the other on fresh connections as a balancer does, GET /healthz,
GET /readyz and GET `orders.parquet?limit=1` (a `503 busy` while the slots are full; a 200 when a loader was
between two downloads, not counted). Prints p50, p99 and max of each, each loaded figure's ratio to its idle
reference (the loaded time over the idle time, so above 1 is slower), and the event loop's lag as the server's
`exporter_event_loop_lag_seconds` shows it. Reported, never asserted: the run exits 1 only if a probe fails.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.bench.exports import PG_SERVER_URL, bench_env, create_pg_database, note
from tests.servers import free_port

REPO = Path(__file__).resolve().parents[2]
WORK = REPO / "var" / "bench-responsive"
DATABASE = "exporter_bench_responsive"
PG_URL = f"{PG_SERVER_URL}/{DATABASE}"
ROWS = 500_000
LOADERS = 20
ROUNDS = 4  # idle and loaded, alternating
PROBES = 100  # of each kind per round
PROBE_PAUSE_SECONDS = 0.02  # between two probe cycles, as a balancer probes now and then, not flat out
PROBES_ = {"/healthz": "healthz", "/readyz": "readyz", "/exports/orders.parquet?limit=1": "503 busy"}
LAG = re.compile(r"^exporter_event_loop_lag_seconds (\S+)$", re.MULTILINE)


def exporter(*args: str) -> list[str]:
    """The console script of this checkout (the installed `exporter` may be another checkout's)."""
    return [sys.executable, "-m", "exporter.cli", *args]


def server_env() -> dict[str, str]:
    return bench_env(EXPORTER_DATABASE_URL=PG_URL, PYTHONPATH=str(REPO), EXPORTER_JOB_WORKERS="0",
                     EXPORTER_LOG_FORMAT="text")


@dataclass
class Round:
    loaded: bool
    seconds: dict[str, list[float]] = field(default_factory=lambda: {name: [] for name in PROBES_.values()})
    busy_missed: int = 0  # `?limit=1` found a free slot (a loader between two downloads)
    lag_seconds: list[float] = field(default_factory=list)


@contextmanager
def exporter_serve(port: int) -> Iterator[subprocess.Popen[bytes]]:
    WORK.mkdir(parents=True, exist_ok=True)
    log = (WORK / "exporter.log").open("wb")
    server = subprocess.Popen([*exporter("serve", "--port", str(port))], cwd=REPO, env=server_env(), stdout=log,
                              stderr=log)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                raise RuntimeError(f"exporter serve did not start; see {WORK / 'exporter.log'}")
            time.sleep(0.1)
        yield server
    finally:
        server.terminate()
        server.wait(timeout=60)
        log.close()


@contextmanager
def loaders(url: str, count: int) -> Iterator[list[str]]:
    """`count` clients downloading the whole Parquet file over and over, until the block ends; their errors."""
    stop = threading.Event()
    errors: list[str] = []
    running: set[subprocess.Popen[str]] = set()
    lock = threading.Lock()

    def load() -> None:
        while not stop.is_set():
            with lock:
                if stop.is_set():
                    return
                curl = subprocess.Popen(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}",
                                         f"{url}/exports/orders.parquet"], stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True)
                running.add(curl)
            status, stderr = curl.communicate()
            with lock:
                running.discard(curl)
            if status == "503":  # busy: a probe took the slot while this loader was between two downloads
                time.sleep(0.05)
            elif status != "200" and not stop.is_set():
                errors.append(f"loader: HTTP {status}: {stderr.strip()}")
                time.sleep(0.5)

    threads = [threading.Thread(target=load, daemon=True) for _ in range(count)]
    for thread in threads:
        thread.start()
    try:
        yield errors
    finally:
        with lock:
            stop.set()
            for curl in running:
                curl.terminate()
        for thread in threads:
            thread.join(timeout=60)


# One client, no keep-alive: each probe opens its own connection, as a balancer's does. httpx.get() would build a
# client per call, with an SSL context, which alone took ~20 ms and hid the server's own figures.
PROBER = httpx.Client(timeout=60, limits=httpx.Limits(max_keepalive_connections=0))


def probe(url: str, current: Round) -> None:
    for path, name in PROBES_.items():
        started = time.perf_counter()
        response = PROBER.get(url + path)
        elapsed = time.perf_counter() - started
        if name == "503 busy":
            if response.status_code == 200:
                current.busy_missed += 1
                continue
            if response.status_code != 503 or response.json()["error"]["code"] != "busy":
                raise RuntimeError(f"{path}: HTTP {response.status_code} {response.text[:200]}")
            if not current.loaded:
                raise RuntimeError(f"{path}: busy with nothing running")
        elif response.status_code != 200:
            raise RuntimeError(f"{path}: HTTP {response.status_code} {response.text[:200]}")
        current.seconds[name].append(elapsed)


def lag_seconds(url: str) -> float | None:
    found = LAG.search(PROBER.get(url + "/metrics").text)
    return float(found.group(1)) if found else None


def run_round(url: str, loaded: bool, probes: int, has_lag: bool) -> Round:
    current = Round(loaded)
    if loaded:
        with loaders(url, LOADERS) as errors:
            wait_for_full_slots(url)
            for _ in range(probes):
                probe(url, current)
                if has_lag and (lag := lag_seconds(url)) is not None:
                    current.lag_seconds.append(lag)
                time.sleep(PROBE_PAUSE_SECONDS)
        if errors:
            raise RuntimeError("; ".join(errors[:3]))
        return current
    time.sleep(2)  # the last loaded round's downloads end
    for _ in range(probes):
        probe(url, current)
        if has_lag and (lag := lag_seconds(url)) is not None:
            current.lag_seconds.append(lag)
        time.sleep(PROBE_PAUSE_SECONDS)
    return current


def wait_for_full_slots(url: str) -> None:
    deadline = time.monotonic() + 60
    while httpx.get(f"{url}/exports/orders.parquet?limit=1", timeout=60).status_code != 503:
        if time.monotonic() > deadline:
            raise RuntimeError("the loaders never filled the export slots")
        time.sleep(0.1)


def percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


def print_report(rounds: list[Round], probes: int) -> None:
    def joined(loaded: bool, name: str) -> list[float]:
        return [s for r in rounds if r.loaded == loaded for s in r.seconds[name]]

    print(f"{LOADERS} Parquet exports of {ROWS:,} rows running (loaded) against none (idle); "
          f"{sum(r.loaded for r in rounds)} rounds of each, {probes} probes of each kind per round")
    print(f"{'probe':<10} {'state':<7} {'n':>5} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'p99 ratio':>10}")
    for name in PROBES_.values():
        idle = joined(False, name)
        for loaded in (False, True):
            values = joined(loaded, name)
            if not values:
                print(f"{name:<10} {'loaded' if loaded else 'idle':<7} {0:>5}")
                continue
            ratio = f"{percentile(values, 0.99) / percentile(idle, 0.99):.1f}" if loaded and idle else ""
            print(f"{name:<10} {'loaded' if loaded else 'idle':<7} {len(values):>5} "
                  f"{ms(statistics.median(values)):>8} {ms(percentile(values, 0.99)):>8} {ms(max(values)):>8} "
                  f"{ratio:>10}")
    missed = sum(r.busy_missed for r in rounds if r.loaded)
    print(f"busy probes that found a free slot (a loader between two downloads; not counted): {missed}")
    for loaded in (False, True):
        lags = [lag for r in rounds if r.loaded == loaded for lag in r.lag_seconds]
        state = "loaded" if loaded else "idle"
        if lags:
            print(f"event loop lag, {state}: p50 {ms(statistics.median(lags))} ms, max {ms(max(lags))} ms "
                  f"(exporter_event_loop_lag_seconds, read after each probe cycle)")
        else:
            print(f"event loop lag, {state}: not reported (no exporter_event_loop_lag_seconds)")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.responsive", description=__doc__)
    parser.add_argument("--rounds", type=int, default=ROUNDS, help="idle and loaded rounds, each")
    parser.add_argument("--probes", type=int, default=PROBES, help="of each kind per round")
    parser.add_argument("--skip-seed", action="store_true", help="reuse the database of the last run")
    args = parser.parse_args(argv)
    if not args.skip_seed:
        create_pg_database(DATABASE)
        subprocess.run(exporter("migrate"), cwd=REPO, env=server_env(), check=True, capture_output=True)
        note(f"seeding {DATABASE} with {ROWS:,} rows")
        subprocess.run(exporter("seed-demo", "--rows", str(ROWS)), cwd=REPO, env=server_env(), check=True,
                       stdout=subprocess.DEVNULL)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    rounds: list[Round] = []
    with exporter_serve(port):
        httpx.get(f"{url}/exports/orders.parquet?limit=10", timeout=60)  # first-request set-up, untimed
        has_lag = lag_seconds(url) is not None  # a version of the service without the metric
        for number in range(args.rounds):
            for loaded in (False, True):
                note(f"round {number + 1}: {'loaded' if loaded else 'idle'}")
                rounds.append(run_round(url, loaded, args.probes, has_lag))
    print_report(rounds, args.probes)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
