"""sliver's default CPU schedules (sliver.backends.tvm.schedules).

Each rule's scheduled PrimFunc must compute exactly what the unscheduled one does
(schedules only reorder/tile/annotate loops), for awkward shapes too: strides,
padding, depthwise and grouped convs, channel counts the vector width does not
divide, 1x1 convs, odd linear sizes.  PrimFuncs come from small Relax graphs run
through the same front passes as the real pipeline.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

tvm = pytest.importorskip("tvm")

from tvm import relax, tirx  # noqa: E402

from sliver.backends.tvm import schedules as S  # noqa: E402
from sliver.backends.tvm.schedules import common, conv2d  # noqa: E402
from sliver.backends.tvm.targets import resolve, tvm_target  # noqa: E402
from helpers import front_primfuncs, workspace_allocs_in_parallel_loops  # noqa: E402

X86 = tvm_target(resolve("x86_64"))


def fused_primfuncs(build, inputs):
    """Relax main(*inputs) built by ``build(bb, *params)`` → {name: fused PrimFunc}."""
    return front_primfuncs(build, inputs, X86)


def run(func, arrays):
    lib = tvm.tirx.build(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), target=X86)
    args = [tvm.runtime.tensor(a) for a in arrays]
    lib["main"](*args)
    return args[-1].numpy()


def random_args(func, seed=0):
    rng = np.random.default_rng(seed)
    shapes = [tuple(int(d) for d in p.ty.shape) for p in func.params]
    args = [rng.standard_normal(s).astype("float32") for s in shapes[:-1]]
    return args + [np.zeros(shapes[-1], "float32")]


def check_all(funcs, expect_rules=()):
    """Every PrimFunc scheduled == unscheduled; return {name: rule}."""
    used = {}
    for name, f in funcs.items():
        sched, rule = S.schedule_primfunc(f, X86, name=name)
        used[name] = rule
        args = random_args(f)
        want = run(f, [a.copy() for a in args])
        got = run(sched, [a.copy() for a in args])
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * max(1.0, float(np.abs(want).max())),
                                   err_msg=f"{name} scheduled by {rule}")
    for rule in expect_rules:
        assert rule in used.values(), (expect_rules, used)
    return used


def const(rng, *shape):
    return relax.const(rng.standard_normal(shape).astype("float32"))


# -- convolutions -----------------------------------------------------------------------------

CONVS = [
    # (C, H, W, OC, k, stride, pad, dilation, groups)
    (16, 10, 10, 32, 3, 1, 1, 1, 1),  # plain 3x3
    (3, 17, 17, 24, 7, 2, 3, 1, 1),  # stem-like: 3 input channels, 24 output (not a multiple of 16)
    (13, 9, 9, 10, 3, 2, 1, 1, 1),  # odd channels everywhere, stride 2
    (16, 6, 6, 8, 1, 1, 0, 1, 1),  # 1x1
    (32, 8, 8, 32, 3, 1, 1, 1, 32),  # depthwise
    (24, 9, 9, 24, 3, 2, 1, 1, 24),  # depthwise, stride 2, 24 channels
    (16, 8, 8, 32, 3, 1, 1, 1, 4),  # grouped
    (8, 11, 11, 16, 3, 1, 2, 2, 1),  # dilated
    (5, 7, 7, 7, 3, 1, 0, 1, 1),  # no padding, nothing divides
    (24, 14, 14, 40, 1, 1, 0, 1, 1),  # 1x1 to 40 channels: half vectors on AVX-512
]


@pytest.mark.parametrize("c,h,w,oc,k,s,p,d,g", CONVS)
def test_conv2d_bias_relu_matches_unscheduled(c, h, w, oc, k, s, p, d, g):
    rng = np.random.default_rng(1)

    def build(bb, x):
        y = bb.emit(relax.op.nn.conv2d(x, const(rng, oc, c // g, k, k), strides=s, padding=p, dilation=d, groups=g))
        y = bb.emit(relax.op.add(y, const(rng, 1, oc, 1, 1)))
        return bb.emit(relax.op.nn.relu(y))

    used = check_all(fused_primfuncs(build, [(1, c, h, w)]), expect_rules=["conv2d"])
    assert "none" not in used.values()


def test_conv_residual_relu6_chain():
    """conv → bias → residual add → clip (ReLU6) fuse into one conv epilogue."""
    rng = np.random.default_rng(2)

    def build(bb, x, r):
        y = bb.emit(relax.op.nn.conv2d(x, const(rng, 16, 16, 3, 3), padding=1))
        y = bb.emit(relax.op.add(y, const(rng, 1, 16, 1, 1)))
        y = bb.emit(relax.op.add(y, r))
        return bb.emit(relax.op.clip(y, 0.0, 6.0))

    funcs = fused_primfuncs(build, [(1, 16, 12, 12), (1, 16, 12, 12)])
    conv_funcs = [n for n in funcs if "conv2d" in n]
    assert len(conv_funcs) == 1 and "add" in conv_funcs[0] and "minimum" in conv_funcs[0], list(funcs)
    check_all(funcs, expect_rules=["conv2d"])


# -- matrix products ----------------------------------------------------------------------------


@pytest.mark.parametrize("m,k,n", [(1, 37, 23), (1, 512, 1000), (5, 64, 48), (3, 17, 16)])
def test_linear_matches_unscheduled(m, k, n):
    rng = np.random.default_rng(3)

    def build(bb, x):
        return bb.emit(relax.op.linear(x, const(rng, n, k), const(rng, n)))

    check_all(fused_primfuncs(build, [(m, k)]), expect_rules=["dense"])


def test_batched_matmul_matches_unscheduled():
    def build(bb, a, b):
        return bb.emit(relax.op.matmul(a, b))

    check_all(fused_primfuncs(build, [(2, 7, 9), (2, 9, 33)]), expect_rules=["dense"])


# -- pooling, reductions, elementwise --------------------------------------------------------------


def test_pools_and_means_match_unscheduled():
    rng = np.random.default_rng(4)

    def build(bb, x):
        y = bb.emit(relax.op.nn.conv2d(x, const(rng, 24, 8, 1, 1)))  # makes the graph channels-last
        a = bb.emit(relax.op.nn.max_pool2d(y, (3, 3), (2, 2), (1, 1)))
        b = bb.emit(relax.op.nn.avg_pool2d(y, (2, 2), (2, 2)))
        m = bb.emit(relax.op.mean(a, axis=[2, 3], keepdims=True))
        return bb.emit(relax.op.add(bb.emit(relax.op.sum(b, axis=[2, 3], keepdims=True)), m))

    used = check_all(fused_primfuncs(build, [(1, 8, 13, 13)]), expect_rules=["pool"])
    assert "none" not in used.values()


def test_softmax_layernorm_and_elementwise_match_unscheduled():
    rng = np.random.default_rng(5)

    def build(bb, x):
        y = bb.emit(relax.op.nn.softmax(x, axis=-1))
        y = bb.emit(relax.op.nn.layer_norm(y, const(rng, 19), const(rng, 19), axes=[-1]))
        y = bb.emit(relax.op.permute_dims(y, [0, 2, 1]))
        return bb.emit(relax.op.nn.gelu(relax.op.multiply(y, relax.const(np.float32(1.5)))))

    used = check_all(fused_primfuncs(build, [(2, 33, 19)]))
    assert set(used.values()) <= {"softmax", "layer_norm", "reduction", "injective"} and "softmax" in used.values(), used
    assert used["layer_norm"] == "layer_norm", used


# -- fallback ---------------------------------------------------------------------------------------


def conv_funcs():
    rng = np.random.default_rng(6)

    def build(bb, x):
        y = bb.emit(relax.op.nn.conv2d(x, const(rng, 16, 8, 3, 3), padding=1))
        return bb.emit(relax.op.nn.relu(bb.emit(relax.op.add(y, const(rng, 1, 16, 1, 1)))))

    return fused_primfuncs(build, [(1, 8, 9, 9)])


def test_failing_rule_falls_back_to_generic(monkeypatch):
    def broken(sch, block, cpu):
        raise RuntimeError("rule bug")

    monkeypatch.setattr(conv2d, "schedule", broken)
    used = check_all(conv_funcs())
    assert "generic" in used.values() and "conv2d" not in used.values(), used


def test_failing_fallback_leaves_function_unscheduled(monkeypatch):
    from sliver.backends.tvm.schedules import elementwise

    def broken(*a, **k):
        raise RuntimeError("rule bug")

    monkeypatch.setattr(conv2d, "schedule", broken)
    monkeypatch.setattr(elementwise, "schedule_reduction_outer", broken)
    monkeypatch.setattr(elementwise, "schedule_injective", broken)
    used = check_all(conv_funcs())
    assert set(used.values()) == {"none"}, used


# -- the schedule really is fast-shaped ------------------------------------------------------------


def _conv_func():
    funcs = conv_funcs()
    (name,) = [n for n in funcs if "conv2d" in n]
    return funcs[name]


@pytest.mark.parametrize(
    "spec,lanes",
    [
        ({"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "skylake-avx512"}, 16),
        ({"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "haswell"}, 8),
        ({"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a72", "mattr": ["+neon"]}, 4),
    ],
)
def test_vector_width_follows_target(spec, lanes):
    target = tvm.target.Target({**spec, "num-cores": 2})
    assert common.cpu_of(target).lanes == lanes
    sched, rule = S.schedule_primfunc(_conv_func(), target)
    assert rule == "conv2d"
    text = sched.script()
    assert f"T.vectorized({lanes})" in text or f"T.vectorized(T.int64({lanes}))" in text, text
    assert "T.parallel(" in text


def _lowered_text(sched) -> str:
    """``sched`` lowered through buffer flattening and vectorization, as TVMScript."""
    mod = tvm.IRModule({"main": sched.with_attr("global_symbol", "main").with_attr("target", X86)})
    s_tir = tvm.s_tir
    with tvm.transform.PassContext(opt_level=3):
        lowered = tvm.transform.Sequential([
            s_tir.transform.LowerInitBlock(), s_tir.transform.PlanAndUpdateBufferAllocationLocation(),
            s_tir.transform.ConvertBlocksToOpaque(), s_tir.transform.CompactBufferAllocation(),
            s_tir.transform.LowerOpaqueBlock(), tirx.transform.FlattenBuffer(), tirx.transform.VectorizeLoop(True),
        ])(mod)
    return lowered["main"].script()


@pytest.mark.parametrize("width", [7, 14, 19])
def test_rows_no_vector_divides_are_vectors_and_a_scalar_rest(width):
    """An elementwise chain (a quantize: scale, round, clamp, cast) over rows of 7, 14 or 19:
    the leading columns of each row in whole vectors, the rest scalar, no per-lane index
    division (fusing the nest into vectors divided every lane's index by the row length)."""

    def build(bb, x):
        y = bb.emit(relax.op.round(relax.op.multiply(x, relax.const(np.float32(3.7)))))
        y = bb.emit(relax.op.minimum(relax.op.maximum(y, relax.const(np.float32(-128))), relax.const(np.float32(127))))
        return bb.emit(relax.op.astype(y, "int8"))

    funcs = fused_primfuncs(build, [(1, 64, 10, width)])
    (name, func), = funcs.items()
    sched, rule = S.schedule_primfunc(func, X86, name=name)
    assert rule == "injective"
    assert f"% T.int64({width})" not in sched.script()  # a column is never a lane index divided by the row
    text = _lowered_text(sched)
    assert "T.Ramp(" in text and "T.parallel(" in text, text
    x = np.random.default_rng(7).standard_normal((1, 64, 10, width)).astype("float32") * 40
    want, got = (np.zeros(x.shape, "int8") for _ in range(2))
    for f, out in ((func, want), (sched, got)):
        lib = tvm.tirx.build(tvm.IRModule({"main": f.with_attr("global_symbol", "main")}), target=X86)
        args = [tvm.runtime.tensor(x), tvm.runtime.tensor(out)]
        lib["main"](*args)
        out[...] = args[1].numpy()
    np.testing.assert_array_equal(got, want)


def test_scheduled_conv_lowers_to_parallel_vector_code():
    sched, rule = S.schedule_primfunc(_conv_func(), X86)
    assert rule == "conv2d"
    lanes = common.cpu_of(X86).lanes
    text = _lowered_text(sched)
    assert "T.parallel(" in text
    assert "T.Ramp(" in text and f", {lanes})" in text  # vector loads/stores of `lanes` floats
    # the register-tile accumulator: allocated in the parallel loop's body, one tile per task
    assert re.search(r"T.parallel\(.*\):\n +conv2d_nhwc_packed_intermediate = T.alloc_buffer\(\(T.int64\(\d+\),\)",
                     text), text


@pytest.mark.parametrize("target", ["x86_64", "arm64"])
def test_register_tile_is_no_runtime_workspace_call_per_tile(target, monkeypatch):
    """TVM allocates a buffer in a parallel loop on the task's stack (LLVM keeps the
    tile in registers) only if its scope is "global" and it is under 1 KB; a "local"
    accumulator cost a TVMBackendAllocWorkspace + FreeWorkspace pair of runtime calls
    per tile (56x56x64 direct conv on the emulated Pi: 1.1M of 46M instructions)."""
    tgt = tvm_target(resolve(target))
    sched, _ = S.schedule_primfunc(_conv_func(), tgt)
    assert workspace_allocs_in_parallel_loops(sched, tgt) == []
    monkeypatch.setattr(common, "SCRATCH_SCOPE", "local")  # the old schedule: the check sees the calls
    sched, _ = S.schedule_primfunc(_conv_func(), tgt)
    assert workspace_allocs_in_parallel_loops(sched, tgt) == ["conv2d_nhwc_packed_intermediate_local"]


# -- end to end ---------------------------------------------------------------------------------------


E2E_BUILDS = [(builder, sched) for builder in ("resnet18", "mobilenet_v2") for sched in (True, False)]


@pytest.mark.slow
@pytest.mark.precompiled.with_args(lambda params: [("relax", b, s) for b, s in E2E_BUILDS])
def test_resnet_and_mobilenet_scheduled_match_torch_and_unscheduled():
    import torch

    import precompile
    import zoo

    for builder in ("resnet18", "mobilenet_v2"):
        model, (x,) = getattr(zoo, builder)()
        with torch.no_grad():
            want = model(x).numpy()
        outs = {}
        for sched in (True, False):
            # trace, default pipeline, build_relax(to_relax(m), X86, schedules=sched, report=report),
            # exported: compiled ahead on the worker process (tests/precompile.py)
            path, report = precompile.get(("relax", builder, sched))
            vm = relax.VirtualMachine(tvm.runtime.load_module(str(path)), tvm.cpu())
            outs[sched] = vm["main"](tvm.runtime.tensor(x.numpy())).numpy()
            if sched:
                assert "none" not in report.values() and "generic" not in report.values(), report
        for got in outs.values():
            assert np.abs(got - want).max() / np.abs(want).max() < 1e-4


@pytest.mark.slow
def test_conv_output_channels_are_padded_to_a_vector_multiple():
    """A pruned conv with 47 output channels (no factor of 4: scalar loops) is lowered
    as a 48-filter conv (the extra one zero) whose output is sliced back to 47, and
    the artifact still equals torch; 48 channels are left alone."""
    import torch

    import sliver
    from sliver.backends.tvm.lower import to_relax

    def model(oc):
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Conv2d(5, oc, 3, padding=1), torch.nn.ReLU()).eval()

    x = torch.randn(1, 5, 6, 6)
    text = to_relax(sliver.trace(model(47), (x,))).script()
    assert "R.nn.conv2d" in text and "R.Tensor((1, 48, 6, 6)" in text
    assert "R.strided_slice" in text and "R.Tensor((1, 47, 6, 6)" in text
    assert "R.strided_slice" not in to_relax(sliver.trace(model(48), (x,))).script()
    got = sliver.lower(model(47), (x,), target="x86_64").load().run(x.numpy())[0]
    want = model(47)(x).detach().numpy()
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()


