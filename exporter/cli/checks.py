"""`exporter check-config`: load the configuration, reach every database, and list what would be served."""

from __future__ import annotations

import logging

from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.engine import Connection

from exporter.config import Settings
from exporter.errors import ExportError
from exporter.sources.datasets import open_sources


async def check_config(settings: Settings, migrations: str) -> list[str]:
    """Print what the service would serve; return the problems found (none: it may start)."""
    problems: list[str] = []
    logging.getLogger("alembic.runtime.migration").setLevel(logging.WARNING)
    async with open_sources(settings) as (_, catalog):
        for name, source in catalog.engines.items():
            label = f"database {name or 'service'} ({source.url.render_as_string(hide_password=True)})"
            try:
                async with source.connect() as conn:
                    await conn.execute(text("SELECT 1"))
                    if name is None:
                        current = await conn.run_sync(_revision)
                        head = ScriptDirectory(migrations).get_current_head()
                        if current != head:
                            problems.append(f"{label}: schema at {current or 'nothing'}, not {head}: run "
                                            "`exporter migrate`")
                print(f"ok   {label}")
            except Exception as error:
                problems.append(f"{label}: cannot connect: {str(error).splitlines()[0]}")
        for name in catalog.names:
            try:
                dataset = await catalog.get(name)
                print(f"ok   dataset {name}: {len(dataset.columns)} columns, key {dataset.key.name}")
            except ExportError as error:
                problems.append(f"dataset {name}: {error.message}")
        for root in settings.file_roots.values():
            print(f"ok   file root {root.name}: {root.path}")
        for upstream in settings.upstreams.values():
            print(f"ok   upstream {upstream.name}: {upstream.base_url}")
    print(f"ok   auth {settings.auth}; jobs in {settings.jobs_dir}, {settings.job_workers} workers per process")
    for problem in problems:
        print(f"FAIL {problem}")
    return problems


def _revision(conn: Connection) -> str | None:
    return MigrationContext.configure(conn).get_current_revision()
