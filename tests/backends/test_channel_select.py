"""FuseChannelSelect: channel slices and gathers feeding a conv cost no kernel of their own.

Pruned exports read a subset of a tensor's channels before a conv (``slice`` for a
contiguous run, ``take`` for a gather).  After the default front passes neither may
be a separate PrimFunc, no layout transpose may wrap a gather, the conv rule must
still schedule the fused function (epilogue included), and results must not change.
"""

from __future__ import annotations

import numpy as np
import pytest

tvm = pytest.importorskip("tvm")

from tvm import relax, tirx  # noqa: E402

from helpers import dedent  # noqa: E402
from sliver.backends.tvm import schedules as S  # noqa: E402
from sliver.backends.tvm.schedules import common, conv2d  # noqa: E402
from sliver.backends.tvm.build import build_relax  # noqa: E402
from sliver.backends.tvm.lower import to_relax  # noqa: E402
from sliver.backends.tvm.targets import resolve, tvm_target  # noqa: E402
from sliver.ir.interp import run  # noqa: E402
from sliver.ir.parser import parse_module  # noqa: E402

X86 = tvm_target(resolve("x86_64"))

# a 3x3 conv (padded) reads a slice, a 1x1 conv (no padding) a gather, another 1x1 a
# slice; their bias (+ relu, + residual add) epilogues must still fuse into each conv
SELECTIONS = dedent("""
    func @m(%x: f32[1,16,8,8]) {
      %w0 = param : f32[16,16,3,3]
      %b0 = param : f32[16]
      %w1 = param : f32[8,6,3,3]
      %b1 = param : f32[8]
      %w2 = param : f32[8,5,1,1]
      %b2 = param : f32[8]
      %w3 = param : f32[8,7,1,1]
      %b3 = param : f32[8]
      %idx = param : i64[5]
      %y = conv2d(%x, %w0, %b0) {padding=[1, 1, 1, 1]} : f32[1,16,8,8]
      %r = relu(%y) : f32[1,16,8,8]
      %s = slice(%r) {axis=1, start=3, end=9} : f32[1,6,8,8]
      %z = conv2d(%s, %w1, %b1) {padding=[1, 1, 1, 1]} : f32[1,8,8,8]
      %zr = relu(%z) : f32[1,8,8,8]
      %t = take(%r, %idx) {axis=1} : f32[1,5,8,8]
      %u = conv2d(%t, %w2, %b2) : f32[1,8,8,8]
      %s2 = slice(%r) {axis=1, start=9, end=16} : f32[1,7,8,8]
      %v = conv2d(%s2, %w3, %b3) : f32[1,8,8,8]
      %o = add(%zr, %u) : f32[1,8,8,8]
      %o2 = add(%o, %v) : f32[1,8,8,8]
      return %o2
    }
""")


def _module(text=SELECTIONS, idx=(0, 2, 5, 7, 15)):
    shapes = parse_module(text).params
    rng = np.random.default_rng(0)
    params = {k: rng.standard_normal(v.shape).astype(np.float32) for k, v in shapes.items() if k != "idx"}
    if "idx" in shapes:
        params["idx"] = np.array(idx, np.int64)
    return parse_module(text, params)


def _front(module, layout=True, target=X86):
    with target:
        return tvm.transform.Sequential(S.front_passes(layout=layout))(to_relax(module))


def _primfuncs(mod):
    return {gv.name_hint: f for gv, f in mod.functions_items() if isinstance(f, tirx.PrimFunc)}


