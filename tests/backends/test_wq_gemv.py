"""The fused wq_linear kernel (backends/tvm/kernels/wq_gemv.c) against the op's
reference semantics, compiled with each x86-64 level's C flags (AVX-512, AVX2, scalar:
each is built whatever this CPU is, and run where the CPU has its instructions) and
called through its plain C entry point; odd sizes: blocks straddling rows, activation
rows not a multiple of the register tile, outliers, bias."""

from __future__ import annotations

import ctypes
import subprocess

import numpy as np
import pytest
import torch

from sliver.ir.ops import get_op, quantize_activations
from sliver.passes.quantize_weights import quantize_weight

tvm = pytest.importorskip("tvm")

from sliver.backends.tvm.targets import c_compiler, resolve  # noqa: E402
from sliver.backends.tvm.wq_linear import (KERNEL_SOURCE, LAYOUT_BYTE, LAYOUT_NIBBLE, META_FIELDS,  # noqa: E402
                                           group_size, kernel_layout)
from sliver.common.platform import host_arch  # noqa: E402

LEVELS = {"x86-64-v4": "avx512", "x86-64-v3": "avx2", "x86-64-v2": "scalar"}
#: builds with the dot-product extensions of the int8-activation path (vpdpbusd), beside the levels
VNNI = {"x86-64-v4+avx512vnni": ("x86-64-v4", "-mavx512vnni", {"avx512_vnni"}),
        "x86-64-v3+avxvnni": ("x86-64-v3", "-mavxvnni", {"avx_vnni"})}


def _cpu_flags() -> set[str]:
    try:
        text = open("/proc/cpuinfo").read()
    except OSError:
        return set()
    line = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
    return set(line.split(":", 1)[-1].split())


NEEDS = {"x86-64-v4": {"avx512f", "avx512bw"}, "x86-64-v3": {"avx2", "fma"}, "x86-64-v2": set()}


