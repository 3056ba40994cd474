"""Capacity: one greedy or stalled client cannot starve the others. Export slots per database, the wait for
an export's first chunk, and the send timeout for every response."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, nullcontext

import anyio
from sqlalchemy.engine import make_url
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from exporter.config import Settings
from exporter.errors import Busy, StatementTimeout

log = logging.getLogger(__name__)

POSTGRESQL_EXPORT_SLOTS = 20
# SQLite reads run in this process, one thread each, and share its cores and the GIL: more at once only share them.
SQLITE_EXPORT_SLOTS = 4
RETRY_AFTER_SECONDS = 1


def export_slot_count(url: str, settings: Settings) -> int:
    """How many exports the database at `url` runs at once: EXPORTER_EXPORT_SLOTS, or the dialect's default."""
    if settings.export_slots is not None:
        return settings.export_slots
    return SQLITE_EXPORT_SLOTS if make_url(url).get_backend_name() == "sqlite" else POSTGRESQL_EXPORT_SLOTS


class ExportSlots:
    """The pool connections of one database that exports may hold; the pool keeps its reserve beyond them."""

    def __init__(self, slots: int) -> None:
        self._semaphore = asyncio.Semaphore(slots)
        self._slots = slots
        self._free = slots

    @asynccontextmanager
    async def hold(self, wait: bool) -> AsyncIterator[None]:
        """Hold a slot for the block. Without `wait`, raise Busy at once when none is free, or when a job is
        already waiting for one (it goes first)."""
        if not wait and self._semaphore.locked():
            raise Busy("every export slot of this dataset's database is in use; try again shortly",
                       headers={"Retry-After": str(RETRY_AFTER_SECONDS)})
        async with self._semaphore:
            self._free -= 1
            try:
                yield
            finally:
                self._free += 1

    async def take_spare(self, wanted: int) -> int:
        """Take up to `wanted` more slots for an export's parallel parts, at once and only while more than half
        of all slots stay free, so that under load exports run serially rather than turn others away. Returns
        how many were taken; give each back with give_back()."""
        taken = 0
        while taken < wanted and self._free - 1 >= self._slots // 2 and not self._semaphore.locked():
            await self._semaphore.acquire()  # returns at once: it is not locked
            self._free -= 1
            taken += 1
        return taken

    def give_back(self, count: int) -> None:
        for _ in range(count):
            self._free += 1
            self._semaphore.release()


async def iter_limited(chunks: AsyncIterator[bytes], slots: ExportSlots | None, *, wait_for_slot: bool,
                       first_chunk_seconds: float | None) -> AsyncIterator[bytes]:
    """`chunks`, started only once an export slot is held; the slot is kept until this iterator ends or is closed.

    Raises Busy when no slot is free and `wait_for_slot` is false; `chunks` has not started then, so it holds
    nothing. Raises StatementTimeout when the first chunk takes longer than `first_chunk_seconds` (the wait for
    the slot not counted): `chunks` is cancelled, which cancels its query. Only the first chunk is timed, because a
    COPY export is one statement however long it streams. Once started, `chunks` is closed however this ends,
    before the slot is given back.
    """
    async with slots.hold(wait_for_slot) if slots is not None else nullcontext():
        try:
            with anyio.move_on_after(first_chunk_seconds) as timer:
                first = await anext(chunks, None)
            if timer.cancelled_caught:
                raise StatementTimeout(f"the query sent no row within {first_chunk_seconds:g} s and was cancelled")
            if first is None:
                return
            yield first
            async for chunk in chunks:
                yield chunk
        finally:
            with anyio.CancelScope(shield=True):
                await chunks.aclose()  # type: ignore[attr-defined]


class SendTimeout:
    """ASGI middleware: a response whose client takes no data for `seconds` is abandoned, like nginx's
    send_timeout. Each send may wait that long for the connection to drain; then TimeoutError (an OSError, as
    for a client that left) is raised into the response, which closes its body iterator, so its database
    connection, file or upstream request is released, and the server closes the connection without the end of
    the body."""

    def __init__(self, app: ASGIApp, seconds: float) -> None:
        self.app = app
        self.seconds = seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_within(message: Message) -> None:
            try:
                with anyio.fail_after(self.seconds):
                    await send(message)
            except TimeoutError:
                client = scope.get("client")
                log.warning("%s %s: the client %s took no data for %g s; aborting the response", scope["method"],
                            scope["path"], client[0] if client else "?", self.seconds)
                raise

        await self.app(scope, receive, send_within)
