"""The float kernels transformers spend their time in, for the AVX2 (x86-64-v3) and AVX-512
(x86-64-v4) decisions alike, on any x86-64 host:

- a linear layer's weight is packed ``[N / b, K, b]`` (``b`` = the register tile's width for
  the target) and the product runs the tiled ``dense`` rule with its epilogue fused, GELU's
  two reads of its input included;
- GELU, erf, tanh, sigmoid, SiLU and softmax use polynomial (vectorizable) versions whose
  error against float64 stays at float32 level and which keep NaN and ±inf like torch.

Each scheduled PrimFunc is compared with the unscheduled one; code for a target runs only
where the host has its instructions (an AVX2-only host checks the v4 decisions without running them).
"""

from __future__ import annotations

import re

import numpy as np
import pytest

tvm = pytest.importorskip("tvm")

from tvm import relax  # noqa: E402

from sliver.backends.tvm import schedules as S  # noqa: E402
from sliver.backends.tvm.schedules import common, dense  # noqa: E402
from sliver.backends.tvm.targets import resolve, tvm_target  # noqa: E402
from helpers import front_primfuncs  # noqa: E402

LEVELS = ["x86-64-v3", "x86-64-v4"]


def _host_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def runs_here(level: str) -> bool:
    need = {"x86-64-v3": {"avx2", "fma"}, "x86-64-v4": {"avx512f", "avx512bw", "avx512dq", "avx512vl"}}[level]
    return need <= _host_flags()


def run(func, arrays, target):
    lib = tvm.tirx.build(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), target=target)
    args = [tvm.runtime.tensor(a) for a in arrays]
    lib["main"](*args)
    return args[-1].numpy()


def check(funcs, target, level, inputs=None):
    """Schedule every function; where the host can run ``level``, scheduled == unscheduled.
    Returns {name: rule}."""
    used = {}
    rng = np.random.default_rng(0)
    for name, f in funcs.items():
        sched, rule = S.schedule_primfunc(f, target, name=name)
        used[name] = rule
        if not runs_here(level):
            continue
        shapes = [tuple(int(d) for d in p.ty.shape) for p in f.params]
        args = [rng.standard_normal(s).astype("float32") * 3 for s in shapes[:-1]] + [np.zeros(shapes[-1], "float32")]
        want = run(f, [a.copy() for a in args], target)
        got = run(sched, [a.copy() for a in args], target)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * max(1.0, float(np.abs(want).max())),
                                   err_msg=f"{name} scheduled by {rule} for {level}")
    return used


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("m,k,n", [(12, 64, 96), (1, 40, 48), (7, 33, 80), (1, 40, 1004), (3, 16, 100)])
def test_linear_weight_is_packed_for_the_targets_tile(level, m, k, n):
    """N no multiple of the lanes (1004, 100; 1000 classes on AVX-512): zero columns pad the
    last panel and the product's columns are sliced."""
    target = tvm_target(resolve(level))
    rng = np.random.default_rng(1)
    w = relax.const(rng.standard_normal((n, k)).astype("float32"))
    b = relax.const(rng.standard_normal((n,)).astype("float32"))
    funcs = front_primfuncs(lambda bb, x: bb.emit(relax.op.nn.gelu(bb.emit(relax.op.linear(x, w, b)))), [(1, m, k)], target)
    lanes = common.cpu_of(target).lanes
    (name,) = [nm for nm, f in funcs.items() if "matmul" in nm]
    packed = [[int(d) for d in p.ty.shape] for p in funcs[name].params if len(p.ty.shape) == 3
              and int(p.ty.shape[1]) == k]
    assert len(packed) == 1, [list(p.ty.shape) for p in funcs[name].params]
    nb, _, width = packed[0]
    assert nb * width - width < n <= nb * width and width % lanes == 0
    assert dense.PACKED in funcs[name].script()
    assert ("T_matmul_unpad" in funcs[name].script()) == (n % width != 0 or m % dense.padded_tile(
        m, n, common.cpu_of(target), pad_columns=n % lanes != 0)[0] != 0)
    # bias and GELU fuse into the product's epilogue, and the tiled rule takes it
    assert "gelu" in name and "add" in name, list(funcs)
    used = check(funcs, target, level)
    assert used[name] == "dense", used


@pytest.mark.parametrize("level", LEVELS)
def test_batched_attention_products_keep_their_layout(level):
    """Products of two activations (QKᵀ, PV) are not packed: only 2-D right operands are."""
    target = tvm_target(resolve(level))
    funcs = front_primfuncs(lambda bb, a, c: bb.emit(relax.op.matmul(a, c)), [(2, 3, 8, 16), (2, 3, 16, 32)], target)
    for f in funcs.values():
        assert dense.PACKED not in f.script()
    assert "dense" in check(funcs, target, level).values()


