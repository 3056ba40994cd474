"""resolve and list_directory over a temporary tree with symlinks in and out, hidden names and odd paths;
validators and the conditional requests they answer."""

from __future__ import annotations

import asyncio
import os
from email.utils import formatdate
from pathlib import Path
from typing import Any

import pytest

from exporter.config import FileRootConfig
from exporter.errors import FileChanged, FileNotFound, InvalidPath, UnknownRoot
from exporter.serving.files import Target, if_range_holds, is_not_modified, list_directory, resolve

MTIME = 1_700_000_000  # Tue, 14 Nov 2023 22:13:20 GMT


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """root/ with files, a sub-directory, hidden names, symlinks that stay in and that lead out, a loop and a
    FIFO; outside/ and root2/ (a sibling whose name starts like the root's) hold what must stay unreachable."""
    root, outside, sibling = tmp_path / "root", tmp_path / "outside", tmp_path / "root2"
    for directory in (root / "sub", root / ".dotdir", outside, sibling):
        directory.mkdir(parents=True)
    files = {"a.txt": b"alpha\n", "sub/b.csv": b"x,y\n1,2\n", "sub/.hidden.txt": b"h", ".secret": b"s",
             ".dotdir/c.txt": b"c", "dump.sql.gz": b"\x1f\x8b", "Grüße ✓.txt": b"g"}
    for name, data in files.items():
        (root / name).write_bytes(data)
    (outside / "secret.txt").write_bytes(b"outside")
    (sibling / "x.txt").write_bytes(b"sibling")
    links = {"link-in": "a.txt", "link-dir-in": "sub", "sub/link-up": "../a.txt",
             "link-out": "../outside/secret.txt", "link-out-dir": "../outside",
             "link-abs-out": str(outside / "secret.txt"), "link-sibling": "../root2/x.txt",
             "link-missing": "nothing", "link-to-hidden": ".secret", "loop": "loop"}
    for name, target in links.items():
        (root / name).symlink_to(target)
    os.mkfifo(root / "fifo")
    for path in root.rglob("*"):
        if not path.is_fifo():
            os.utime(path, (MTIME, MTIME), follow_symlinks=False)
    return root


def roots(root: Path, hidden: bool = False) -> dict[str, FileRootConfig]:
    return {"r": FileRootConfig("r", root.resolve(), hidden)}


def resolved(root: Path, path: str, hidden: bool = False) -> Target:
    return asyncio.run(resolve(roots(root, hidden), "r", path))


@pytest.mark.parametrize(
    ("path", "real"),
    [("a.txt", "a.txt"), ("sub/b.csv", "sub/b.csv"), ("link-in", "a.txt"), ("link-dir-in/b.csv", "sub/b.csv"),
     ("sub/link-up", "a.txt"), ("Grüße ✓.txt", "Grüße ✓.txt"), ("", ""), ("sub", "sub"), ("sub/", "sub"),
     ("link-dir-in/", "sub")],
)
def test_paths_inside_the_root_resolve_through_symlinks_that_stay_inside(tree: Path, path: str, real: str) -> None:
    target = resolved(tree, path)
    assert target.path == (tree / real).resolve()
    assert target.relative == path.removesuffix("/")
    assert target.is_directory == (tree / real).is_dir()


@pytest.mark.parametrize(
    "path",
    ["../outside/secret.txt", "sub/../a.txt", "./a.txt", "sub/./b.csv", "..", ".", "a.txt\x00", "a.txt\x00.png",
     "sub\\b.csv", "..\\outside\\secret.txt", "/etc/passwd", "/", "sub//b.csv", "//etc/passwd", "sub//"],
)
def test_malformed_paths_are_invalid_whether_or_not_they_exist(tree: Path, path: str) -> None:
    with pytest.raises(InvalidPath):
        resolved(tree, path)


@pytest.mark.parametrize(
    "path",
    ["missing.txt", "sub/missing", "link-out", "link-out-dir/secret.txt", "link-abs-out", "link-sibling",
     "link-missing", "loop", "fifo", ".secret", "sub/.hidden.txt", ".dotdir/c.txt", ".dotdir/", "link-to-hidden",
     "a.txt/", "%2e%2e/outside/secret.txt", "..%2foutside%2fsecret.txt", "a.txt/x", "x" * 300],
)
def test_anything_not_servable_is_not_found_with_one_message_that_reveals_nothing(tree: Path, path: str) -> None:
    with pytest.raises(FileNotFound) as raised:
        resolved(tree, path)
    assert raised.value.message == f"r/{path}: no such file"
    assert raised.value.status == 404


@pytest.mark.parametrize("path", [".secret", "sub/.hidden.txt", ".dotdir/c.txt", "link-to-hidden"])
def test_a_root_that_allows_hidden_names_serves_them(tree: Path, path: str) -> None:
    assert resolved(tree, path, hidden=True).path.parent.is_relative_to(tree)


@pytest.mark.parametrize("path", ["link-out", "link-abs-out", "fifo", "loop"])
def test_a_root_that_allows_hidden_names_still_keeps_everything_else_out(tree: Path, path: str) -> None:
    with pytest.raises(FileNotFound):
        resolved(tree, path, hidden=True)


def test_an_unknown_root_is_its_own_error(tree: Path) -> None:
    with pytest.raises(UnknownRoot, match="no file root named 'nope'"):
        asyncio.run(resolve(roots(tree), "nope", "a.txt"))