# -- packed weights and register tiles -----------------------------------------------------------


def test_dense_convs_read_weights_packed_and_grouped_ones_do_not():
    """A dense NHWC conv is legalized with weights packed [O/b, KH, KW, I, b] (folded
    at compile time: the PrimFunc takes the packed constant); a depthwise one keeps HWIO."""
    rng = np.random.default_rng(7)

    def build(bb, x):
        y = bb.emit(relax.op.nn.conv2d(x, const(rng, 32, 16, 3, 3), padding=1))
        return bb.emit(relax.op.nn.conv2d(y, const(rng, 32, 1, 3, 3), padding=1, groups=32))

    funcs = fused_primfuncs(build, [(1, 16, 7, 7)])
    shapes = {n: [[int(d) for d in p.ty.shape] for p in f.params] for n, f in funcs.items()}
    packed = [n for n, s in shapes.items() if any(len(x) == 5 for x in s)]
    assert len(packed) == 1, shapes
    (w,) = [s for s in shapes[packed[0]] if len(s) == 5]
    lanes = common.cpu_of(X86).lanes
    assert w[1:4] == [3, 3, 16] and w[0] * w[4] == 32 and w[4] % lanes == 0, w
    assert "conv2d_nhwc_packed" in funcs[packed[0]].script()
    check_all(funcs, expect_rules=["conv2d"])


