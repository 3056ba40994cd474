"""Exports over a real uvicorn server, on PostgreSQL and on SQLite."""

from __future__ import annotations

import csv
import gzip
import io
import json
import subprocess
import warnings
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import httpx
import pytest
import zstandard
from sqlalchemy import exc, select
from sqlalchemy.ext.asyncio import AsyncEngine

from exporter.config import Settings
from exporter.models import Order
from tests.conftest import Database
from tests.helpers import export_log, wait_for
from tests.servers import ChunkedReader, ServerThread

Serve = Callable[[Settings], ServerThread]
COLUMNS = [c.name for c in Order.__table__.columns]


def stored_orders(db: Database, where: str = "") -> list[dict[str, Any]]:
    """The demo rows as the database holds them, read through SQLAlchemy's own typed columns."""

    async def work(engine: AsyncEngine) -> list[dict[str, Any]]:
        async with engine.connect() as conn:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", exc.SAWarning)  # SQLite's Decimal-from-float notice
                result = await conn.execute(select(Order.__table__).order_by(Order.__table__.c.id))
                rows = [dict(row._mapping) for row in result]
        for row in rows:
            for name in ("created_at", "shipped_at"):
                if row[name] is not None and row[name].tzinfo is None:
                    row[name] = row[name].replace(tzinfo=UTC)  # SQLite stores UTC without an offset
        return rows

    rows: list[dict[str, Any]] = db.run(work)
    return rows


def parse_csv_value(name: str, text: str, null: str) -> Any:
    if text == null and name in ("shipped_at", "note"):
        return None
    if name in ("id", "customer_id"):
        return int(text)
    if name == "amount":
        return Decimal(text)
    if name in ("created_at", "shipped_at"):
        assert text.endswith("+00:00"), text
        return datetime.fromisoformat(text)
    if name == "is_gift":
        assert text in ("true", "false")
        return text == "true"
    return text


def parse_ndjson(body: bytes) -> list[dict[str, Any]]:
    rows = [json.loads(line, parse_float=Decimal) for line in body.decode().splitlines()]
    for row in rows:
        for name in ("created_at", "shipped_at"):
            if row.get(name) is not None:
                row[name] = datetime.fromisoformat(row[name])
        if "amount" in row:
            row["amount"] = Decimal(row["amount"])
    return rows


@pytest.mark.parametrize(
    ("params", "null", "delimiter"),
    [({}, "", ","), ({"null": "NULL", "delimiter": ";", "bom": "true"}, "NULL", ";"), ({"delimiter": "\t"}, "", "\t")],
    ids=["defaults", "null-delimiter-bom", "tab"],
)
def test_csv_export_round_trips_every_stored_value(
    db: Database, serve: Serve, params: dict[str, str], null: str, delimiter: str
) -> None:
    db.seed_demo(2000)
    server = serve(db.settings(batch_rows=300))
    response = httpx.get(f"{server.url}/exports/orders.csv", params=params)
    assert response.status_code == 200
    body = response.content.decode()
    if params.get("bom") == "true":
        assert body.startswith("\ufeff")
        body = body.removeprefix("\ufeff")
    reader = csv.reader(io.StringIO(body, newline=""), delimiter=delimiter)
    assert next(reader) == COLUMNS
    exported = [{n: parse_csv_value(n, v, null) for n, v in zip(COLUMNS, row, strict=True)} for row in reader]
    expected = stored_orders(db)
    if not null:  # with the default NULL text, csv readers cannot tell NULL from "": both read as ""
        for row in expected:
            row["note"] = row["note"] or None
        for row in exported:
            row["note"] = row["note"] or None
    assert exported == expected
    assert any("\n" in (row["note"] or "") for row in exported)


def test_csv_export_quotes_empty_strings_and_leaves_nulls_bare(db: Database, serve: Serve) -> None:
    db.seed_demo(200)
    empty_note_id = next(r["id"] for r in stored_orders(db) if r["note"] == "")
    server = serve(db.settings())
    body = httpx.get(f"{server.url}/exports/orders.csv", params={"columns": "id,note,shipped_at"}).text
    assert f'\n{empty_note_id},"",' in body
    assert "3,,\n" in body  # row 3: NULL note, NULL shipped_at