# -- activations -----------------------------------------------------------------------------------

SPECIAL = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 1e-30, -1e-30, 9.5, -9.5, 30.0, -30.0, 87.0, -87.0],
                   np.float32)


def _reference(name, x):
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(x.astype(np.float64))
    f = {"gelu": F.gelu, "gelu_tanh": lambda v: F.gelu(v, approximate="tanh"), "erf": torch.erf,
         "tanh": torch.tanh, "sigmoid": torch.sigmoid, "silu": F.silu, "softmax": lambda v: torch.softmax(v, -1)}[name]
    return f(t).numpy()


def _relax(name, x):
    op = relax.op
    return {"gelu": op.nn.gelu, "gelu_tanh": op.nn.gelu_tanh, "erf": op.erf, "tanh": op.tanh, "sigmoid": op.sigmoid,
            "silu": op.nn.silu, "softmax": lambda v: op.nn.softmax(v, axis=-1)}[name](x)


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("name", ["gelu", "gelu_tanh", "erf", "tanh", "sigmoid", "silu", "softmax"])
def test_activation_matches_float64_and_keeps_nan_and_inf(level, name):
    if not runs_here(level):
        pytest.skip(f"this host cannot run {level} code")
    target = tvm_target(resolve(level))
    rng = np.random.default_rng(2)
    x = np.concatenate([np.linspace(-12, 12, 4096, dtype=np.float32), rng.standard_normal(4096).astype(np.float32) * 4])
    x = x.reshape(64, 128)
    funcs = front_primfuncs(lambda bb, v: bb.emit(_relax(name, v)), [x.shape], target)
    (f,) = funcs.values()
    sched, _ = S.schedule_primfunc(f, target)
    got = run(sched, [x, np.zeros_like(x)], target)
    want = _reference(name, x)
    np.testing.assert_allclose(got, want, rtol=3e-6, atol=1e-6, err_msg=name)
    if name == "softmax":  # a row with NaN is NaN; a row with +inf is NaN (inf - inf), as in torch
        s = np.zeros((2, 128), np.float32)
        s[0, 3], s[1, 5] = np.nan, np.inf
        got = run(S.schedule_primfunc(front_primfuncs(lambda bb, v: bb.emit(_relax(name, v)), [s.shape], target)["softmax"],
                                      target)[0], [s, np.zeros_like(s)], target)
        np.testing.assert_array_equal(np.isnan(got), np.isnan(_reference(name, s)))
        return
    s = np.tile(SPECIAL, 2).reshape(2, -1)
    (f,) = front_primfuncs(lambda bb, v: bb.emit(_relax(name, v)), [s.shape], target).values()
    got = run(S.schedule_primfunc(f, target)[0], [s, np.zeros_like(s)], target)
    want = _reference(name, s).astype(np.float32)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want), err_msg=f"{name}: NaN at {s[np.isnan(got) != np.isnan(want)]}")
    fin = ~np.isnan(want)
    np.testing.assert_allclose(got[fin], want[fin], rtol=3e-6, atol=1e-6, err_msg=name)


# -- register tiles ----------------------------------------------------------------------------------


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("m,k,n", [(128, 96, 192), (49, 64, 256), (56, 16, 64)])
def test_register_tiles_stay_stack_buffers(level, m, k, n):
    """A tile of 16 zmm accumulators is exactly 1 KB, which TVM turns into a
    TVMBackendAllocWorkspace call per tile (and a heap pointer LLVM cannot keep in
    registers): AVX-512 tiles hold at most 15 (a 56x56 1x1 conv, 64 -> 256 channels, one
    Zen 5 core: 7.6 -> 2.3 ms); AVX2 ones are bounded by the 16 ymm registers anyway."""
    from helpers import workspace_allocs_in_parallel_loops

    target = tvm_target(resolve(level))
    cpu = common.cpu_of(target)
    rt, nv = common.register_tile(m, n, cpu)
    assert rt * nv <= common.stack_accumulators(cpu) and rt * nv * cpu.lanes * 4 < common.STACK_ALLOCA_BYTES
    assert common.stack_accumulators(cpu) == {8: 31, 16: 15}[cpu.lanes]
    rng = np.random.default_rng(3)
    w = relax.const(rng.standard_normal((n, k)).astype("float32"))
    funcs = front_primfuncs(lambda bb, x: bb.emit(relax.op.linear(x, w)), [(1, m, k)], target)
    for name, f in funcs.items():
        sched, rule = S.schedule_primfunc(f, target)
        assert workspace_allocs_in_parallel_loops(sched, target) == [], (name, rule)