@pytest.mark.parametrize("regs,lanes,rows,n_out,want", [
    (16, 8, 56, 64, (4, 2)),  # AVX2: 8 accumulators + 2 weight vectors + 1 broadcast
    (16, 8, 7, 512, (7, 1)),  # a 7-wide map: 7 accumulators beat 1 x 8 (8 weight loads per step)
    (16, 8, 14, 256, (2, 4)),
    (32, 4, 56, 64, (4, 4)),  # NEON: 32 registers, fewest loads per FMA
])
def test_register_tile_fits_the_register_file(regs, lanes, rows, n_out, want):
    cpu = common.CPU(lanes=lanes, registers=regs, cores=2)
    rt, nv = common.register_tile(rows, n_out, cpu)
    assert (rt, nv) == want
    assert rows % rt == 0 and (n_out // lanes) % nv == 0
    assert rt * nv + nv + 1 < regs  # no spill


def test_output_channels_of_half_vectors_get_half_vector_tiles():
    """24 or 40 output channels on 16 lanes: 8-lane tiles (packed weights), 32 keep 16 lanes,
    and 8-lane CPUs are left as they are."""
    avx512, avx2 = common.CPU(lanes=16, registers=32, cores=2), common.CPU(lanes=8, registers=16, cores=2)
    assert conv2d.half_vectors(24, avx512).lanes == conv2d.half_vectors(40, avx512).lanes == 8
    assert conv2d.half_vectors(32, avx512) == avx512 and conv2d.half_vectors(24, avx2) == avx2
    assert conv2d.half_vectors(20, avx512) == avx512  # no multiple of 8 either
    rt, nv = common.register_tile(56, 24, conv2d.half_vectors(24, avx512))
    assert rt * nv > 8 and nv * 8 == 24  # a full tile of ymm accumulators
