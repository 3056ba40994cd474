"""`python -m tests.bench.proxy`: /proxy throughput and server memory, against nginx as the upstream and as a proxy.

One nginx (sendfile) serves the 2 GiB file of tests.bench.files as the upstream. curl downloads it to /dev/null
directly, through a second nginx with `proxy_pass` (proxy_buffering off: the reference; and on), through the
tutorial httpx relay (aiter_bytes into a StreamingResponse, under uvicorn with uvloop and httptools, as `exporter
serve` runs; with glibc's default heap thresholds, and with the service's, see server.keep_freed_heap), and through
`exporter serve`'s /proxy. Rounds alternate over all cases; the table gives the median MB/s, the ratio to the
reference, and the server's peak RSS growth per download (VmRSS before, VmHWM after, the peak reset through
/proc/PID/clear_refs). Then a client reading at 1 MB/s for SLOW_SECONDS through each relay: the relay's peak RSS
growth, and how much the upstream sent for that request (its access log's $bytes_sent, written when the relay closes
the upstream request), which shows whether the upstream was paused or read ahead. Needs nginx (Debian's
nginx-light). Timings are reported, never asserted: the run exits 1 only if a download fails.

`python -m tests.bench.proxy tutorial --port P --upstream URL [--keep-freed-heap]` serves the tutorial relay.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.bench.files import (
    FILE_BYTES,
    FILE_NAME,
    Result,
    big_file,
    download,
    free_port,
    nginx_command,
    nginx_config,
    running,
    status_kib,
)

REPO = Path(__file__).resolve().parents[2]
WORK = REPO / "var" / "bench-proxy"
EXPORTER = Path(sys.executable).with_name("exporter")
REFERENCE = "nginx proxy_pass, buffering off"
RUNS = 7
SLOW_SECONDS = 15


@dataclass
class Case:
    name: str
    pid: int
    url: str
    relay: bool  # a proxy in front of the upstream (measured with a slow client too)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.proxy")
    commands = parser.add_subparsers(dest="command")
    tutorial = commands.add_parser("tutorial", help="serve the tutorial httpx relay")
    tutorial.add_argument("--port", type=int, required=True)
    tutorial.add_argument("--upstream", required=True)
    tutorial.add_argument("--keep-freed-heap", action="store_true", help="with the service's heap thresholds")
    parser.add_argument("--runs", type=int, default=RUNS)
    parser.add_argument("--slow-seconds", type=int, default=SLOW_SECONDS)
    args = parser.parse_args(argv)
    if args.command == "tutorial":
        serve_tutorial(args.port, args.upstream, args.keep_freed_heap)
        return 0

    if not shutil.which("nginx"):
        print("nginx is not installed: it is this benchmark's upstream (apt-get install nginx-light)", file=sys.stderr)
        return 1
    WORK.mkdir(parents=True, exist_ok=True)
    path = big_file()
    try:
        with ExitStack() as stack:
            upstream_pid, upstream, access_log = stack.enter_context(nginx_upstream(path.parent))
            cases = [Case("nginx direct (the upstream, sendfile)", upstream_pid, f"{upstream}/{FILE_NAME}", False)]
            for buffering in ("off", "on"):
                pid, url = stack.enter_context(nginx_proxy(upstream, buffering))
                cases.append(Case(f"nginx proxy_pass, buffering {buffering}", pid, url, True))
            pid, url = stack.enter_context(tutorial_relay(upstream))
            cases.append(Case("tutorial httpx relay (aiter_bytes, StreamingResponse)", pid, url, True))
            pid, url = stack.enter_context(tutorial_relay(upstream, keep_freed_heap=True))
            cases.append(Case("tutorial httpx relay, with the service's heap thresholds", pid, url, True))
            pid, url = stack.enter_context(exporter(upstream))
            cases.append(Case("**exporter /proxy** (aiter_raw, 256 KiB reads)", pid, url, True))
            results = measure(cases, args.runs)
            slow = [(case.name, *slow_client(case, args.slow_seconds, access_log)) for case in cases
                    if case.relay and "buffering on" not in case.name]
    except subprocess.CalledProcessError as exc:
        print(f"a download failed: {exc}", file=sys.stderr)
        return 1
    print_tables(results, slow, args.slow_seconds)
    return 0


def measure(cases: list[Case], runs: int) -> list[Result]:
    """Round-robin over the cases, so that a machine that speeds up or slows down affects them all alike."""
    results = [Result(case.name, [], []) for case in cases]
    for case in cases:
        download(case.url)  # warm-up: the page cache, connections, each server's first-request work
    for _ in range(runs):
        for result, case in zip(results, cases, strict=True):
            before = status_kib(case.pid, "VmRSS")
            Path(f"/proc/{case.pid}/clear_refs").write_text("5")  # reset VmHWM to the current RSS
            size, seconds = download(case.url)
            result.rss_growth_mib.append((status_kib(case.pid, "VmHWM") - before) / 1024)
            assert size == FILE_BYTES, (case.name, size)
            result.mb_per_second.append(size / seconds / 1e6)
    for result in results:
        print(f"{result.name}: " + ", ".join(f"{v:,.0f}" for v in result.mb_per_second) + " MB/s", file=sys.stderr)
    return results


def slow_client(case: Case, seconds: int, access_log: Path) -> tuple[float, float | None, float]:
    """curl reading at 1 MB/s for `seconds`: (MB the client got, MB the upstream sent for it or None if the relay
    had not closed the upstream request 5 s after the client left, the relay's peak RSS growth in MiB)."""
    logged = len(access_log.read_text().splitlines())
    before = status_kib(case.pid, "VmRSS")
    Path(f"/proc/{case.pid}/clear_refs").write_text("5")
    curl = subprocess.run(["curl", "-sS", "--limit-rate", "1M", "--max-time", str(seconds), "-o", "/dev/null",
                           "-w", "%{size_download}", case.url], capture_output=True, text=True)
    if curl.returncode != 28:  # CURLE_OPERATION_TIMEDOUT: stopped by --max-time, as intended
        raise subprocess.CalledProcessError(curl.returncode, curl.args, curl.stdout, curl.stderr)
    growth = (status_kib(case.pid, "VmHWM") - before) / 1024
    deadline = time.monotonic() + 5
    while len(lines := access_log.read_text().splitlines()) == logged and time.monotonic() < deadline:
        time.sleep(0.1)
    sent = int(lines[-1]) / 1e6 if len(lines) > logged else None
    return int(curl.stdout) / 1e6, sent, growth


def print_tables(results: list[Result], slow: list[tuple[str, float, float | None, float]], slow_seconds: int
                 ) -> None:
    reference = next(r.median for r in results if r.name == REFERENCE)
    print(f"\n{FILE_BYTES // 1024**3} GiB file from nginx, curl to /dev/null, median of {len(results[0].mb_per_second)}"
          f" rounds, {os.cpu_count()} CPUs\n")
    print(f"| case | MB/s | vs {REFERENCE} | peak RSS growth |")
    print("| --- | --- | --- | --- |")
    for r in results:
        print(f"| {r.name} | {r.median:,.0f} | {r.median / reference:.2f} | {max(r.rss_growth_mib):.1f} MiB |")
    print(f"\nA client reading at 1 MB/s for {slow_seconds} s\n")
    print("| relay | client got | upstream sent | peak RSS growth |")
    print("| --- | --- | --- | --- |")
    for name, got, sent, growth in slow:
        upstream = f"{sent:.1f} MB" if sent is not None else "(request still open 5 s after the client left)"
        print(f"| {name} | {got:.1f} MB | {upstream} | {growth:.1f} MiB |")


@contextmanager
def nginx_upstream(directory: Path) -> Iterator[tuple[int, str, Path]]:
    """The upstream: nginx with sendfile serving `directory`; yields its pid, base URL and access log, one line
    per request with the bytes it sent."""
    port, prefix = free_port(), WORK / "nginx-upstream"
    access_log = prefix / "access.log"
    config = nginx_config(prefix, f"""
    sendfile on;
    tcp_nopush on;
    log_format sent '$bytes_sent';
    server {{
        access_log {access_log} sent;
        listen 127.0.0.1:{port};
        root {directory};
    }}""")
    base = f"http://127.0.0.1:{port}"
    access_log.write_text("")
    with running("nginx-upstream", nginx_command(prefix, config), f"{base}/{FILE_NAME}") as pid:
        yield pid, base, access_log


@contextmanager
def nginx_proxy(upstream: str, buffering: str) -> Iterator[tuple[int, str]]:
    """nginx proxy_pass to `upstream` with pooled HTTP/1.1 connections, in its own process."""
    port, prefix = free_port(), WORK / f"nginx-proxy-{buffering}"
    config = nginx_config(prefix, f"""
    upstream origin {{
        server {upstream.removeprefix("http://")};
        keepalive 8;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering {buffering};
        }}
    }}""")
    url = f"http://127.0.0.1:{port}/{FILE_NAME}"
    with running(f"nginx-proxy-{buffering}", nginx_command(prefix, config), url) as pid:
        yield pid, url


@contextmanager
def tutorial_relay(upstream: str, keep_freed_heap: bool = False) -> Iterator[tuple[int, str]]:
    port = free_port()
    command = [sys.executable, "-m", "tests.bench.proxy", "tutorial", "--port", str(port), "--upstream", upstream,
               *(["--keep-freed-heap"] if keep_freed_heap else [])]
    url = f"http://127.0.0.1:{port}/{FILE_NAME}"
    with running("tutorial-relay" + ("-heap" if keep_freed_heap else ""), command, url) as pid:
        yield pid, url


def serve_tutorial(port: int, upstream: str, keep_freed_heap: bool) -> None:
    """The relay most tutorials show: one shared AsyncClient, aiter_bytes() into a StreamingResponse; with
    `keep_freed_heap`, after the call `exporter serve` makes first."""
    import httpx
    import uvicorn
    from starlette.applications import Starlette
    from starlette.background import BackgroundTask
    from starlette.requests import Request
    from starlette.responses import StreamingResponse
    from starlette.routing import Route

    from exporter.cli.serve import keep_freed_heap as keep_heap

    if keep_freed_heap:
        keep_heap()
    client = httpx.AsyncClient(base_url=upstream)

    async def relay(request: Request) -> StreamingResponse:
        upstream_request = client.build_request(request.method, request.url.path)
        response = await client.send(upstream_request, stream=True)
        headers = {k: v for k, v in response.headers.items() if k in ("content-type", "content-length")}
        return StreamingResponse(response.aiter_bytes(), status_code=response.status_code, headers=headers,
                                 background=BackgroundTask(response.aclose))

    uvicorn.run(Starlette(routes=[Route("/{name}", relay, methods=["GET", "HEAD"])]), host="127.0.0.1", port=port,
                log_level="warning")


@contextmanager
def exporter(upstream: str) -> Iterator[tuple[int, str]]:
    """`exporter serve` with `upstream` declared as [upstreams.bench], on a migrated SQLite database (so that its
    job workers idle rather than retry)."""
    port = free_port()
    config = WORK / "exporter.toml"
    config.write_text(f'[upstreams.bench]\nbase_url = "{upstream}"\n')
    env = {"EXPORTER_CONFIG": str(config), "EXPORTER_AUTH": "off",
           "EXPORTER_DATABASE_URL": f"sqlite+aiosqlite:///{WORK / 'exporter.db'}"}
    subprocess.run([str(EXPORTER), "migrate"], env={**os.environ, **env}, check=True, capture_output=True)
    url = f"http://127.0.0.1:{port}/proxy/bench/{FILE_NAME}"
    with running("exporter", [str(EXPORTER), "serve", "--port", str(port)], url, env) as pid:
        yield pid, url


if __name__ == "__main__":
    raise SystemExit(main())