def test_ndjson_export_round_trips_every_stored_value(db: Database, serve: Serve) -> None:
    db.seed_demo(2000)
    server = serve(db.settings(batch_rows=300))
    response = httpx.get(f"{server.url}/exports/orders.ndjson")
    assert response.status_code == 200
    assert b"NaN" not in response.content
    exported = parse_ndjson(response.content)
    assert exported == stored_orders(db)
    assert [list(row) for row in exported[:1]] == [COLUMNS]


@pytest.mark.parametrize(
    ("filename", "content_type"),
    [("orders.csv", "text/csv; charset=utf-8"), ("orders.ndjson", "application/x-ndjson"),
     ("orders.csv.gz", "application/gzip"), ("orders.ndjson.gz", "application/gzip"),
     ("orders.csv.zst", "application/zstd"), ("orders.ndjson.zst", "application/zstd")],
)
def test_exports_send_download_headers(db: Database, serve: Serve, filename: str, content_type: str) -> None:
    db.seed_demo(10)
    server = serve(db.settings())
    get = httpx.get(f"{server.url}/exports/{filename}", headers={"Accept-Encoding": "identity"})
    assert get.status_code == 200
    assert get.headers["content-type"] == content_type
    assert get.headers["content-disposition"] == f'attachment; filename="{filename}"'
    assert get.headers["cache-control"] == "no-store"
    assert get.headers["x-accel-buffering"] == "no"
    assert get.headers["transfer-encoding"] == "chunked"
    assert "content-length" not in get.headers
    head = httpx.head(f"{server.url}/exports/{filename}", headers={"Accept-Encoding": "identity"})
    assert head.status_code == 200
    assert head.content == b""
    skip = {"date", "transfer-encoding", "x-request-id"}  # a request id is each request's own
    assert head.headers["x-request-id"] != get.headers["x-request-id"]
    assert {k: v for k, v in head.headers.items() if k not in skip} == {
        k: v for k, v in get.headers.items() if k not in skip
    }


def test_gz_names_give_a_gzip_file_and_accept_encoding_gives_content_encoding(db: Database, serve: Serve) -> None:
    db.seed_demo(1000)
    server = serve(db.settings())
    plain = httpx.get(f"{server.url}/exports/orders.csv", headers={"Accept-Encoding": "identity"})
    assert "content-encoding" not in plain.headers
    gz_file = httpx.get(f"{server.url}/exports/orders.csv.gz", headers={"Accept-Encoding": "identity"})
    assert "content-encoding" not in gz_file.headers
    assert gzip.decompress(gz_file.content) == plain.content
    with httpx.stream("GET", f"{server.url}/exports/orders.csv", headers={"Accept-Encoding": "gzip"}) as encoded:
        assert encoded.headers["content-encoding"] == "gzip"
        assert encoded.headers["vary"] == "Accept-Encoding"
        assert gzip.decompress(b"".join(encoded.iter_raw())) == plain.content
    raw = httpx.get(f"{server.url}/exports/orders.csv", headers={"Accept-Encoding": "gzip"})
    assert raw.content == plain.content  # httpx decodes Content-Encoding
    refused = httpx.get(f"{server.url}/exports/orders.csv", headers={"Accept-Encoding": "gzip;q=0"})
    assert "content-encoding" not in refused.headers


