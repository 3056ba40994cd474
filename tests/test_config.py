"""Settings from a dict, from a TOML file named in the environment, and the packaged default config."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from exporter.config import DEFAULT_DATABASE_URL, DatasetConfig, Settings
from exporter.errors import ConfigError

WAREHOUSE_URL = "postgresql+asyncpg://reader@warehouse.internal/dw"

CONFIG: dict[str, Any] = {
    "database_url": "postgresql+asyncpg://exporter@db.internal/app",
    "batch_rows": 250,
    "sources": {"warehouse": {"url": WAREHOUSE_URL}},
    "datasets": {
        "orders": {
            "description": "Orders",
            "table": "public.orders",
            "key": "id",
            "filterable": ["id", "status"],
        },
        "big_orders": {
            "sql": "SELECT id, amount FROM orders WHERE amount > 1000",
            "key": "id",
            "source": "warehouse",
        },
    },
}

TOML = f"""
batch_rows = 250

[sources.warehouse]
url = "{WAREHOUSE_URL}"

[datasets.orders]
description = "Orders"
table = "public.orders"
key = "id"
filterable = ["id", "status"]

[datasets.big_orders]
sql = "SELECT id, amount FROM orders WHERE amount > 1000"
key = "id"
source = "warehouse"
"""

DATASETS = {
    "orders": DatasetConfig(name="orders", key="id", description="Orders", table="public.orders",
                            filterable=("id", "status")),
    "big_orders": DatasetConfig(name="big_orders", key="id", sql="SELECT id, amount FROM orders WHERE amount > 1000",
                                source="warehouse"),
}


def test_settings_from_dict_read_datasets_sources_and_batch_rows() -> None:
    assert Settings.from_dict(CONFIG) == Settings(
        database_url="postgresql+asyncpg://exporter@db.internal/app",
        batch_rows=250,
        datasets=DATASETS,
        sources={"warehouse": WAREHOUSE_URL},
    )


def test_settings_from_an_empty_dict_are_the_defaults() -> None:
    assert Settings.from_dict({}) == Settings()
    assert Settings().database_url == DEFAULT_DATABASE_URL


def with_dataset(**declared: Any) -> dict[str, Any]:
    return CONFIG | {"datasets": {"broken": declared}}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (CONFIG | {"dataset": {}}, "unknown settings: dataset"),
        (with_dataset(table="orders", sql="SELECT 1 AS id", key="id"), "exactly one of `table` and `sql`"),
        (with_dataset(key="id"), "exactly one of `table` and `sql`"),
        (with_dataset(table="orders"), "`key` is required"),
        (with_dataset(table="orders", key="id", source="nowhere"), "unknown source 'nowhere'"),
        (with_dataset(table="orders", key="id", filter=["id"]), "unknown keys filter"),
        (CONFIG | {"sources": {"warehouse": {"host": "warehouse.internal"}}}, "needs `url` or `url_env`"),
        (CONFIG | {"batch_rows": 0}, "batch_rows must be at least 1"),
        (CONFIG | {"batch_rows": -5}, "batch_rows must be at least 1"),
    ],
)
def test_invalid_settings_raise_config_error(data: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Settings.from_dict(data)


def config_file(tmp_path: Path, text: str = TOML) -> str:
    path = tmp_path / "exporter.toml"
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_settings_from_environ_read_the_file_named_by_exporter_config(tmp_path: Path) -> None:
    settings = Settings.from_environ({"EXPORTER_CONFIG": config_file(tmp_path)})
    assert settings == Settings(batch_rows=250, datasets=DATASETS, sources={"warehouse": WAREHOUSE_URL})


def test_environment_overrides_database_url_and_batch_rows_from_the_file(tmp_path: Path) -> None:
    environ = {
        "EXPORTER_CONFIG": config_file(tmp_path),
        "EXPORTER_DATABASE_URL": "sqlite+aiosqlite:///:memory:",
        "EXPORTER_BATCH_ROWS": "100",
    }
    settings = Settings.from_environ(environ)
    assert (settings.database_url, settings.batch_rows) == ("sqlite+aiosqlite:///:memory:", 100)
    assert settings.datasets == DATASETS


def test_empty_environment_values_do_not_override_the_file(tmp_path: Path) -> None:
    environ = {"EXPORTER_CONFIG": config_file(tmp_path), "EXPORTER_DATABASE_URL": "", "EXPORTER_BATCH_ROWS": ""}
    settings = Settings.from_environ(environ)
    assert (settings.database_url, settings.batch_rows) == (DEFAULT_DATABASE_URL, 250)


@pytest.mark.parametrize("batch_rows", ["0", "-1"])
def test_batch_rows_from_the_environment_is_validated(tmp_path: Path, batch_rows: str) -> None:
    with pytest.raises(ConfigError, match="batch_rows"):
        Settings.from_environ({"EXPORTER_CONFIG": config_file(tmp_path), "EXPORTER_BATCH_ROWS": batch_rows})


def test_batch_rows_that_is_not_a_number_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="batch_rows"):
        Settings.from_environ({"EXPORTER_CONFIG": config_file(tmp_path), "EXPORTER_BATCH_ROWS": "lots"})


@pytest.mark.parametrize("text", [None, "datasets = [", "unknown = 1"])
def test_unreadable_or_invalid_config_files_are_config_errors(tmp_path: Path, text: str | None) -> None:
    path = config_file(tmp_path, text) if text is not None else str(tmp_path / "missing.toml")
    with pytest.raises(ConfigError):
        Settings.from_environ({"EXPORTER_CONFIG": path})


def test_source_url_env_is_read_from_the_given_environment(tmp_path: Path) -> None:
    variable = "EXPORTER_TEST_WAREHOUSE_URL_7F3A"  # a name no real environment sets
    text = f'[sources.warehouse]\nurl_env = "{variable}"\n'
    settings = Settings.from_environ({"EXPORTER_CONFIG": config_file(tmp_path, text), variable: WAREHOUSE_URL})
    assert settings.sources == {"warehouse": WAREHOUSE_URL}


def test_packaged_default_config_declares_the_demo_orders_dataset() -> None:
    settings = Settings.from_environ({})
    orders = settings.datasets["orders"]
    assert (orders.name, orders.table, orders.key, orders.sql, orders.source) == ("orders", "orders", "id", None, None)
    assert "id" in orders.filterable
    assert settings.database_url == DEFAULT_DATABASE_URL


@pytest.mark.parametrize(("value", "expected"), [("false", False), ("0", False), ("true", True), ("1", True)])
def test_copy_fast_path_is_on_by_default_and_turned_off_by_the_environment(
    tmp_path: Path, value: str, expected: bool
) -> None:
    assert Settings.from_environ({"EXPORTER_CONFIG": config_file(tmp_path)}).copy_fast_path is True
    environ = {"EXPORTER_CONFIG": config_file(tmp_path), "EXPORTER_COPY_FAST_PATH": value}
    assert Settings.from_environ(environ).copy_fast_path is expected


def test_copy_fast_path_that_is_not_a_flag_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="copy_fast_path"):
        Settings.from_environ({"EXPORTER_CONFIG": config_file(tmp_path), "EXPORTER_COPY_FAST_PATH": "sometimes"})