def _build(level, tmp_path_factory):
    """(the kernel library built with the level's flags, the level); the build always runs,
    the calls only where this CPU has the level's instructions."""
    base, extra, needs = VNNI.get(level, (level, None, set()))
    if host_arch() != "x86_64":
        pytest.skip("x86-64 builds run on an x86-64 machine")
    out = tmp_path_factory.mktemp("wq") / f"wq-{level}.so"
    cc = c_compiler()
    flags = ["-O3", "-fno-math-errno", "-ffp-contract=off", *resolve(base).gcc_flags, *([extra] if extra else [])]
    proc = subprocess.run(cc.split() + [*flags, "-shared", "-fPIC", "-Wall", "-Werror", "-x", "c",
                                        str(KERNEL_SOURCE), "-o", str(out)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    if not NEEDS[base] | needs <= _cpu_flags():
        pytest.skip(f"this CPU cannot run {level} code (built, not run)")
    lib = ctypes.CDLL(str(out))
    lib.sliver_wq_isa.restype = ctypes.c_char_p
    assert lib.sliver_wq_isa().decode() == LEVELS[base]
    return lib, level


@pytest.fixture(scope="module", params=list(LEVELS))
def kernel(request, tmp_path_factory):
    return _build(request.param, tmp_path_factory)


@pytest.fixture(scope="module", params=list(LEVELS) + list(VNNI))
def kernel_i8(request, tmp_path_factory):
    """The same builds and the dot-product extensions' (the int8-activation path)."""
    return _build(request.param, tmp_path_factory)


def run_kernel(lib, x, q, bias, out_features, act=False):
    k = x.shape[-1]
    data, scale, zero, layout, g = kernel_layout(q.packed, q.scale, q.zero, bits=q.bits, block=q.block, k=k,
                                                 out_features=out_features)
    m = x.shape[0]
    meta = dict(M=m, K=k, O=out_features, G=g, LAYOUT=layout, NOUT=q.index.size, HAS_BIAS=int(bias is not None),
                ACT=int(act))
    meta = np.array([meta[f] for f in META_FIELDS], np.int32)
    out = np.full((m, out_features), np.nan, np.float32)
    b = np.zeros(out_features, np.float32) if bias is None else bias
    index, value = np.ascontiguousarray(q.index, np.int32), np.ascontiguousarray(q.value, np.float32)

    def p(a):
        return a.ctypes.data_as(ctypes.c_void_p)

    rc = lib.sliver_wq_linear_c(p(np.ascontiguousarray(x)), p(data), p(scale), p(zero), p(index), p(value), p(b),
                                p(meta), p(out))
    assert rc == 0
    return out, layout


def reference(x, q, bias, out_features, act_block=0):
    """The op's reference semantics (``wq_linear``'s, from the op registry)."""
    t = torch.from_numpy
    b = [] if bias is None else [t(bias)]
    return get_op("wq_linear").ref(t(x), t(q.packed), t(q.scale), t(q.zero), t(q.index), t(q.value), *b,
                                   bits=q.bits, block=q.block, out_features=out_features, act_block=act_block).numpy()


CASES = [  # bits, O, K, block, M, symmetric
    (4, 37, 96, 64, 1, False),     # blocks straddle rows (G = 32), one activation row (decode)
    (4, 19, 576, 128, 11, True),   # SmolLM2's width, G = 64; 11 rows: a tile and a remainder
    (3, 23, 256, 96, 3, True),     # 3-bit codes in nibbles, blocks straddle rows
    (2, 8, 64, 64, 2, False),
    (8, 13, 160, 32, 5, False),    # one code per byte
    (5, 9, 128, 128 * 9, 1, True),  # one block for the whole tensor
]


@pytest.mark.parametrize("bits,o,k,block,m,symmetric", CASES)
def test_kernel_matches_the_reference(kernel, bits, o, k, block, m, symmetric):
    lib, level = kernel
    rng = np.random.default_rng(bits * 1000 + o)
    w = rng.standard_normal((o, k)).astype(np.float32)
    w[o // 2, k // 3] = 25.0  # an outlier, kept as a float weight
    q = quantize_weight(w, bits=bits, block=block, symmetric=symmetric, clip=True, keep=[(o // 2) * k + k // 3])
    x = rng.standard_normal((m, k)).astype(np.float32)
    bias = rng.standard_normal(o).astype(np.float32) if bits != 2 else None
    got, layout = run_kernel(lib, x, q, bias, o)
    want = reference(x, q, bias, o)
    assert layout == (LAYOUT_NIBBLE if bits <= 4 else LAYOUT_BYTE)
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max(), (level, np.abs(got - want).max())


def test_group_size_needs_whole_chunks():
    assert group_size(576, 128) == 64 and group_size(1536, 128) == 128 and group_size(96, 64) == 32
    assert group_size(256, 48) is None and group_size(100, 32) is None
    with pytest.raises(ValueError, match="no fused layout"):
        kernel_layout(np.zeros(50, np.uint8), np.ones(4, np.float32), np.zeros(4, np.uint8), bits=4, block=48,
                      k=100, out_features=1)


CASES_I8 = [  # O, K, block, M, symmetric: 4-bit codes, int8 activations per group
    (37, 96, 64, 1, False),    # G = 32: one chunk per group
    (19, 576, 128, 3, True),   # G = 64: a pair of chunks per group (AVX-512)
    (6, 1536, 128, 1, False),  # G = 128, 6 rows: a tile and an overlapping last tile
    (4, 64, 32, 2, True),
    (9, 576, 32, 2, False),    # G = 32 on rows of a multiple of 64: two groups per 64-code product (AVX-512)
]


@pytest.mark.parametrize("o,k,block,m,symmetric", CASES_I8)
def test_int8_activations_match_the_reference(kernel_i8, o, k, block, m, symmetric):
    """Integer dot products of 4-bit codes and int8 activations, exact per group, then
    one float scale: the reference's x rounded to int8 per group (act_block = G) times
    the dequantized weight, to float32 rounding; kept outliers read the float x."""
    lib, level = kernel_i8
    rng = np.random.default_rng(o * 7 + k)
    w = rng.standard_normal((o, k)).astype(np.float32)
    w[o // 2, k // 3] = 25.0
    q = quantize_weight(w, bits=4, block=block, symmetric=symmetric, clip=True, keep=[(o // 2) * k + k // 3])
    x = rng.standard_normal((m, k)).astype(np.float32)
    x[0, 5] = 40.0  # a large activation: its group's scale is coarse
    x[-1, :32] = 0.0  # a group of zeros (scale 0)
    bias = rng.standard_normal(o).astype(np.float32)
    g = group_size(k, block)
    got, _ = run_kernel(lib, x, q, bias, o, act=True)
    want = reference(x, q, bias, o, act_block=g)
    assert np.abs(got - want).max() <= 2e-5 * np.abs(want).max(), (level, np.abs(got - want).max())
    floats = reference(x, q, bias, o)  # the float-activation result differs by the activations' rounding
    assert np.abs(floats - want).max() > 1e-4 * np.abs(want).max()


def test_activations_round_half_to_even_per_run():
    x = torch.tensor([[127.0, 0.5, 1.5, -2.5, 0.0, 0.0, 0.0, 0.0]])
    got = quantize_activations(x, 4)
    assert got[0].tolist() == [127.0, 0.0, 2.0, -2.0, 0.0, 0.0, 0.0, 0.0]
