"""The documentation holds together: relative links and #anchors resolve, no tracked file keeps merge-conflict
markers, and the README stays a short front page. Plain files and git only: no fixtures, no database."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]

FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
INLINE_CODE = re.compile(r"(`+)(?:(?!\1).)+?\1")
# [text](target) and ![alt](target); the text may hold one level of brackets (an image inside a link).
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]*)>?(?:\s+[\"'(][^)]*)?\s*\)")
REFERENCE = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$")
EXTERNAL = re.compile(r"^[a-z][a-z0-9+.-]*:", re.IGNORECASE)  # http:, https:, mailto:, …

# Built, so that this file has no line that starts with a marker.
MARKERS = ("<" * 7 + " ", ">" * 7 + " ")
SEPARATOR = "=" * 7


def prose_lines(text: str) -> list[str]:
    """The lines outside fenced code blocks, with inline code spans blanked out."""
    lines, fence = [], None
    for line in text.splitlines():
        found = FENCE.match(line)
        if fence is None and found:
            fence = found.group(1)
        elif fence is not None and found and found.group(1)[0] == fence[0] and len(found.group(1)) >= len(fence):
            fence = None
        elif fence is None:
            lines.append(INLINE_CODE.sub(lambda code: " " * len(code.group(0)), line))
    return lines


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: its rendered text in lower case, punctuation other than - and _ dropped,
    spaces as -."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text only
    text = re.sub(r"<[^>]+>", "", text)  # HTML tags
    return re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    found: set[str] = set()
    seen: dict[str, int] = {}
    fence = None
    for line in page.read_text(encoding="utf-8").splitlines():
        opened = FENCE.match(line)
        if opened and (fence is None or (opened.group(1)[0] == fence[0] and len(opened.group(1)) >= len(fence))):
            fence = opened.group(1) if fence is None else None
            continue
        heading = HEADING.match(line) if fence is None else None
        if heading:
            base = slug(heading.group(2))
            count = seen.get(base, 0)
            seen[base] = count + 1
            found.add(base if count == 0 else f"{base}-{count}")
    return found


def links(page: Path) -> list[str]:
    targets = []
    for line in prose_lines(page.read_text(encoding="utf-8")):
        targets += LINK.findall(line)
        if reference := REFERENCE.match(line):
            targets.append(reference.group(1))
    return targets


def test_the_slugs_follow_githubs_rules() -> None:
    assert slug("Parallel COPY (`tests/bench_copy.py`)") == "parallel-copy-testsbench_copypy"
    assert slug("Sessions (the web pages)") == "sessions-the-web-pages"
    assert slug("Compression: gzip and zstd") == "compression-gzip-and-zstd"
    assert slug("What the COPY path's SELECT costs") == "what-the-copy-paths-select-costs"


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_every_relative_link_and_anchor_resolves(page: Path) -> None:
    broken = []
    for target in links(page):
        if not target or EXTERNAL.match(target):
            continue
        path, _, anchor = target.partition("#")
        linked = (page.parent / unquote(path)).resolve() if path else page
        if not linked.exists():
            broken.append(f"{target}: no file {linked.relative_to(ROOT) if linked.is_relative_to(ROOT) else linked}")
        elif anchor and linked.suffix == ".md" and unquote(anchor).lower() not in anchors(linked):
            broken.append(f"{target}: no heading #{anchor} in {linked.relative_to(ROOT)}")
    assert not broken, f"{page.relative_to(ROOT)}: broken links:\n" + "\n".join(broken)


def test_no_tracked_file_holds_merge_conflict_markers() -> None:
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    conflicted = []
    for name in filter(None, listed.decode().split("\0")):
        path = ROOT / name
        if not path.is_file():
            continue  # deleted in the working tree, or a submodule
        data = path.read_bytes()
        if b"\0" in data[:8192]:
            continue  # binary
        for number, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), 1):
            if line.startswith(MARKERS) or line == SEPARATOR:
                conflicted.append(f"{name}:{number}: {line[:40]}")
    assert not conflicted, "merge-conflict markers:\n" + "\n".join(conflicted)


def test_the_readme_is_a_short_front_page() -> None:
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 250
    assert re.search(r"^make run\b", text, re.MULTILINE)
    assert re.search(r"^make test\b", text, re.MULTILINE)