def test_zst_names_give_a_zstd_file_and_accept_encoding_zstd_gives_content_encoding(
    db: Database, serve: Serve
) -> None:
    db.seed_demo(1000)
    server = serve(db.settings())
    for name in ("orders.csv", "orders.ndjson"):
        plain = httpx.get(f"{server.url}/exports/{name}", headers={"Accept-Encoding": "identity"}).content
        zst_file = httpx.get(f"{server.url}/exports/{name}.zst", headers={"Accept-Encoding": "identity"})
        assert "content-encoding" not in zst_file.headers
        assert zstandard.ZstdDecompressor().decompressobj().decompress(zst_file.content) == plain
        with httpx.stream("GET", f"{server.url}/exports/{name}", headers={"Accept-Encoding": "zstd"}) as encoded:
            assert encoded.headers["content-encoding"] == "zstd"
            assert encoded.headers["vary"] == "Accept-Encoding"
            body = b"".join(encoded.iter_raw())
        assert zstandard.ZstdDecompressor().decompressobj().decompress(body) == plain
        both = httpx.get(f"{server.url}/exports/{name}", headers={"Accept-Encoding": "zstd, gzip"})
        assert both.headers["content-encoding"] == "gzip"
        preferred = httpx.get(f"{server.url}/exports/{name}", headers={"Accept-Encoding": "gzip;q=0.5, zstd"})
        assert (preferred.headers["content-encoding"], preferred.content) == ("zstd", plain)
        curl = subprocess.run(["curl", "-fsS", "--compressed", "-H", "Accept-Encoding: zstd", "-D", "-",
                               f"{server.url}/exports/{name}"], capture_output=True, check=True)
        head, _, curl_body = curl.stdout.partition(b"\r\n\r\n")
        assert b"content-encoding: zstd" in head.lower()
        assert curl_body == plain


def test_a_parquet_or_xlsx_export_never_gets_a_content_encoding(db: Database, serve: Serve) -> None:
    db.seed_demo(10)
    server = serve(db.settings())
    for name in ("orders.parquet", "orders.arrow", "orders.xlsx"):
        response = httpx.get(f"{server.url}/exports/{name}", headers={"Accept-Encoding": "gzip, zstd"})
        assert response.status_code == 200, response.text
        assert "content-encoding" not in response.headers


GUARD_ROWS = [(1, "=1+2", -5, "-5"), (2, "+x", 3, "@SUM(A1)"), (3, "\tcell", -1, "-"), (4, "\rcr", 0, "a=b"),
              (5, "plain", -2, None), (6, "", 7, "'quoted")]


def guard_table(db: Database) -> dict[str, Any]:
    db.execute("DROP TABLE IF EXISTS guard_rows",
               "CREATE TABLE guard_rows (id integer PRIMARY KEY, t text, n integer, u varchar(20))")
    for row in GUARD_ROWS:
        db.execute("INSERT INTO guard_rows VALUES (:id, :t, :n, :u)", **dict(zip(["id", "t", "n", "u"], row,
                                                                                   strict=True)))
    return {"guard_rows": {"table": "guard_rows", "key": "id"},
            "guarded": {"table": "guard_rows", "key": "id", "formula_guard": True}}


GUARDED_CSV = ("id,t,n,u\n1,'=1+2,-5,'-5\n2,'+x,3,'@SUM(A1)\n3,'\tcell,-1,'-\n4,\"'\rcr\",0,a=b\n"
               "5,plain,-2,\n6,\"\",7,'quoted\n")


def test_formula_guard_quotes_text_that_spreadsheets_would_run_and_leaves_numbers(db: Database, serve: Serve
                                                                                  ) -> None:
    server = serve(db.settings(datasets=guard_table(db)))
    guarded = httpx.get(f"{server.url}/exports/guard_rows.csv", params={"formula_guard": "true"})
    assert guarded.text == GUARDED_CSV
    by_config = httpx.get(f"{server.url}/exports/guarded.csv")
    assert by_config.text == GUARDED_CSV
    unguarded = httpx.get(f"{server.url}/exports/guarded.csv", params={"formula_guard": "false"})
    assert unguarded.text.splitlines()[1] == "1,=1+2,-5,-5"
    assert httpx.get(f"{server.url}/exports/guard_rows.csv").text == unguarded.text
    refused = httpx.get(f"{server.url}/exports/guard_rows.ndjson", params={"formula_guard": "true"})
    assert (refused.status_code, refused.json()["error"]["parameter"]) == (400, "formula_guard")


