"""`exporter keys …` and `exporter audit`: the platform team's commands, run against the service's database."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from typing import Any

from exporter.config import Settings
from exporter.errors import ConfigError


def add_commands(commands: Any) -> None:
    keys = commands.add_parser("keys", help="create, list and revoke API keys").add_subparsers(
        dest="keys_command", required=True)
    create = keys.add_parser("create", help="create a key and print its token (once)")
    create.add_argument("name")
    create.add_argument("--grant", action="append", default=[], required=True,
                        help="dataset:NAME, files:ROOT, proxy:UPSTREAM (NAME may be *), admin or metrics")
    create.add_argument("--expires-in", help="e.g. 90d, 12h, 30m, 45s (default: never)")
    create.add_argument("--max-concurrent", type=int, help="downloads and jobs at once (default: "
                        "EXPORTER_KEY_MAX_CONCURRENT)")
    create.add_argument("--columns", action="append", default=[], metavar="DATASET=COL,COL",
                        help="the only columns the key sees of a dataset")
    create.add_argument("--row-filter", action="append", default=[], metavar="DATASET=FILTER",
                        help="a filter always applied, e.g. orders=country=DE or orders=amount__lt=100")
    create.add_argument("--max-rows", action="append", default=[], metavar="DATASET=N",
                        help="an export of more rows is aborted")
    keys.add_parser("list", help="every key, without secrets")
    revoke = keys.add_parser("revoke", help="revoke a key; its running downloads and jobs stop within seconds")
    revoke.add_argument("name")
    audit = commands.add_parser("audit", help="print the audit log (the export log), newest first")
    audit.add_argument("--key", help="only this key's rows")
    audit.add_argument("--since", help="only rows from this date or time on (ISO 8601, UTC if no offset)")
    audit.add_argument("--outcome", choices=("completed", "aborted", "failed", "denied", "limited"))
    audit.add_argument("--limit", type=int, default=1000)
    audit.add_argument("--json", action="store_true", help="NDJSON, one row per line")


async def run(settings: Settings, args: argparse.Namespace) -> int:
    # Imported here, not above: main.py imports this module for add_commands in every process, and `exporter serve
    # --workers N`'s supervising parent should not load SQLAlchemy for it (issue 19).
    from exporter.access.grants import parse_duration, parse_grant, parse_restrictions
    from exporter.access.keys import Keys
    from exporter.sources.engines import create_db_engine

    engine = create_db_engine(settings.database_url, application_name="exporter-admin")
    try:
        if args.command == "audit":
            return await _audit(engine, args)
        keys = Keys(engine)
        if args.keys_command == "create":
            token = await keys.create(
                args.name, [parse_grant(g) for g in args.grant],
                parse_restrictions(args.columns, args.row_filter, args.max_rows),
                parse_duration(args.expires_in) if args.expires_in else None, args.max_concurrent)
            print(token)
            print(f"created key {args.name!r}; the token above is shown once and never again", file=sys.stderr)
            return 0
        if args.keys_command == "list":
            _table(["name", "grants", "created", "expires", "last used", "revoked"], [
                [k.name, " ".join(k.grants), _when(k.created_at), _when(k.expires_at), _when(k.last_used_at),
                 _when(k.revoked_at)] for k in await keys.all()])
            return 0
        if await keys.revoke(args.name):
            print(f"revoked key {args.name!r}")
            return 0
        print(f"exporter: no usable key named {args.name!r}", file=sys.stderr)
        return 1
    finally:
        await engine.dispose()


async def _audit(engine: Any, args: argparse.Namespace) -> int:
    from exporter.audit import COLUMNS, audit_rows

    since = None
    if args.since:
        try:
            since = datetime.fromisoformat(args.since)
        except ValueError:
            raise ConfigError(f"--since {args.since!r} is not an ISO 8601 date or time") from None
        since = since if since.tzinfo else since.replace(tzinfo=UTC)
    rows = await audit_rows(engine, args.key, since, args.outcome, args.limit)
    if args.json:
        for row in rows:
            print(json.dumps({k: v.isoformat() if isinstance(v, datetime) else v for k, v in row.items()}))
        return 0
    _table(list(COLUMNS), [[_cell(row[c]) for c in COLUMNS] for row in rows])
    return 0


def _when(value: datetime | None) -> str:
    return "-" if value is None else value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, datetime):
        return _when(value)
    if isinstance(value, float):
        return f"{value:.3f}"
    if isinstance(value, dict):
        return "&".join(f"{k}={v}" for k, vs in value.items() for v in vs) or "-"
    return str(value)


def _table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(header)]
    for line in [header, *rows]:
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip())
