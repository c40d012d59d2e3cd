"""The documentation states the present and its references resolve.

Why: benchmarks.md had grown into a 912-line dated lab notebook and benchmarks/results into a
pile of files named by run (issue 28). These checks keep the current-state page short, every
relative link in README.md and documentation/*.md pointing at a file (and heading) that exists,
and benchmarks/results free of files that differ only by a run number.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "documentation"
RESULTS = REPO / "benchmarks" / "results"
MAX_BENCHMARKS_LINES = 249  # issue 28: "under 250 lines"

# [text](target) and ![alt](target); the target ends at whitespace (an optional "title" follows) or ")"
INLINE_LINK = re.compile(r"!?\[(?:[^\]\\]|\\.)*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_DEFINITION = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+\".*\")?\s*$", re.M)
FENCE = re.compile(r"^(```|~~~).*?^\1", re.M | re.S)
CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1", re.S)
# a run or attempt number at the end of a name part: _run4, _v2, _try3, _trial1, _7
RUN_SUFFIX = re.compile(r"_(?:run|v|try|trial|attempt)?\d+(?=_|$)")


def markdown_files() -> list[Path]:
    return [REPO / "README.md", *sorted(DOCS.glob("*.md"))]


def _prose(text: str) -> str:
    """The text without fenced code blocks and code spans, where brackets are not links."""
    return CODE_SPAN.sub("", FENCE.sub("", text))


def relative_links(text: str) -> list[str]:
    """Every link target in the Markdown text that is neither a URL nor a mail address."""
    prose = _prose(text)
    targets = INLINE_LINK.findall(prose) + REFERENCE_DEFINITION.findall(prose)
    return [t for t in targets if not re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", t)]


def heading_anchors(text: str) -> set[str]:
    """The anchors GitHub gives a page's headings: lower case, punctuation dropped, spaces to
    hyphens, a repeated heading suffixed -1, -2, ..."""
    anchors: set[str] = set()
    seen: dict[str, int] = {}
    for line in FENCE.sub("", text).splitlines():
        m = re.match(r"^\s{0,3}#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        title = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", m.group(1))  # a link's text only
        slug = re.sub(r"[^\w\- ]", "", title.replace("`", "").lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        anchors.add(slug if n == 0 else f"{slug}-{n}")
    return anchors


def broken_links(md: Path) -> list[str]:
    text = md.read_text(encoding="utf-8")
    broken = []
    for target in relative_links(text):
        path_part, _, anchor = target.partition("#")
        file = (md.parent / path_part).resolve() if path_part else md
        if not file.exists():
            broken.append(f"{target}: no file {file}")
        elif anchor and file.suffix == ".md" and anchor.lower() not in heading_anchors(file.read_text(encoding="utf-8")):
            broken.append(f"{target}: no heading with anchor #{anchor} in {file.name}")
    return broken


def same_but_run_number(names: list[str]) -> list[list[str]]:
    """Groups of file names that are equal once run numbers (_run4, _v2, _3, ...) are removed."""
    groups: dict[str, list[str]] = {}
    for name in names:
        stem, dot, ext = name.partition(".")
        groups.setdefault(RUN_SUFFIX.sub("", stem) + dot + ext, []).append(name)
    return [sorted(g) for g in groups.values() if len(g) > 1]


# ---- the checks -------------------------------------------------------------------------------

def test_benchmarks_page_is_a_short_current_state_summary():
    lines = (DOCS / "benchmarks.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= MAX_BENCHMARKS_LINES, (
        f"documentation/benchmarks.md has {len(lines)} lines (at most {MAX_BENCHMARKS_LINES}): it states "
        "the latest numbers of each benchmark; dated runs go to documentation/benchmark_log.md")


@pytest.mark.parametrize("md", markdown_files(), ids=lambda p: p.relative_to(REPO).as_posix())
def test_relative_links_point_at_files_that_exist(md):
    assert broken_links(md) == []


def test_results_hold_one_file_per_benchmark():
    names = sorted(p.name for p in RESULTS.iterdir() if p.is_file())
    assert names, RESULTS
    assert same_but_run_number(names) == [], (
        "benchmarks/results keeps the latest file of each benchmark; older runs stay in git history "
        "(name the commit in documentation/benchmark_log.md)")


def test_results_files_named_on_the_benchmarks_page_exist():
    """A results file the current-state page names (in backticks) is in benchmarks/results;
    {A,B} alternatives are expanded, placeholders (NAME, PRESET, *) are skipped."""
    text = (DOCS / "benchmarks.md").read_text(encoding="utf-8")
    missing = []
    for span in re.findall(r"`([^`\s]+\.json)`", text):
        name = span.rsplit("/", 1)[-1]
        if "*" in name or "NAME" in name or "PRESET" in name or "/" in span and not span.startswith("benchmarks/results/"):
            continue
        m = re.search(r"\{([^}]*)\}", name)
        expanded = [name[:m.start()] + alt + name[m.end():] for alt in m.group(1).split(",")] if m else [name]
        missing += [n for n in expanded if not (RESULTS / n).is_file()]
    assert missing == []


def test_documentation_pictures_exist():
    for md, png in (("coordinates.md", "coordinates.png"), ("phantoms.md", "phantom_examples.png")):
        assert f"({png})" in (DOCS / md).read_text()
        assert (DOCS / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---- the checks can fail ------------------------------------------------------------------------

def test_the_link_check_finds_a_missing_file_and_a_missing_heading(tmp_path):
    (tmp_path / "other.md").write_text("# A heading — with `code` (and more)\n\n## Twice\n\n## Twice\n")
    page = tmp_path / "page.md"
    page.write_text(
        "[ok](other.md) [ok](other.md#a-heading--with-code-and-more) [ok](other.md#twice-1) [web](https://x.org/y.md)\n"
        "[gone](missing.md) [bad anchor](other.md#nowhere) `[in code](nothere.md)`\n"
        "```\n[in a fence](nothere.md)\n```\n![picture](pic.png)\n[ref]: also_missing.md\n")
    broken = broken_links(page)
    assert [b.split(":")[0] for b in broken] == ["missing.md", "other.md#nowhere", "pic.png", "also_missing.md"]


def test_the_results_check_finds_files_that_differ_by_a_run_number():
    assert same_but_run_number(["demo_twice.json", "demo_twice_run7.json", "speed.json"]) == [
        ["demo_twice.json", "demo_twice_run7.json"]]
    assert same_but_run_number(["a_run4.json", "a_run5.json", "a_v2_x.json", "a_x.json"]) == [
        ["a_run4.json", "a_run5.json"], ["a_v2_x.json", "a_x.json"]]
    assert same_but_run_number(["step_time_candidates_MR.json", "step_time_candidates_US.json",
                                "accuracy.json", "accuracy_seg.json"]) == []
