"""Parsing one setting's value, with an error that names the setting."""

from __future__ import annotations

import ipaddress
from typing import Any

from exporter.errors import ConfigError


def whole(name: str, value: Any, least: int, most: int | None = None) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a whole number, got {value!r}") from None
    if number < least:
        raise ConfigError(f"{name} must be at least {least}")
    if most is not None and number > most:
        raise ConfigError(f"{name} must be at most {most}")
    return number


def choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    if str(value) not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return str(value)


def flag(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if str(value).lower() in ("true", "1", "yes", "on"):
        return True
    if str(value).lower() in ("false", "0", "no", "off"):
        return False
    raise ConfigError(f"{name} must be true or false, got {value!r}")


def seconds(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ConfigError(f"{name} must be a number of seconds, got {value!r}")
    try:
        seconds = float(value)
    except ValueError:
        raise ConfigError(f"{name} must be a number of seconds, got {value!r}") from None
    if not 0 < seconds < float("inf"):
        raise ConfigError(f"{name} must be more than 0")
    return seconds


def seconds_or_off(name: str, value: Any) -> float | None:
    """A number of seconds, or None for no limit: unset, 0 or `off`."""
    if value is None or str(value).strip().lower() in ("0", "0.0", "off"):
        return None
    return seconds(name, value)


def networks(name: str, value: Any) -> tuple[str, ...]:
    """Addresses and CIDR networks, comma-separated (a string) or a list, as uvicorn's forwarded_allow_ips takes
    them; `*` for every address. Empty: none."""
    items = [str(item).strip() for item in (value.split(",") if isinstance(value, str) else value or ())]
    for item in filter(None, items):
        if item == "*":
            continue
        try:
            ipaddress.ip_network(item, strict=False)
        except ValueError:
            raise ConfigError(f"{name} must be addresses or CIDR networks, comma-separated; got {item!r}") from None
    return tuple(filter(None, items))
