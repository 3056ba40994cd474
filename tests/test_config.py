"""Settings from a dict, from a TOML file named in the environment, and the packaged default config."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from exporter.access.admission import export_slot_count
from exporter.config import (
    DEFAULT_DATABASE_URL,
    DEFAULT_FILE_CHUNK_BYTES,
    DatasetConfig,
    FileRootConfig,
    Settings,
    UpstreamConfig,
)
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


def test_parallel_copy_defaults_to_two_parts_a_core_at_most_four_and_reads_the_environment(tmp_path: Path) -> None:
    defaults = Settings.from_environ({"EXPORTER_CONFIG": config_file(tmp_path)})
    assert defaults.copy_parallel == min(4, 2 * (os.cpu_count() or 1))
    assert defaults.copy_parallel_min_rows == 100_000
    environ = {"EXPORTER_CONFIG": config_file(tmp_path), "EXPORTER_COPY_PARALLEL": "1",
               "EXPORTER_COPY_PARALLEL_MIN_ROWS": "5000"}
    settings = Settings.from_environ(environ)
    assert (settings.copy_parallel, settings.copy_parallel_min_rows) == (1, 5000)


@pytest.mark.parametrize(("name", "value"), [("COPY_PARALLEL", "0"), ("COPY_PARALLEL", "65"),
                                             ("COPY_PARALLEL", "two"), ("COPY_PARALLEL_MIN_ROWS", "-1")])
def test_parallel_copy_settings_out_of_range_are_config_errors(tmp_path: Path, name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name.lower()):
        Settings.from_environ({"EXPORTER_CONFIG": config_file(tmp_path), f"EXPORTER_{name}": value})


def test_file_roots_are_directories_by_name_as_a_string_or_a_table_with_hidden(tmp_path: Path) -> None:
    (tmp_path / "reports").mkdir()
    (tmp_path / "dumps").mkdir()
    text = (f'[files.roots]\nreports = "{tmp_path / "reports"}"\n'
            f'dumps = {{ path = "{tmp_path / "dumps"}", hidden = true }}\n')
    settings = Settings.from_environ({"EXPORTER_CONFIG": config_file(tmp_path, text)})
    assert settings.file_roots == {
        "reports": FileRootConfig("reports", (tmp_path / "reports").resolve(), hidden=False),
        "dumps": FileRootConfig("dumps", (tmp_path / "dumps").resolve(), hidden=True),
    }


def test_a_relative_file_root_is_taken_from_the_working_directory_and_symlinks_resolved(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "alias").symlink_to("real")
    monkeypatch.chdir(tmp_path)
    roots = Settings.from_dict({"files": {"roots": {"r": "alias"}}}).file_roots
    assert roots["r"].path == (tmp_path / "real").resolve()
    assert roots["r"].path.is_absolute()


def test_settings_without_files_have_no_roots_and_the_measured_chunk_size() -> None:
    assert Settings().file_roots == {}
    assert Settings().file_chunk_bytes == DEFAULT_FILE_CHUNK_BYTES


def with_root(value: Any, name: str = "r") -> dict[str, Any]:
    return {"files": {"roots": {name: value}}}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (with_root("/no/such/directory"), "file root r: /no/such/directory is not a directory"),
        (with_root({"hidden": True}), "file root r: give a directory, or a table with `path`"),
        (with_root(42), "file root r: give a directory"),
        (with_root({"path": ".", "hiden": True}), "file root r: unknown keys hiden"),
        (with_root({"path": ".", "hidden": "sometimes"}), "hidden must be true or false"),
        (with_root(".", name="a/b"), "file root 'a/b': names are"),
        (with_root(".", name=".."), "file root '..': names are"),
        ({"files": {"root": {}}}, r"\[files\] takes only a `roots` table"),
        ({"files": {"roots": "."}}, r"\[files.roots\] must map names to directories"),
        ({"file_chunk_bytes": 0}, "file_chunk_bytes must be at least 1"),
        ({"file_chunk_bytes": 128 * 1024 * 1024}, "file_chunk_bytes must be at most"),
        ({"file_chunk_bytes": "lots"}, "file_chunk_bytes must be a whole number"),
    ],
)
def test_invalid_file_settings_raise_config_error(data: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Settings.from_dict(data)


def test_a_file_root_that_is_a_file_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(ConfigError, match="is not a directory"):
        Settings.from_dict(with_root(str(tmp_path / "file.txt")))


def test_file_chunk_bytes_comes_from_the_file_and_the_environment_overrides_it(tmp_path: Path) -> None:
    path = config_file(tmp_path, "file_chunk_bytes = 65536\n")
    assert Settings.from_environ({"EXPORTER_CONFIG": path}).file_chunk_bytes == 65536
    environ = {"EXPORTER_CONFIG": path, "EXPORTER_FILE_CHUNK_BYTES": "262144"}
    assert Settings.from_environ(environ).file_chunk_bytes == 262144
    with pytest.raises(ConfigError, match="file_chunk_bytes"):
        Settings.from_environ({"EXPORTER_CONFIG": path, "EXPORTER_FILE_CHUNK_BYTES": "0"})


UPSTREAMS_TOML = """
[upstreams.store]
base_url = "https://objects.internal:9000/exports/"
headers = { Authorization = { env = "STORE_TOKEN" }, "X-Tenant" = "reports" }
forward_headers = ["Range", "If-None-Match", "X-Request-Id"]
connect_timeout_seconds = 2
read_timeout_seconds = 0.5
max_concurrent_relays = 4