@pytest.mark.parametrize("target", ["x86-64-v3", "x86-64-v4"])  # AVX2 and AVX-512 decisions, on any host
@pytest.mark.parametrize("layout", [True, False])
def test_selections_fuse_into_the_conv_without_transposes(layout, target):
    tgt = resolve(target)
    funcs = _primfuncs(_front(_module(), layout=layout, target=tvm_target(tgt)))
    names = sorted(funcs)
    assert not [n for n in names if "strided_slice" in n or "take" in n], names
    # NHWC: only the input's and the output's layout changes remain (no pair around the gather)
    assert len([n for n in names if "transpose" in n]) == (2 if layout else 0), names
    convs = {n: f for n, f in funcs.items() if "conv2d" in n}
    assert len(convs) == 4, names
    # every consumer conv reads the whole 16-channel tensor and keeps its epilogue fused
    c_axis = 3 if layout else 1
    readers = [n for n, f in convs.items() if int(f.params[0].ty.shape[c_axis]) == 16 and "_add" in n]
    assert len(readers) == 4, names  # the first conv and the three consumers, each with its bias fused
    for name, f in convs.items():  # the NHWC conv rule still schedules them (NCHW convs have none)
        _, rule = S.schedule_primfunc(f, tvm_target(tgt), name=name)
        assert rule == ("conv2d" if layout else "reduction"), (name, rule)
        # and, like every dense NHWC conv whose output channels fill whole vectors of the
        # target (16 and 8 channels on AVX2 and, in half vectors, on AVX-512), they read
        # packed weights (folded at compile time)
        n_out = int(f.params[-1].ty.shape[c_axis])  # the output buffer
        lanes = conv2d.half_vectors(n_out, common.cpu_of(tvm_target(tgt))).lanes
        packed = layout and n_out % lanes == 0
        assert ('T.sblock("conv2d_nhwc_packed")' in f.script()) == packed, (name, n_out, lanes)
    assert all('T.sblock("conv2d_nhwc_packed")' in f.script() for f in convs.values()) == layout
    assert not [n for n in names if "pack_weight" in n], names


def test_gather_with_in_range_constant_indices_reads_without_clamping():
    funcs = _primfuncs(_front(_module()))
    gathers = [f for f in funcs.values() if any(str(p.ty.dtype).startswith("int") for p in f.params)]
    assert len(gathers) == 1
    assert "T.max(" not in gathers[0].script()  # mode "clip" would clamp every index read


def test_spatial_slices_are_left_alone():
    text = dedent("""
        func @m(%x: f32[1,8,8,8]) {
          %w = param : f32[8,8,1,1]
          %s = slice(%x) {axis=2, start=1, end=7} : f32[1,8,6,8]
          %y = conv2d(%s, %w) : f32[1,8,6,8]
          return %y
        }
    """)
    names = sorted(_primfuncs(_front(_module(text))))
    assert [n for n in names if "strided_slice" in n], names


def test_compiled_selections_match_the_interpreter():
    module = _module()
    x = np.random.default_rng(1).standard_normal((1, 16, 8, 8)).astype(np.float32)
    want = run(module, [x])[0]
    built = build_relax(to_relax(module), X86)
    ex, report = built.executable, built.schedules
    got = relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()
    assert not [n for n in report if "strided_slice" in n or "take" in n], report
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()


# a pruned depthwise conv with 42 channels (no factor of 4: scalar loops) is computed on 48:
# after a conv without padding channels (here a grouped one), its input is zero-padded by a
# channel pad that must join the conv's own spatial padding; after a dense conv, it reads
# that conv's padding channels instead (PADDED_BLOCK below)
DEPTHWISE = dedent("""
    func @m(%x: f32[1,16,8,8]) {
      %w0 = param : f32[42,8,1,1]
      %b0 = param : f32[42]
      %y = conv2d(%x, %w0, %b0) {groups=2} : f32[1,42,8,8]
      %r = silu(%y) : f32[1,42,8,8]
      %w1 = param : f32[42,1,3,3]
      %b1 = param : f32[42]
      %z = conv2d(%r, %w1, %b1) {stride=[2, 2], padding=[1, 1, 1, 1], groups=42} : f32[1,42,4,4]
      %o = silu(%z) : f32[1,42,4,4]
      return %o
    }
""")


def _compiled_error(module, shape):
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    want = run(module, [x])
    ex = build_relax(to_relax(module), X86).executable
    got = relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(x))
    got = [got] if len(want) == 1 else list(got)
    return max(np.abs(g.numpy() - w).max() / np.abs(w).max() for g, w in zip(got, want))


