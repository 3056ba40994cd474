"""Named file roots: resolve a request path safely inside its root, stat it, its validators (ETag,
Last-Modified) and the conditional requests they answer, and directory listings."""

from __future__ import annotations

import mimetypes
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import formatdate, mktime_tz, parsedate_tz
from pathlib import Path
from typing import Any
from urllib.parse import quote

import anyio

from exporter.config import FileRootConfig
from exporter.errors import FileChanged, FileNotFound, FileUnreadable, InvalidPath, UnknownRoot

# The built-in table only, so that every host gives a file the same type (not each one's /etc/mime.types).
MEDIA_TYPES = mimetypes.MimeTypes()
MEDIA_TYPES.add_type("application/x-ndjson", ".ndjson")  # as the exports send it
MEDIA_TYPES.add_type("application/zstd", ".zst")
# A compressed file is sent as what it is: `dump.sql.gz` is application/gzip, never Content-Encoding: gzip,
# which would make clients unpack it and make ranges count unpacked bytes.
COMPRESSED_TYPES = {"gzip": "application/gzip", "bzip2": "application/x-bzip2", "xz": "application/x-xz",
                    "compress": "application/x-compress"}

# A file may change, so caches keep it but revalidate with its ETag (a job's result too).
REVALIDATE = {"Cache-Control": "no-cache"}
# On everything served from a file, an export or an upstream: a file's HTML or SVG opened from a link must not run
# as a page of this origin (where it could read a page's CSRF token), nor may a browser sniff text into HTML. With
# Content-Disposition: attachment (see responses.content_disposition) it is saved, not shown.
SANDBOX = {"Content-Security-Policy": "sandbox", "X-Content-Type-Options": "nosniff"}


@dataclass(frozen=True)
class Target:
    """A regular file or a directory inside a root, as stat'ed when the request was resolved."""

    root: FileRootConfig
    relative: str  # the requested path inside the root, without a trailing slash; "" for the root itself
    path: Path  # absolute, symlinks resolved, inside root.path
    stat: os.stat_result

    @property
    def is_directory(self) -> bool:
        return stat.S_ISDIR(self.stat.st_mode)

    @property
    def name(self) -> str:
        """The name the client asked for (a symlink's own name, not its target's)."""
        return self.relative.rpartition("/")[2] or self.root.name

    @property
    def size(self) -> int:
        return self.stat.st_size

    @property
    def content_type(self) -> str:
        media_type, encoding = MEDIA_TYPES.guess_type(self.name)
        if encoding is not None:
            return COMPRESSED_TYPES.get(encoding, "application/octet-stream")
        return media_type or "application/octet-stream"

    @property
    def etag(self) -> str:
        """Strong: any change of size, modification time (ns) or inode (a replaced file) changes it."""
        return f'"{self.stat.st_size:x}-{self.stat.st_mtime_ns:x}-{self.stat.st_ino:x}"'

    @property
    def last_modified(self) -> str:
        return formatdate(self.stat.st_mtime, usegmt=True)  # IMF-fixdate (RFC 9110 §5.6.7)

    def validators(self) -> dict[str, str]:
        return {"ETag": self.etag, "Last-Modified": self.last_modified}

    def slash_location(self) -> str:
        """A relative reference to this directory with a trailing slash (`sub` → `sub/`), for a redirect."""
        return quote(self.name) + "/"


async def resolve(roots: Mapping[str, FileRootConfig], root_name: str, path: str) -> Target:
    """The file or directory `path` (already percent-decoded once, by the server) names inside the root.

    Raises UnknownRoot; InvalidPath for a NUL, a backslash, an absolute path, or an empty, `.` or `..` segment,
    whether or not the file exists; FileNotFound for anything missing, outside the root (through symlinks
    too), hidden when the root does not allow it, not a regular file or directory, or a file named with a
    trailing slash. Every FileNotFound has the same message, so a caller cannot tell these apart.
    """
    root = roots.get(root_name)
    if root is None:
        raise UnknownRoot(f"no file root named {root_name!r}")
    segments = safe_segments(path)
    found = await anyio.to_thread.run_sync(_servable, root, root.path.joinpath(*segments), segments)
    if found is None or (path.endswith("/") and not stat.S_ISDIR(found[1].st_mode)):
        raise FileNotFound(f"{root.name}/{path}: no such file")
    return Target(root, "/".join(segments), *found)


def safe_segments(path: str) -> list[str]:
    """The names in a relative path already percent-decoded once (a trailing slash dropped): the rule that keeps
    `/files` inside its root and `/proxy` under its base URL. Raises InvalidPath for a NUL, a backslash, a
    leading slash (`//host`, `%2fetc`), or an empty, `.` or `..` segment, with or without `;` parameters."""
    if "\x00" in path:
        raise InvalidPath("the path contains a NUL byte")
    if "\\" in path:
        raise InvalidPath("the path contains a backslash; use '/' between names")
    if path.startswith("/"):
        raise InvalidPath("the path must not start with '/'")
    segments = path.removesuffix("/").split("/") if path else []
    if any(is_dot_segment(segment) for segment in segments):
        raise InvalidPath("the path has an empty, '.' or '..' segment, or one with ';' parameters (`..;x`)")
    return segments


