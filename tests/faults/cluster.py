"""A PostgreSQL cluster of the fault suite's own: a scratch data directory run with pg_ctl, which the tests stop,
restart and crash at will. Never the machine's shared server, which other tests and workers use."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.servers import free_port

BIN = Path("/usr/lib/postgresql/15/bin")
# PostgreSQL refuses to run as root; the suite runs as root on the CI machines, and as postgres the cluster's files
# must be readable (pytest's tmp_path is root's alone), so the directory comes from tempfile with its own owner.
USER = "postgres"


class Cluster:
    """One PostgreSQL server on 127.0.0.1 and a free port, trust auth, fsync off (its data is scratch). Commits
    still reach the WAL before they return, so an `immediate` stop (a crash) keeps them, as on a real server."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="exporter-faults-"))
        self.data = self.root / "data"
        self.port = free_port()
        shutil.chown(self.root, USER, USER)
        self._run(BIN / "initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "--no-sync",
                  "--encoding=UTF8", "--locale=C.UTF-8")

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        options = (f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={self.root} "
                   "-c fsync=off -c full_page_writes=off -c max_connections=200")
        self._run(BIN / "pg_ctl", "-D", str(self.data), "-l", str(self.root / "log"), "-o", options, "-w",
                  "-t", "60", "start")

    def running(self) -> bool:
        status = subprocess.run(["runuser", "-u", USER, "--", str(BIN / "pg_ctl"), "-D", str(self.data), "status"],
                                capture_output=True, check=False)
        return status.returncode == 0

    def start_if_stopped(self) -> None:
        if not self.running():
            self.start()

    def stop(self, mode: str = "fast") -> None:
        """`fast` closes the sessions and shuts down cleanly; `immediate` is a crash (recovery at the next start)."""
        self._run(BIN / "pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")

    def restart(self, mode: str = "fast") -> None:
        self.stop(mode)
        self.start()

    @contextmanager
    def down(self, seconds: float, mode: str = "fast") -> Iterator[None]:
        """Stopped for `seconds` (the block runs meanwhile), then started again."""
        self.stop(mode)
        try:
            deadline = time.monotonic() + seconds
            yield
            time.sleep(max(0.0, deadline - time.monotonic()))
        finally:
            self.start()

    def log(self) -> str:
        path = self.root / "log"
        return path.read_text(errors="replace") if path.exists() else ""

    def destroy(self) -> None:
        subprocess.run(["runuser", "-u", USER, "--", str(BIN / "pg_ctl"), "-D", str(self.data), "-m", "immediate",
                        "stop"], capture_output=True, check=False)
        shutil.rmtree(self.root, ignore_errors=True)

    def _run(self, *command: str | Path) -> None:
        done = subprocess.run(["runuser", "-u", USER, "--", *map(str, command)], capture_output=True, text=True,
                              check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{Path(str(command[0])).name} failed ({done.returncode}): {done.stderr or done.stdout}"
                               f"\n{self.log()[-2000:]}")
