"""Throttling of failed authentication by client address (401s and failed sign-ins), in this process: after half
the limit of failures within a window each further one waits before its answer, and beyond the limit they are
refused with 429 until the window has passed. Only failures count: a valid key is never refused here."""

from __future__ import annotations

import asyncio
import ipaddress
import math
import time
from collections import OrderedDict
from dataclasses import dataclass

from exporter.errors import ExportError, TooManyFailedAttempts, Unauthorized

MAX_ADDRESSES = 10_000  # the least recently failing addresses are forgotten beyond this many


@dataclass(frozen=True)
class Verdict:
    failures: int  # from this address within its window, this one included
    delay_seconds: float  # how long to wait before answering this failure
    retry_after_seconds: int | None  # set when this failure is refused with 429


def address_group(address: str | None) -> str:
    """Whom a failure is counted against: the address, or for IPv6 its /64 (one host may hold a whole /64)."""
    if address is None:
        return "unknown"
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(parsed, ipaddress.IPv6Address) and parsed.ipv4_mapped is None:
        return str(ipaddress.IPv6Network((parsed, 64), strict=False))
    return str(parsed.ipv4_mapped or parsed) if isinstance(parsed, ipaddress.IPv6Address) else str(parsed)


class FailedAuthThrottle:
    """Failures by address group, each with the start of its window: a fixed window that begins with its first
    failure. At most `max_addresses` are kept (least recently failing forgotten first), so memory stays bounded."""

    def __init__(self, limit: int, window_seconds: float, delay_seconds: float,
                 max_addresses: int = MAX_ADDRESSES) -> None:
        self._limit = limit
        self._window = window_seconds
        self._delay = delay_seconds
        self._max = max_addresses
        self._windows: OrderedDict[str, tuple[float, int]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._windows)

    def count(self, address: str | None, now: float) -> Verdict:
        """Count one failure from `address` at `now` (monotonic seconds) and say how to answer it."""
        group = address_group(address)
        started, failures = self._windows.pop(group, (now, 0))
        if now - started >= self._window:
            started, failures = now, 0
        failures += 1
        self._windows[group] = (started, failures)
        while len(self._windows) > self._max:
            self._windows.popitem(last=False)
        if failures > self._limit:
            return Verdict(failures, 0.0, max(1, math.ceil(started + self._window - now)))
        return Verdict(failures, self._delay if failures > self._limit // 2 else 0.0, None)

    async def refusal(self, address: str | None, error: Unauthorized) -> ExportError:
        """The answer to a failed authentication from `address`: `error` itself (after the delay, once half the
        limit is reached), or TooManyFailedAttempts beyond the limit."""
        verdict = self.count(address, time.monotonic())
        if verdict.retry_after_seconds is not None:
            return TooManyFailedAttempts(
                f"too many failed authentications from this address; try again in {verdict.retry_after_seconds} s",
                retry_after_seconds=verdict.retry_after_seconds, first=verdict.failures == self._limit + 1)
        if verdict.delay_seconds:
            await asyncio.sleep(verdict.delay_seconds)
        return error
