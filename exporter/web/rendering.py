"""Rendering pages: the templates, numbers for people, content negotiation (wants_html), the security headers every
page carries, and the error page. Pages are what the API gives a browser: `/datasets/{name}`, `/jobs` and
`/files/{root}/` answer HTML when the request's Accept prefers it, with what their JSON routes computed."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

from fastapi import Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.templating import Jinja2Templates

from exporter.access import sessions
from exporter.access.grants import Caller
from exporter.errors import ExportError, Unauthorized

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


def render(request: Request, template: str, context: Mapping[str, Any], status_code: int = 200,
           caller: Caller | None = None) -> HTMLResponse:
    caller = caller or getattr(request.state, "caller", None)
    # Set by authentication: `csrf` for a browser session; a caller with a key id means auth is on.
    base = {"auth": caller is not None and not caller.anonymous, "caller": caller,
            "csrf": getattr(request.state, "csrf", "")}
    return templates.TemplateResponse(request, template, {**base, **context}, status_code=status_code,
                                      headers=SECURITY_HEADERS)


def error_page_for(auth: bool) -> Callable[[Request, ExportError], Response | None]:
    """The error handler's page for a browser: with `auth` on, a 401 sends it to sign in (and back afterwards);
    any other error is a page with the message. The page is None for every other client, which gets the JSON
    error."""

    def error_page(request: Request, error: ExportError) -> Response | None:
        if not wants_html(request):
            return None
        if isinstance(error, Unauthorized) and auth:
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

    return error_page
# --- jobs and files -------------------------------------------------------------------------------------------------


def jobs_page(request: Request, jobs: Sequence[Mapping[str, Any]], caller: Caller) -> Response:
    return render(request, "jobs.html", {"jobs": jobs}, caller=caller)


def directory_page(request: Request, listing: Mapping[str, Any], caller: Caller) -> Response:
    base = f"/files/{quote(listing['root'])}/{quote(listing['path'])}"
    entries = [{**entry, "url": base + quote(entry["name"]) + ("/" if entry["kind"] == "directory" else "")}
               for entry in listing["entries"]]
    return render(request, "directory.html", {"listing": listing, "entries": entries}, caller=caller)
