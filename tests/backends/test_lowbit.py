"""Exactness of the low-bit lowering (backends/tvm/lowbit.py): quantize, dequantize,
qconv2d, qdense compiled with the generic int16 path, the bit-serial C kernel and the int8 C kernel,
against the reference interpreter, on x86 and (one batched run) the emulated Pi.

One module holds every hand-built case (each its own input): W1A1..W4A4, W8A8, mixed
widths, signed and unsigned codes, nonzero zero points with padding, strides,
dilation, groups and depthwise, channel counts that are not a multiple of 8 or 64,
and linear layers with leading batch dimensions.  Integer accumulation is exact, so
the compiled outputs match the interpreter to f32 rounding (1e-5 relative)."""

import os
import tempfile

import numpy as np
import pytest

from helpers import assert_close
from sliver.ir.core import Module
from sliver.ir.interp import run
from sliver.ir.types import TensorType, int_range

# name, x dtype, w dtype, input shape, out channels, kernel, attrs
CONV_CASES = [
    ("w1a1", "u1", "u1", (2, 13, 7, 6), 5, 3, dict(stride=[2, 2], padding=[1, 0, 2, 1], x_zero_point=1, w_zero_point=1)),
    ("w2a2", "u2", "i2", (1, 16, 9, 8), 8, 3, dict(padding=[1, 1, 1, 1], x_zero_point=1, clamp_min=0.0, out_dtype="u2",
                                                  out_scale=0.37, out_zero_point=0)),
    # W2A2 in the aarch64 block layout: 72-byte rows (four 16-byte steps and a tail),
    # 10 channels (two left in the plain layout), an odd output width; and 32-byte rows
    # (two steps, no tail) of unsigned weights with a zero point
    ("w2a2_rows", "u2", "i2", (1, 64, 5, 7), 10, 3, dict(padding=[1, 1, 1, 1], x_zero_point=2, clamp_min=-0.5)),
    ("w2a2_1x1", "u2", "u2", (1, 256, 3, 3), 4, 1, dict(x_zero_point=1, w_zero_point=1)),
    # signed weights of whole four-channel blocks: two's complement planes on aarch64
    # (LAYOUT 2; with an even output width the asm applies the epilogue: f32 here, codes
    # in w2a2 above), here with a weight zero point (48-byte rows: three steps, no tail);
    # and at the limit of its 16-bit sums: every product -6 over a 680-byte row (-32400),
    # requantized to signed codes
    ("w2a2_tc", "u2", "i2", (1, 40, 5, 6), 8, 3, dict(padding=[1, 1, 1, 1], x_zero_point=2, w_zero_point=1)),
    ("w2a2_extreme", "u2", "i2", (1, 600, 3, 4), 4, 3, dict(out_dtype="i4", out_scale=500.0, out_zero_point=0)),
    ("w2a2_groups", "u2", "i2", (1, 32, 6, 5), 12, 3, dict(padding=[1, 1, 1, 1], groups=2, x_zero_point=3)),
    ("w3a3", "u3", "i3", (1, 70, 8, 8), 9, 3, dict(stride=[1, 2], padding=[2, 2, 2, 2], dilation=[2, 1], x_zero_point=5,
                                                  w_zero_point=-1)),
    ("w4a4_groups", "i4", "i4", (1, 24, 6, 6), 12, 3, dict(padding=[1, 1, 1, 1], groups=3, x_zero_point=-2, w_zero_point=1,
                                                          clamp_min=-1.0, clamp_max=1.5)),
    ("depthwise", "u4", "u2", (1, 8, 7, 7), 8, 3, dict(padding=[1, 1, 1, 1], groups=8, x_zero_point=7, w_zero_point=2)),
    ("w2a4_mixed", "u4", "i2", (1, 130, 5, 5), 7, 1, dict(x_zero_point=3, out_dtype="i4", out_scale=0.9,
                                                         out_zero_point=-1)),
    ("w8a8", "u8", "i8", (1, 16, 6, 6), 8, 3, dict(padding=[1, 1, 1, 1], x_zero_point=128, w_zero_point=0)),
    # the int8 kernel: unsigned weights with a zero point, 5 channels (45-byte rows, not a
    # multiple of 16), strided, padding with a nonzero zero point; and signed weights that
    # avoid -128 (its smull + smlal2 path)
    ("w8a8_uw", "i8", "u8", (2, 5, 7, 7), 3, 3, dict(stride=[2, 2], padding=[1, 1, 1, 1], x_zero_point=-5,
                                                    w_zero_point=100)),
    ("w8a8_narrow", "u8", "i8", (1, 20, 5, 5), 6, 3, dict(padding=[2, 1, 0, 1], x_zero_point=17)),
    # input rows made channels last by 16 x 16 byte transposes on aarch64, and the rest
    # (20 channels: 4 left; 18 pixels: 2 left)
    ("w8a8_wide", "u8", "i8", (1, 20, 3, 18), 5, 3, dict(padding=[1, 1, 1, 1], x_zero_point=9)),
    # W2A2 two's complement planes in blocks of four (12 channels; f32 fused) and of eight with an odd output width
    # (no fused epilogue), requantized
    ("w2a2_tc4", "u2", "i2", (1, 24, 4, 6), 12, 3, dict(padding=[1, 1, 1, 1], clamp_max=2.0)),
    ("w2a2_tc8_odd", "u2", "i2", (1, 24, 3, 5), 8, 3, dict(padding=[1, 1, 1, 1], x_zero_point=1, out_dtype="i3",
                                                           out_scale=4.0, out_zero_point=0)),
    # offset-binary W2A2 blocks (unsigned weights), two blocks of four and three steps
    ("w2a2_nblk", "u2", "u2", (1, 40, 4, 4), 8, 3, dict(padding=[1, 1, 1, 1], x_zero_point=1, w_zero_point=1)),
]
# name, x dtype, w dtype, input shape, out features, attrs
DENSE_CASES = [
    ("dense_w2a2", "u2", "i2", (2, 3, 100), 11, dict(x_zero_point=1)),
    ("dense_w1a3", "u3", "u1", (4, 67), 6, dict(x_zero_point=2, w_zero_point=1, clamp_max=0.5)),
    ("dense_w8a8", "i8", "i8", (3, 40), 5, dict(x_zero_point=-3, w_zero_point=2)),
    # at least 16 rows, symmetric weights: a 1x1 conv on the lane kernel where the target
    # has it (AVX-512 VNNI); 38 input features (a partial quad), 70 outputs (a partial block)
    ("dense_w8a8_rows", "u8", "i8", (2, 24, 38), 70, dict(x_zero_point=128, clamp_min=0.0)),
    ("dense_w8a8_rows_q", "u8", "i8", (17, 64), 16, dict(x_zero_point=3, out_dtype="u8", out_scale=4.0,
                                                          out_zero_point=5)),
    # a reduction long enough to flush the kernels' narrow accumulators (AVX2 bytes
    # every 31 steps, NEON 16-bit lanes every 2048 steps of 16 bytes)
    ("dense_long", "u1", "i2", (1, 270_000), 4, dict()),
]


