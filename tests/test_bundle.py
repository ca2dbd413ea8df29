"""``sliver bundle``: a folder with exactly what a device needs, run where nothing but
Python and numpy is installed (here with ``python -S`` and a numpy-only path, on the
emulated Pi from its device view: Debian's python3 and python3-numpy, no TVM)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

import deploy_models
import precompile
from sliver.common.errors import ArtifactError, SliverError, UsageError
from sliver.runtime import tvm_c
from sliver.runtime.artifact import read
from sliver.tools import bundle
from sliver.tools.emulator import emulate

LIMIT = 15 << 20  # bytes a bundle may weigh besides Python and numpy

slow = pytest.mark.slow
two_outputs = pytest.mark.precompiled.with_args(lambda p: [deploy_models.key("two_outputs", "x86_64")])


def _numpy_only(tmp_path: Path) -> Path:
    """A folder holding only (links to) this Python's numpy: with ``python -S`` on it, a
    bundle sees numpy and nothing else installed."""
    import numpy

    site = Path(numpy.__file__).parent.parent
    folder = tmp_path / "numpy-only"
    if folder.is_dir():
        return folder
    folder.mkdir()
    for name in ("numpy", "numpy.libs"):
        if (site / name).exists():
            (folder / name).symlink_to(site / name)
    return folder


def _run_bare(tmp_path: Path, *argv) -> subprocess.CompletedProcess:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(_numpy_only(tmp_path))}
    return subprocess.run([sys.executable, "-S", "-s", *map(str, argv)], env=env, capture_output=True, text=True,
                          timeout=120)


def _expected_files(b: bundle.Bundle) -> set[str]:
    py = {f"python/sliver/{folder}/{p.name}" for name, folder in bundle.PACKAGES.items()
          for p in bundle._package_dir(name).glob("*.py")}
    return {"run.py", "model.sliver", "bundle.json", "lib/libtvm_runtime.so", "lib/libtvm_ffi.so",
            "python/sliver/__init__.py"} | py


@slow
def test_x86_bundle_runs_with_only_python_and_numpy(example_x86, tmp_path):
    b = bundle.make_bundle(example_x86, tmp_path / "bundle")
    print(b.report())
    assert set(b.files) == _expected_files(b)
    assert b.arch == "x86_64" and b.total <= LIMIT, b.report()
    meta = json.loads((b.path / "bundle.json").read_text())
    assert meta["format"] == "sliver-bundle" and meta["tvm"] == "0.27.0.post1"
    assert (b.path / "model.sliver").read_bytes() == Path(example_x86).read_bytes()

    probe = tmp_path / "probe.py"
    probe.write_text("import importlib.util, sys\nprint([m for m in ('tvm', 'tvm_ffi', 'torch') "
                     "if importlib.util.find_spec(m)])\n")
    assert _run_bare(tmp_path, probe).stdout.strip() == "[]"  # nothing but numpy in that Python

    out = tmp_path / "out.npz"
    proc = _run_bare(tmp_path, b.path / "run.py", "--verify", "--output", out)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "verify: passed" in proc.stdout
    import sliver

    model = sliver.load(example_x86)  # TVM's Python runtime, in this process
    want = model.run(*model.golden_inputs())
    with np.load(out) as got:
        assert [got[k].tobytes() for k in got.files] == [w.tobytes() for w in want]  # bit for bit


@slow
@two_outputs
def test_c_abi_runtime_matches_tvm_python_bit_for_bit(tmp_path):
    """The bundle's runtime (TVM's C ABI through ctypes) and TVM's Python runtime give the
    same bytes, for a model with two inputs and two outputs; both in one process is refused."""
    import sliver

    path = precompile.get(deploy_models.key("two_outputs", "x86_64"))
    b = bundle.make_bundle(path, tmp_path / "bundle")
    ref = sliver.load(path)
    rng = np.random.default_rng(1)
    inputs = {s.name: rng.standard_normal(s.shape).astype(np.float32) for s in ref.inputs}
    np.savez(tmp_path / "in.npz", **inputs)
    want = ref.run(*inputs.values())
    proc = _run_bare(tmp_path, b.path / "run.py", "--inputs", tmp_path / "in.npz", "--output", tmp_path / "out.npz")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    with np.load(tmp_path / "out.npz") as got:
        assert len(got.files) == 2 and [got[k].tobytes() for k in got.files] == [w.tobytes() for w in want]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(tvm_c.LIB_DIR_ENV, str(b.path / "lib"))
        with pytest.raises(ArtifactError, match="already loaded"):
            tvm_c._Library(b.path / "lib")


@slow
def test_bundle_libraries_from_wheels_and_refusals(example_x86, tmp_path):
    """--wheels takes the libraries from wheel files; bad wheels, a folder that is not a
    bundle and a damaged library are refused with the fix."""
    site = bundle._installed_site("apache_tvm")
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    for lib, (dist, member, version) in bundle.LIBRARIES.items():
        with zipfile.ZipFile(wheels / f"{dist}-{version}-cp311-cp311-manylinux_2_28_x86_64.whl", "w") as z:
            z.write(site / member, member)
    b = bundle.make_bundle(example_x86, tmp_path / "b1", wheels=wheels)
    assert b.source == str(wheels) and (b.path / "lib/libtvm_ffi.so").read_bytes() == (site / bundle.LIBRARIES[
        "libtvm_ffi.so"][1]).read_bytes()
    b = bundle.make_bundle(example_x86, tmp_path / "b1", wheels=wheels)  # an earlier bundle is replaced

    aarch64 = tmp_path / "aarch64-wheels"
    aarch64.mkdir()
    for w in wheels.iterdir():  # x86 files under an aarch64 name: the ELF check catches them
        (aarch64 / w.name.replace("x86_64", "aarch64")).write_bytes(w.read_bytes())
    with pytest.raises(SliverError, match="pip download"):
        bundle.make_bundle(example_x86, tmp_path / "b2", wheels=aarch64)
    assert not (tmp_path / "b2").exists()

    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(UsageError, match="not a sliver bundle"):
        bundle.make_bundle(example_x86, other)
    assert (other / "notes.txt").read_text() == "keep me"

    lib = b.path / "lib" / "libtvm_runtime.so"
    data = bytearray(lib.read_bytes())
    data[len(data) // 2] ^= 0xFF
    lib.write_bytes(bytes(data))
    proc = _run_bare(tmp_path, b.path / "run.py", "--verify")
    assert proc.returncode != 0 and "damaged" in proc.stderr, proc.stderr
    (b.path / "bundle.json").write_text("{")
    proc = _run_bare(tmp_path, b.path / "run.py", "--verify")
    assert proc.returncode != 0 and "not a complete sliver bundle" in proc.stderr, proc.stderr


def test_bundle_checks_the_artifact_before_writing(tmp_path):
    bad = tmp_path / "bad.sliver"
    bad.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(ArtifactError):
        bundle.make_bundle(bad, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]
    with pytest.raises(UsageError, match="no such folder"):
        bundle.runtime_libraries("x86_64", wheels=tmp_path / "none")


def test_atomic_directory_leaves_nothing_half_written(tmp_path):
    from sliver.common.files import atomic_directory

    def broken(folder):
        (folder / "part").write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_directory(tmp_path / "out", broken, replaceable=lambda p: True)
    assert list(tmp_path.iterdir()) == []
    atomic_directory(tmp_path / "out", lambda f: (f / "a").write_text("1"), replaceable=lambda p: False)
    with pytest.raises(FileExistsError):  # not replaceable: kept as it was
        atomic_directory(tmp_path / "out", lambda f: (f / "b").write_text("2"), replaceable=lambda p: False)
    with pytest.raises(RuntimeError):  # replaceable, but the new one fails: the old one stays
        atomic_directory(tmp_path / "out", broken, replaceable=lambda p: True)
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["a"]
    atomic_directory(tmp_path / "out", lambda f: (f / "b").write_text("2"), replaceable=lambda p: True)
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["b"]


def test_c_abi_runtime_names_a_missing_library_folder(tmp_path, monkeypatch):
    monkeypatch.setenv(tvm_c.LIB_DIR_ENV, str(tmp_path))
    with pytest.raises(ArtifactError, match="missing .*libtvm_ffi.so"):
        tvm_c._Library(tmp_path)


needs_device = pytest.mark.skipif(not emulate.device_ready(), reason="the emulated Pi's device view is not built: "
                                  f"run {emulate.install_command()}")


@slow
@pytest.mark.emulated
@needs_device
@pytest.mark.skipif(shutil.which("aarch64-linux-gnu-g++") is None, reason="no aarch64-linux-gnu-g++: run "
                    f"{emulate.install_command()}")
def test_arm64_bundle_runs_on_a_pi_with_only_debian_python_and_numpy(example_arm64, native_arm64, tmp_path):
    b = bundle.make_bundle(example_arm64, tmp_path / "bundle", native=native_arm64)
    print(b.report())
    assert b.arch == "aarch64" and b.total <= LIMIT, b.report()
    assert set(bundle.NATIVE_FILES) <= set(b.files) and b.sizes()["native"] < 1 << 20
    probe = emulate.run_device(["-c", "import importlib.util, numpy; print(numpy.__file__, "
                                "[m for m in ('tvm', 'tvm_ffi', 'sliver') if importlib.util.find_spec(m)])"])
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.split()[0].startswith(str(emulate.device_root() / "usr/lib/python3/dist-packages"))
    assert probe.stdout.strip().endswith("[]")
    out = tmp_path / "out.npz"
    proc = emulate.run_device([b.path / "run.py", "--verify", "--output", out])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "verify: passed (arm64 artifact on aarch64)" in proc.stdout
    golden = read(example_arm64).golden
    with np.load(out) as got:
        np.testing.assert_allclose(got[got.files[0]], golden["output_0"], rtol=1e-5, atol=1e-5)
        python_out = got[got.files[0]]
    # the same bundle without Python: its native runner, same output bytes
    proc = emulate.run_device([b.path / "sliver-run", b.path / "model.sliver", "--verify", "--output-dir", tmp_path],
                              python=False)
    assert proc.returncode == 0 and "verify: passed" in proc.stdout, proc.stdout + proc.stderr
    assert np.load(tmp_path / "output_0.npy").tobytes() == python_out.tobytes()