def real_artifact(model: str, level: str) -> str:
    """``realzoo``'s ``model`` lowered for ``level`` (a precompile job): the saved path."""
    import precompile
    import realzoo
    import sliver

    m, inputs = realzoo.ENTRIES[model].build()
    return str(sliver.lower(m, inputs, target=level).save(precompile.out(f"real-{model}-{level}.sliver")))


@pytest.mark.slow
@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("model", ["bert", "gpt2", "efficientnet", "convnext"])
@pytest.mark.precompiled.with_args(lambda params: [("call", "test_fast_float", "real_artifact", params["model"],
                                                    params["level"])])
def test_small_real_architectures_match_torch(level, model):
    """End to end through the default pipeline for each level: GELU (erf and tanh forms),
    SiLU, softmax, layer norms and packed linear layers in real transformers models."""
    import torch

    import precompile
    import realzoo
    import sliver

    m, inputs = realzoo.ENTRIES[model].build()
    path = precompile.get(("call", "test_fast_float", "real_artifact", model, level))  # it lowers for every level
    if not runs_here(level):
        pytest.skip(f"this host cannot run {level} code")
    art = sliver.load(path)
    with torch.no_grad():
        want = m(*inputs).numpy()
    got = art.run(*[t.numpy() for t in inputs])[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * float(np.abs(want).max()))


# -- zero pads before convolutions -------------------------------------------------------------------


def _padded_convs(value: float):
    import torch

    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(8, 16, 1), torch.nn.ConstantPad2d((0, 1, 2, 1), value),
        torch.nn.Conv2d(16, 16, 3, stride=2, groups=16), torch.nn.ConstantPad2d(1, value),
        torch.nn.Conv2d(16, 32, 3, padding=1)).eval()


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("value", [0.0, 1.0])
def test_zero_pads_become_the_convs_own_padding(level, value):
    """TensorFlow-style "same" padding (transformers' MobileNetV2/EfficientNet, nn.ZeroPad2d)
    traces to concatenations with zero constants; they fold into the next conv's
    asymmetric padding (no concat, no NCHW round trip left).  Other pad values stay."""
    import torch

    import sliver
    from sliver.backends.tvm.lower import to_relax

    m, x = _padded_convs(value), torch.randn(1, 8, 16, 16)
    target = tvm_target(resolve(level))
    with target:
        mod = tvm.transform.Sequential(S.front_passes(target=target)[:4])(to_relax(sliver.trace(m, (x,))))
    text = mod.script()
    if value == 0.0:
        assert "R.concat" not in text
        pads = [p for p in re.findall(r"padding=\[([\d, ]+)\]", text)]
        assert pads == ["0, 0, 0, 0", "2, 0, 1, 1", "2, 2, 2, 2"], pads  # [top, left, bottom, right]
    else:
        assert text.count("R.concat") == 4
    art = sliver.lower(m, (x,), target=level)
    if not runs_here(level):
        pytest.skip(f"this host cannot run {level} code")
    with torch.no_grad():
        want = m(x).numpy()
    got = art.load().run(x.numpy())[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * float(np.abs(want).max()))


def test_linear_with_columns_padded_to_whole_panels_matches_torch():
    """A classifier of 1004 classes (no multiple of 8 or 16 lanes): its weight packed with
    zero columns, the product sliced."""
    import torch

    import sliver

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(40, 1004), torch.nn.ReLU()).eval()
    x = torch.randn(1, 40)
    got = sliver.lower(model, (x,), target="x86_64", tune=False).load().run(x.numpy())[0]
    with torch.no_grad():
        np.testing.assert_allclose(got, model(x).numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("shape", [(1, 3, 20, 24), (2, 3, 70, 64)])
def test_image_to_channels_last_unrolls_its_three_channels(level, shape):
    """NCHW → NHWC of an RGB image: the 3 channels unrolled (no vector of lanes whose indices
    each take a division), the same values."""
    from sliver.backends.tvm import schedules as S

    target = tvm_target(resolve(level))
    funcs = front_primfuncs(lambda bb, x: bb.emit(relax.op.permute_dims(x, [0, 2, 3, 1])), [shape], target)
    (name,) = funcs
    assert check(funcs, target, level) == {name: "injective"}
    script = S.schedule_primfunc(funcs[name], target)[0].script()
    assert "T.unroll(" in script and "T.vectorized(" not in script
