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
FENCE = re.compile(r"^[ \t]*```.*?^[ \t]*```", re.S | re.M)  # fences may be indented (in list items)
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


# --------------------------------------------------------------------------- the README's code blocks
#
# Every fenced block of the README (and every ``bash`` block under docs/) is checked:
# Python blocks run on their tiny model, `sliver ...` and `python3 -m sliver.runtime ...`
# lines parse and their `--help` exits 0 with every flag they use, the install and test
# commands are the ones CI runs, pinned versions match pyproject.toml.  The quickstart's
# CLI block is also executed on the bundled example (slow: it compiles).

import os  # noqa: E402
import shlex  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

README = ROOT / "README.md"
BLOCK = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.S | re.M)


def _blocks(md: Path, lang: str) -> list[str]:
    return [body for kind, body in BLOCK.findall(md.read_text()) if kind == lang]


def _commands(body: str) -> list[list[str]]:
    """The commands of a shell block: continuation lines joined, comments dropped, `a | b`
    split into two commands, optional ``[...]`` brackets unwrapped."""
    out = []
    for line in body.replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        if not words:
            continue
        cmd: list[str] = []
        for w in words + ["|"]:
            if w == "|":
                if cmd:
                    out.append(cmd)
                cmd = []
            else:
                cmd.append(w.strip("[]") if w.startswith("[") or w.endswith("]") else w)
        out = [[w for w in c if w] for c in out]
    return out


def _sliver_script() -> list[str]:
    script = Path(sys.executable).with_name("sliver")
    return [str(script)] if script.exists() else [sys.executable, "-m", "sliver.tools.cli"]


