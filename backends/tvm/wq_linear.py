"""Lowering of ``wq_linear`` (weight-only quantized linear, issue 5 part 3).

Three steps, each a TE function emitted with ``bb.emit_te``:

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
"""

from __future__ import annotations

from sliver.backends.tvm.registry import _R, lowers


def _dequantize_te(x, codes, scale, zero, *, bits, block, out_features):
    from tvm import te
    from tvm import tirx as tir

    K = int(x.shape[-1])
    nbytes = int(codes.shape[0])
    mask = (1 << bits) - 1
    straddles = 8 % bits != 0  # 3, 5, 6, 7 bits: a code may span two bytes

    def dequant(k, o):
        flat = o * K + k
        pos = flat * bits
        byte, shift = pos >> 3, pos & 7
        word = codes[byte].astype("int32")
        if straddles:
            nxt = tir.if_then_else(byte + 1 < nbytes, codes[tir.min(byte + 1, nbytes - 1)], tir.const(0, "uint8"))
            word = word | (nxt.astype("int32") << 8)
        code = (word >> shift.astype("int32")) & mask
        blk = flat // block
        return (code - zero[blk].astype("int32")).astype(x.dtype) * scale[blk]

    return te.compute((K, out_features), dequant, name="wq_dequantize")


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


@lowers("wq_linear")
def _wq_linear(bb, op, x, codes, scale, zero, index, value, b=None):
    a = op.attrs
    w = bb.emit_te(_dequantize_te, x, codes, scale, zero, bits=a["bits"], block=a["block"],
                   out_features=a["out_features"], primfunc_name_hint="wq_dequantize")
    y = bb.emit(_R().matmul(x, w))
    n = op.operands[4].type.shape[0]
    extra = ([index, value] if n else []) + ([b] if b is not None else [])
    if not extra:
        return y
    return bb.emit_te(_epilogue_te, y, x, *extra, outliers=n, has_bias=b is not None,
                      primfunc_name_hint="wq_epilogue")