def test_odd_depthwise_conv_is_padded_to_vector_width_inside_its_own_padding():
    module = _module(DEPTHWISE)
    funcs = _primfuncs(_front(module))
    names = sorted(funcs)
    assert not [n for n in names if "pad" in n] and len([n for n in names if "transpose" in n]) == 2, names
    (dw,) = [f for f in funcs.values() if "group_conv2d_nhwc" in f.script() and len(f.params[1].ty.shape) == 4
             and int(f.params[1].ty.shape[2]) == 1]  # HWIO weights with one input channel per group
    assert int(dw.params[0].ty.shape[3]) == 42  # reads the 42-channel tensor, writes 42 channels
    assert int(dw.params[-1].ty.shape[3]) == 42
    sched, rule = S.schedule_primfunc(dw, X86, name="dw")
    assert rule == "conv2d"
    text = sched.script()
    # one padded copy (spatial and channel padding): checked in place, the channel bound
    # would be tested on every lane of every vector load (87 channels, 5x5 /2: 2.5x slower)
    assert 'T.sblock("pad_temp")' in text and "T.if_then_else" not in text.split('T.sblock("group_conv2d_nhwc_update")')[1]
    lines = text.splitlines()
    update = next(i for i, line in enumerate(lines) if 'T.sblock("group_conv2d_nhwc_update")' in line)
    assert "T.vectorized" in lines[update - 1]  # the micro-kernel runs on vectors of channels
    assert _compiled_error(module, (1, 16, 8, 8)) <= 1e-5


# an EfficientNet block after pruning: 42 expanded channels, depthwise, squeeze-and-excite
# (its gate conv 3 -> 42 channels, sigmoid(0) = 0.5 on padding channels), projection to 16
# channels with a residual add, pooled into a linear layer.  The padding channels the
# first conv adds (42 -> 48) must travel with the value to the end: no pad, no channel
# slice anywhere (each one was a copy or a scalar epilogue) until the classifier, whose
# weights get zero columns for them
PADDED_BLOCK = dedent("""
    func @m(%x: f32[1,16,8,8]) {
      %w0 = param : f32[42,16,1,1]
      %b0 = param : f32[42]
      %w1 = param : f32[42,1,3,3]
      %b1 = param : f32[42]
      %ws = param : f32[3,42,1,1]
      %bs = param : f32[3]
      %we = param : f32[42,3,1,1]
      %be = param : f32[42]
      %wp = param : f32[16,42,1,1]
      %bp = param : f32[16]
      %scale = param : f32[1,42,1,1]
            %e = conv2d(%x, %w0, %b0) : f32[1,42,8,8]
      %ea = silu(%e) : f32[1,42,8,8]
      %d = conv2d(%ea, %w1, %b1) {padding=[1, 1, 1, 1], groups=42} : f32[1,42,8,8]
      %da = silu(%d) : f32[1,42,8,8]
      %m = mean(%da) {axes=[2, 3], keepdim=true} : f32[1,42,1,1]
      %s = conv2d(%m, %ws, %bs) : f32[1,3,1,1]
      %sa = silu(%s) : f32[1,3,1,1]
      %g = conv2d(%sa, %we, %be) : f32[1,42,1,1]
      %gs = sigmoid(%g) : f32[1,42,1,1]
      %y = mul(%da, %gs) : f32[1,42,8,8]
      %ys = mul(%y, %scale) : f32[1,42,8,8]
      %p = conv2d(%ys, %wp, %bp) : f32[1,16,8,8]
      %r = add(%p, %x) : f32[1,16,8,8]
      %q = mean(%ea) {axes=[2, 3], keepdim=false} : f32[1,42]
      %wq = param : f32[10,42]
      %l = linear(%q, %wq) : f32[1,10]
      return %r, %l
    }
""")


def test_padding_channels_travel_through_channelwise_ops_to_the_consumers():
    module = _module(PADDED_BLOCK)
    mod = _front(module)
    funcs = _primfuncs(mod)
    names = sorted(funcs)
    assert not [n for n in names if "pad" in n or "strided_slice" in n], names
    shapes = [tuple(int(d) for d in p.ty.shape) for f in funcs.values() for p in f.params]
    assert not [s for s in shapes if 42 in s], shapes  # every 42-channel value is computed on 48
    assert _compiled_error(module, (1, 16, 8, 8)) <= 1e-5


