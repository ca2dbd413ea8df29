"""The command line as a product: ``--version``, help texts that match behaviour, the
message a compiler command gives where only the runtime is installed, and the
progress display of long compiles."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

import sliver
from sliver.backends.tvm.targets import ALIASES, NAMES, resolve

ROOT = Path(__file__).resolve().parents[1]

#: a sitecustomize that makes torch, networkx and rich unimportable: a runtime-only install
NO_COMPILER = '''\
import sys
class _Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "networkx", "rich"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, _Block())
'''


def _sliver(*argv, env=None, timeout=300):
    return subprocess.run([sys.executable, "-m", "sliver.tools.cli", *argv], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})


@pytest.fixture(scope="module")
def runtime_only(tmp_path_factory):
    d = tmp_path_factory.mktemp("runtime-only")
    (d / "sitecustomize.py").write_text(NO_COMPILER)
    return {"PYTHONPATH": str(d)}


def test_one_version_number():
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert not re.search(r"^version\s*=\s*\"", pyproject, re.M)  # no second copy of the number
    assert 'dynamic = ["version"]' in pyproject and 'version = { attr = "sliver.__version__" }' in pyproject
    assert version("sliver") == sliver.__version__
    proc = _sliver("--version")
    assert proc.returncode == 0 and proc.stdout.strip() == f"sliver {sliver.__version__}"
    proc = subprocess.run([sys.executable, "-m", "sliver.runtime", "--version"], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip() == f"sliver {sliver.__version__}"


def test_top_level_help_is_plain_text():
    out = _sliver("--help").stdout
    assert "``" not in out and ":func:" not in out and ":mod:" not in out
    assert "--version" in out and "sliver lower" in out


def test_target_help_names_every_accepted_target_and_the_default():
    for command in ("lower", "tune"):
        text = " ".join(_sliver(command, "--help").stdout.split())
        for name in [*NAMES, *ALIASES]:
            assert re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", text), f"{command} --help: {name} missing"
            resolve(name)  # and every name the help lists is accepted
        assert "(default x86_64)" in text


def test_bench_help_shows_the_sliver_command():
    assert _sliver("bench", "--help").stdout.startswith("usage: sliver bench")


@pytest.mark.parametrize("argv", [
    ["lower", "tools/examples/tiny_cnn.py:build"],
    ["trace", "tools/examples/tiny_cnn.py:build"],
    ["prune", "tools/examples/tiny_cnn.py:build"],
    ["explain", "tools/examples/tiny_cnn.py:build"],
    ["outliers", "tools/examples/tiny_cnn.py:build"],
    ["passes"],
])
def test_compiler_commands_on_a_runtime_only_install(argv, runtime_only):
    proc = _sliver(*argv, env=runtime_only)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.count("\n") == 1, proc.stderr
    assert "pip install 'sliver[compiler]'" in proc.stderr and f"sliver {argv[0]} needs" in proc.stderr


def test_the_api_on_a_runtime_only_install(runtime_only):
    code = ("import sliver\n"
            "try:\n    sliver.lower(None, ())\nexcept sliver.SliverError as e:\n    print(type(e).__name__, e)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **runtime_only})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("DependencyError sliver.lower needs") and "sliver[compiler]" in proc.stdout


@pytest.mark.slow
def test_runtime_commands_work_without_the_compiler(example_x86, runtime_only):
    proc = _sliver("run", str(example_x86), "--verify", env=runtime_only)
    assert proc.returncode == 0, proc.stderr
    assert "verify: passed" in proc.stdout
    assert _sliver("inspect", str(example_x86), env=runtime_only).returncode == 0


def _tiny():
    import torch
    from torch import nn

    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)).eval(), \
        (torch.randn(1, 3, 8, 8),)


@pytest.mark.slow
def test_progress_display_in_the_api(capsys):
    from rich.console import Console

    from sliver.progress import Display

    model, inputs = _tiny()
    buf = io.StringIO()
    with Display(console=Console(file=buf, force_terminal=True, force_interactive=True, width=120)) as shown:
        sliver.lower(model, inputs, target="x86_64", progress=shown)
    text = buf.getvalue()
    for step in ("tracing", "running passes", "compiling with TVM for x86_64", "compiled for x86_64"):
        assert step in text
    assert "\x1b[" in text and re.search(r"\d:\d\d:\d\d", text)  # drawn live, with the elapsed time
    assert capsys.readouterr().err == ""  # nothing else on stderr
    sliver.lower(model, inputs, target="x86_64")  # opt-in: silent by default
    assert capsys.readouterr().err == ""
    sliver.lower(model, inputs, target="x86_64", progress=True)
    err = capsys.readouterr().err
    assert err.startswith("[sliver] tracing") and "compiling with TVM for x86_64" in err


@pytest.mark.slow
def test_progress_display_in_the_cli(tmp_path):
    out = tmp_path / "tiny.sliver"
    # a terminal, as rich sees one (TTY_COMPATIBLE / TTY_INTERACTIVE): the live display is drawn
    proc = _sliver("lower", "tools/examples/tiny_cnn.py:build", "-o", str(out), "--output-names", "logits",
                   env={"TTY_COMPATIBLE": "1", "TTY_INTERACTIVE": "1", "COLUMNS": "120"})
    assert proc.returncode == 0, proc.stderr
    assert "\x1b[" in proc.stderr and "compiling with TVM" in proc.stderr and "━" in proc.stderr
    assert sliver.load(out).output_names == ["logits"]
    proc = _sliver("lower", "tools/examples/tiny_cnn.py:build", "-o", str(out), "--output-names", "a,b")
    assert proc.returncode == 2 and "the model has 1 output(s), give 1 name(s)" in proc.stderr
    # a log file: the messages only, one line each
    proc = _sliver("lower", "tools/examples/tiny_cnn.py:build", "-o", str(out),
                   env={"TTY_COMPATIBLE": "0", "TTY_INTERACTIVE": "0"})
    assert proc.returncode == 0, proc.stderr
    assert "\x1b[" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert any(line.startswith("[sliver] lowered") and "compiling with TVM" in line for line in lines)
    assert lines[-1].startswith(f"[sliver] wrote {out}")
