"""The wheel, as a user installs it: built from the source tree with ``pip wheel``,
installed (not editable) into a fresh virtual environment by plain ``pip install``,
which must find every runtime dependency it declares, and then running an artifact
from outside the checkout, with the compiler's packages hidden (the Pi's situation).

The fresh environment sees the system's site-packages (``--system-site-packages``) for
numpy, TVM and cryptography, and ``pip install --no-index`` may take nothing from the
network: the wheel's declared dependencies must already be met.  CI runs this as part
of the suite (``.ci/run``)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import sliver

ROOT = Path(__file__).resolve().parents[1]
SKIP = shutil.ignore_patterns(".git", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache", "out")

pytestmark = pytest.mark.slow


def _run(argv, **kw):
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=kw.pop("timeout", 600), **kw)
    assert proc.returncode == 0, f"{' '.join(map(str, argv))}:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """``(venv python, venv bin folder, the wheel)``."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    shutil.copytree(ROOT, src, ignore=SKIP)  # a clean tree: nothing left over from an editable install
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", str(src), "-w", str(tmp / "dist")], timeout=900)
    (wheel,) = (tmp / "dist").glob("sliver-*.whl")
    venv = tmp / "venv"
    _run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)])
    python = venv / "bin" / "python"
    _run([python, "-m", "pip", "install", "-q", "--no-index", "--disable-pip-version-check", str(wheel)])
    return python, venv / "bin", wheel


def test_the_wheel_holds_the_packages_and_data(installed):
    _, _, wheel = installed
    assert wheel.name == f"sliver-{sliver.__version__}-py3-none-any.whl"
    names = set(zipfile.ZipFile(wheel).namelist())
    for f in ("sliver/__init__.py", "sliver/runtime/artifact.py", "sliver/runtime/manifest.py",
              "sliver/tools/cli.py", "sliver/tools/examples/tiny_cnn.py", "sliver/backends/tvm/kernels/lowbit.c",
              "sliver/backends/tvm/kernels/tvm_abi.h",
              "sliver/tools/emulator/setup_pi_emulator.sh", "sliver/ir/torch_module.py", "sliver/progress.py"):
        assert f in names, f
    assert not any(n.startswith(("tests/", "docs/")) for n in names)


def test_it_installs_non_editable_and_runs_an_artifact(installed, example_x86, tmp_path):
    python, bin_dir, _ = installed
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    where = _run([python, "-c", "import sliver, sliver.runtime.artifact as a; print(sliver.__file__, a.__file__)"],
                 cwd=tmp_path, env=env).stdout.split()
    site = str(python.parent.parent / "lib")
    assert all(w.startswith(site) and "site-packages" in w for w in where), where  # not the checkout
    assert _run([bin_dir / "sliver", "--version"], cwd=tmp_path, env=env).stdout.strip() == \
        f"sliver {sliver.__version__}"
    proc = _run([bin_dir / "sliver", "run", str(example_x86), "--verify"], cwd=tmp_path, env=env)
    assert "verify: passed" in proc.stdout
    # the Python API, from bytes, with a thread count
    code = ("import sys, sliver\nm = sliver.load(open(sys.argv[1], 'rb').read(), threads=1)\n"
            "assert all(r['ok'] for r in m.verify())\nprint(m.input_names, m.output_names)")
    assert _run([python, "-c", code, str(example_x86)], cwd=tmp_path, env=env).stdout.strip() == \
        "['x'] ['output']"


def test_it_runs_artifacts_without_the_compiler(installed, example_x86, tmp_path):
    python, bin_dir, _ = installed
    (tmp_path / "sitecustomize.py").write_text(
        "import sys\n"
        "class _Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('torch', 'networkx', 'rich'):\n"
        "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
        "sys.meta_path.insert(0, _Block())\n")
    env = {**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, "PYTHONPATH": str(tmp_path)}
    proc = _run([bin_dir / "sliver", "run", str(example_x86), "--verify"], cwd=tmp_path, env=env)
    assert "verify: passed" in proc.stdout
    proc = subprocess.run([bin_dir / "sliver", "lower", "model.py:build"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "pip install 'sliver[compiler]'" in proc.stderr and "Traceback" not in proc.stderr