@pytest.mark.parametrize(
    ("params", "where"),
    [
        ({"status": "paid"}, lambda r: r["status"] == "paid"),
        ({"status__ne": "paid"}, lambda r: r["status"] != "paid"),
        ({"amount__gt": "5000.00"}, lambda r: r["amount"] > Decimal("5000.00")),
        ({"amount__lte": "79.19"}, lambda r: r["amount"] <= Decimal("79.19")),
        ({"id__gte": "10", "id__lt": "20"}, lambda r: 10 <= r["id"] < 20),
        ({"created_at__gte": "2024-01-01T12:00:00Z"},
         lambda r: r["created_at"] >= datetime(2024, 1, 1, 12, tzinfo=UTC)),
        ({"created_at__lt": "2024-01-01T13:00:00+01:00"},
         lambda r: r["created_at"] < datetime(2024, 1, 1, 12, tzinfo=UTC)),
        ({"created_at": "2024-01-01T00:00:53"}, lambda r: r["id"] == 1),
        ({"shipped_at__isnull": "true"}, lambda r: r["shipped_at"] is None),
        ({"shipped_at__isnull": "false"}, lambda r: r["shipped_at"] is not None),
        ({"country__in": "DE,FR"}, lambda r: r["country"] in ("DE", "FR")),
        ({"is_gift": "true"}, lambda r: r["is_gift"]),
        ({"currency": "EUR", "is_gift": "false"}, lambda r: r["currency"] == "EUR" and not r["is_gift"]),
    ],
    ids=lambda value: json.dumps(value) if isinstance(value, dict) else "",
)
def test_filters_select_what_the_same_condition_selects_in_python(
    db: Database, serve: Serve, params: dict[str, str], where: Callable[[dict[str, Any]], bool]
) -> None:
    db.seed_demo(1500)
    server = serve(db.settings())
    response = httpx.get(f"{server.url}/exports/orders.ndjson", params=params)
    assert response.status_code == 200, response.text
    exported = [row["id"] for row in parse_ndjson(response.content)]
    expected = [row["id"] for row in stored_orders(db) if where(row)]
    assert expected
    assert exported == expected


def test_columns_order_and_limit_shape_the_export(db: Database, serve: Serve) -> None:
    db.seed_demo(500)
    server = serve(db.settings())
    body = httpx.get(
        f"{server.url}/exports/orders.csv",
        params={"columns": "amount,id", "order": "-amount,id", "limit": "5"},
    ).text
    rows = list(csv.reader(io.StringIO(body, newline="")))
    stored = sorted(stored_orders(db), key=lambda r: (-r["amount"], r["id"]))[:5]
    assert rows == [["amount", "id"]] + [[str(r["amount"]), str(r["id"])] for r in stored]
    assert httpx.get(f"{server.url}/exports/orders.csv", params={"limit": "0"}).text == ",".join(COLUMNS) + "\n"


def test_after_resumes_exactly_where_a_broken_download_stopped(db: Database, serve: Serve) -> None:
    db.seed_demo(3000)
    server = serve(db.settings(batch_rows=250))
    full = httpx.get(f"{server.url}/exports/orders.ndjson").content
    lines = full.splitlines(keepends=True)
    broken = b"".join(lines[:1234])
    last_id = json.loads(lines[1233])["id"]
    rest = httpx.get(f"{server.url}/exports/orders.ndjson", params={"after": str(last_id)}).content
    assert broken + rest == full
    backwards = httpx.get(f"{server.url}/exports/orders.ndjson", params={"order": "-id", "after": "11"})
    assert [row["id"] for row in parse_ndjson(backwards.content)] == list(range(10, 0, -1))


