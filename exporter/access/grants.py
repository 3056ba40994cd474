"""What a caller may do: grants (`dataset:NAME`, `files:ROOT`, `proxy:UPSTREAM`, `admin`, `metrics`), per-dataset
restrictions (columns, row filters, a row limit), and the Caller every request is answered for."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from exporter.errors import ConfigError, Forbidden
from exporter.models import ApiKey

GRANT = re.compile(r"(dataset|files|proxy):([A-Za-z0-9_.*-]+)|admin|metrics")
DURATION = re.compile(r"([0-9]+)([smhd])")
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


@dataclass(frozen=True)
class Restriction:
    """What a key may see of one dataset: only `columns` (also its default column set), only rows matching
    `filters` (query-string grammar, always ANDed), and at most `max_rows` rows per export."""

    columns: tuple[str, ...] | None = None
    filters: tuple[tuple[str, str], ...] = ()
    max_rows: int | None = None

    def as_json(self) -> dict[str, Any]:
        return {"columns": list(self.columns) if self.columns is not None else None,
                "filters": [list(f) for f in self.filters], "max_rows": self.max_rows}

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> Restriction:
        if not data:
            return cls()
        columns = data.get("columns")
        return cls(tuple(columns) if columns is not None else None,
                   tuple((str(n), str(v)) for n, v in data.get("filters", [])), data.get("max_rows"))


NO_RESTRICTION = Restriction()


@dataclass(frozen=True)
class Caller:
    """Who is asking: a key's id, name, grants and restrictions; `key_id` None when auth is off (everything is
    granted)."""

    key_id: str | None
    name: str | None
    grants: frozenset[str] = frozenset()
    restrictions: Mapping[str, Restriction] = field(default_factory=dict)
    max_concurrent: int | None = None

    @property
    def anonymous(self) -> bool:
        return self.key_id is None

    def may(self, kind: str, name: str) -> bool:
        """Whether a grant covers `kind:name` (kind is dataset, files or proxy)."""
        return self.anonymous or f"{kind}:{name}" in self.grants or f"{kind}:*" in self.grants

    @property
    def admin(self) -> bool:
        return self.anonymous or "admin" in self.grants

    def restriction(self, dataset: str) -> Restriction:
        return self.restrictions.get(dataset, NO_RESTRICTION)


ANONYMOUS = Caller(None, None)



def parse_duration(text: str) -> timedelta:
    """`90d`, `12h`, `30m`, `45s`."""
    match = DURATION.fullmatch(text)
    if match is None:
        raise ConfigError(f"{text!r} is not a duration: a whole number and s, m, h or d (e.g. 90d)")
    return timedelta(seconds=int(match[1]) * UNITS[match[2]])


def parse_grant(text: str) -> str:
    if not GRANT.fullmatch(text):
        raise ConfigError(f"{text!r} is not a grant: dataset:NAME, files:ROOT, proxy:UPSTREAM (NAME may be *), "
                          "admin or metrics")
    return text


def parse_restrictions(columns: Sequence[str], row_filters: Sequence[str], max_rows: Sequence[str]
                       ) -> dict[str, Restriction]:
    """`--columns orders=id,amount`, `--row-filter orders=country=DE`, `--max-rows orders=100000`, by dataset."""
    found: dict[str, dict[str, Any]] = {}
    for text in columns:
        dataset, names = _split(text, "--columns", "orders=id,amount")
        found.setdefault(dataset, {})["columns"] = tuple(n.strip() for n in names.split(",") if n.strip())
    for text in row_filters:
        dataset, condition = _split(text, "--row-filter", "orders=country=DE")
        name, equals, value = condition.partition("=")
        if not equals or not name:
            raise ConfigError(f"--row-filter {text!r}: give DATASET=COLUMN[__OP]=VALUE, e.g. orders=country=DE")
        entry = found.setdefault(dataset, {})
        entry["filters"] = (*entry.get("filters", ()), (name, value))
    for text in max_rows:
        dataset, count = _split(text, "--max-rows", "orders=100000")
        if not count.isdigit():
            raise ConfigError(f"--max-rows {text!r}: the limit must be a whole number")
        found.setdefault(dataset, {})["max_rows"] = int(count)
    return {dataset: Restriction(**values) for dataset, values in found.items()}


def _split(text: str, option: str, example: str) -> tuple[str, str]:
    dataset, equals, rest = text.partition("=")
    if not equals or not dataset or not rest:
        raise ConfigError(f"{option} {text!r}: give DATASET=..., e.g. {example}")
    return dataset, rest



def caller_of(key: ApiKey) -> Caller:
    return Caller(key.id, key.name, frozenset(key.grants),
                  {d: Restriction.from_json(r) for d, r in (key.restrictions or {}).items()}, key.max_concurrent)


def require(caller: Caller, kind: str, name: str) -> None:
    """Forbidden unless a grant covers `kind:name` (dataset, files or proxy)."""
    if not caller.may(kind, name):
        raise Forbidden(f"this key has no grant for {kind}:{name}")
