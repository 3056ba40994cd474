"""Logging: text or one JSON object per line (uvicorn's lines too), a request id on every line of a request, and
one access line per request at its end. No line ever holds a query value, a header, a token or a cookie."""

from __future__ import annotations

import contextvars
import logging
import re
import sys
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from exporter.redaction import contains_token, redact_tokens, redacted

REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)
access_log = logging.getLogger("exporter.access")
log = logging.getLogger(__name__)


class AbortedTransfer(Exception):
    """Raised to the server after a mid-stream failure was logged (once, with its cause): the server then drops
    the connection, and its own report of the exception is filtered out."""


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get()
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, AbortedTransfer)  # already logged as one line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
        }
        rid = getattr(record, "request_id", None)
        if rid:
            line["request_id"] = rid
        line.update(getattr(record, "fields", {}))
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return redact_tokens(orjson.dumps(line, default=str).decode())  # a last line of defence: see redaction


# C0 and C1 controls, DEL, and the Unicode line and paragraph separators: anything a terminal or a log shipper may
# take for the end of a line, or act on.
CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def escape_controls(text: str) -> str:
    """`text` on one line: each control character written as its escape (\\n, \\r, \\t, \\x1b, \\u2028)."""
    return CONTROL.sub(lambda found: ESCAPES.get(found[0]) or found[0].encode("unicode_escape").decode(), text)


class TextFormatter(logging.Formatter):
    """One line per record, whatever a request put in its message or fields (a %0a in a path once split an access
    line in two, issue 18). A traceback keeps its lines, each indented, so none can pass for a record."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        return escape_controls(super().formatMessage(record))

    def formatException(self, ei: Any) -> str:
        return _indented(super().formatException(ei))

    def formatStack(self, stack_info: str) -> str:
        return _indented(super().formatStack(stack_info))

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        fields = getattr(record, "fields", {})
        if fields:
            text += " " + " ".join(escape_controls(f"{k}={v}") for k, v in fields.items())
        return redact_tokens(text)


def _indented(text: str) -> str:
    return "\n".join("    " + escape_controls(line) for line in text.splitlines())


def configure_logging(log_format: str | None) -> None:
    """`json`, `text`, or None: text on a terminal, JSON otherwise."""
    chosen = log_format or ("text" if sys.stderr.isatty() else "json")
    handler = logging.StreamHandler()
    handler.addFilter(_RequestIdFilter())
    if chosen == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter("%(asctime)s %(levelname)s %(name)s [%(request_id)s]: %(message)s"))
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(logging.INFO)
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers = []
        logging.getLogger(name).propagate = True
    # uvicorn's access line holds the query string, values and all (a token sent by mistake, a link's signature):
    # ours replaces it.
    logging.getLogger("uvicorn.access").disabled = True
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)


class RequestIds:
    """ASGI middleware: keeps a well-formed X-Request-ID (or makes one), returns it, sets it on every log line of
    the request, and writes the access line. A failure after the response started is logged here once, then the
    connection is dropped (an incomplete transfer)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        # A token fits REQUEST_ID's alphabet, and the id is on every log line and audit row: never keep one.
        rid = incoming if REQUEST_ID.fullmatch(incoming) and not contains_token(incoming) else uuid.uuid4().hex
        token = request_id.set(rid)
        started = time.monotonic()
        sent = {"status": 0, "bytes": 0, "complete": False}

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                sent["status"] = message["status"]
                message = {**message, "headers": [*message.get("headers", []), (b"x-request-id", rid.encode())]}
            elif message["type"] == "http.response.body":
                sent["bytes"] += len(message.get("body", b""))
                sent["complete"] = not message.get("more_body", False)
            await send(message)

        outcome = "aborted"
        try:
            await self.app(scope, receive, send_with_id)
            outcome = "completed" if sent["complete"] else "aborted"
        except Exception as exc:
            outcome = "failed"
            if not sent["status"]:
                raise
            log.error("%s %s failed after %d body bytes: %s", scope["method"], redacted(scope["path"]), sent["bytes"],
                      _cause(exc))
            raise AbortedTransfer(str(exc)) from None
        finally:
            caller = scope.get("state", {}).get("caller")
            query_names = sorted({redacted(part.split(b"=")[0].decode("latin-1"))
                                  for part in scope.get("query_string", b"").split(b"&") if part})
            path = redacted(scope["path"])
            access_log.info("%s %s %s", scope["method"], path, sent["status"], extra={"fields": {
                "method": scope["method"], "path": path, "query": query_names, "status": sent["status"],
                "bytes": sent["bytes"], "duration_seconds": round(time.monotonic() - started, 4),
                "key": getattr(caller, "name", None), "outcome": outcome}})
            request_id.reset(token)


def _cause(exc: BaseException) -> str:
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:  # a task group's: the error inside it
        exc = exc.exceptions[0]
    text = f"{type(exc).__name__}: {exc}"
    if exc.__cause__ is not None:
        text += f" (caused by {type(exc.__cause__).__name__}: {exc.__cause__})"
    return text
