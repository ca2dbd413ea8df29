"""Lowering of ``wq_linear`` (weight-only quantized linear, issue 5 part 3; issue 19 part 4).

Two kernels, chosen per layer:

``fused`` (the default where it applies): the C kernel ``kernels/wq_gemv.c``, called with
``relax.call_dps_packed`` and linked into the artifact's library, unpacks the codes in
registers and accumulates against the float activations (AVX-512 or AVX2 on x86-64,
NEON on aarch64, from the target's compiler flags): no dequantized weight is ever
written.  The weights are repacked here at compile time (:func:`kernel_layout`): rows
of ``K`` codes in chunks of 32, two codes per byte for 2..4 bits (the artifact holds
half a byte per weight), one per byte for 5..8, and a (scale, zero point) pair per
group of ``G = gcd(K, block)`` codes of a row (every group lies inside one of the op's
blocks).  It needs float32 activations with a static shape, ``G`` a multiple of 32,
and param (compile-time) operands.

``dequantize`` (everything else, and every layer when ``compile_module(...,
lowbit_kernel="generic")``): three steps, each a TE function emitted with ``bb.emit_te``:

1. ``wq_dequantize``: unpack the bit stream of codes and dequantize per block into the
   float weight, laid out ``[K, out]`` (the layout sliver's dense schedule wants).  It
   takes the layer's input ``x`` as an extra, unread argument: a call whose arguments
   are all constants would be evaluated at compile time by Relax's FoldConstant,
   which would put the float32 weight back into the library.  With ``x`` among its
   arguments it runs at inference time, and the library carries the packed codes
   (``bits / 32`` of the float32 bytes) plus per-block scales and zero points.
2. ``matmul(x, W)``: an ordinary Relax product, scheduled like any linear layer.
3. ``wq_outliers``: the sparse float outliers added back, ``y[..., r] += x[..., c] * v``
   (their codes are the zero point, so the dequantized weight is 0 there), and the bias.

Int8 activations (the op's ``act_block``, ``quantize-weights{activations=int8}``): the
fused kernel rounds each activation row to int8 per group once per call and multiplies
the 4-bit codes with integer dot products (meta ``ACT``; it needs ``act_block == G``,
at most 4 bits and at least 4 output rows); the dequantize path rounds the activations
in TE (``wq_act_int8``) before the product, the outliers reading the float input.

The choice per layer lands in the lowering report (``LowerContext.kernels``: ``wq-fused``
or ``wq-dequantize``).  Both agree with the op's reference semantics to float32 rounding.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from sliver.backends.tvm.registry import _const, _R, lowers

#: The fused kernel's C source, linked into libraries that use it.
KERNEL_SOURCE = Path(__file__).with_name("kernels") / "wq_gemv.c"
#: The packed function it exports.
FUSED = "sliver_wq_linear"
#: Order of its int32 ``meta`` operand (the C file's ``enum W_*``).
META_FIELDS = ("M", "K", "O", "G", "LAYOUT", "NOUT", "HAS_BIAS", "ACT")
#: Weight layouts (the C file's ``WL_*``): two codes per byte (2..4 bits), one (5..8 bits).
LAYOUT_NIBBLE, LAYOUT_BYTE = 0, 1
CHUNK = 32  # codes per chunk of the kernel's layout


def group_size(k: int, block: int) -> int | None:
    """The fused kernel's group (codes of a row sharing one scale and zero point):
    gcd(K, block) when it is a multiple of 32, else None (the kernel does not apply)."""
    g = math.gcd(int(k), int(block))
    return g if g % CHUNK == 0 else None


def kernel_layout(packed, scale, zero, *, bits: int, block: int, k: int, out_features: int):
    """A ``wq_linear``'s params in the fused kernel's layout: (codes u8, scale f32
    [O, K/G], zero u8 [O, K/G], layout, G); see ``kernels/wq_gemv.c``."""
    from sliver.passes.quantize_weights import unpack_codes

    g = group_size(k, block)
    if g is None:
        raise ValueError(f"no fused layout for rows of {k} in blocks of {block}")
    o = out_features
    codes = unpack_codes(np.asarray(packed, np.uint8), bits, o * k).reshape(o, k)
    starts = np.arange(o, dtype=np.int64)[:, None] * k + np.arange(k // g, dtype=np.int64)[None, :] * g
    blk = starts // block
    group_scale = np.asarray(scale, np.float32)[blk]
    group_zero = np.asarray(zero, np.uint8)[blk]
    if bits <= 4:
        c = codes.reshape(o, k // CHUNK, 2, CHUNK // 2)
        data = (c[:, :, 0, :] | (c[:, :, 1, :] << 4)).astype(np.uint8).reshape(-1)
        layout = LAYOUT_NIBBLE
    else:
        data = codes.reshape(-1).astype(np.uint8)
        layout = LAYOUT_BYTE
    return data, np.ascontiguousarray(group_scale), np.ascontiguousarray(group_zero), layout, g


def _constant(expr):
    """The numpy value of a compile-time constant operand, else None."""
    from tvm.ir.expr import Constant

    return expr.value.numpy() if isinstance(expr, Constant) else None


def _weight_at(codes, scale, zero, flat, *, bits, block, dtype):
    """TE expression: the dequantized weight at flat index ``flat`` (codes of the op's
    little-endian bit stream; ``(code - zero[blk]) * scale[blk]``)."""
    from tvm import tirx as tir

    nbytes = int(codes.shape[0])
    mask = (1 << bits) - 1
    pos = flat * bits
    byte, shift = pos >> 3, pos & 7
    word = codes[byte].astype("int32")
    if 8 % bits != 0:  # 3, 5, 6, 7 bits: a code may span two bytes
        nxt = tir.if_then_else(byte + 1 < nbytes, codes[tir.min(byte + 1, nbytes - 1)], tir.const(0, "uint8"))
        word = word | (nxt.astype("int32") << 8)
    code = (word >> shift.astype("int32")) & mask
    blk = flat // block
    return (code - zero[blk].astype("int32")).astype(dtype) * scale[blk]


def _dequantize_te(x, codes, scale, zero, *, bits, block, out_features):
    from tvm import te

    K = int(x.shape[-1])
    return te.compute((K, out_features),
                      lambda k, o: _weight_at(codes, scale, zero, o * K + k, bits=bits, block=block, dtype=x.dtype),
                      name="wq_dequantize")


def _take_te(codes, scale, zero, index, value, ids, *, bits, block, rows, columns, outliers):
    """The rows ``ids`` of the quantized table (ids clipped into range, as ``take`` lowers),
    each element dequantized where it is read, plus the kept float outliers."""
    from tvm import te
    from tvm import tirx as tir

    shape = [int(d) for d in ids.shape] + [columns]

    def flat(*i):
        return tir.max(tir.min(ids(*i[:-1]).astype("int64"), rows - 1), 0) * columns + i[-1]

    def weight(*i):
        return _weight_at(codes, scale, zero, flat(*i), bits=bits, block=block, dtype=scale.dtype)

    if not outliers:
        return te.compute(shape, weight, name="wq_take")
    j = te.reduce_axis((0, outliers), name="j")
    extra = te.compute(shape, lambda *i: te.sum(tir.if_then_else(index[j].astype("int64") == flat(*i), value[j],
                                                                 tir.const(0.0, scale.dtype)), axis=j),
                       name="wq_take_outliers")
    return te.compute(shape, lambda *i: weight(*i) + extra(*i), name="wq_take")


def _quantize_activations_te(x, *, act_block):
    """``x`` rounded to int8 per run of ``act_block`` along its last axis and dequantized
    (``sliver.ir.ops.quantize_activations``: rint half to even, clamp to ±127)."""
    from tvm import te
    from tvm import tirx as tir

    shape = [int(d) for d in x.shape]
    runs = shape[:-1] + [shape[-1] // act_block]
    r = te.reduce_axis((0, act_block), name="r")
    amax = te.compute(runs, lambda *i: te.max(tir.abs(x[tuple(i[:-1]) + (i[-1] * act_block + r,)]), axis=r),
                      name="wq_act_amax")
    zero = tir.const(0.0, x.dtype)
    c127 = tir.const(127.0, x.dtype)

    def value(*i):
        m = amax[tuple(i[:-1]) + (i[-1] // act_block,)]
        inv = tir.Select(m > zero, c127 / tir.max(m, tir.const(1e-30, x.dtype)), zero)
        a = tir.min(tir.max(tir.nearbyint(x(*i) * inv), -c127), c127)
        return a * (m / c127)

    return te.compute(shape, value, name="wq_act_int8")


def _epilogue_te(y, x, *rest, outliers, has_bias):
    from tvm import te
    from tvm import tirx as tir

    K = int(x.shape[-1])
    shape = list(y.shape)
    rest = list(rest)
    if outliers:
        index, value = rest[0], rest[1]
        rest = rest[2:]
        j = te.reduce_axis((0, outliers), name="j")
        zero_f = tir.const(0.0, x.dtype)
        fix = te.compute(
            shape,
            lambda *i: te.sum(tir.if_then_else(index[j] // K == i[-1],
                                               x[tuple(i[:-1]) + (index[j] % K,)] * value[j], zero_f), axis=j),
            name="wq_outliers",
        )
        y = te.compute(shape, lambda *i: y(*i) + fix(*i), name="wq_add_outliers")
    if has_bias:
        b = rest[0]
        y = te.compute(shape, lambda *i: y(*i) + b[i[-1]], name="wq_bias")
    return y


def _fused(bb, op, x, codes, scale, zero, index, value, b):
    """The fused kernel's call, or None where it does not apply (see the module doc)."""
    from tvm import relax

    a = op.attrs
    xt = op.operands[0].type
    shape = xt.shape
    if bb.context.lowbit_kernel == "generic" or xt.dtype != "f32" or not all(isinstance(d, int) for d in shape):
        return None
    k, o = int(shape[-1]), int(a["out_features"])
    g = group_size(k, a["block"])
    if g is None:
        return None
    act = int(a.get("act_block", 0) or 0)
    if act and (act != g or a["bits"] > 4 or o < 4):  # int8 activations: per group, 4-bit codes, a row tile
        return None
    params = [_constant(e) for e in (codes, scale, zero, index, value)]
    bias = _constant(b) if b is not None else np.zeros(o, np.float32)
    if any(p is None for p in params) or bias is None:
        return None
    data, gscale, gzero, layout, g = kernel_layout(params[0], params[1], params[2], bits=a["bits"],
                                                   block=a["block"], k=k, out_features=o)
    m = int(np.prod(shape[:-1], dtype=np.int64))
    meta = dict(M=m, K=k, O=o, G=g, LAYOUT=layout, NOUT=int(params[3].size), HAS_BIAS=int(b is not None),
                ACT=int(act > 0))
    meta_arr = np.array([meta[f] for f in META_FIELDS], np.int32)
    R = _R()
    x2 = bb.emit(R.reshape(x, [m, k]))
    y = bb.emit(relax.call_dps_packed(FUSED, [x2, _const(data), _const(gscale), _const(gzero),
                                              _const(np.asarray(params[3], np.int32)),
                                              _const(np.asarray(params[4], np.float32)),
                                              _const(np.asarray(bias, np.float32)), _const(meta_arr)],
                                      relax.TensorType((m, o), "float32")))
    bb.context.sources.add(str(KERNEL_SOURCE))
    return bb.emit(R.reshape(y, list(shape[:-1]) + [o]))