def _codes(g, dtype, shape):
    lo, hi = int_range(dtype)
    return g.integers(lo, hi + 1, size=shape).astype(np.int8 if dtype[0] == "i" else np.uint8)


def _code_param(m, name, data, dtype):
    """A weight param typed as sub-byte codes (``add_param`` would type it i8/u8)."""
    m.params[name] = data
    return m.add_op("param", types=[TensorType(data.shape, dtype)], names=[name]).result


def _layer(m, g, name, xd, wd, xshape, wshape, kind, attrs):
    """f32 input → quantize → q-layer (→ dequantize when it requantizes)."""
    x = m.add_input(TensorType(xshape, "f32"), f"x_{name}")
    lo, hi = int_range(xd)
    q = m.add_op("quantize", [x], {"scale": 0.5, "zero_point": attrs.get("x_zero_point", 0), "dtype": xd}).result
    o = wshape[0]
    w = _codes(g, wd, wshape)
    if name.endswith("extreme"):
        w = np.full(wshape, int_range(wd)[0], w.dtype)
    if name.endswith("narrow"):
        w = np.maximum(w, -127).astype(w.dtype)
    operands = [q, _code_param(m, f"w_{name}", w, wd),
                m.add_param(f"s_{name}", (g.random(o) * 0.1 + 0.01).astype(np.float32))]
    if name.endswith(("2a2", "groups", "dense_w1a3")):
        operands.append(m.add_param(f"b_{name}", g.standard_normal(o).astype(np.float32)))
    y = m.add_op(kind, operands, attrs, names=[name]).result
    if attrs.get("out_dtype", "f32") != "f32":
        y = m.add_op("dequantize", [y], {"scale": attrs["out_scale"], "zero_point": attrs["out_zero_point"]}).result
    zp = attrs.get("x_zero_point", 0)  # inputs cover the code range and a little beyond (clamping)
    if name.endswith("extreme"):
        return y, np.full(xshape, 0.5 * (hi - zp), np.float32)
    return y, (0.5 * g.uniform(lo - zp - 0.7, hi - zp + 0.7, size=xshape)).astype(np.float32)


