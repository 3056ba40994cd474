"""`python -m tests.bench.files`: /files download speed and server memory, against nginx and FileResponse.

Keeps a 2 GiB file in var/bench-files, starts `exporter serve` once per chunk size, Starlette's FileResponse
(its 64 KiB chunks) under the same uvicorn, and nginx with sendfile when it is installed. Downloads the file
with curl to /dev/null, a warm-up and then RUNS rounds over all servers, and prints the median MB/s, the ratios
to FileResponse and nginx, and the server's peak RSS growth per download (VmHWM after minus VmRSS before, the
peak reset through /proc/PID/clear_refs). `python -m tests.bench.files fileresponse --port P --directory D`
serves the FileResponse app. Timings are reported, never asserted: the run exits 1 only if a download fails.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from exporter.config import DEFAULT_FILE_CHUNK_BYTES

REPO = Path(__file__).resolve().parents[2]
WORK = REPO / "var" / "bench-files"  # not under var/bench, which `make bench` recreates
EXPORTER = Path(sys.executable).with_name("exporter")
FILE_NAME = "big.bin"
FILE_BYTES = 2 * 1024**3
CHUNK_SIZES = [64 * 1024, 256 * 1024, 1024 * 1024, 2 * 1024 * 1024, 4 * 1024 * 1024]
RUNS = 9  # round-robin over the servers; docs/benchmarks.md shows one such run


@dataclass
class Result:
    name: str
    mb_per_second: list[float]
    rss_growth_mib: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.mb_per_second)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.files")
    commands = parser.add_subparsers(dest="command")
    serve = commands.add_parser("fileresponse", help="serve a directory with Starlette's FileResponse")
    serve.add_argument("--port", type=int, required=True)
    serve.add_argument("--directory", type=Path, required=True)
    parser.add_argument("--chunk-sizes", type=lambda v: [int(s) for s in v.split(",")], default=CHUNK_SIZES)
    parser.add_argument("--runs", type=int, default=RUNS)
    args = parser.parse_args(argv)
    if args.command == "fileresponse":
        serve_fileresponse(args.port, args.directory)
        return 0

    path = big_file()
    try:
        with ExitStack() as stack:
            servers = [(exporter_name(size), *stack.enter_context(exporter(path.parent, size)))
                       for size in args.chunk_sizes]
            servers.append(("Starlette FileResponse (64 KiB)", *stack.enter_context(fileresponse(path.parent))))
            if shutil.which("nginx"):
                servers.append(("nginx (sendfile)", *stack.enter_context(nginx(path.parent))))
            else:
                print("nginx is not installed: no nginx reference (apt-get install nginx-light)", file=sys.stderr)
            results = measure(servers, args.runs)
    except subprocess.CalledProcessError as exc:
        print(f"a download failed: {exc}", file=sys.stderr)
        return 1
    print_table(results)
    return 0


def exporter_name(chunk_bytes: int) -> str:
    default = " (default)" if chunk_bytes == DEFAULT_FILE_CHUNK_BYTES else ""
    return f"exporter, {chunk_bytes // 1024} KiB chunks{default}"


def big_file() -> Path:
    """2 GiB of incompressible bytes (a 64 MiB random block repeated), made once and kept."""
    path = WORK / FILE_NAME
    if not path.exists() or path.stat().st_size != FILE_BYTES:
        WORK.mkdir(parents=True, exist_ok=True)
        block = os.urandom(64 * 1024 * 1024)
        with open(path, "wb") as out:
            for _ in range(FILE_BYTES // len(block)):
                out.write(block)
    return path


def measure(servers: list[tuple[str, int, str]], runs: int) -> list[Result]:
    """Round-robin over the servers, so that a machine that speeds up or slows down affects them all alike."""
    results = [Result(name, [], []) for name, _, _ in servers]
    for _, _, url in servers:
        download(url)  # warm-up: the page cache, and each server's first-request work
    for _ in range(runs):
        for result, (name, pid, url) in zip(results, servers, strict=True):
            before = status_kib(pid, "VmRSS")
            Path(f"/proc/{pid}/clear_refs").write_text("5")  # reset VmHWM to the current RSS
            size, seconds = download(url)
            result.rss_growth_mib.append((status_kib(pid, "VmHWM") - before) / 1024)
            assert size == FILE_BYTES, (name, size)
            result.mb_per_second.append(size / seconds / 1e6)
    for result in results:
        print(f"{result.name}: " + ", ".join(f"{v:,.0f}" for v in result.mb_per_second) + " MB/s", file=sys.stderr)
    return results


def download(url: str) -> tuple[int, float]:
    out = subprocess.run(["curl", "-fsS", "-o", "/dev/null", "-w", "%{size_download} %{time_total}", url],
                         check=True, capture_output=True, text=True).stdout.split()
    return int(out[0]), float(out[1])


def status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def print_table(results: list[Result]) -> None:
    reference = next((r.median for r in results if r.name.startswith("Starlette")), None)
    nginx_median = next((r.median for r in results if r.name.startswith("nginx")), None)
    print(f"\n{FILE_BYTES // 1024**3} GiB file, curl to /dev/null, median of {len(results[0].mb_per_second)} runs,"
          f" {os.cpu_count()} CPUs\n")
    print("| server | MB/s | vs FileResponse | vs nginx | peak RSS growth |")
    print("| --- | --- | --- | --- | --- |")
    for r in results:
        vs_file = f"{r.median / reference:.2f}" if reference else "-"
        vs_nginx = f"{r.median / nginx_median:.2f}" if nginx_median else "-"
        print(f"| {r.name} | {r.median:,.0f} | {vs_file} | {vs_nginx} | {max(r.rss_growth_mib):.1f} MiB |")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@contextmanager
def running(name: str, command: list[str], url: str, env: dict[str, str] | None = None) -> Iterator[int]:
    """Start `command` with its output in WORK/`name`.log, wait until `url` answers, yield its pid; terminate
    it at the end."""
    log = (WORK / f"{name}.log").open("wb")
    process = subprocess.Popen(command, env={**os.environ, **(env or {})}, stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=5).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{name} did not start; see {log.name}") from None
                time.sleep(0.1)
        yield process.pid
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


@contextmanager
def exporter(directory: Path, chunk_bytes: int) -> Iterator[tuple[int, str]]:
    port = free_port()
    config = WORK / f"exporter-{chunk_bytes}.toml"
    config.write_text(f'[files.roots]\nbench = "{directory}"\n')
    env = {"EXPORTER_CONFIG": str(config), "EXPORTER_FILE_CHUNK_BYTES": str(chunk_bytes), "EXPORTER_AUTH": "off",
           "EXPORTER_DATABASE_URL": f"sqlite+aiosqlite:///{WORK / 'exporter.db'}"}
    url = f"http://127.0.0.1:{port}/files/bench/{FILE_NAME}"
    with running(f"exporter-{chunk_bytes}", [str(EXPORTER), "serve", "--port", str(port)], url, env) as pid:
        yield pid, url


@contextmanager
def fileresponse(directory: Path) -> Iterator[tuple[int, str]]:
    port = free_port()
    command = [sys.executable, "-m", "tests.bench.files", "fileresponse", "--port", str(port),
               "--directory", str(directory)]
    url = f"http://127.0.0.1:{port}/{FILE_NAME}"
    with running("fileresponse", command, url) as pid:
        yield pid, url


def serve_fileresponse(port: int, directory: Path) -> None:
    """The reference: Starlette's FileResponse under uvicorn with the same defaults as `exporter serve`."""
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import FileResponse
    from starlette.routing import Route

    async def send_file(request: Request) -> FileResponse:
        return FileResponse(directory / request.path_params["name"])

    uvicorn.run(Starlette(routes=[Route("/{name}", send_file, methods=["GET", "HEAD"])]), host="127.0.0.1",
                port=port, log_level="warning")


def nginx_config(prefix: Path, body: str) -> Path:
    """One nginx process (no master) with `body` in its http block."""
    prefix.mkdir(parents=True, exist_ok=True)
    config = prefix / "nginx.conf"
    config.write_text(f"""
daemon off;
master_process off;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
{body}
}}
""")
    return config


def nginx_command(prefix: Path, config: Path) -> list[str]:
    return ["nginx", "-p", str(prefix), "-e", "stderr", "-c", str(config)]


@contextmanager
def nginx(directory: Path) -> Iterator[tuple[int, str]]:
    """One nginx process (no master), sendfile on, serving `directory`."""
    port, prefix = free_port(), WORK / "nginx"
    config = nginx_config(prefix, f"""
    sendfile on;
    tcp_nopush on;
    server {{
        listen 127.0.0.1:{port};
        root {directory};
    }}""")
    url = f"http://127.0.0.1:{port}/{FILE_NAME}"
    with running("nginx", nginx_command(prefix, config), url) as pid:
        yield pid, url


if __name__ == "__main__":
    raise SystemExit(main())