def test_padding_is_sliced_off_before_ops_that_mix_channels():
    text = dedent("""
        func @m(%x: f32[1,8,4,4]) {
          %w = param : f32[12,8,1,1]
          %y = conv2d(%x, %w) : f32[1,12,4,4]
          %r = relu(%y) : f32[1,12,4,4]
          %f = reshape(%r) {shape=[1, 192]} : f32[1,192]
          %s = softmax(%r) {axis=1} : f32[1,12,4,4]
          return %f, %s
        }
    """)
    module = _module(text)
    funcs = _primfuncs(_front(module))
    # 12 output channels are computed as 16; the flatten and the softmax read the real 12
    assert any(int(p.ty.shape[3]) == 16 for f in funcs.values() for p in f.params if len(p.ty.shape) == 4)
    x = np.random.default_rng(1).standard_normal((1, 8, 4, 4)).astype(np.float32)
    want = run(module, [x])
    ex = build_relax(to_relax(module), X86).executable
    got = relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(x))
    for g, w in zip(got, want):
        assert np.abs(g.numpy() - w).max() <= 1e-5 * np.abs(w).max()


# a pruned classifier reads part of the pooled features: the gather must be part of the
# matmul (take is opaque to FuseOps: it would be a kernel of its own), with the bias fused
GATHER_LINEAR = dedent("""
    func @m(%x: f32[1,16,4,4]) {
      %w = param : f32[10,5]
      %b = param : f32[10]
      %idx = param : i64[5]
      %p = mean(%x) {axes=[2, 3], keepdim=false} : f32[1,16]
      %t = take(%p, %idx) {axis=1} : f32[1,5]
      %y = linear(%t, %w, %b) : f32[1,10]
      return %y
    }
""")


def test_gather_before_a_linear_is_part_of_the_matmul():
    module = _module(GATHER_LINEAR)
    funcs = _primfuncs(_front(module))
    names = sorted(funcs)
    assert not [n for n in names if "take" in n], names
    (mm,) = [(n, f) for n, f in funcs.items() if "matmul" in n]
    assert "_add" in mm[0], names  # the bias epilogue still fuses
    assert int(mm[1].params[0].ty.shape[1]) == 16  # reads the whole pooled tensor through the indices
    sched, rule = S.schedule_primfunc(mm[1], X86, name=mm[0])
    assert rule == "dense"
    assert 'T.sblock("T_take")' not in sched.script()  # the gather is inlined into the matmul's loads
    x = np.random.default_rng(1).standard_normal((1, 16, 4, 4)).astype(np.float32)
    want = run(module, [x])[0]
    ex = build_relax(to_relax(module), X86).executable
    got = relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()


def test_views_and_gathers_read_the_padded_value_in_place():
    # a 12-channel conv output (computed on 16) read through a view and a gather, as pruned
    # exports do: no copy that drops the padding channels first
    text = dedent("""
        func @m(%x: f32[1,8,4,4]) {
          %w = param : f32[12,8,1,1]
          %w1 = param : f32[8,6,1,1]
          %w2 = param : f32[8,5,1,1]
          %idx = param : i64[5]
          %y = conv2d(%x, %w) : f32[1,12,4,4]
          %r = relu(%y) : f32[1,12,4,4]
          %s = slice(%r) {axis=1, start=3, end=9} : f32[1,6,4,4]
          %a = conv2d(%s, %w1) : f32[1,8,4,4]
          %t = take(%r, %idx) {axis=1} : f32[1,5,4,4]
          %b = conv2d(%t, %w2) : f32[1,8,4,4]
          %o = add(%a, %b) : f32[1,8,4,4]
          return %o
        }
    """)
    module = _module(text, idx=(0, 2, 5, 7, 11))
    names = sorted(_primfuncs(_front(module)))
    assert not [n for n in names if "strided_slice" in n or "take" in n], names
    assert _compiled_error(module, (1, 8, 4, 4)) <= 1e-5


