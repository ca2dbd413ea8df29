"""x86-64 targets that run on any CPU: the named levels ``x86-64-v2/v3/v4`` and the
host's own ``x86_64``, with C compiler flags the compiler accepts.

The low-bit C kernels were compiled with ``-march=<LLVM's CPU name>``, which gcc 12
rejects for CPUs newer than itself (``znver5``, ``emeraldrapids``): every x86 low-bit
model failed to link there.  An ``x86-64-v3`` artifact must not use an instruction
beyond AVX2: it runs under ``qemu-x86_64 -cpu Haswell`` (whose TCG has no AVX-512),
where the host-CPU artifact of an AVX-512 machine dies with SIGILL."""

from __future__ import annotations

import shutil
import os
import subprocess
import sys

import numpy as np
import pytest

tvm = pytest.importorskip("tvm")

from sliver.backends.tvm.targets import (X86_LEVELS, c_compiler, compiler_accepts, host_target,  # noqa: E402
                                         resolve)
from sliver.common.platform import host_arch  # noqa: E402
from sliver.ir.core import Module  # noqa: E402
from sliver.ir.types import TensorType, int_range  # noqa: E402

x86_host = pytest.mark.skipif(host_arch() != "x86_64", reason="needs an x86-64 build machine")


@pytest.mark.parametrize("name,lanes,registers", [("x86-64-v2", 4, 16), ("x86-64-v3", 8, 16), ("x86-64-v4", 16, 32)])
def test_levels_are_portable_targets_with_their_vector_width(name, lanes, registers):
    t = resolve(name)
    assert (t.arch, t.cpu, t.level, t.portable) == ("x86_64", name, name, True)
    assert (t.lanes, t.registers) == (lanes, registers)
    assert t.spec["mcpu"] == name and t.spec["mtriple"] == "x86_64-linux-gnu"
    assert name in t.runs_on and t.facts()["portable"] is True


@x86_host
def test_x86_64_is_this_machines_cpu_and_says_so():
    from tvm.target import codegen

    t = resolve("x86_64")
    assert t.cpu == codegen.llvm_get_system_cpu() and not t.portable
    assert "this build machine's CPU" in t.runs_on and t.cpu in t.runs_on
    assert t.facts()["portable"] is False and t.facts()["cpu"] == t.cpu
    # its vector width is the host's: 16 lanes with AVX-512, 8 with AVX2
    features = set(codegen.llvm_get_cpu_features(tvm.target.Target(t.spec)))
    assert t.lanes == (16 if "avx512f" in features else 8 if "avx2" in features else 4)
    assert t.level in X86_LEVELS and t.level == host_target().level


@x86_host
@pytest.mark.parametrize("target", ["x86_64", *X86_LEVELS, {"kind": "llvm", "mtriple": "x86_64-linux-gnu",
                                                           "mcpu": "znver5"},
                                    {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "emeraldrapids"},
                                    {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "haswell"}])
def test_c_flags_are_ones_the_compiler_accepts(target):
    """Never an LLVM CPU name the C compiler does not know: for those the flags of the
    CPU's feature level (gcc 12 knows neither znver5 nor emeraldrapids)."""
    t = resolve(target)
    cc = c_compiler(t.cross_compiler)
    assert t.gcc_flags and compiler_accepts(cc, *t.gcc_flags), (cc, t.gcc_flags)
    if not compiler_accepts(cc, f"-march={t.cpu}"):
        assert f"-march={t.cpu}" not in t.gcc_flags
        assert t.gcc_flags[0] in ("-march=native", f"-march={t.level}") or "-march=x86-64" in t.gcc_flags
    if isinstance(target, dict) and target["mcpu"] in ("znver5", "emeraldrapids"):
        assert t.level == "x86-64-v4" and t.lanes == 16


def test_level_flags_without_named_levels_spell_out_the_features(monkeypatch):
    """A compiler older than gcc 11 (no ``-march=x86-64-v3``) gets the level's features one by one."""
    from sliver.backends.tvm import targets

    monkeypatch.setattr(targets, "compiler_accepts", lambda cc, *flags: not any("x86-64-v" in f for f in flags))
    flags = targets._x86_level_flags("gcc", "x86-64-v3")
    assert flags[0] == "-march=x86-64" and "-mavx2" in flags and "-mfma" in flags and "-msse4.2" in flags
    assert not [f for f in flags if "avx512" in f]