def _help(argv: list[str]) -> str:
    proc = subprocess.run(argv + ["--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"{' '.join(argv)} --help exited {proc.returncode}: {proc.stderr[-500:]}"
    return proc.stdout


def _pyproject_pins() -> dict:
    text = (ROOT / "pyproject.toml").read_text()
    return dict(re.findall(r'"([A-Za-z0-9_.-]+)==([^"]+)"', text))


def _check_command(cmd: list[str], helps: dict) -> list[str]:
    """Problems with one documented command (empty if it checks out)."""
    flags = [w.split("=", 1)[0] for w in cmd if w.startswith("--")]
    if cmd[0] == "sliver":
        commands = _subparsers(build_parser())
        name = cmd[1] if len(cmd) > 1 else ""
        if name not in commands:
            return [f"{shlex.join(cmd)}: no subcommand `sliver {name}`"]
        prefix = cmd[:2]
        nested = _subparsers(commands[name])
        if nested and len(cmd) > 2 and cmd[2] in nested:
            prefix = cmd[:3]
        key = tuple(prefix)
        if key not in helps:
            helps[key] = _help(_sliver_script() + prefix[1:])
        bad = [f"{shlex.join(cmd)}: {f} is not in `{' '.join(prefix)} --help`" for f in flags if f not in helps[key]]
        if name not in PASSTHROUGH:
            try:
                build_parser().parse_args(cmd[1:])
            except SystemExit:
                bad.append(f"{shlex.join(cmd)}: the `sliver` argument parser rejects it")
        return bad
    if cmd[:3] in (["python3", "-m", "sliver.runtime"], ["python", "-m", "sliver.runtime"]):
        key = ("runtime", cmd[3])
        if key not in helps:
            helps[key] = _help([sys.executable, "-m", "sliver.runtime", cmd[3]])
        return [f"{shlex.join(cmd)}: {f} is not an option" for f in flags if f not in helps[key]]
    if cmd[0] == "bash" and cmd[1].startswith("tools/"):
        script = ROOT / cmd[1]
        if not script.exists():
            return [f"{shlex.join(cmd)}: no such script"]
        usage = subprocess.run(["bash", str(script), "--help"], capture_output=True, text=True, timeout=60)
        if usage.returncode != 0:
            return [f"{shlex.join(cmd)}: --help exited {usage.returncode}"]
        return [f"{shlex.join(cmd)}: {f} is not in its --help" for f in flags if f not in usage.stdout]
    if cmd[:3] == ["python3", "-m", "pytest"]:
        ci = (ROOT / ".ci" / "run").read_text()
        return [] if "python3 -m pytest -q" in ci else ["`python3 -m pytest -q` is not what .ci/run runs"]
    if cmd[0] in ("python3", "python") and len(cmd) > 1 and cmd[1].endswith("/run.py"):
        # a device bundle's launcher (sliver bundle): `python -m sliver.runtime run ARTIFACT`'s options
        key = ("runtime", "run")
        if key not in helps:
            helps[key] = _help([sys.executable, "-m", "sliver.runtime", "run"])
        return [f"{shlex.join(cmd)}: {f} is not an option of a bundle's run.py" for f in flags if f not in helps[key]]
    if cmd[:2] in (["pip", "install"], ["pip", "download"]):
        pins = _pyproject_pins()
        bad = []
        for word in cmd[2:]:
            name, _, version = word.partition("==")
            if version and pins.get(name) != version:
                bad.append(f"{word}: pyproject.toml pins {name}=={pins.get(name)}")
            wheel = re.match(r"\./sliver-([^-]+)-py3-none-any\.whl$", word)
            if wheel and f'__version__ = "{wheel.group(1)}"' not in (ROOT / "sliver" / "__init__.py").read_text():
                bad.append(f"{word}: not sliver's version (sliver/__init__.py)")
        return bad
    return [f"{shlex.join(cmd)}: a command tests/test_docs.py does not know how to check"]


@pytest.mark.parametrize("md", DOCS, ids=_rel)
def test_shell_blocks_run(md):
    """Every command in a ``bash`` block: the subcommand exists, its --help exits 0 and
    lists every flag used, the arguments parse; setup/test/install lines match the repo."""
    helps: dict = {}
    bad = []
    for body in _blocks(md, "bash"):
        for cmd in _commands(body):
            bad += _check_command(cmd, helps)
    assert not bad, f"{_rel(md)}: {bad}"


def test_readme_has_the_two_commands_and_a_quickstart():
    text = README.read_text()
    assert len(text.splitlines()) <= 300, f"README.md is {len(text.splitlines())} lines (at most 300)"
    shells = [c for body in _blocks(README, "bash") for c in _commands(body)]
    assert ["bash", "tools/setup.sh"] in shells and ["python3", "-m", "pytest", "-q"] in shells
    ci = (ROOT / ".ci" / "run").read_text()
    assert "bash tools/setup.sh" in ci and "python3 -m pytest -q" in ci
    assert any("sliver.lower(" in b and "sliver.load(" in b for b in _blocks(README, "python"))


def test_check_command_rejects_what_is_wrong():
    """The checker itself can fail: unknown subcommands, unknown flags, wrong pins."""
    helps: dict = {}
    assert _check_command(["sliver", "frobnicate"], helps)
    assert _check_command(["sliver", "lower", "m.py:f", "--no-such-flag"], helps)
    assert _check_command(["sliver", "run"], helps)  # the artifact is required
    assert _check_command(["pip", "install", "apache-tvm==0.1"], helps)
    assert _check_command(["make", "all"], helps)
    assert not _check_command(["sliver", "device", "serve", "--key", "pi"], helps)


def _cross_compiler() -> bool:
    return shutil.which("aarch64-linux-gnu-gcc") is not None


@pytest.mark.slow
def test_readme_python_blocks_run(tmp_path):
    """The quickstart runs as written (its model is tiny), in a scratch directory: the
    blocks in order, as one session (a later block uses the earlier ones' names)."""
    if not _cross_compiler():
        pytest.skip("the quickstart lowers for arm64: needs aarch64-linux-gnu-gcc (bash tools/setup.sh)")
    blocks = _blocks(README, "python")
    assert blocks
    code = "\n\n".join(blocks)
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                          timeout=600, env={**os.environ, "SLIVER_TUNING_DIR": str(tmp_path / "tuning")})
    assert proc.returncode == 0, f"the README's python blocks failed:\n{proc.stderr[-2000:]}"
    assert "print(abs(" in blocks[0]  # the quickstart prints the artifact's max error vs torch, first
    assert float(proc.stdout.splitlines()[0]) < 1e-3, proc.stdout


@pytest.mark.slow
@pytest.mark.emulated
def test_readme_cli_quickstart_runs(tmp_path):
    """The CLI quickstart block, executed on the bundled example (arm64 on the emulated Pi)."""
    if not _cross_compiler():
        pytest.skip("needs aarch64-linux-gnu-gcc (bash tools/setup.sh)")
    block = next(b for b in _blocks(README, "bash") if "tools/examples/" in b and "sliver lower" in b)
    (tmp_path / "tools").symlink_to(ROOT / "tools")
    env = {**os.environ, "SLIVER_TUNING_DIR": str(tmp_path / "tuning")}
    for cmd in _commands(block):
        assert cmd[0] == "sliver", cmd
        proc = subprocess.run(_sliver_script() + cmd[1:], cwd=tmp_path, capture_output=True, text=True,
                              timeout=600, env=env)
        assert proc.returncode == 0, f"{shlex.join(cmd)} exited {proc.returncode}:\n{proc.stderr[-2000:]}"


# --------------------------------------------------------------------------- no work history

# Built from pieces so that this file does not match itself.
_HISTORY = re.compile("|".join([
    r"\bsessions? \d", r"\bsession's\b", r"\bthis session\b", r"\bnext session\b",
    r"\bby the " + "lead\\b", r"\bthe " + "lead's\\b", r"\bengineers?\b",
    r"(?<![\w.])/" + "work/", r"(?<![\w.])/" + "root/",
]), re.I)


def _tracked_text_files():
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True, timeout=60).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    for name in out.decode().split("\0"):
        path = ROOT / name
        if name and path.is_file() and path.suffix not in (".npz", ".so", ".whl", ".png", ".pt2"):
            try:
                yield name, path.read_text()
            except UnicodeDecodeError:
                continue


