"""The float kernels transformers spend their time in, on NEON (the arm64 target):

- a linear layer's micro-kernel keeps its tile, the rows of A and one k step's B vectors in
  the 32 registers, unrolls k by 8 (4 when 8 does not divide K) and reads each row of A as
  vectors whose lanes ``fmla`` takes by element;
- erf, tanh and sigmoid divide with the reciprocal estimate and two Newton steps, and the
  softmax multiplies by its row's reciprocal: no ``fdiv`` in their loops;
- a layer norm sums over partial lanes and computes its row's mean and deviation once per row;
- the epilogue of a product fused with GELU is vectorized (for AVX2 too: the ``isnan`` test it
  had kept TVM from vectorizing it under the unrolled loop of the tile's vectors).

The decisions are checked here on the host; one artifact of all of them runs on the emulated Pi
against torch (and against float64 for the activations, NaN and ±inf included).
"""

from __future__ import annotations

import re

import numpy as np
import pytest

tvm = pytest.importorskip("tvm")

from tvm import relax  # noqa: E402

import precompile  # noqa: E402
from sliver.backends.tvm import schedules as S  # noqa: E402
from sliver.backends.tvm.schedules import common, dense  # noqa: E402
from sliver.backends.tvm.targets import resolve, tvm_target  # noqa: E402
from helpers import front_primfuncs  # noqa: E402

ARM = "arm64"


def _arm():
    return tvm_target(resolve(ARM))


def _scheduled_linear(k, n, rows=16, activation=relax.op.nn.gelu, target=None):
    target = target or _arm()
    rng = np.random.default_rng(1)
    w = relax.const(rng.standard_normal((n, k)).astype("float32"))
    b = relax.const(rng.standard_normal((n,)).astype("float32"))
    funcs = front_primfuncs(lambda bb, x: bb.emit(activation(bb.emit(relax.op.linear(x, w, b)))), [(1, rows, k)],
                            target)
    (name,) = [nm for nm in funcs if "matmul" in nm]
    sched, rule = S.schedule_primfunc(funcs[name], target, name=name)
    assert rule == "dense", rule
    return sched


def _assembly(func, target) -> str:
    lib = tvm.tirx.build(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), target=target)
    return lib.inspect_source("asm")


def _lowered(func, target) -> str:
    """The function after TVM's TIR passes (vectorization included), as TVMScript."""
    from tvm import tirx

    mod = tvm.IRModule({"main": func.with_attr("global_symbol", "main")})
    pipeline, _, _ = tirx.get_tir_pipeline("default")
    with tvm.transform.PassContext(opt_level=3):
        mod = pipeline(tirx.transform.BindTarget(target.with_host(target))(mod))
    return mod["main"].script()


@pytest.mark.parametrize("rows,n", [(128, 768), (128, 3072), (200, 768), (3136, 96), (49, 384), (1500, 384),
                                    (1, 1000)])