@pytest.mark.parametrize(
    ("path", "status", "code", "parameter"),
    [
        ("/exports/nothing.csv", 404, "unknown_dataset", "name"),
        ("/exports/orders.xls", 404, "unknown_format", "format"),
        ("/exports/orders.parquet.gz", 404, "unknown_format", "format"),
        ("/exports/orders", 404, "unknown_format", "format"),
        ("/exports/orders.csv?columns=id,nope", 400, "unknown_column", "columns"),
        ("/exports/orders.csv?nope=1", 400, "unknown_column", "nope"),
        ("/exports/orders.csv?note=x", 400, "column_not_filterable", "note"),
        ("/exports/orders.csv?status__like=p%25", 400, "unknown_operator", "status__like"),
        ("/exports/orders.csv?amount__gt=lots", 400, "invalid_value", "amount__gt"),
        ("/exports/orders.csv?id=99999999999999999999", 400, "invalid_value", "id"),
        ("/exports/orders.csv?created_at__gt=yesterday", 400, "invalid_value", "created_at__gt"),
        ("/exports/orders.csv?is_gift=yes", 400, "invalid_value", "is_gift"),
        ("/exports/orders.csv?status=a%00b", 400, "invalid_value", "status"),
        ("/exports/orders.csv?shipped_at__isnull=maybe", 400, "invalid_value", "shipped_at__isnull"),
        ("/exports/orders.csv?order=-nope", 400, "unknown_column", "order"),
        ("/exports/orders.csv?order=status&after=5", 400, "after_requires_key_order", "after"),
        ("/exports/orders.csv?after=abc", 400, "invalid_value", "after"),
        ("/exports/orders.csv?limit=-1", 400, "invalid_parameter", "limit"),
        ("/exports/orders.csv?limit=1&limit=2", 400, "invalid_parameter", "limit"),
        ("/exports/orders.csv?delimiter=ab", 400, "invalid_parameter", "delimiter"),
        ("/exports/orders.csv?header=yes", 400, "invalid_parameter", "header"),
        ("/exports/orders.csv?bom=1", 400, "invalid_parameter", "bom"),
        ("/exports/orders.ndjson?delimiter=%3B", 400, "invalid_parameter", "delimiter"),
        ("/exports/orders.parquet?bom=true", 400, "invalid_parameter", "bom"),
        ("/exports/orders.xlsx?formula_guard=true", 400, "invalid_parameter", "formula_guard"),
        ("/exports/orders.csv?formula_guard=1", 400, "invalid_parameter", "formula_guard"),
    ],
)
def test_bad_input_gets_a_json_error_naming_the_parameter_before_any_body(
    db: Database, serve: Serve, path: str, status: int, code: str, parameter: str
) -> None:
    db.seed_demo(10)
    server = serve(db.settings())
    for method in ("GET", "HEAD"):
        response = httpx.request(method, server.url + path)
        assert response.status_code == status
    response = httpx.get(server.url + path)
    assert response.headers["content-type"] == "application/json"
    assert response.json()["error"]["code"] == code
    assert response.json()["error"]["parameter"] == parameter
    assert response.json()["error"]["message"]


def test_a_missing_table_is_a_503_that_says_so(db: Database, serve: Serve) -> None:
    server = serve(db.settings(datasets={"ghost": {"table": "no_such_table", "key": "id"}}))
    response = httpx.get(f"{server.url}/exports/ghost.csv")
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "dataset_unavailable"
    assert "no_such_table" in response.json()["error"]["message"]


def test_an_unreachable_source_database_is_a_503_before_any_body(db: Database, serve: Serve) -> None:
    server = serve(db.settings(
        sources={"down": {"url": "postgresql+asyncpg://postgres@127.0.0.1:1/none"}},
        datasets={"remote": {"table": "orders", "key": "id", "source": "down"}},
    ))
    response = httpx.get(f"{server.url}/exports/remote.csv")
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "database_unavailable"


