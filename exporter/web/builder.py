"""The export builder: the form on /datasets/{name} (a plain GET form that works without JavaScript; builder.js
turns the same fields into the same URL), checked by the export's own validation."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from urllib.parse import quote, urlencode

from fastapi import Request, Response
from fastapi.responses import RedirectResponse
from starlette.datastructures import QueryParams

from exporter.access.grants import Caller
from exporter.errors import ExportError, InvalidParameter
from exporter.export.request import prepare_export
from exporter.formats import FORMATS
from exporter.sources.datasets import Catalog, Dataset
from exporter.web.rendering import render

# Which filter operators make sense for a kind of column (all of them are the query string's own).
ORDERED = ("eq", "ne", "gt", "gte", "lt", "lte", "in", "isnull")
OPERATORS_BY_KIND = {
    "integer": ORDERED, "decimal": ORDERED, "float": ORDERED, "text": ORDERED, "date": ORDERED, "time": ORDERED,
    "timestamp": ORDERED, "timestamptz": ORDERED, "boolean": ("eq", "ne", "isnull"),
    "uuid": ("eq", "ne", "in", "isnull"),
}
OPERATOR_LABELS = {"eq": "=", "ne": "≠", "gt": ">", "gte": "≥", "lt": "<", "lte": "≤", "in": "one of",
                   "isnull": "is null"}
FILTER_ROWS = 3  # blank filter rows on a fresh page (JavaScript adds more)


@dataclass
class Builder:
    """The builder's form, as its fields came (a plain GET form works without JavaScript), and the export it
    stands for. builder.js turns the same fields into the same URL."""

    columns: list[str]
    filters: list[tuple[str, str, str]]  # (column, operator, value)
    order_by: str = ""
    order_dir: str = "asc"
    limit: str = ""
    format: str = "csv"
    gzip: bool = False
    header: bool = True
    delimiter: str = ","
    null: str = ""
    bom: bool = False
    errors: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_query(cls, query: QueryParams, all_columns: Sequence[str]) -> Builder:
        if "format" not in query:  # a fresh page: everything checked, the defaults
            return cls(list(all_columns), [])
        filters = [(c, o, v) for c, o, v in zip(query.getlist("f_col"), query.getlist("f_op"),
                                               query.getlist("f_val"), strict=False) if c and o]
        return cls(
            columns=[c for c in query.getlist("col") if c in all_columns], filters=filters,
            order_by=query.get("order_by", ""), order_dir=query.get("order_dir", "asc"), limit=query.get("limit", ""),
            format="ndjson" if query.get("format") == "ndjson" else "csv", gzip=query.get("gzip") == "true",
            header=query.get("header") == "true", delimiter=query.get("delimiter", ","), null=query.get("null", ""),
            bom=query.get("bom") == "true",
        )

    def filename(self, name: str) -> str:
        return f"{name}.{self.format}{'.gz' if self.gzip else ''}"

    def params(self, all_columns: Sequence[str]) -> list[tuple[str, str]]:
        params: list[tuple[str, str]] = []
        if self.columns != list(all_columns):
            params.append(("columns", ",".join(self.columns)))
        params += [(f"{column}__{op}", value) for column, op, value in self.filters]
        if self.order_by:
            params.append(("order", ("-" if self.order_dir == "desc" else "") + self.order_by))
        if self.limit.strip():
            params.append(("limit", self.limit.strip()))
        if self.format == "csv":
            if not self.header:
                params.append(("header", "false"))
            if self.delimiter != ",":
                params.append(("delimiter", self.delimiter))
            if self.null:
                params.append(("null", self.null))
            if self.bom:
                params.append(("bom", "true"))
        return params


def export_url(filename: str, params: Sequence[tuple[str, str]]) -> str:
    """The export's URL; commas and colons stay as they are (`columns=id,amount`), readable and valid in a query
    (RFC 3986 §3.4). builder.js writes the same."""
    query = urlencode(params, quote_via=lambda text, *_: quote(text, safe=",:"))
    return f"/exports/{quote(filename)}" + (f"?{query}" if params else "")


async def dataset_page(request: Request, catalog: Catalog, dataset: Dataset, caller: Caller) -> Response:
    """The export builder. With `download` in the query (the no-JavaScript Download button), the form is checked
    by the export's own validation and the browser is sent to the export URL, or shown the error by its field."""
    restriction = caller.restriction(dataset.name)
    described = dataset.describe(list(FORMATS), restriction.columns)
    names = [c["name"] for c in described["columns"]]
    builder = Builder.from_query(request.query_params, names)
    filename, params = builder.filename(dataset.name), builder.params(names)
    status = 200
    if "download" in request.query_params:
        try:
            if not builder.columns:
                raise InvalidParameter("columns: choose at least one column", parameter="columns")
            await prepare_export(catalog, filename, params, restriction)
        except ExportError as error:
            builder.errors[error.parameter or "form"] = error.message
            status = error.status
        else:
            return RedirectResponse(export_url(filename, params), status_code=303)
    columns = [{**c, "kind": dataset.columns[c["name"]].kind} for c in described["columns"]]
    # The chosen columns in their chosen order, then the rest in the table's: a reloaded page keeps the order.
    chosen = {name: i for i, name in enumerate(builder.columns)}
    shown = sorted(columns, key=lambda c: chosen.get(c["name"], len(chosen)))
    operators = {c["name"]: OPERATORS_BY_KIND.get(c["kind"], ("isnull",)) for c in columns}
    filters = builder.filters + [("", "", "")] * max(FILTER_ROWS - len(builder.filters), 1)
    return render(request, "dataset.html", {
        "dataset": described, "columns": shown, "default_columns": names, "builder": builder, "filters": filters,
        "operators": operators, "operator_labels": OPERATOR_LABELS, "export_url": export_url(filename, params),
        "limit_rows": restriction.max_rows,
    }, status_code=status, caller=caller)