def build_cases(seed=0):
    """(module, inputs): every case as a separate input → output path."""
    g = np.random.default_rng(seed)
    m = Module("lowbit_cases")
    outs, inputs = [], []
    for name, xd, wd, xshape, o, k, attrs in CONV_CASES:
        wshape = (o, xshape[1] // attrs.get("groups", 1), k, k)
        y, x = _layer(m, g, name, xd, wd, xshape, wshape, "qconv2d", attrs)
        outs.append(y)
        inputs.append(x)
    for name, xd, wd, xshape, o, attrs in DENSE_CASES:
        y, x = _layer(m, g, name, xd, wd, xshape, (o, xshape[-1]), "qdense", attrs)
        outs.append(y)
        inputs.append(x)
    m.set_outputs(outs)
    return m, inputs


@pytest.fixture(scope="module")
def cases():
    module, inputs = build_cases()
    return module, inputs, run(module, inputs)


def _compile_x86(module, kernel):
    import tvm

    from sliver.backends.tvm.build import compile_module

    compiled = compile_module(module, "x86_64", lowbit_kernel=kernel)
    lib, kernels = compiled.library, compiled.kernels
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "lib.so")
        with open(path, "wb") as f:
            f.write(lib)
        vm = tvm.relax.VirtualMachine(tvm.runtime.load_module(path), tvm.cpu())
    return vm, kernels


def test_reference_cases_exercise_what_they_claim(cases):
    """The interpreter's outputs are not degenerate (all-zero or all-clamped)."""
    module, _, want = cases
    for v, y in zip(module.outputs, want):
        assert np.unique(y).size >= 3, f"case output {v.name} is degenerate"


@pytest.mark.slow
@pytest.mark.parametrize("kernel", ["generic", "bitserial", "int8"])
def test_x86_matches_interpreter(cases, kernel):
    import tvm

    module, inputs, want = cases
    vm, kernels = _compile_x86(module, kernel)
    got = vm["main"](*[tvm.runtime.tensor(x) for x in inputs])
    got = [got[i].numpy() for i in range(len(want))]
    assert_close(got, want, rtol=1e-5, atol_scale=1e-5, what=f"{kernel} kernel")
    eight_bit = {"w8a8", "w8a8_uw", "w8a8_narrow", "w8a8_wide", "dense_w8a8", "dense_w8a8_rows", "dense_w8a8_rows_q"}  # bit-serial takes widths below 8
    assert kernels == {name: ("int8" if kernel == "bitserial" and name in eight_bit else kernel)
                       for name in [c[0] for c in CONV_CASES + DENSE_CASES]}


def test_weight_packing_layout():
    """Two's complement planes, taps in (kh, kw) order, channel c at bit c%8 of byte c//8,
    rows zero-filled to a multiple of 8 bytes."""
    from sliver.backends.tvm.lowbit import pack_weights

    w = np.zeros((1, 9, 1, 2), np.int8)  # O=1, Cg=9 (two bytes per tap), 1x2 taps
    w[0, 0, 0, 0] = -1  # 0b11 in 2 bits: both planes
    w[0, 8, 0, 1] = 1  # plane 0 only, channel 8 → byte 1 of tap 1
    packed, rb = pack_weights(w, 2, tapb=2)
    assert rb == 8 and packed.shape == (1, 2, 8)
    assert list(packed[0, 0, :4]) == [1, 0, 0, 1] and list(packed[0, 1, :4]) == [1, 0, 0, 0]
    assert not packed[..., 4:].any()