def test_no_work_history_or_machine_paths_in_the_repository():
    """The repository speaks of the project: no development sessions, no who-did-what, no
    paths of a development machine; measurement history is dated in docs/results/."""
    bad = []
    for name, text in _tracked_text_files():
        for n, line in enumerate(text.splitlines(), 1):
            m = _HISTORY.search(line)
            if m:
                bad.append(f"{name}:{n}: {m.group(0)!r}")
    assert not bad, "work history or machine paths:\n" + "\n".join(bad[:40])


_TOP = ("ir/", "passes/", "backends/", "runtime/", "tools/", "tests/", "benchmarks/", "common/", "frontend/",
        "sliver/", "docs/", ".ci/")


@pytest.mark.parametrize("md", [*DOCS, *sorted((ROOT / "benchmarks").rglob("README.md"))], ids=_rel)
def test_quoted_repository_paths_exist(md):
    """A file or folder of the repository named in backticks (`tools/emulator/icount.py`,
    `tests/test_bench*.py`, `tools/examples/tiny_cnn.py:build`) exists: files move, the
    docs must follow."""
    bad = []
    for span in SPAN.findall(FENCE.sub("", md.read_text())):
        path = re.split(r"[:(\s]", span)[0].rstrip(",.")
        if path.startswith(_TOP) and not any(ROOT.glob(path)):
            bad.append(span)
    assert not bad, f"{_rel(md)}: no such file in the repository: {bad}"


def _resolves(dotted: str) -> bool:
    """Whether ``sliver.a.b.c`` names a module, or an attribute of one."""
    import importlib

    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        try:
            for name in parts[i:]:
                obj = getattr(obj, name)
        except AttributeError:
            return False
        return True
    return False


@pytest.mark.parametrize("md", [*DOCS, *sorted((ROOT / "benchmarks").rglob("README.md"))], ids=_rel)
def test_quoted_python_names_exist(md):
    """`sliver.tools.emulator.icount`, `sliver.qat.prepare`, `python -m sliver.benchmarks.X`:
    every dotted sliver name the docs quote is a module or an attribute of one (modules
    move, the docs follow)."""
    names = {m.group(1) for span in SPAN.findall(FENCE.sub("", md.read_text()))
             for m in [re.match(r"(sliver(?:\.\w+)+)(?:\(|$)", span)] if m}
    names |= set(re.findall(r"python3? -m (sliver(?:\.\w+)+)", md.read_text()))  # fenced blocks too
    bad = sorted(n for n in names if not _resolves(n))
    assert not bad, f"{_rel(md)}: no such module or attribute: {bad}"
    assert not _resolves("sliver.tools.no_such_module") and not _resolves("sliver.qat.no_such_function")


def test_the_readme_lists_every_subcommand():
    """A new `sliver` subcommand appears in the README's command table."""
    text = README.read_text()
    table = text.split("\n## Command line\n", 1)[1].split("\n## ", 1)[0]
    missing = [name for name in _subparsers(build_parser()) if f"`sliver {name}" not in table]
    assert not missing, f"README.md's Command line table lacks: {missing}"