def is_dot_segment(segment: str) -> bool:
    """Whether a segment is empty, `.` or `..`, also once its path parameters are dropped, as Tomcat, Jetty and
    Spring drop them (`..;x` is `..` to them, RFC 3986 §3.3 allows `;` parameters in any segment)."""
    return segment.partition(";")[0] in ("", ".", "..")


def _servable(root: FileRootConfig, path: Path, segments: list[str]) -> tuple[Path, os.stat_result] | None:
    """The resolved path and its stat if it may be served: inside the root once symlinks are resolved, not
    hidden (by its own name or its target's) unless the root allows it, a regular file or a directory."""
    if not root.hidden and any(segment.startswith(".") for segment in segments):
        return None
    try:
        resolved = path.resolve(strict=True)
        info = resolved.stat()
    except (OSError, RuntimeError):  # missing, a symlink loop, a name too long, no permission
        return None
    if not resolved.is_relative_to(root.path):
        return None
    if not root.hidden and any(part.startswith(".") for part in resolved.relative_to(root.path).parts):
        return None
    if not (stat.S_ISREG(info.st_mode) or stat.S_ISDIR(info.st_mode)):
        return None  # a FIFO would block the reader; devices and sockets are not files to download
    return resolved, info


def is_not_modified(target: Target, if_none_match: str | None, if_modified_since: str | None) -> bool:
    """Whether GET or HEAD gets 304. If-None-Match decides when present, with weak comparison; only without it
    does If-Modified-Since count (RFC 9110 §13.2.2, §13.1.2). An unparsable date is ignored (§13.1.3)."""
    if if_none_match is not None:
        if if_none_match.strip() == "*":
            return True
        return target.etag in _entity_tags(if_none_match)
    if if_modified_since is not None:
        since = _http_date(if_modified_since)
        return since is not None and int(target.stat.st_mtime) <= since
    return False


def if_range_holds(target: Target, if_range: str | None) -> bool:
    """Whether a Range applies: no If-Range, or one naming the current ETag (strong comparison, so a weak tag
    never matches) or exactly the current Last-Modified (RFC 9110 §13.1.5). Otherwise the whole file is sent."""
    if if_range is None:
        return True
    value = if_range.strip()
    if value.startswith(('"', "W/")):
        return value == target.etag
    return _http_date(value) == int(target.stat.st_mtime)


def _entity_tags(value: str) -> set[str]:
    """The opaque tags in an If-None-Match list, W/ prefixes dropped (weak comparison)."""
    tags: set[str] = set()
    for element in value.split(","):
        tag = element.strip().removeprefix("W/")
        if len(tag) >= 2 and tag.startswith('"') and tag.endswith('"'):
            tags.add(tag)
    return tags


def _http_date(value: str) -> int | None:
    """Unix seconds, or None for what is not a date: parsedate_tz takes `99999999999` as a year and any offset,
    and mktime_tz then overflows."""
    try:
        parsed = parsedate_tz(value)
        return None if parsed is None else mktime_tz(parsed)
    except (OverflowError, ValueError, TypeError):
        return None


async def list_directory(target: Target) -> dict[str, Any]:
    """{"root", "path", "entries": [{"name", "kind", "size", "modified"}]} sorted by name. `path` is the
    directory inside the root with a trailing slash ("" for the root). Entries are what `resolve` would serve:
    symlinks are followed and listed only when their target stays inside the root, hidden names only when the
    root allows them. A directory's size is null; `modified` is ISO 8601 in UTC, to the second. Raises
    FileUnreadable if the directory cannot be read, FileChanged if it was replaced since it was resolved."""
    entries = await anyio.to_thread.run_sync(_entries, target)
    return {"root": target.root.name, "path": target.relative + "/" if target.relative else "", "entries": entries}


def _entries(target: Target) -> list[dict[str, Any]]:
    where = f"{target.root.name}/{target.relative}"
    try:
        names = _names(target)
    except OSError as exc:
        raise FileUnreadable(f"{where}: cannot be listed: {exc.strerror}") from None
    if names is None:
        raise FileChanged(f"{where}: changed before it could be listed")
    entries = []
    for name in sorted(names):
        found = _servable(target.root, target.path / name, [name])
        if found is None:
            continue
        is_directory = stat.S_ISDIR(found[1].st_mode)
        entries.append({
            "name": name,
            "kind": "directory" if is_directory else "file",
            "size": None if is_directory else found[1].st_size,
            "modified": datetime.fromtimestamp(int(found[1].st_mtime), UTC).isoformat(),
        })
    return entries


def _names(target: Target) -> list[str] | None:
    """The names in the directory, if the directory opened is still the one resolved (else None); names that
    are not UTF-8 are left out: no URL can name them and JSON cannot hold them."""
    fd = os.open(target.path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        opened = os.fstat(fd)
        if (opened.st_dev, opened.st_ino) != (target.stat.st_dev, target.stat.st_ino):
            return None
        with os.scandir(fd) as listing:
            return [entry.name for entry in listing if _utf8(entry.name)]
    finally:
        os.close(fd)


def _utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
