"""`python -m tests.bench.auth`: whether a 401 tells a key id that exists from one that does not, by its timing.

Starts `exporter serve` with auth on (SQLite in var/bench-auth, one real key), then sends, alternating over one
keep-alive connection, requests with a token whose key id is unknown and with the real key id and a wrong secret
(both well-formed, with valid checksums). Prints each one's p50 and the difference, next to the noise: the
difference between the two halves of the same kind's samples. Reported, never asserted.
"""

from __future__ import annotations

import argparse
import base64
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import httpx

from exporter.access.tokens import ID_BYTES, PREFIX, SECRET_BYTES, _check
from tests.servers import free_port

REPO = Path(__file__).resolve().parents[2]
WORK = REPO / "var" / "bench-auth"
EXPORTER = Path(sys.executable).with_name("exporter")
REQUESTS = 4000


def forge(key_id: bytes, secret: bytes) -> str:
    body = key_id + secret
    return PREFIX + base64.urlsafe_b64encode(body + _check(body)).decode().rstrip("=")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.auth")
    parser.add_argument("--requests", type=int, default=REQUESTS, help="of each kind")
    args = parser.parse_args(argv)
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    env = {"PATH": "/usr/bin:/bin", "EXPORTER_DATABASE_URL": f"sqlite+aiosqlite:///{WORK / 'exporter.db'}",
           "EXPORTER_AUTH": "required", "EXPORTER_JOB_WORKERS": "0",
           # Every request here fails on purpose, from one address: throttling would answer 429 after a few.
           "EXPORTER_FAILED_AUTH_LIMIT": str(10 * REQUESTS)}
    subprocess.run([str(EXPORTER), "migrate"], env=env, check=True, capture_output=True)
    token = subprocess.run([str(EXPORTER), "keys", "create", "bench", "--grant", "dataset:*"], env=env, check=True,
                           capture_output=True, text=True).stdout.strip()
    raw = base64.urlsafe_b64decode(token[len(PREFIX):] + "==")
    tokens = {
        "unknown key id": forge(bytes(ID_BYTES), raw[ID_BYTES:ID_BYTES + SECRET_BYTES]),
        "known id, wrong secret": forge(raw[:ID_BYTES], bytes(SECRET_BYTES)),
    }
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = (WORK / "exporter.log").open("wb")
    server = subprocess.Popen([str(EXPORTER), "serve", "--port", str(port)], env=env, stdout=log, stderr=log)
    try:
        samples = measure(url, tokens, args.requests)
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()
    print(f"{'case':<26} {'p50 µs':>9} {'p90 µs':>9}  noise (p50 of halves)")
    for name, values in samples.items():
        half = len(values) // 2
        noise = abs(statistics.median(values[:half]) - statistics.median(values[half:]))
        print(f"{name:<26} {statistics.median(values):9.1f} {statistics.quantiles(values, n=10)[-1]:9.1f}"
              f"  {noise:.1f}")
    unknown, known = (statistics.median(v) for v in samples.values())
    print(f"difference of the p50s: {abs(unknown - known):.1f} µs ({abs(unknown - known) / known:.1%})")
    return 0


def measure(url: str, tokens: dict[str, str], requests: int) -> dict[str, list[float]]:
    """Latency in µs of each kind of token, alternating over one keep-alive connection, after a warm-up."""
    with httpx.Client(base_url=url) as client:
        deadline = time.monotonic() + 30
        while True:
            try:
                client.get("/healthz")
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        samples: dict[str, list[float]] = {name: [] for name in tokens}
        for round_number in range(requests + 200):
            for name, value in tokens.items():
                started = time.perf_counter()
                response = client.get("/datasets", headers={"Authorization": f"Bearer {value}"})
                elapsed = time.perf_counter() - started
                assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_token"
                if round_number >= 200:  # warm-up
                    samples[name].append(elapsed * 1e6)
    return samples


if __name__ == "__main__":
    raise SystemExit(main())
