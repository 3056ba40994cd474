"""The web pages for analysts: the dataset list, the export builder, jobs, directory listings, sign-in and sign-out.

Pages are what the API gives a browser: `/datasets/{name}`, `/jobs` and `/files/{root}/` answer HTML when the
request's Accept prefers it (see `wants_html`) by calling the functions here with what their JSON routes computed.
A page calls the same stages as the API (prepare_export, estimate_rows, list_directory), never a query of its own.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit

from fastapi import APIRouter, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.templating import Jinja2Templates
from starlette.datastructures import QueryParams

from exporter.access import sessions
from exporter.access.authentication import CallerDep, verify_token
from exporter.access.keys import Caller
from exporter.errors import (
    DatabaseUnavailable,
    DatasetUnavailable,
    ExportError,
    Forbidden,
    InvalidCsrfToken,
    InvalidParameter,
    Unauthorized,
)
from exporter.export.cursor import estimate_rows
from exporter.export.pipeline import prepare_export
from exporter.formats import FORMATS
from exporter.services import CatalogDep, SettingsDep
from exporter.sources.datasets import Catalog, Dataset

router = APIRouter(tags=["pages"], include_in_schema=False)

HERE = Path(__file__).resolve().parent
STATIC = HERE / "static"
templates = Jinja2Templates(directory=HERE / "templates")

# Scripts and styles come only from /static (no inline code, no CDN); pages cannot be framed.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; "
                               "form-action 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
    "Vary": "Accept, Cookie",
}

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


# --- numbers for people ------------------------------------------------------------------------------------------


def format_count(value: int | None, unit: str = "") -> str:
    if value is None:
        return "unknown"
    text = f"{value:,}"
    return f"{text} {unit}{'' if value == 1 else 's'}" if unit else text


def format_bytes(value: int | None) -> str:
    """Decimal units, one decimal: `81.4 MB`."""
    if value is None:
        return ""
    size = float(value)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{int(size)} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    raise AssertionError("unreachable")


def format_seconds(value: float | None) -> str:
    return "" if value is None else f"{value:.1f} s"


templates.env.filters.update(number=format_count, bytes=format_bytes, seconds=format_seconds)


# --- negotiation and the pieces every page has -------------------------------------------------------------------


def wants_html(request: Request) -> bool:
    """Whether the Accept header names text/html and prefers it to JSON (a browser's navigation). curl, httpx and
    fetch() send */* or nothing, so they keep getting JSON, the API's default."""
    weights: dict[str, float] = {}
    for item in request.headers.get("accept", "").split(","):
        media, *params = (part.strip() for part in item.split(";"))
        weight = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip() == "q":
                try:
                    weight = float(value)
                except ValueError:
                    weight = 0.0
        weights[media.lower()] = max(weight, weights.get(media.lower(), 0.0))
    html = weights.get("text/html", 0.0)
    json = weights.get("application/json", weights.get("application/*", weights.get("*/*", 0.0)))
    return html > 0 and html >= json


def _csrf(request: Request) -> str:
    session = getattr(request.state, "session", None)
    secret = getattr(request.app.state, "session_secret", None)
    return "" if session is None or secret is None else sessions.csrf_token(secret, session)


def render(request: Request, template: str, context: Mapping[str, Any], status_code: int = 200,
           caller: Caller | None = None) -> HTMLResponse:
    caller = caller or getattr(request.state, "caller", None)
    base = {"auth": request.app.state.settings.auth != "off", "caller": caller, "csrf": _csrf(request)}
    return templates.TemplateResponse(request, template, {**base, **context}, status_code=status_code,
                                      headers=SECURITY_HEADERS)


def error_page(request: Request, error: ExportError) -> Response | None:
    """For a browser: a 401 sends it to sign in (and back afterwards); any other error is a page with the
    message. None for every other client, which gets the JSON error."""
    if not wants_html(request):
        return None
    if isinstance(error, Unauthorized) and request.app.state.settings.auth != "off":
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        response = RedirectResponse(f"/sign-in?{urlencode({'next': target})}", status_code=303)
        if sessions.COOKIE in request.cookies:
            response.delete_cookie(sessions.COOKIE, path="/")
        return response
    referer = urlsplit(request.headers.get("referer", ""))  # a script-free Back link (the CSP forbids javascript:)
    back = None
    if referer.netloc == request.url.netloc:
        back = referer.path + (f"?{referer.query}" if referer.query else "")
    return render(request, "error.html", {"error": error, "code": error.code(), "back": back},
                  status_code=error.status)


# --- sign-in and sign-out -----------------------------------------------------------------------------------------


def _local(target: str | None) -> str:
    """Where to go after signing in: a path on this site only (never `//host` or a URL), else the dataset list."""
    if target and target.startswith("/") and not target.startswith(("//", "/\\")):
        return target
    return "/"


@router.get("/sign-in", response_class=HTMLResponse)
async def sign_in_page(request: Request, settings: SettingsDep, next: str | None = None) -> Response:
    if settings.auth == "off":
        return RedirectResponse("/", status_code=303)
    return render(request, "sign_in.html", {"next": _local(next), "message": None})


@router.post("/sign-in", response_class=HTMLResponse)
async def sign_in(request: Request, settings: SettingsDep) -> Response:
    """Exchange an API key for a session cookie that names the key (the token itself is never stored in it)."""
    if settings.auth == "off":
        return RedirectResponse("/", status_code=303)
    if not _same_origin(request):
        raise Forbidden("sign in from this service's own sign-in page")
    form = await _form(request)
    token, next = form.get("token", ""), form.get("next", "/")
    try:
        key = await verify_token(request.app.state.keys, token.strip())
    except Unauthorized as error:
        return render(request, "sign_in.html", {"next": _local(next), "message": error.message},
                      status_code=error.status)
    expires = int(time.time() + settings.session_hours * 3600)
    value = sessions.session_value(request.app.state.session_secret, key.id, expires)
    response = RedirectResponse(_local(next), status_code=303)
    response.set_cookie(sessions.COOKIE, value, max_age=int(settings.session_hours * 3600), path="/",
                        httponly=True, samesite="strict", secure=request.url.scheme == "https")
    return response


@router.post("/sign-out", response_class=HTMLResponse)
async def sign_out(request: Request, settings: SettingsDep) -> Response:
    """Clear the session cookie. A cookie session must show its CSRF token (a form field here), so that another
    site cannot sign the user out."""
    session = request.cookies.get(sessions.COOKIE)
    secret = getattr(request.app.state, "session_secret", None)
    csrf_token = (await _form(request)).get(sessions.CSRF_FIELD)
    if session is not None and secret is not None and not sessions.csrf_matches(secret, session, csrf_token):
        raise InvalidCsrfToken("this sign-out did not come from the page: reload it and sign out again")
    response = RedirectResponse("/sign-in" if settings.auth != "off" else "/", status_code=303)
    response.delete_cookie(sessions.COOKIE, path="/", httponly=True, samesite="strict",
                           secure=request.url.scheme == "https")
    return response


def _same_origin(request: Request) -> bool:
    """Whether a form POST comes from a page of this site: browsers send Origin with every POST, so another site
    cannot sign a visitor in with its own key (login CSRF). A client that sends no Origin is not a browser page."""
    origin = request.headers.get("origin")
    return origin is None or urlsplit(origin).netloc == request.headers.get("host")


async def _form(request: Request) -> dict[str, str]:
    """An application/x-www-form-urlencoded body (all these small forms send), first value of each field."""
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/x-www-form-urlencoded":
        return {}
    fields: dict[str, str] = {}
    for name, value in parse_qsl((await request.body()).decode("utf-8", "replace"), keep_blank_values=True):
        fields.setdefault(name, value)
    return fields


# --- the dataset list ---------------------------------------------------------------------------------------------


@router.get("/", response_class=HTMLResponse)
async def index(request: Request, catalog: CatalogDep, caller: CallerDep) -> Response:
    rows: list[dict[str, Any]] = []
    for name in catalog.names:
        if not caller.may("dataset", name):
            continue
        restriction = caller.restriction(name)
        try:
            export = await prepare_export(catalog, f"{name}.csv", [], restriction)
            rows.append({"dataset": export.dataset.describe(list(FORMATS), restriction.columns),
                         "estimate": await estimate_rows(export.dataset.engine, export.query.statement)})
        except (DatasetUnavailable, DatabaseUnavailable) as error:  # one broken source hides no other dataset
            rows.append({"dataset": {"name": name, "description": "", "columns": []}, "error": error.message})
    return render(request, "index.html", {"datasets": rows}, caller=caller)


# --- the export builder -------------------------------------------------------------------------------------------


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


# --- jobs and files -------------------------------------------------------------------------------------------------


def jobs_page(request: Request, jobs: Sequence[Mapping[str, Any]], caller: Caller) -> Response:
    return render(request, "jobs.html", {"jobs": jobs}, caller=caller)


def directory_page(request: Request, listing: Mapping[str, Any], caller: Caller) -> Response:
    base = f"/files/{quote(listing['root'])}/{quote(listing['path'])}"
    entries = [{**entry, "url": base + quote(entry["name"]) + ("/" if entry["kind"] == "directory" else "")}
               for entry in listing["entries"]]
    return render(request, "directory.html", {"listing": listing, "entries": entries}, caller=caller)
