"""The documentation's links resolve: every relative link in README.md and docs/**/*.md names a file
or folder of the repository, and every anchor (`#x` or `page.md#x`) names a heading of the page it
points to."""

import functools
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")


def _prose(text: str) -> str:
    """The page without fenced code blocks (links inside them are not links)."""
    return re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)


def _anchors(prose: str) -> set[str]:
    """GitHub's heading anchors of a page (already without code blocks): lower case, punctuation
    dropped, spaces to hyphens, -1, -2 ... on repeats."""
    seen: dict[str, int] = {}
    out = set()
    for m in re.finditer(r"^#{1,6} (.+?)\s*$", prose, flags=re.M):
        a = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
        n = seen.get(a)
        seen[a] = 0 if n is None else n + 1
        out.add(a if n is None else f"{a}-{n + 1}")
    return out


@functools.cache
def _page_anchors(page: Path) -> set[str]:
    """The anchors of one page, read once per test session (results.md is linked dozens of times)."""
    return _anchors(_prose(page.read_text(encoding="utf-8")))


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_and_anchors_resolve(page):
    prose = _prose(page.read_text(encoding="utf-8"))
    bad = []
    for target in LINK.findall(prose):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):   # http:, https:, mailto: ...
            continue
        path, _, anchor = target.partition("#")
        dest = page.parent / path if path else page
        if not dest.exists():
            bad.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in _page_anchors(dest):
            bad.append(f"{target}: no such heading")
    assert not bad, f"{page.relative_to(ROOT)}: broken links: {bad}"
