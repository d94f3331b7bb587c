"""The documentation's links and the README's size: every relative link and #anchor in README.md and
docs/**/*.md resolves as GitHub renders it, and the README stays short.

    python tests/test_docs.py       # the pages and links checked, and each one that does not resolve
"""
from __future__ import annotations

import re
import sys
from collections import Counter
from pathlib import Path
from urllib.parse import unquote

ROOT = Path(__file__).resolve().parents[1]
README_MAX_LINES = 250
README_MAX_LINE_CHARS = 300

FENCE = re.compile(r"^\s*(```|~~~)")
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
CODE_SPAN = re.compile(r"(`+)(.+?)\1")
INLINE_LINK = re.compile(r"!?\[((?:[^\[\]]|\[[^\]]*\])*)\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_DEFINITION = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$")
HTML_HREF = re.compile(r"<a\s[^>]*href=\"([^\"]+)\"", re.IGNORECASE)
HTML_ANCHOR = re.compile(r"<a\s[^>]*(?:name|id)=\"([^\"]+)\"", re.IGNORECASE)
HTML_TAG = re.compile(r"<[^>]+>")
EXTERNAL = re.compile(r"^[a-z][a-z0-9+.-]*:", re.IGNORECASE)  # http:, https:, mailto:, ...


def pages(root: Path = ROOT) -> list[Path]:
    return [root / "README.md", *sorted((root / "docs").rglob("*.md"))]


def prose_lines(text: str):
    """(line number, line) outside fenced code blocks, with inline code spans blanked out."""
    fenced = False
    for number, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            yield number, CODE_SPAN.sub(lambda m: " " * len(m.group(0)), line)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading's text: the rendered text lower-cased, punctuation but `-` and
    `_` dropped, each space a hyphen (github-slugger)."""
    text = CODE_SPAN.sub(lambda m: m.group(2), heading)
    text = INLINE_LINK.sub(lambda m: m.group(1), text)
    text = HTML_TAG.sub("", text).replace("*", "").lower()
    return "".join(c for c in text if c.isalnum() or c in "-_ ").replace(" ", "-")


def anchors(text: str) -> set[str]:
    """Every #fragment a page answers: its headings' slugs (repeats numbered -1, -2, ... as GitHub
    does) and its `<a name=...>` / `<a id=...>` anchors."""
    found, seen = set(), Counter()
    fenced = False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        if fenced:
            continue
        found |= set(HTML_ANCHOR.findall(line))
        if m := HEADING.match(line):
            base = slug(m.group(2))
            found.add(f"{base}-{seen[base]}" if seen[base] else base)
            seen[base] += 1
    return found


def links(text: str):
    """(line number, target) of every link in a page's prose: inline, reference definitions, <a href>."""
    for number, line in prose_lines(text):
        for target in [m.group(2) for m in INLINE_LINK.finditer(line)] + HTML_HREF.findall(line):
            yield number, target
        if m := REFERENCE_DEFINITION.match(line):
            yield number, m.group(1)


def broken_links(files: list[Path], root: Path = ROOT) -> list[str]:
    """`page:line: target (why)` for each relative link or anchor that does not resolve."""
    broken = []
    for page in files:
        for number, target in links(page.read_text()):
            if not target or EXTERNAL.match(target):
                continue
            path_part, _, fragment = target.partition("#")
            where = f"{page.relative_to(root)}:{number}: {target}"
            dest = (page.parent / unquote(path_part)).resolve() if path_part else page
            if root.resolve() not in (dest, *dest.parents):
                broken.append(f"{where} (outside the repository)")
            elif not dest.exists():
                broken.append(f"{where} (no such file)")
            elif fragment and dest.suffix == ".md" and unquote(fragment) not in anchors(dest.read_text()):
                broken.append(f"{where} (no such anchor in {dest.relative_to(root.resolve())})")
            elif fragment and dest.suffix != ".md" and not re.fullmatch(r"L\d+(-L\d+)?", fragment):
                broken.append(f"{where} (an anchor in a file that is not Markdown)")
    return broken


def readme_over_limits(readme: Path) -> list[str]:
    lines = readme.read_text().splitlines()
    over = [f"README.md has {len(lines)} lines (at most {README_MAX_LINES})"] if len(lines) > README_MAX_LINES else []
    return over + [f"README.md:{n}: {len(line)} characters (at most {README_MAX_LINE_CHARS})"
                   for n, line in enumerate(lines, 1) if len(line) > README_MAX_LINE_CHARS]


def test_every_relative_link_and_anchor_in_readme_and_docs_resolves():
    assert broken_links(pages()) == []


def test_readme_stays_within_its_limits():
    assert readme_over_limits(ROOT / "README.md") == []


def test_slugs_follow_githubs_rules():
    assert slug("Local mode: `--local`, no AWS account") == "local-mode---local-no-aws-account"
    assert slug("Running the image on one machine: `local_test/`") == "running-the-image-on-one-machine-local_test"
    assert slug("Shards, ShardedByS3Key and several instances") == "shards-shardedbys3key-and-several-instances"
    assert slug("Why SDK v2 (`sagemaker>=2.200,<3`)") == "why-sdk-v2-sagemaker22003"
    assert slug("**Bold** [a link](x.md) and <b>html</b>") == "bold-a-link-and-html"
    assert anchors("# Title\n## Tests\n## Tests\n```\n## not a heading\n```\n<a name=\"row\"></a>") == \
        {"title", "tests", "tests-1", "row"}


def test_a_missing_file_anchor_or_row_is_reported_and_code_is_not_read(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "page.md").write_text('# Page\n\n## A section\n\n| <a name="a-row"></a>x |\n')
    readme = tmp_path / "README.md"
    readme.write_text("[ok](docs/page.md#a-section) [row](docs/page.md#a-row) [web](https://example.com/x#y)\n"
                      "[gone](docs/missing.md) [bad](docs/page.md#no-section) [self](#nowhere)\n"
                      "`[in code](docs/missing.md)`\n```\n[in a block](docs/missing.md)\n```\n[up](../outside.md)\n")
    assert broken_links(pages(tmp_path), tmp_path) == [
        "README.md:2: docs/missing.md (no such file)",
        "README.md:2: docs/page.md#no-section (no such anchor in docs/page.md)",
        "README.md:2: #nowhere (no such anchor in README.md)",
        "README.md:7: ../outside.md (outside the repository)",
    ]


def test_a_readme_over_its_limits_is_reported(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("x\n" * README_MAX_LINES)
    assert readme_over_limits(readme) == []
    lines, chars = README_MAX_LINES + 2, README_MAX_LINE_CHARS + 1
    readme.write_text("x\n" * (lines - 1) + "y" * chars + "\n")
    assert readme_over_limits(readme) == [f"README.md has {lines} lines (at most {README_MAX_LINES})",
                                          f"README.md:{lines}: {chars} characters (at most {README_MAX_LINE_CHARS})"]


if __name__ == "__main__":
    checked = pages()
    problems = readme_over_limits(ROOT / "README.md") + broken_links(checked)
    count = sum(1 for page in checked for _, target in links(page.read_text()) if not EXTERNAL.match(target))
    print(f"{len(checked)} pages, {count} relative links and anchors, README.md "
          f"{len((ROOT / 'README.md').read_text().splitlines())} lines")
    print("\n".join(problems) or "all resolve; README.md within its limits")
    sys.exit(1 if problems else 0)
