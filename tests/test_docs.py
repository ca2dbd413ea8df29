"""The README and docs/: links resolve, and the commands they quote name real modules and flags.

Cheap on purpose (no compiles, no subprocesses): it reads the Markdown, the CLI's argparse
parser and the tools' and benchmarks' sources.
"""

import re
from pathlib import Path

import pytest

from sliver.tools.cli import PASSTHROUGH, build_parser

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)
SPAN = re.compile(r"`([^`]+)`")
FLAG = re.compile(r"(?<![\w-])(--[a-z][\w-]*)")


def _rel(path):
    return str(path.relative_to(ROOT))


def _anchors(md: Path) -> set:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    text = FENCE.sub("", md.read_text())
    out = set()
    for line in text.splitlines():
        m = re.match(r"#+\s+(.*)", line)
        if m:
            slug = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
            out.add(slug)
    return out


def _flags_not_in(source: str, args: str) -> list[str]:
    """The ``--flags`` of a quoted command's ``args`` that a tool's ``source`` does not declare."""
    return [flag for flag in FLAG.findall(args) if f'"{flag}"' not in source]


def _spans(md: Path):
    text = FENCE.sub("", md.read_text())
    return [" ".join(s.split()) for s in SPAN.findall(text)]


@pytest.mark.parametrize("md", DOCS, ids=_rel)
def test_relative_links_resolve(md):
    bad = []
    for target in LINK.findall(md.read_text()):
        if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        dest = (md.parent / path).resolve() if path else md
        if not dest.exists():
            bad.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            bad.append(f"{target}: no heading with that anchor")
    assert not bad, f"{_rel(md)}: broken links: {bad}"


def test_every_results_topic_file_is_linked_from_the_readme():
    readme = (ROOT / "README.md").read_text()
    linked = {(ROOT / t.partition("#")[0]).resolve() for t in LINK.findall(readme)}
    topics = sorted((ROOT / "docs").rglob("*.md"))
    assert topics, "docs/ has no topic files"
    orphans = [_rel(p) for p in topics if p.resolve() not in linked]
    assert not orphans, f"docs files the README does not link to: {orphans}"


@pytest.mark.parametrize("md", DOCS, ids=_rel)
def test_quoted_tool_commands_name_existing_modules_and_flags(md):
    bad = []
    for span in _spans(md):
        for m in re.finditer(r"python3? -m sliver\.(tools|benchmarks)\.(\w+)((?: [^`]*)?)", span):
            module = ROOT / m.group(1) / f"{m.group(2)}.py"
            name = f"sliver.{m.group(1)}.{m.group(2)}"
            if not module.exists():
                bad.append(f"{span}: no module {name}")
                continue
            bad += [f"{span}: {flag} is not an option of {name}" for flag in _flags_not_in(module.read_text(), m.group(3))]
    assert not bad, f"{_rel(md)}: {bad}"


def _subparsers(parser):
    for action in parser._actions:
        if action.__class__.__name__ == "_SubParsersAction":
            return action.choices
    return {}


@pytest.mark.parametrize("md", DOCS, ids=_rel)
def test_quoted_sliver_commands_name_existing_subcommands_and_flags(md):
    commands = _subparsers(build_parser())
    bad = []
    for span in _spans(md):
        m = re.search(r"(?:^|[\s(])sliver ([a-z][\w-]*)((?: [^`|]*)?)", span)
        if not m or m.group(1) in ("IR", "ops'"):
            continue
        name, rest = m.group(1), m.group(2)
        if name not in commands:
            bad.append(f"{span}: no subcommand `sliver {name}`")
            continue
        if name in PASSTHROUGH:  # `sliver outliers ...` is `python -m sliver.tools.outliers ...`
            source = (ROOT / "tools" / (PASSTHROUGH[name].rsplit(".", 1)[1] + ".py")).read_text()
            bad += [f"{span}: {flag} is not an option of {PASSTHROUGH[name]}" for flag in _flags_not_in(source, rest)]
            continue
        sub = commands[name]
        nested = _subparsers(sub)
        words = rest.split()
        if nested and words and words[0] in nested:
            sub = nested[words[0]]
        options = {o for a in sub._actions for o in a.option_strings}
        for flag in FLAG.findall(rest):
            if flag not in options:
                bad.append(f"{span}: {flag} is not an option of `sliver {name}`")
    assert not bad, f"{_rel(md)}: {bad}"


def test_the_readme_links_the_moved_results():
    """The history moved out of the README must stay reachable from its Results section."""
    readme = (ROOT / "README.md").read_text()
    results = readme.split("\n## Results\n", 1)[1]
    for topic in ("latency", "arm", "schedules", "winograd", "tuning", "outliers", "pruning", "lowbit"):
        assert f"(docs/results/{topic}.md)" in results, topic
