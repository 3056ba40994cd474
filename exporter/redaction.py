"""The one redaction, by token shape: wherever a request is written down (log lines, export and audit log rows, error
bodies), text shaped like an API token is replaced. The bottom layer, so that logs and errors can use it too."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from urllib.parse import unquote_plus

# `exp_` (access.tokens.PREFIX) and 32 or more URL-safe base64 characters: a whole token has 50, and its first 44
# hold the key id and the whole secret, so a token cut short is caught too. 32 characters leave 12 of the secret's
# (72 bits) unseen. Column names and values shorter than that (`exp_date`) are left alone.
TOKEN_SHAPE = re.compile(r"exp_[A-Za-z0-9_-]{32,}")
REDACTED = "exp_[redacted]"


def redact_tokens(text: str) -> str:
    """`text` (a log line, an error message) with every token-shaped run replaced by REDACTED."""
    return TOKEN_SHAPE.sub(REDACTED, text)


def redacted(text: str) -> str:
    """A piece of a request (a path, a parameter's name or value) as it may be written down: redact_tokens, and
    REDACTED for all of it if a percent-encoded token is left (`exp%5F…`)."""
    text = redact_tokens(text)
    return REDACTED if contains_token(text) else text


def contains_token(text: str) -> bool:
    """Whether `text` holds a token, as it is or percent-decoded once or twice (`exp%5F…`, `%2565xp_…`)."""
    for _ in range(3):
        if TOKEN_SHAPE.search(text):
            return True
        decoded = unquote_plus(text)
        if decoded == text:
            return False
        text = decoded
    return False


def redact_parameters(parameters: Mapping[str, Iterable[str]]) -> dict[str, list[str]]:
    """Parameters (each name with its values) with their names and values redacted."""
    found: dict[str, list[str]] = {}
    for name, values in parameters.items():
        found.setdefault(redacted(name), []).extend(map(redacted, values))
    return found


def truncated(text: str, max_chars: int) -> str:
    """`text` cut to `max_chars` characters, with `…` as the last one when it was cut."""
    return text if len(text) <= max_chars else text[:max_chars - 1] + "…"
