"""The native runtime (runtime/native: the C ABI sliver.h, libsliver, sliver-run), built
once per session: for this machine, and cross-compiled for aarch64 and run on the
emulated Pi, where it verifies a CNN, a transformer and a W2A2 low-bit model and
returns the Python runtime's outputs bit for bit."""

from __future__ import annotations

import re
import shutil
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest

import deploy_models
import precompile
from sliver.tools.emulator import emulate

ROOT = Path(__file__).resolve().parent.parent
MODELS = ("cnn", "transformer", "lowbit")

needs_cxx = pytest.mark.skipif(shutil.which("g++") is None, reason="no g++ on this machine")
needs_cross = pytest.mark.skipif(shutil.which("aarch64-linux-gnu-g++") is None or not emulate.device_ready(),
                                 reason=f"no aarch64 g++ or emulated Pi device view: run {emulate.install_command()}")


def _run(built, *argv) -> subprocess.CompletedProcess:
    return subprocess.run([str(built.runner), *map(str, argv)], capture_output=True, text=True, timeout=120)


@pytest.mark.slow
@needs_cxx
def test_runner_on_this_machine_matches_the_python_runtime(native_x86, example_x86, tmp_path):
    import sliver

    model = sliver.load(example_x86)
    x = np.random.default_rng(3).standard_normal(model.inputs[0].shape).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    proc = _run(native_x86, example_x86, "--verify", "--input", tmp_path / "x.npy", "--output-dir", tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "verify: passed" in proc.stdout
    got = np.load(tmp_path / "output_0.npy")
    want = model.run(x)[0]
    assert got.dtype == want.dtype and got.tobytes() == want.tobytes()


@pytest.mark.slow
@needs_cxx
def test_runner_refuses_bad_inputs_and_damaged_artifacts(native_x86, example_x86, example_arm64, tmp_path):
    def fails(*argv, match):
        proc = _run(native_x86, *argv)
        assert proc.returncode == 2 and re.search(match, proc.stderr), (proc.returncode, proc.stderr)

    np.save(tmp_path / "wrong.npy", np.zeros((1, 3, 8, 8), np.float32))
    fails(example_x86, "--input", tmp_path / "wrong.npy", match="must be float32\\[1, 3, 32, 32\\]")
    np.save(tmp_path / "f64.npy", np.zeros((1, 3, 32, 32), np.float64))
    fails(example_x86, "--input", tmp_path / "f64.npy", match="must be float32")
    (tmp_path / "junk.npy").write_bytes(b"\x93NUMPY\x01\x00\xff\xff{")
    fails(example_x86, "--input", tmp_path / "junk.npy", match="truncated")
    fails(example_x86, "--input", tmp_path / "x.npy", "--input", tmp_path / "x.npy", match="takes 1 input")
    fails(example_arm64, "--verify", match="compiled for aarch64 but this machine is x86_64")
    fails(tmp_path / "missing.sliver", match="no such artifact")

    data = bytearray(Path(example_x86).read_bytes())
    lib_at = data.find(b"\x7fELF")
    damaged = bytearray(data)
    damaged[lib_at + 4096] ^= 0xFF
    (tmp_path / "damaged.sliver").write_bytes(bytes(damaged))
    fails(tmp_path / "damaged.sliver", match="CRC-32|sha256")
    (tmp_path / "short.sliver").write_bytes(bytes(data[: len(data) // 2]))
    fails(tmp_path / "short.sliver", match="not a zip archive|corrupt or truncated")
    with zipfile.ZipFile(example_x86) as src, zipfile.ZipFile(tmp_path / "deflated.sliver", "w",
                                                               zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info))
    fails(tmp_path / "deflated.sliver", match="compressed")
    with zipfile.ZipFile(example_x86) as src, zipfile.ZipFile(tmp_path / "extra.sliver", "w") as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info))
        dst.writestr("../evil.so", b"x")
    fails(tmp_path / "extra.sliver", match="unexpected entry")
    with zipfile.ZipFile(example_x86) as src, zipfile.ZipFile(tmp_path / "v3.sliver", "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename == "manifest.json":
                data = data.replace(b'"format_version": 2', b'"format_version": 3')
            dst.writestr(info.filename, data)
    fails(tmp_path / "v3.sliver", match="dynamic dimensions")
    assert _run(native_x86, "--bogus").returncode == 2


def _c_example() -> str:
    """The C program docs/deploy.md shows for embedding the runtime."""
    text = (ROOT / "docs" / "deploy.md").read_text()
    blocks = re.findall(r"```c\n(.*?)```", text, re.S)
    assert len(blocks) == 1, "docs/deploy.md should show one C example"
    return blocks[0]


@pytest.mark.slow
@needs_cxx
def test_the_documented_c_example_compiles_as_c_and_runs(native_x86, example_x86, tmp_path):
    """sliver.h is a C header: the embedding example of docs/deploy.md builds with a C
    compiler (as it documents) and prints the model's first output."""
    src = tmp_path / "embed.c"
    src.write_text(_c_example())
    exe = tmp_path / "embed"
    cmd = ["gcc", "-std=c11", "-Wall", "-Werror", "-o", str(exe), str(src), f"-I{native_x86.path / 'include'}",
           f"-L{native_x86.path / 'lib'}", "-lsliver", f"-Wl,-rpath,{native_x86.path / 'lib'}"]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    proc = subprocess.run([str(exe), str(example_x86)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    import sliver

    model = sliver.load(example_x86)
    want = model.run(*model.golden_inputs())[0]
    assert proc.stdout.split()[:2] == [model.outputs[0].name, f"{want.reshape(-1)[0]:.6g}"]


@pytest.mark.slow
@pytest.mark.emulated
@needs_cross
@pytest.mark.precompiled.with_args(lambda p: [deploy_models.key(n, "arm64") for n in MODELS])
def test_cross_compiled_runner_verifies_three_models_on_the_pi_bit_for_bit(native_arm64, tmp_path):
    arts = {n: precompile.get(deploy_models.key(n, "arm64")) for n in MODELS}
    # the Python runtime on the emulated Pi (TVM's Python package), all three in one process
    script = tmp_path / "ref.py"
    script.write_text(
        "import sys, numpy as np, sliver\n"
        "for name, art, out in zip(sys.argv[1::3], sys.argv[2::3], sys.argv[3::3]):\n"
        "    m = sliver.load(art)\n"
        "    np.save(out, m.run(*m.golden_inputs())[0])\n")
    argv = [str(script)]
    for n, art in arts.items():
        argv += [n, str(art), str(tmp_path / f"ref-{n}.npy")]
    ref = emulate.run_python(argv)
    assert ref.returncode == 0, ref.stderr
    for n, art in arts.items():
        out = tmp_path / n
        out.mkdir()
        proc = emulate.run_device([native_arm64.runner, art, "--verify", "--output-dir", out], python=False)
        assert proc.returncode == 0, f"{n}: {proc.stdout}{proc.stderr}"
        assert "verify: passed" in proc.stdout, proc.stdout
        got, want = np.load(out / "output_0.npy"), np.load(tmp_path / f"ref-{n}.npy")
        assert got.dtype == want.dtype and got.shape == want.shape
        assert got.tobytes() == want.tobytes(), f"{n}: the native runner's output differs from the Python runtime's"