@lowers("wq_linear")
def _wq_linear(bb, op, x, codes, scale, zero, index, value, b=None):
    a = op.attrs
    y = _fused(bb, op, x, codes, scale, zero, index, value, b)
    bb.context.kernels[op.result.name] = "wq-dequantize" if y is None else "wq-fused"
    if y is not None:
        return y
    w = bb.emit_te(_dequantize_te, x, codes, scale, zero, bits=a["bits"], block=a["block"],
                   out_features=a["out_features"], primfunc_name_hint="wq_dequantize")
    xq = x
    if a.get("act_block"):  # int8 activations: the product reads x rounded, the outliers the float x
        xq = bb.emit_te(_quantize_activations_te, x, act_block=a["act_block"], primfunc_name_hint="wq_act_int8")
    y = bb.emit(_R().matmul(xq, w))
    n = op.operands[4].type.shape[0]
    extra = ([index, value] if n else []) + ([b] if b is not None else [])
    if not extra:
        return y
    return bb.emit_te(_epilogue_te, y, x, *extra, outliers=n, has_bias=b is not None,
                      primfunc_name_hint="wq_epilogue")


@lowers("wq_take")
def _wq_take(bb, op, codes, scale, zero, index, value, ids):
    a = op.attrs
    n = op.operands[3].type.shape[0]
    return bb.emit_te(_take_te, codes, scale, zero, index, value, ids, bits=a["bits"], block=a["block"],
                      rows=a["rows"], columns=a["columns"], outliers=n, primfunc_name_hint="wq_take")