@pytest.mark.parametrize("size", [4, 8])
def test_w2a2_block_layout(size):
    """A block's channels' two planes interleaved per 16-byte step, then their 8-byte
    tails in the same order; a channel left over (no full block) stays as packed."""
    from sliver.backends.tvm.lowbit import w2a2_blocks

    rb = 40  # two steps and a tail
    packed = (np.arange((size + 1) * 2 * rb, dtype=np.int64) * 7).reshape(size + 1, 2, rb).astype(np.uint8)
    out = w2a2_blocks(packed, groups=1, block=size).reshape(size + 1, -1)
    block = out[:size].reshape(-1)
    rows = [(c, p) for c in range(size) for p in range(2)]
    for step in range(2):
        for k, (ch, plane) in enumerate(rows):
            start = step * 32 * size + k * 16
            assert list(block[start:start + 16]) == list(packed[ch, plane, step * 16: step * 16 + 16])
    for k, (ch, plane) in enumerate(rows):
        assert list(block[64 * size + 8 * k: 64 * size + 8 * k + 8]) == list(packed[ch, plane, 32:40])
    assert (out[size] == packed[size].reshape(-1)).all()


def test_w2a2_weight_layout_choice():
    """aarch64 W2A2: two's complement block planes for signed weights in whole blocks of four
    channels and rows of at most W2A2_TC_MAX_RB bytes (16-bit sums), offset-binary blocks
    for the other W2A2 layers, the plain layout elsewhere; the cases above cover each."""
    from sliver.backends.tvm.lowbit import (LAYOUT_PLAIN, LAYOUT_W2A2, LAYOUT_W2A2_TC, LAYOUT_W2A2_TC8, W2A2_TC_MAX_RB,
                                            bitserial_layout)

    tc = W2A2_TC_MAX_RB
    assert bitserial_layout("aarch64", 2, 2, True, 24, 8) == LAYOUT_W2A2_TC8  # case w2a2: blocks of eight
    assert bitserial_layout("aarch64", 2, 2, True, 48, 8) == LAYOUT_W2A2_TC8  # case w2a2_tc
    assert bitserial_layout("aarch64", 2, 2, True, 32, 12) == LAYOUT_W2A2_TC  # case w2a2_tc4
    assert bitserial_layout("aarch64", 2, 2, True, 32, 8) == LAYOUT_W2A2_TC8  # case w2a2_tc8_odd
    assert bitserial_layout("aarch64", 2, 2, True, tc, 4) == LAYOUT_W2A2_TC  # case w2a2_extreme
    assert bitserial_layout("aarch64", 2, 2, True, tc + 8, 4) == LAYOUT_W2A2
    assert bitserial_layout("aarch64", 2, 2, True, 72, 10) == LAYOUT_W2A2  # case w2a2_rows: 10 channels
    assert bitserial_layout("aarch64", 2, 2, False, 32, 4) == LAYOUT_W2A2  # case w2a2_1x1: unsigned
    assert bitserial_layout("aarch64", 2, 2, True, 8, 4) == LAYOUT_PLAIN  # rows under 16 bytes
    assert bitserial_layout("aarch64", 2, 4, True, 72, 8) == LAYOUT_PLAIN
    assert bitserial_layout("x86_64", 2, 2, True, 72, 8) == LAYOUT_PLAIN