# the first 3x3 conv of a pruned residual block reads 45 of the block input's 64 channels
# (a slice, or a gather): it must still get the Winograd kernel its unpruned twin gets, and
# the selection must be widened to 48 real channels (zero weights for the extra ones) so the
# input copy and transform run on vectors (45 channels: scalar, and minutes to compile)
SELECTED_3X3 = dedent("""
    func @m(%x: f32[1,64,8,8]) {
      %w0 = param : f32[64,64,1,1]
      %w1 = param : f32[48,45,3,3]
      %b1 = param : f32[48]
      %w2 = param : f32[48,45,3,3]
      %w3 = param : f32[48,45,3,3]
      %idx = param : i64[45]
      %y = conv2d(%x, %w0) : f32[1,64,8,8]
      %r = relu(%y) : f32[1,64,8,8]
      %s = slice(%r) {axis=1, start=7, end=52} : f32[1,45,8,8]
      %a = conv2d(%s, %w1, %b1) {padding=[1, 1, 1, 1]} : f32[1,48,8,8]
      %t = take(%r, %idx) {axis=1} : f32[1,45,8,8]
      %b = conv2d(%t, %w2) {padding=[1, 1, 1, 1]} : f32[1,48,8,8]
      %e = slice(%r) {axis=1, start=19, end=64} : f32[1,45,8,8]
      %c = conv2d(%e, %w3) {padding=[1, 1, 1, 1]} : f32[1,48,8,8]
      %o = add(%a, %b) : f32[1,48,8,8]
      %o2 = add(%o, %c) : f32[1,48,8,8]
      return %o2
    }
""")


def test_selected_3x3_convs_take_the_winograd_kernel_on_widened_selections():
    idx = sorted(np.random.default_rng(2).choice(64, 45, replace=False))
    module = _module(SELECTED_3X3, idx=idx)
    funcs = _primfuncs(_front(module))
    names = sorted(funcs)
    assert not [n for n in names if "strided_slice" in n or "take" in n], names
    winograd = [f for f in funcs.values() if "winograd_gemm" in f.script()]
    assert len(winograd) == 3, names  # all three selected convs, none direct
    for f in winograd:  # each reads the unselected 64-channel value, the selection is a stage of the conv
        assert [int(p.ty.shape[3]) for p in f.params if len(p.ty.shape) == 4][0] == 64
        assert "T_take" in f.script() or "T_strided_slice" in f.script()
    # the input transform of the selection reads 48 channels (45 real + 3 more real ones, zero weights)
    assert all("(T.int64(36), T.int64(4), T.int64(48))" in f.script() for f in winograd)
    x = np.random.default_rng(1).standard_normal((1, 64, 8, 8)).astype(np.float32)
    want = run(module, [x])[0]
    built = build_relax(to_relax(module), X86)
    ex, report = built.executable, built.schedules
    assert {v for k, v in report.items() if "winograd" in k} == {"winograd"}  # scheduled by the Winograd rule
    got = relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()


def test_winograd_conv_whose_padded_output_is_sliced_keeps_a_vectorized_output_transform():
    # 45 real output channels computed on 48, read by the model output through a slice that
    # FuseOps fuses into the conv: merged into the slice, the unrolled output transform was
    # scalar and took LLVM 45 s to compile at 8x8 (minutes at 28x28)
    module = _module(dedent("""
        func @m(%x: f32[1,48,8,8]) {
          %w = param : f32[45,48,3,3]
          %b = param : f32[45]
          %z = conv2d(%x, %w, %b) {padding=[1, 1, 1, 1]} : f32[1,45,8,8]
          %o = relu(%z) : f32[1,45,8,8]
          return %o
        }
    """))
    ((name, f),) = [(n, f) for n, f in _primfuncs(_front(module)).items() if "winograd" in n]
    assert "strided_slice" in name  # the slice to the real channels is part of the conv's function
    sched, rule = S.schedule_primfunc(f, X86, name=name)
    assert rule == "winograd" and 'T.sblock("winograd_output")' in sched.script()
    assert _compiled_error(module, (1, 48, 8, 8)) <= 1e-5