def lowbit_model():
    """(module, inputs): a float 3x3 conv, a 2-bit conv on 128 channels (bit-serial on
    x86: 144-byte bit-plane rows), an 8-bit one (the int8 kernel) and a 2-bit linear
    (bit-serial: 1152 features)."""
    g = np.random.default_rng(0)
    m = Module("levels")
    x = m.add_input(TensorType((1, 16, 6, 6), "f32"), "x")
    h = m.add_op("conv2d", [x, m.add_param("w0", g.standard_normal((128, 16, 3, 3)).astype(np.float32) * 0.1)],
                 {"padding": [1, 1, 1, 1]}).result
    layers = [("q2", "u2", "i2", 32), ("q8", "u8", "i8", 32)]
    for name, xd, wd, o in layers:
        c = int(h.type.shape[1])
        q = m.add_op("quantize", [h], {"scale": 0.25, "zero_point": 1, "dtype": xd}).result
        lo, hi = int_range(wd)
        codes = g.integers(lo, hi + 1, size=(o, c, 3, 3)).astype(np.int8)
        m.params[f"w_{name}"] = codes
        w = m.add_op("param", types=[TensorType(codes.shape, wd)], names=[f"w_{name}"]).result
        s = m.add_param(f"s_{name}", (g.random(o) * 0.05 + 0.01).astype(np.float32))
        h = m.add_op("qconv2d", [q, w, s], {"padding": [1, 1, 1, 1], "x_zero_point": 1}, names=[name]).result
    flat = m.add_op("reshape", [h], {"shape": [1, 32 * 36]}).result
    q = m.add_op("quantize", [flat], {"scale": 0.5, "dtype": "u2"}).result
    codes = g.integers(-2, 2, size=(10, 32 * 36)).astype(np.int8)
    m.params["w_fc"] = codes
    w = m.add_op("param", types=[TensorType(codes.shape, "i2")], names=["w_fc"]).result
    y = m.add_op("qdense", [q, w, m.add_param("s_fc", np.full(10, 0.01, np.float32))], {}, names=["fc"]).result
    m.set_outputs([y])
    return m, [g.standard_normal((1, 16, 6, 6)).astype(np.float32)]


def lowered(target):
    """The low-bit model's artifact for ``target`` (a precompile job): its saved path."""
    import precompile
    import sliver

    module, inputs = lowbit_model()
    art = sliver.lower(module, inputs, target=target, tune=False, rtol=1e-5, atol=1e-5)
    return art.save(precompile.out(f"levels-{target}.sliver"))


def _artifact(target):
    import precompile

    return precompile.get(("call", "test_x86_levels", "lowered", target))


def _can_run(target) -> bool:
    host = host_target()
    t = resolve(target)
    if host.arch != "x86_64":
        return False
    if not t.portable:
        return True
    return host.level is not None and X86_LEVELS.index(host.level) >= X86_LEVELS.index(t.level)


LEVEL_JOBS = pytest.mark.precompiled.with_args(
    lambda params: [("call", "test_x86_levels", "lowered", params["target"])])


@x86_host
@pytest.mark.slow
@LEVEL_JOBS
@pytest.mark.parametrize("target", ["x86_64", "x86-64-v3", "x86-64-v4"])
def test_lowbit_model_lowers_for_each_x86_target(target):
    """The C kernels link for the host and both levels (they failed to on CPUs gcc 12
    does not know), with the kernels the x86 policy picks; runnable ones match the
    interpreter."""
    from sliver.ir.interp import run
    from sliver.runtime.artifact import read

    art = read(_artifact(target))
    t = resolve(target)
    assert art.manifest.kernels == {"q2": "bitserial", "q8": "int8", "fc": "bitserial"}
    facts = art.manifest.target
    assert (facts.name, facts.cpu, facts.level, facts.portable) == (t.name, t.cpu, t.level, t.portable)
    assert facts.runs_on == t.runs_on
    if not _can_run(target):
        pytest.skip(f"this machine cannot run {target} code")
    module, inputs = lowbit_model()
    got = art.load().run(*inputs)
    want = run(module, inputs)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-5, atol=1e-5 * np.abs(want[0]).max())


#: verify each artifact named on the command line, in order, in one Python.  Under qemu
#: the imports cost far more than the runs (torch, which tvm_ffi imports when it can,
#: 34 s; ml_dtypes 13 s; TVM's compiler library): the device runtime needs none of them,
#: so they are hidden and TVM loads its runtime library only, as on the Pi
_VERIFY = """
import sys
sys.modules["torch"] = sys.modules["ml_dtypes"] = None
from sliver.runtime.artifact import load
for path in sys.argv[1:]:
    reports = load(path).verify()
    if all(r["ok"] for r in reports):
        print("verified", path, flush=True)
"""


def _under_haswell(*paths):
    return subprocess.run(["qemu-x86_64", "-cpu", "Haswell", sys.executable, "-c", _VERIFY, *map(str, paths)],
                          capture_output=True, text=True, timeout=1800, env={**os.environ, "TVM_USE_RUNTIME_LIB": "1"})


@x86_host
@pytest.mark.slow
@pytest.mark.skipif(shutil.which("qemu-x86_64") is None, reason="needs qemu-x86_64 (Debian's qemu-user)")
@pytest.mark.precompiled.with_args(lambda params: [("call", "test_x86_levels", "lowered", t)
                                                   for t in ("x86-64-v3", "x86_64")])
def test_v3_artifact_runs_on_a_cpu_without_avx512():
    """qemu's Haswell (AVX2, FMA, BMI2; its TCG implements no AVX-512) runs the x86-64-v3
    artifact, C kernels included, and it verifies; on an AVX-512 machine the host-CPU
    artifact of the same model dies there with SIGILL: the check can tell."""
    portable, host = _artifact("x86-64-v3"), _artifact("x86_64")
    if host_target().level != "x86-64-v4":
        proc = _under_haswell(portable)
        assert proc.returncode == 0 and f"verified {portable}" in proc.stdout, proc.stdout + proc.stderr[-2000:]
        return
    proc = _under_haswell(portable, host)
    assert f"verified {portable}" in proc.stdout, proc.stdout + proc.stderr[-2000:]
    assert f"verified {host}" not in proc.stdout
    assert proc.returncode in (-4, 128 + 4), (proc.returncode, proc.stdout, proc.stderr[-2000:])