def test_kernel_choice_per_target():
    """aarch64: bit-serial below 8 bits; x86-64: bit-serial only for bit-plane rows of at
    least BITSERIAL_MIN_ROW bytes (3x3x64: 72 bytes -> int8, 3x3x128: 144 -> bit-serial)."""
    pytest.importorskip("tvm")
    from sliver.backends.tvm.lower import LowerContext, to_relax
    from sliver.backends.tvm.targets import resolve

    g = np.random.default_rng(2)
    m = Module("choice")
    outs = []
    for name, c, wd in (("c64", 64, "i2"), ("c128", 128, "i2"), ("c64w8", 64, "i8")):
        x = m.add_input(TensorType((1, c, 4, 4), "u2"), f"x_{name}")
        y = m.add_op("qconv2d", [x, _code_param(m, f"w_{name}", _codes(g, wd, (4, c, 3, 3)), wd),
                                 m.add_param(f"s_{name}", np.ones(4, np.float32))], {"padding": [1, 1, 1, 1]},
                     names=[name]).result
        outs.append(y)
    m.set_outputs(outs)
    picks = {}
    for target in ("x86_64", "arm64"):
        ctx = LowerContext(target=resolve(target))
        to_relax(m, ctx)
        picks[target] = ctx.kernels
    assert picks["x86_64"] == {"c64": "int8", "c128": "bitserial", "c64w8": "int8"}
    assert picks["arm64"] == {"c64": "bitserial", "c128": "bitserial", "c64w8": "int8"}


@pytest.mark.slow
def test_arm64_library_of_kernels_only_links(tmp_path):
    """A module whose only compute is one fused qconv2d (no TIR function at all) links for
    arm64: the packed imports are built for the cross target, not the host."""
    from sliver.backends.tvm.build import compile_module
    from sliver.common.platform import elf_arch

    g = np.random.default_rng(1)
    m = Module("kernel_only")
    x = m.add_input(TensorType((1, 16, 6, 6), "u2"), "x")
    y = m.add_op("qconv2d", [x, _code_param(m, "w", _codes(g, "i2", (8, 16, 3, 3)), "i2"),
                             m.add_param("s", np.ones(8, np.float32))], {"padding": [1, 1, 1, 1]}).result
    m.set_outputs([y])
    lib = compile_module(m, "arm64").library
    assert elf_arch(bytes(lib[:64])) == "aarch64"