[upstreams.partner]
base_url = "http://partner.example"
"""


def test_upstreams_are_read_with_headers_from_the_environment_and_defaults_for_the_rest(tmp_path: Path) -> None:
    environ = {"EXPORTER_CONFIG": config_file(tmp_path, UPSTREAMS_TOML), "STORE_TOKEN": "Bearer s3cr3t"}
    assert Settings.from_environ(environ).upstreams == {
        "store": UpstreamConfig(
            name="store", base_url="https://objects.internal:9000/exports",
            headers={"Authorization": "Bearer s3cr3t", "X-Tenant": "reports"},
            forward_headers=("range", "if-none-match", "x-request-id"), connect_timeout_seconds=2.0,
            read_timeout_seconds=0.5, max_concurrent_relays=4),
        "partner": UpstreamConfig(
            name="partner", base_url="http://partner.example",
            forward_headers=("range", "if-range", "if-none-match", "if-modified-since", "accept"),
            connect_timeout_seconds=5.0, read_timeout_seconds=30.0, max_concurrent_relays=32),
    }


def test_an_upstreams_added_header_values_stay_out_of_its_repr() -> None:
    settings = Settings.from_dict(with_upstream(headers={"Authorization": {"env": "TOKEN"}}), {"TOKEN": "s3cr3t"})
    assert settings.upstreams["u"].headers == {"Authorization": "s3cr3t"}
    assert "s3cr3t" not in repr(settings)


def test_settings_without_upstreams_have_none() -> None:
    assert Settings().upstreams == {}
    assert Settings.from_environ({}).upstreams == {}


def with_upstream(name: str = "u", **table: Any) -> dict[str, Any]:
    return {"upstreams": {name: {"base_url": "http://store.internal", **table}}}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"upstreams": {"u": {}}}, "upstream u: `base_url` is required"),
        ({"upstreams": {"u": "http://x"}}, r"\[upstreams\] must hold one table per upstream"),
        ({"upstreams": ["u"]}, r"\[upstreams\] must hold one table per upstream"),
        (with_upstream(name="a/b"), "upstream 'a/b': names are"),
        (with_upstream(name=".."), "upstream '..': names are"),
        (with_upstream(base="x"), "upstream u: unknown keys base"),
        (with_upstream(base_url="ftp://store.internal/x"), "must be an http:// or https:// URL with a host"),
        (with_upstream(base_url="store.internal/x"), "must be an http:// or https:// URL with a host"),
        (with_upstream(base_url="http:///x"), "must be an http:// or https:// URL with a host"),
        (with_upstream(base_url="http://store.internal:99999"), "is not a URL"),
        (with_upstream(base_url="http://store.internal:port"), "is not a URL"),
        (with_upstream(base_url="http://user:pw@store.internal"), "may not carry credentials, a query or a fragment"),
        (with_upstream(base_url="http://store.internal/x?sig=1"), "may not carry credentials, a query or a fragment"),
        (with_upstream(base_url="http://store.internal/x?"), "may not carry credentials, a query or a fragment"),
        (with_upstream(base_url="http://store.internal/x#top"), "may not carry credentials, a query or a fragment"),
        (with_upstream(headers={"Authorization": {"env": "UNSET_VARIABLE_7F3A"}}),
         "upstream u: header Authorization: environment variable UNSET_VARIABLE_7F3A is not set"),
        (with_upstream(headers={"Authorization": {"env": "EMPTY"}}), "environment variable EMPTY is not set"),
        (with_upstream(headers={"Authorization": {"env": "TOKEN", "prefix": "Bearer "}}), "only `env`"),
        (with_upstream(headers={"X-Count": 3}), "give a string, or a table with only `env`"),
        (with_upstream(headers={"X-A": "a\r\nX-Injected: 1"}), "must be printable ASCII"),
        (with_upstream(headers={"X-A": "a\x00"}), "must be printable ASCII"),
        (with_upstream(headers={"X-A": "Grüße"}), "must be printable ASCII"),
        (with_upstream(headers={"Bad Name": "x"}), "'Bad Name' is not a header name"),
        (with_upstream(headers={"Host": "other.internal"}), "Host is hop-by-hop or set by the connection"),
        (with_upstream(headers={"Connection": "close"}), "Connection is hop-by-hop"),
        (with_upstream(headers=["Authorization"]), "`headers` must be a table"),
        (with_upstream(forward_headers="Range"), "`forward_headers` must be a list of header names"),
        (with_upstream(forward_headers=["TE"]), "TE is hop-by-hop"),
        (with_upstream(forward_headers=["Proxy-Authorization"]), "Proxy-Authorization is hop-by-hop"),
        (with_upstream(forward_headers=["Content-Length"]), "Content-Length is hop-by-hop or set by the connection"),
        (with_upstream(forward_headers=["X:Y"]), "'X:Y' is not a header name"),
        (with_upstream(connect_timeout_seconds=0), "connect_timeout_seconds must be more than 0"),
        (with_upstream(read_timeout_seconds=-1), "read_timeout_seconds must be more than 0"),
        (with_upstream(read_timeout_seconds="soon"), "read_timeout_seconds must be a number of seconds"),
        (with_upstream(read_timeout_seconds=True), "read_timeout_seconds must be a number of seconds"),
        (with_upstream(read_timeout_seconds=float("nan")), "read_timeout_seconds must be more than 0"),
        (with_upstream(max_concurrent_relays=0), "max_concurrent_relays must be at least 1"),
        (with_upstream(max_concurrent_relays="many"), "max_concurrent_relays must be a whole number"),
    ],
)
def test_invalid_upstreams_raise_config_error(data: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Settings.from_dict(data, {"EMPTY": "", "TOKEN": "t"})


def test_parquet_row_group_rows_defaults_to_131072_and_the_environment_sets_it(tmp_path: Path) -> None:
    assert Settings.from_environ({"EXPORTER_CONFIG": config_file(tmp_path)}).parquet_row_group_rows == 131_072
    environ = {"EXPORTER_CONFIG": config_file(tmp_path), "EXPORTER_PARQUET_ROW_GROUP_ROWS": "1000"}
    assert Settings.from_environ(environ).parquet_row_group_rows == 1000
    with pytest.raises(ConfigError, match="parquet_row_group_rows"):
        Settings.from_environ({**environ, "EXPORTER_PARQUET_ROW_GROUP_ROWS": "0"})


def test_arrow_fast_path_is_on_by_default_and_turned_off_by_the_environment(tmp_path: Path) -> None:
    assert Settings.from_environ({"EXPORTER_CONFIG": config_file(tmp_path)}).arrow_fast_path is True
    environ = {"EXPORTER_CONFIG": config_file(tmp_path), "EXPORTER_ARROW_FAST_PATH": "false"}
    assert Settings.from_environ(environ).arrow_fast_path is False


def test_a_dataset_declares_its_formula_guard_default() -> None:
    datasets = {"plain": {"table": "t", "key": "id"}, "guarded": {"table": "t", "key": "id", "formula_guard": True}}
    settings = Settings.from_dict({"datasets": datasets})
    assert (settings.datasets["plain"].formula_guard, settings.datasets["guarded"].formula_guard) == (False, True)
    with pytest.raises(ConfigError, match="formula_guard"):
        Settings.from_dict({"datasets": {"bad": {"table": "t", "key": "id", "formula_guard": "maybe"}}})


def test_limits_default_to_per_dialect_slots_a_reserve_of_ten_a_minute_to_send_and_no_statement_timeout() -> None:
    settings = Settings.from_dict({})
    assert (settings.export_slots, settings.reserved_slots) == (None, 10)
    assert (settings.send_timeout_seconds, settings.statement_timeout_seconds) == (60.0, None)
    assert export_slot_count("postgresql+asyncpg://db/x", settings) == 20
    assert export_slot_count("sqlite+aiosqlite:///x.db", settings) == 4


def test_limits_come_from_the_environment(tmp_path: Path) -> None:
    environ = {"EXPORTER_CONFIG": config_file(tmp_path), "EXPORTER_EXPORT_SLOTS": "8", "EXPORTER_RESERVED_SLOTS": "3",
               "EXPORTER_SEND_TIMEOUT_SECONDS": "2.5", "EXPORTER_STATEMENT_TIMEOUT_SECONDS": "30"}
    settings = Settings.from_environ(environ)
    assert (settings.export_slots, settings.reserved_slots) == (8, 3)
    assert (settings.send_timeout_seconds, settings.statement_timeout_seconds) == (2.5, 30.0)
    assert export_slot_count("sqlite+aiosqlite:///x.db", settings) == 8  # set explicitly, for every database


@pytest.mark.parametrize("off", ["0", "off"])
def test_a_statement_timeout_of_0_or_off_is_no_limit(off: str) -> None:
    assert Settings.from_dict({"statement_timeout_seconds": off}).statement_timeout_seconds is None


@pytest.mark.parametrize(("data", "message"), [
    ({"export_slots": 0}, "export_slots must be at least 1"),
    ({"reserved_slots": "some"}, "reserved_slots must be a whole number"),
    ({"send_timeout_seconds": 0}, "send_timeout_seconds must be more than 0"),
    ({"statement_timeout_seconds": -1}, "statement_timeout_seconds must be more than 0"),
])
def test_invalid_limits_raise_config_error(data: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Settings.from_dict(data)
