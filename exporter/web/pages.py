"""The page routes: sign-in and sign-out, and the dataset list. The other pages are the API's own routes answering
a browser (see rendering.wants_html); a page calls the same stages as the API, never a query of its own."""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from fastapi import APIRouter, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse

from exporter.access import sessions
from exporter.audit import record_refusal
from exporter.errors import DatabaseUnavailable, DatasetUnavailable, Forbidden, InvalidCsrfToken, Unauthorized
from exporter.export.cursor import estimate_rows
from exporter.export.request import prepare_export
from exporter.formats import FORMATS
from exporter.services import AuthenticatorDep, CallerDep, CatalogDep, ServicesDep, SettingsDep
from exporter.web.rendering import render

router = APIRouter(tags=["pages"], include_in_schema=False)


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
async def sign_in(request: Request, settings: SettingsDep, authenticator: AuthenticatorDep,
                  services: ServicesDep) -> Response:
    """Exchange an API key for a session cookie that names the key (the token itself is never stored in it). A
    failed attempt is audited as a `denied` row, without the token it sent."""
    if settings.auth == "off":
        return RedirectResponse("/", status_code=303)
    if not _same_origin(request):
        raise Forbidden("sign in from this service's own sign-in page")
    form = await _form(request)
    token, next = form.get("token", ""), form.get("next", "/")
    try:
        key = await authenticator.sign_in(request, token.strip())
    except Unauthorized as error:
        await record_refusal(services.engine, request, error)
        return render(request, "sign_in.html", {"next": _local(next), "message": error.message},
                      status_code=error.status)
    expires = int(time.time() + settings.session_hours * 3600)
    value = await authenticator.start_session(key.id, expires)
    response = RedirectResponse(_local(next), status_code=303)
    response.set_cookie(sessions.COOKIE, value, max_age=int(settings.session_hours * 3600), path="/",
                        httponly=True, samesite="strict", secure=request.url.scheme == "https")
    return response


@router.post("/sign-out", response_class=HTMLResponse)
async def sign_out(request: Request, settings: SettingsDep, authenticator: AuthenticatorDep) -> Response:
    """End the session (on every replica) and clear its cookie. A cookie session must show its CSRF token (a form
    field here), so that another site cannot sign the user out."""
    session = request.cookies.get(sessions.COOKIE)
    csrf_token = (await _form(request)).get(sessions.CSRF_FIELD)
    if session is not None and authenticator.enabled and not authenticator.csrf_matches(session, csrf_token):
        raise InvalidCsrfToken("this sign-out did not come from the page: reload it and sign out again")
    if session is not None:
        await authenticator.end_session(session)
    response = RedirectResponse("/sign-in" if settings.auth != "off" else "/", status_code=303)
    response.delete_cookie(sessions.COOKIE, path="/", httponly=True, samesite="strict",
                           secure=request.url.scheme == "https")
    return response


def _same_origin(request: Request) -> bool:
    """Whether a form POST comes from a page of this site: browsers send Origin with every POST, so another site
    cannot sign a visitor in with its own key (login CSRF). A client that sends no Origin is not a browser page."""
    origin = request.headers.get("origin")
    try:
        return origin is None or urlsplit(origin).netloc == request.headers.get("host")
    except ValueError:  # urlsplit refuses an unclosed IPv6 bracket (`http://[`): not our page either
        return False


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