def test_neon_tiles_fit_the_registers(rows, n):
    cpu = common.cpu_of(_arm())
    rt, nv = dense.dense_tile(rows, n, cpu)
    assert rows % rt == 0 and (n // cpu.lanes) % nv == 0
    assert rt * nv + rt * dense.NEON_K_STEP // cpu.lanes + nv <= cpu.registers
    if rows % 4 == 0 and n % 16 == 0:  # at least as good as onnxruntime's 4 x 4 with 4 k steps
        assert dense.neon_tile_cost(rt, nv, cpu) < (4 + 8 + 3) / 64
    assert dense.neon_tile_cost(6, 6, cpu) is None  # 36 accumulators: spills


@pytest.mark.parametrize("k,step", [(64, 8), (36, 4), (30, None)])
def test_neon_matmul_reads_rows_of_a_as_vectors(k, step):
    sched = _scheduled_linear(k, 64)
    text = sched.script()
    if step is None:  # no k step divides K: the plain kernel
        assert "_global" not in text
        return
    assert re.search(rf"for \w+ in T\.vectorized\(T\.int64\({step}\)\):\s+with T\.sblock\(\"x0_global\"\)", text)
    assert re.search(rf"for \w+ in T\.unroll\(T\.int64\({step}\)\)", text)
    asm = _assembly(sched, _arm())
    assert re.search(r"fmla\tv\d+\.4s, v\d+\.4s, v\d+\.s\[[123]\]", asm)  # A's lanes, by element
    assert "ld1r" not in asm  # no broadcast load per row and k step
    assert "frecpe" in asm and "fdiv" not in asm  # GELU's erf divides by the reciprocal estimate


@pytest.mark.parametrize("target", [ARM, "x86-64-v3"])
def test_gelu_epilogue_is_vectorized(target):
    """TVM scalarized a vector loop that tests ``isnan`` inside an unrolled loop: the tile's
    epilogue under its unrolled vectors became a scalar loop with a branch per element."""
    tgt = tvm_target(resolve(target))
    cpu = common.cpu_of(tgt)
    sched = _scheduled_linear(64, 8 * cpu.lanes, target=tgt)
    lowered = _lowered(sched, tgt)
    assert not re.search(r"for \w+_s in range", lowered), "a vectorized loop was scalarized"
    assert "isnan" not in sched.script()


@pytest.mark.parametrize("name", ["tanh", "sigmoid", "softmax"])
def test_neon_activations_do_not_divide_per_element(name):
    op = {"tanh": relax.op.tanh, "sigmoid": relax.op.sigmoid, "softmax": lambda v: relax.op.nn.softmax(v, axis=-1)}
    target = _arm()
    (f,) = front_primfuncs(lambda bb, v: bb.emit(op[name](v)), [(8, 64)], target).values()
    asm = _assembly(S.schedule_primfunc(f, target)[0], target)
    if name == "softmax":  # one division per row, out of the column loop
        assert len(re.findall(r"\tfdiv\t", asm)) <= 1 and not re.search(r"\tfdiv\tv\d+\.4s", asm)
    else:
        assert "frecpe" in asm and "fdiv" not in asm


def test_neon_layer_norm_is_row_wise_and_vectorized():
    """Both sums over 16 partial lanes, the mean and 1 / sqrt(var + eps) once per row (TVM's layer
    norm: scalar sums, and an fsqrt and fdiv per output vector)."""
    target = _arm()
    rng = np.random.default_rng(2)
    g, b = (relax.const(rng.standard_normal(40).astype("float32")) for _ in range(2))
    (f,) = front_primfuncs(lambda bb, v: bb.emit(relax.op.nn.layer_norm(v, g, b, axes=[-1])), [(7, 40)],
                           target).values()
    sched, rule = S.schedule_primfunc(f, target)
    assert rule == "layer_norm"
    asm = _assembly(sched, target)
    assert len(re.findall(r"\tfsqrt\t", asm)) == 1 and not re.search(r"\tfsqrt\tv\d+\.4s", asm)


# -- on the emulated Pi ------------------------------------------------------------------------------


class Kernels(__import__("torch").nn.Module):
    """Linear layers whose K takes each micro-kernel (8 and 4 k steps, none), 13 rows (padded to
    the tile), GELU in both forms, an attention with softmax, and the activations on ``a``."""

    def __init__(self):
        import torch

        super().__init__()
        torch.manual_seed(0)
        self.up = torch.nn.Linear(40, 96)
        self.mid = torch.nn.Linear(96, 36)
        self.odd = torch.nn.Linear(36, 30)
        self.down = torch.nn.Linear(30, 24)
        self.qkv = torch.nn.Linear(24, 72)
        self.norm = torch.nn.LayerNorm(40)  # 2 x 16 lanes and a tail of 8

    def forward(self, x, a):
        import torch
        import torch.nn.functional as F

        h = self.down(self.odd(F.gelu(self.mid(F.gelu(self.up(self.norm(x)), approximate="tanh")))))
        q, k, v = self.qkv(h).chunk(3, dim=-1)
        h = torch.softmax(q @ k.transpose(-1, -2) * 0.2, -1) @ v
        return (h, F.gelu(a), F.gelu(a, approximate="tanh"), torch.erf(a), torch.tanh(a), torch.sigmoid(a), F.silu(a),
                torch.softmax(a, -1))


SPECIAL = [0.0, -0.0, np.inf, -np.inf, np.nan, 1e-30, -1e-30, 9.5, -9.5, 30.0, -30.0, 87.0, -87.0, 4.0, -4.0, 9.0]


def inputs():
    import torch

    g = np.random.default_rng(5)
    a = np.concatenate([np.linspace(-12, 12, 1024), g.standard_normal(1024) * 4, np.tile(SPECIAL, 8)])
    return torch.from_numpy(g.standard_normal((1, 13, 40)).astype(np.float32)), torch.from_numpy(
        a.astype(np.float32).reshape(-1, 128))


def lowered():
    import sliver

    model = Kernels().eval()
    return sliver.lower(model, inputs(), target=ARM, tune=False).save(precompile.out("neon-kernels-arm64.sliver"))


@pytest.mark.slow
@pytest.mark.emulated
@pytest.mark.precompiled.with_args(lambda params: [("call", "test_neon_kernels", "lowered")])
def test_neon_kernels_match_torch_on_the_emulated_pi(tmp_path):
    import torch
    import torch.nn.functional as F

    from sliver.tools.emulator import emulate

    path = precompile.get(("call", "test_neon_kernels", "lowered"))
    x, a = inputs()
    np.savez(tmp_path / "in.npz", x.numpy(), a.numpy())
    proc = emulate.run_module(["run", str(path), "--inputs", str(tmp_path / "in.npz"), "--output",
                               str(tmp_path / "out.npz")])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    with np.load(tmp_path / "out.npz") as z:
        got = [z[k] for k in z.files]
    with torch.no_grad():
        want = Kernels().eval()(x, a)[0].numpy()
    np.testing.assert_allclose(got[0], want, rtol=1e-4, atol=1e-5)
    a64 = a.double()
    refs = {"gelu": F.gelu(a64), "gelu_tanh": F.gelu(a64, approximate="tanh"), "erf": torch.erf(a64),
            "tanh": torch.tanh(a64), "sigmoid": torch.sigmoid(a64), "silu": F.silu(a64),
            "softmax": torch.softmax(a64, -1)}
    for (name, ref), out in zip(refs.items(), got[1:]):
        ref = ref.numpy()
        np.testing.assert_array_equal(np.isnan(out), np.isnan(ref), err_msg=f"{name}: NaN where float64 has none")
        fin = ~np.isnan(ref)
        np.testing.assert_allclose(out[fin], ref[fin].astype(np.float32), rtol=3e-6, atol=1e-6, err_msg=name)
