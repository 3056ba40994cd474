"""NDJSON: one JSON object per line."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import orjson

from exporter.formats.values import converted, json_column
from exporter.sources.datasets import Column


@dataclass(frozen=True)
class NdjsonOptions:
    serialization: ClassVar[str] = "ndjson"


class NdjsonSerializer:
    """One JSON object per line, keys in column order; numerics are JSON numbers with every digit."""

    media_type = "application/x-ndjson"

    def __init__(self, columns: Sequence[Column], dialect: str) -> None:
        self._names = [c.name for c in columns]
        self._converters = [
            (i, convert)
            for i, col in enumerate(columns)
            if (convert := json_column(col, dialect))
        ]

    def header(self) -> bytes:
        return b""

    def encode(self, batch: Sequence[Sequence[Any]]) -> bytes:
        if not batch:
            return b""
        names, dumps, option = self._names, orjson.dumps, orjson.OPT_APPEND_NEWLINE
        rows = zip(*converted(batch, self._converters), strict=True) if self._converters else batch
        return b"".join([dumps(dict(zip(names, row, strict=True)), option=option) for row in rows])

    def footer(self) -> bytes:
        return b""