def listing(root: Path, path: str, hidden: bool = False) -> dict[str, Any]:
    return asyncio.run(list_directory(resolved(root, path, hidden)))


def test_a_listing_shows_what_would_be_served_sorted_by_name(tree: Path) -> None:
    modified = "2023-11-14T22:13:20+00:00"
    assert listing(tree, "") == {"root": "r", "path": "", "entries": [
        {"name": "Grüße ✓.txt", "kind": "file", "size": 1, "modified": modified},
        {"name": "a.txt", "kind": "file", "size": 6, "modified": modified},
        {"name": "dump.sql.gz", "kind": "file", "size": 2, "modified": modified},
        {"name": "link-dir-in", "kind": "directory", "size": None, "modified": modified},
        {"name": "link-in", "kind": "file", "size": 6, "modified": modified},
        {"name": "sub", "kind": "directory", "size": None, "modified": modified},
    ]}
    assert [e["name"] for e in listing(tree, "sub/")["entries"]] == ["b.csv", "link-up"]
    assert listing(tree, "sub/")["path"] == "sub/"


def test_a_listing_shows_hidden_names_only_when_the_root_allows_them(tree: Path) -> None:
    names = [entry["name"] for entry in listing(tree, "", hidden=True)["entries"]]
    assert names == [".dotdir", ".secret", "Grüße ✓.txt", "a.txt", "dump.sql.gz", "link-dir-in", "link-in",
                     "link-to-hidden", "sub"]


def test_a_listing_skips_names_that_are_not_utf8(tree: Path) -> None:
    os.close(os.open(os.fsencode(tree / "sub") + b"/caf\xe9.txt", os.O_CREAT | os.O_WRONLY))
    assert [e["name"] for e in listing(tree, "sub")["entries"]] == ["b.csv", "link-up"]


def test_a_directory_replaced_between_resolve_and_listing_is_not_listed(tree: Path) -> None:
    target = resolved(tree, "sub")
    (tree / "sub").rename(tree / "old-sub")
    (tree / "sub").symlink_to("../outside")
    with pytest.raises(FileChanged):
        asyncio.run(list_directory(target))


@pytest.mark.parametrize(
    ("name", "content_type"),
    [("a.txt", "text/plain"), ("sub/b.csv", "text/csv"), ("dump.sql.gz", "application/gzip"),
     ("Grüße ✓.txt", "text/plain"), ("link-in", "application/octet-stream")],
)
def test_content_type_comes_from_the_requested_name_and_compressed_files_stay_compressed(
    tree: Path, name: str, content_type: str
) -> None:
    assert resolved(tree, name).content_type == content_type


def test_validators_are_a_strong_etag_and_an_imf_fixdate(tree: Path) -> None:
    target = resolved(tree, "a.txt")
    info = target.stat
    assert target.etag == f'"{info.st_size:x}-{info.st_mtime_ns:x}-{info.st_ino:x}"'
    assert target.last_modified == "Tue, 14 Nov 2023 22:13:20 GMT"


def test_the_etag_changes_when_the_file_is_rewritten_or_replaced(tree: Path) -> None:
    before = resolved(tree, "a.txt").etag
    (tree / "a.txt").write_bytes(b"ALPHA\n")
    os.utime(tree / "a.txt", ns=(MTIME * 10**9 + 1, MTIME * 10**9 + 1))
    rewritten = resolved(tree, "a.txt").etag
    (tree / "new.txt").write_bytes(b"ALPHA\n")
    os.utime(tree / "new.txt", ns=(MTIME * 10**9 + 1, MTIME * 10**9 + 1))
    (tree / "new.txt").replace(tree / "a.txt")
    assert len({before, rewritten, resolved(tree, "a.txt").etag}) == 3


OLDER, SAME, NEWER = (formatdate(MTIME + delta, usegmt=True) for delta in (-1, 0, 1))


@pytest.mark.parametrize(
    ("if_none_match", "if_modified_since", "not_modified"),
    [
        (None, None, False),
        ("ETAG", None, True),
        ("W/ETAG", None, True),
        ('"other", ETAG', None, True),
        ('"other",W/ETAG', None, True),
        ('"other"', None, False),
        ("*", None, True),
        (None, SAME, True),
        (None, NEWER, True),
        (None, OLDER, False),
        (None, "Tuesday, 14-Nov-23 22:13:20 GMT", True),  # RFC 850 form
        (None, "not a date", False),
        ('"other"', SAME, False),  # If-None-Match decides when present (RFC 9110 §13.2.2)
        ("ETAG", OLDER, True),
    ],
)
def test_if_none_match_takes_precedence_over_if_modified_since(
    tree: Path, if_none_match: str | None, if_modified_since: str | None, not_modified: bool
) -> None:
    target = resolved(tree, "a.txt")
    if if_none_match is not None:
        if_none_match = if_none_match.replace("ETAG", target.etag)
    assert is_not_modified(target, if_none_match, if_modified_since) is not_modified


@pytest.mark.parametrize(
    ("if_range", "holds"),
    [(None, True), ("ETAG", True), ("W/ETAG", False), ('"other"', False), (SAME, True), (OLDER, False),
     (NEWER, False), ("garbage", False)],
)
def test_if_range_holds_only_for_the_current_strong_etag_or_exact_date(
    tree: Path, if_range: str | None, holds: bool
) -> None:
    target = resolved(tree, "a.txt")
    if if_range is not None:
        if_range = if_range.replace("ETAG", target.etag)
    assert if_range_holds(target, if_range) is holds
