"""Console script `exporter`: serve, worker, migrate, seed-demo, keys, audit, check-config."""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from exporter.cli import admin
from exporter.config import Settings
from exporter.errors import ConfigError
from exporter.logs import configure_logging

MIGRATIONS = Path(__file__).resolve().parents[2] / "migrations"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="exporter", description="Bulk data export service.")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve the HTTP API (and EXPORTER_JOB_WORKERS job workers)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int, default=1, help="processes serving on the one port (default 1)")
    serve.add_argument("--allow-anonymous", action="store_true",
                       help="allow EXPORTER_AUTH=off on a host other than loopback")
    commands.add_parser("worker", help="run export job workers (EXPORTER_JOB_WORKERS) without HTTP")
    commands.add_parser("check-config", help="load the configuration, reach every database, list what would be "
                        "served; exit 1 on any problem")
    commands.add_parser("migrate", help="create or upgrade the service's own tables (alembic upgrade head)")
    seed = commands.add_parser("seed-demo", help="(re)create the demo table `orders` with deterministic rows")
    seed.add_argument("--rows", type=int, default=100_000)
    seed.add_argument("--if-missing", action="store_true", help="do nothing if `orders` already exists")
    admin.add_commands(commands)
    args = parser.parse_args(argv)

    try:
        settings = Settings.from_environ()
    except ConfigError as exc:
        print(f"exporter: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_format)
    if args.command == "serve":
        if settings.auth == "off" and not _loopback(args.host) and not args.allow_anonymous:
            print(f"exporter: EXPORTER_AUTH=off would let anyone who reaches {args.host} read everything; serve on "
                  "127.0.0.1, turn auth on, or pass --allow-anonymous", file=sys.stderr)
            return 2
        if args.workers < 1:
            print("exporter: --workers must be 1 or more", file=sys.stderr)
            return 2
        from exporter.cli import serve as server

        return server.serve(args.host, args.port, args.workers)
    if args.command in ("keys", "audit"):
        try:
            return asyncio.run(admin.run(settings, args))
        except ConfigError as exc:
            print(f"exporter: {exc}", file=sys.stderr)
            return 2
    if args.command == "check-config":
        from exporter.cli.checks import check_config

        return 1 if asyncio.run(check_config(settings, str(MIGRATIONS))) else 0
    if args.command == "worker":
        return asyncio.run(_work(settings))
    if args.command == "migrate":
        migrate(settings.database_url)
        return 0
    return asyncio.run(_seed(settings, args.rows, args.if_missing))


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host == "localhost"


async def _work(settings: Settings) -> int:
    """Job workers until SIGTERM or SIGINT; their jobs are then handed back to the queue."""
    from exporter.jobs.worker import run_jobs
    from exporter.sources.datasets import open_sources
    from exporter.supervision import Supervisor

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with (open_sources(settings) as (engine, catalog), Supervisor() as supervisor,
                run_jobs(settings, catalog, engine, supervisor)):
        logging.getLogger(__name__).info("job workers: %d running", settings.job_workers)
        await stop.wait()
    return 0


def migrate(database_url: str) -> None:
    """alembic upgrade head on `database_url`."""
    from alembic import command
    from alembic.config import Config

    config = Config(str(MIGRATIONS.parent / "alembic.ini"))
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["database_url"] = database_url
    config.attributes["configure_logging"] = False
    command.upgrade(config, "head")


async def _seed(settings: Settings, rows: int, if_missing: bool) -> int:
    from exporter.cli.demo import demo_exists, seed_demo
    from exporter.sources.engines import create_db_engine

    if rows < 0:
        print("exporter: --rows must be 0 or more", file=sys.stderr)
        return 2
    engine = create_db_engine(settings.database_url)
    try:
        if if_missing and await demo_exists(engine):
            print("orders exists; not seeding")
            return 0
        await seed_demo(engine, rows)
        print(f"seeded orders with {rows} rows")
    finally:
        await engine.dispose()
    return 0