def test_csv_export_sends_first_rows_before_the_query_finishes_in_chunks_of_tens_of_kib(
    db: Database, serve: Serve
) -> None:
    db.seed_demo(100_000)
    db.execute("DELETE FROM export_log")
    server = serve(db.settings(batch_rows=500))
    with ChunkedReader(server.url, "/exports/orders.csv") as reader:
        first = reader.next_chunk()
        assert first is not None and first.startswith(b"id,customer_id")
        # Still running: an export logs its end only after its last row is sent.
        assert export_log(db, "orders") == []
        sizes = [len(first)]
        while (chunk := reader.next_chunk()) is not None:
            sizes.append(len(chunk))
    assert sum(sizes) > 8 * 1024 * 1024
    # Tens of KiB and up: a batch per chunk (generic), or COPY's pieces joined to 64 KiB; asyncpg hands over
    # larger pieces when data has piled up, so the ceiling only rules out buffering the result.
    assert all(32 * 1024 <= size <= 1024 * 1024 for size in sizes[1:-1]), sizes
    assert wait_for(lambda: export_log(db, "orders"))[0]["outcome"] == "completed"


def test_export_log_records_each_export_however_it_ends(db: Database, serve: Serve) -> None:
    db.execute("DELETE FROM export_log")
    db.seed_demo(100_000)
    server = serve(db.settings(batch_rows=500))
    completed = httpx.get(f"{server.url}/exports/orders.csv.gz", params={"status": "paid", "limit": "7"})
    # A small receive buffer: 100,000 NDJSON rows (20 MB) could otherwise all fit in loopback's socket buffers
    # before the client leaves, and the export would have sent every row.
    with ChunkedReader(server.url, "/exports/orders.ndjson") as reader:
        assert reader.next_chunk()
    httpx.head(f"{server.url}/exports/orders.csv")
    entries = wait_for(lambda: export_log(db, "orders") if len(export_log(db, "orders")) == 2 else None)
    first, second = entries
    assert first["outcome"] == "completed"
    assert first["rows"] == 7
    assert first["bytes"] == len(completed.content)
    assert first["format"] == "csv.gz"
    assert _json(first["parameters"]) == {"status": ["paid"], "limit": ["7"]}
    assert first["client_address"] == "127.0.0.1"
    assert first["duration_seconds"] >= 0
    assert first["error"] is None
    assert second["outcome"] == "aborted"
    assert 0 < second["rows"] < 100_000


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


def test_postgresql_and_sqlite_export_the_same_rows_as_the_same_bytes(
    postgres_url: str, sqlite_url: str, serve: Serve
) -> None:
    bodies = {}
    for db in (Database("postgresql", postgres_url), Database("sqlite", sqlite_url)):
        db.seed_demo(3000)
        server = serve(db.settings())
        bodies[db.dialect] = [
            httpx.get(f"{server.url}/exports/orders.{fmt}", params=params).content
            for fmt, params in [("csv", {}), ("ndjson", {}), ("csv", {"null": "NULL", "bom": "true"}),
                                ("ndjson", {"shipped_at__isnull": "false", "amount__gte": "100.5"})]
        ]
    assert bodies["postgresql"] == bodies["sqlite"]


def test_postgresql_export_reads_one_read_only_repeatable_read_snapshot(pg: Database, serve: Serve) -> None:
    sql = ("SELECT 1 AS id, current_setting('transaction_isolation') AS isolation,"
           " current_setting('transaction_read_only') AS read_only")
    server = serve(pg.settings(datasets={"tx": {"sql": sql, "key": "id"}}))
    assert httpx.get(f"{server.url}/exports/tx.csv").text == "id,isolation,read_only\n1,repeatable read,on\n"


def test_a_dataset_reads_from_its_named_source_while_the_log_goes_to_the_service_database(
    postgres_url: str, sqlite_url: str, serve: Serve
) -> None:
    replica, service = Database("postgresql", postgres_url), Database("sqlite", sqlite_url)
    replica.seed_demo(50)
    service.execute("DROP TABLE IF EXISTS orders", "DELETE FROM export_log")
    server = serve(service.settings(
        sources={"replica": {"url": postgres_url}},
        datasets={"replica_orders": {"table": "orders", "key": "id", "source": "replica"}},
    ))
    assert len(httpx.get(f"{server.url}/exports/replica_orders.ndjson").content.splitlines()) == 50
    entry = wait_for(lambda: export_log(service, "replica_orders"))
    assert entry[0]["rows"] == 50