@pytest.mark.slow
@pytest.mark.emulated
def test_arm64_artifact_matches_interpreter_on_emulated_pi(cases, tmp_path):
    """One arm64 artifact (bit-serial NEON kernel for < 8 bits, the int8 NEON kernel for
    8 bits) verified on the Pi."""
    import sliver
    from sliver.tools.emulator import emulate

    module, inputs, _ = cases
    art = sliver.lower(module, inputs, target="arm64", rtol=1e-5, atol=1e-5)
    assert art.manifest.kernels["w2a2"] == "bitserial" and art.manifest.kernels["w8a8"] == "int8"
    path = art.save(tmp_path / "cases.sliver")
    proc = emulate.run_module(["run", str(path), "--verify"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "verify: passed" in proc.stdout


# The int8 kernel's direct form on aarch64 (register tiles reading the padded channels-last
# input, no im2col rows; sdot on rpi5, smull/smlal2/sadalp on rpi4, without -128 weights
# in direct_narrow): symmetric weights, channels per group a multiple of 16.  Input rows of 19 pixels (a 16 x 16 transpose and 3 left), tiles
# crossing output rows with a 3-pixel tail, last blocks of 4 and 1
# channels, strides, dilation, asymmetric padding with a nonzero zero point, groups and a
# batch of 2, and 272 channels (the pixels in chunks of 60).
DIRECT_CASES = [
    ("direct", "u8", "i8", (1, 32, 5, 19), 20, 3, dict(padding=[1, 1, 1, 1], x_zero_point=37)),
    ("direct_s2", "i8", "i8", (1, 16, 10, 9), 16, 3, dict(stride=[2, 1], padding=[1, 2, 0, 1], dilation=[1, 2],
                                                         x_zero_point=-9)),
    ("direct_groups", "u8", "i8", (2, 64, 5, 6), 34, 3, dict(padding=[1, 1, 1, 1], groups=2, x_zero_point=200,
                                                            out_dtype="i8", out_scale=0.8, out_zero_point=3)),
    ("direct_chunks", "u8", "i8", (1, 16, 9, 11), 272, 3, dict(padding=[1, 1, 1, 1], x_zero_point=128)),
    ("direct_1x1", "i8", "i8", (1, 48, 7, 5), 24, 1, dict(stride=[2, 2], x_zero_point=5, clamp_min=0.0)),
    ("direct_narrow", "u8", "i8", (1, 16, 6, 7), 9, 3, dict(padding=[0, 1, 2, 1], x_zero_point=250)),
]


@pytest.mark.slow
@pytest.mark.emulated
@pytest.mark.parametrize("target,cpu,dot", [("rpi4", "cortex-a72", "neon"), ("rpi5", "cortex-a76", "sdot")])
def test_int8_direct_matches_interpreter_on_emulated_pi(target, cpu, dot, tmp_path):
    import sliver
    from sliver.tools.emulator import emulate

    g = np.random.default_rng(3)
    m = Module("direct_cases")
    outs, inputs = [], []
    for name, xd, wd, xshape, o, k, attrs in DIRECT_CASES:
        y, x = _layer(m, g, name, xd, wd, xshape, (o, xshape[1] // attrs.get("groups", 1), k, k), "qconv2d", attrs)
        outs.append(y)
        inputs.append(x)
    m.set_outputs(outs)
    art = sliver.lower(m, inputs, target=target, rtol=1e-5, atol=1e-5)
    assert set(art.manifest.kernels.values()) == {"int8"} and art.manifest.target.int8_dot == dot
    proc = emulate.run_module(["run", str(art.save(tmp_path / "direct.sliver")), "--verify"], cpu=cpu)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "verify: passed" in proc.stdout


def test_computed_weight_is_refused_with_the_layer_named():
    """The kernels pack weights at compile time: a weight computed at run time is a
    clear error naming the layer, not a TVM traceback."""
    pytest.importorskip("tvm")
    from sliver.backends.tvm.lower import to_relax
    from sliver.common.errors import SliverError

    m = Module("computed_weight")
    x = m.add_input(TensorType((1, 4, 5, 5), "f32"), "x")
    wf = m.add_input(TensorType((3, 4, 3, 3), "f32"), "wf")
    q = m.add_op("quantize", [x], {"scale": 0.5, "dtype": "u2"}).result
    w = m.add_op("quantize", [wf], {"scale": 0.5, "dtype": "i2"}).result
    s = m.add_param("s", np.ones(3, np.float32))
    y = m.add_op("qconv2d", [q, w, s], {}, names=["layer3"]).result
    m.set_outputs([y])
    with pytest.raises(SliverError, match=r"qconv2d %layer3: the weight must be a param"):
        to_relax(m)


# -- threads: the C kernels split a call's output rows over TVM's thread pool ---------------
#
# Layers above the kernels' MIN_WORK (kernels/lowbit.c; smaller calls stay serial), inputs
# given as codes, so the C kernels are the library's only compute and TVM's pool starts
# only if they launch it.  Slices cross groups and images (mt_groups, depthwise, batch 2),
# pack only the input rows their output rows read (strides, dilation, uneven padding) and
# sum them for a weight zero point.
# name, x dtype, w dtype, input shape, out channels, kernel, attrs
THREAD_CONV_CASES = [
    ("mt_w2a2", "u2", "i2", (1, 64, 14, 10), 32, 3, dict(padding=[1, 1, 1, 1], x_zero_point=1, w_zero_point=1)),
    # symmetric weights, an even row: on aarch64 the W2A2 asm writes the output rows itself;
    # 12 pixels wide: packed as one run of pixels per slice there
    ("mt_fused", "u2", "i2", (1, 64, 12, 12), 32, 3, dict(padding=[1, 1, 1, 1], clamp_min=0.0)),
    ("mt_groups", "u2", "i2", (2, 64, 12, 9), 64, 3, dict(stride=[2, 1], dilation=[1, 2], padding=[2, 1, 1, 2],
                                                         groups=4, x_zero_point=2, w_zero_point=1, out_dtype="u2",
                                                         out_scale=3.0, out_zero_point=1)),
    ("mt_depthwise", "u4", "u2", (1, 64, 16, 16), 64, 3, dict(padding=[1, 1, 1, 1], groups=64, x_zero_point=7,
                                                             w_zero_point=2)),
    ("mt_w8a8", "u8", "i8", (2, 32, 12, 12), 32, 3, dict(padding=[1, 1, 1, 1], x_zero_point=128)),
    ("mt_w8a8_groups", "u8", "u8", (2, 48, 25, 23), 48, 3, dict(stride=[2, 2], padding=[1, 0, 1, 2], groups=3,
                                                               x_zero_point=3, w_zero_point=100)),
]
THREAD_DENSE_CASES = [("mt_dense", "u2", "i2", (48, 256), 128, dict(x_zero_point=1)),
                      # 64 rows, symmetric weights: the lane kernel's rows form on AVX-512 VNNI
                      ("mt_dense_rows", "u8", "i8", (64, 256), 96, dict(x_zero_point=3))]

# Runs a library's main on .npz inputs, saves the outputs, prints the process's thread
# count before and after (TVM's pool starts on its first parallel launch) and the pool's
# size.  Works on the emulated Pi too (tvm runtime + numpy).
_RUN_LIB = """
import os, sys
import numpy as np
import tvm
from tvm.runtime import vm as tvm_vm
lib, inp, out = sys.argv[1:4]
with np.load(inp) as z:
    inputs = [z[f"arr_{i}"] for i in range(len(z.files))]
vm = tvm_vm.VirtualMachine(tvm.runtime.load_module(lib), tvm.cpu())
args = [tvm.runtime.tensor(x) for x in inputs]
before = len(os.listdir("/proc/self/task"))
got = vm["main"](*args)
after = len(os.listdir("/proc/self/task"))
np.savez(out, *[y.numpy() for y in ([got] if hasattr(got, "numpy") else got)])
print("threads", before, after, tvm.get_global_func("runtime.NumThreads")())
"""


def build_thread_cases(names=None, seed=3):
    """(module, code inputs) of the THREAD_*_CASES (those in ``names``), outputs straight
    from the q-layers (f32, or codes when they requantize)."""
    g = np.random.default_rng(seed)
    m = Module("lowbit_threads")
    outs, inputs = [], []
    cases = [(n, xd, wd, xs, (o, xs[1] // a.get("groups", 1), k, k), "qconv2d", a)
             for n, xd, wd, xs, o, k, a in THREAD_CONV_CASES]
    cases += [(n, xd, wd, xs, (o, xs[-1]), "qdense", a) for n, xd, wd, xs, o, a in THREAD_DENSE_CASES]
    for name, xd, wd, xshape, wshape, kind, attrs in cases:
        if names is not None and name not in names:
            continue
        x = m.add_input(TensorType(xshape, xd), f"x_{name}")
        ops = [x, _code_param(m, f"w_{name}", _codes(g, wd, wshape), wd),
               m.add_param(f"s_{name}", (g.random(wshape[0]) * 0.05 + 0.01).astype(np.float32)),
               m.add_param(f"b_{name}", g.standard_normal(wshape[0]).astype(np.float32))]
        outs.append(m.add_op(kind, ops, attrs, names=[name]).result)
        inputs.append(_codes(g, xd, xshape))
    m.set_outputs(outs)
    return m, inputs


def _run_lib_with_threads(run, lib: bytes, inputs, tmp_path, threads: int, tag: str):
    """(outputs, threads before, threads after) of ``lib`` run by ``run(argv, env)`` with
    TVM_NUM_THREADS=threads (checked: TVM's pool has that many threads)."""
    path, inp, out = tmp_path / f"{tag}.so", tmp_path / f"{tag}_in.npz", tmp_path / f"{tag}_out{threads}.npz"
    path.write_bytes(lib)
    np.savez(inp, *inputs)
    proc = run(["-c", _RUN_LIB, str(path), str(inp), str(out)], {"TVM_NUM_THREADS": str(threads)})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    before, after, pool = (int(v) for v in proc.stdout.split("threads")[-1].split())
    assert pool == threads, f"TVM's pool has {pool} threads, not TVM_NUM_THREADS={threads}"
    with np.load(out) as z:
        return [z[f"arr_{i}"] for i in range(len(z.files))], before, after


def _assert_exact(got, want, what):
    for i, (a, b) in enumerate(zip(got, want)):
        assert a.shape == b.shape and np.array_equal(a.astype(np.float64), b.astype(np.float64)), \
            f"{what}: output {i} differs (max abs {np.abs(a.astype(np.float64) - b).max():.3g})"


def thread_library(target, names=None, lowbit_kernel=None):
    """The THREAD cases (those in ``names``) compiled for ``target`` (a precompile job):
    (the saved library's path, the kernel each layer got)."""
    import precompile
    from sliver.backends.tvm.build import compile_module

    module, _ = build_thread_cases(None if names is None else set(names))
    compiled = compile_module(module, target, **({"lowbit_kernel": lowbit_kernel} if lowbit_kernel else {}))
    path = precompile.out(f"threads-{target}-{lowbit_kernel}-{len(compiled.kernels)}.so")
    path.write_bytes(compiled.library)
    return str(path), dict(compiled.kernels)


X86_THREADS = ("call", "test_lowbit", "thread_library", "x86_64", None, "bitserial")
PI_THREADS = ("call", "test_lowbit", "thread_library", "arm64", ("mt_fused", "mt_w2a2", "mt_w8a8"))


def _thread_library(key):
    import precompile

    path, kernels = precompile.get(key)
    with open(path, "rb") as f:
        return f.read(), kernels


@pytest.mark.slow
@pytest.mark.precompiled.with_args(lambda params: [X86_THREADS])
def test_x86_kernels_on_two_threads_match_one_thread_exactly(tmp_path):
    """Bit-serial (W2A2, W4A2 depthwise, a W2A2 linear) and int8 (W8A8) layers give the
    same bits with TVM_NUM_THREADS=1 and 2, equal to the interpreter; with 2 the kernels
    launched TVM's pool (its worker thread exists after the call), with 1 they did not."""
    import subprocess
    import sys

    module, inputs = build_thread_cases()
    want = run(module, inputs)
    lib, kernels = _thread_library(X86_THREADS)
    assert kernels == {"mt_w2a2": "bitserial", "mt_fused": "bitserial", "mt_groups": "bitserial", "mt_depthwise": "bitserial",
                       "mt_w8a8": "int8", "mt_w8a8_groups": "int8", "mt_dense": "bitserial", "mt_dense_rows": "int8"}

    def host(argv, env):
        return subprocess.run([sys.executable, *argv], env={**os.environ, **env}, capture_output=True, text=True,
                              timeout=300)

    one, before1, after1 = _run_lib_with_threads(host, lib, inputs, tmp_path, 1, "x86")
    two, before2, after2 = _run_lib_with_threads(host, lib, inputs, tmp_path, 2, "x86")
    _assert_exact(one, want, "1 thread vs the interpreter")
    _assert_exact(two, one, "2 threads vs 1 thread")
    assert after1 == before1, "TVM_NUM_THREADS=1: the kernels should not start TVM's pool"
    assert after2 > before2, "TVM_NUM_THREADS=2: the kernels ran serially (TVM's pool never started)"


@pytest.mark.slow
@pytest.mark.emulated
@pytest.mark.precompiled.with_args(lambda params: [PI_THREADS])
def test_arm64_bitserial_on_four_threads_matches_interpreter_on_emulated_pi(tmp_path):
    """The NEON bit-serial kernel (W2A2 asm with the epilogue fused, and with a weight zero
    point) and the int8 kernel split over four guest threads on the emulated Pi (qemu-user
    runs them as host threads) give exactly the interpreter's outputs."""
    from sliver.tools.emulator import emulate

    module, inputs = build_thread_cases(set(PI_THREADS[4]))
    want = run(module, inputs)
    lib, _ = _thread_library(PI_THREADS)

    def pi(argv, env):
        return emulate.run_python(argv, env=env, pi_cpuinfo=True)

    got, before, after = _run_lib_with_threads(pi, lib, inputs, tmp_path, 4, "arm64")
    _assert_exact(got, want, "arm64, 4 threads vs the interpreter")
    assert after > before, "TVM_NUM_THREADS=4: the kernels ran serially on the emulated Pi"
