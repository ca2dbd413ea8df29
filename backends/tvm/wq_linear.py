"""Lowering of ``wq_linear`` (weight-only quantized linear, issue 5 part 3).

One TE function per layer, emitted with ``bb.emit_te``: it unpacks the bit stream of
codes, dequantizes per block, multiplies, and adds back the float outliers as a
sparse correction.  The dequantized weight is an intermediate of the same PrimFunc
as the product, whose input ``x`` is not a constant: Relax's FoldConstant cannot
turn it back into a float32 constant, so the library carries the packed codes
(``bits / 32`` of the float32 bytes) plus per-block scales and zero points.
"""

from __future__ import annotations

from sliver.backends.tvm.lower import lowers


def _wq_linear_te(x, codes, scale, zero, *rest, bits, block, out_features, outliers, has_bias):
    from tvm import te
    from tvm import tirx as tir

    K = int(x.shape[-1])
    O = out_features
    lead = list(x.shape[:-1])
    nbytes = int(codes.shape[0])
    mask = (1 << bits) - 1
    straddles = 8 % bits != 0  # 3, 5, 6, 7 bits: a code may span two bytes

    def code(o, k):
        pos = (o * K + k) * bits
        byte, shift = pos >> 3, pos & 7
        word = codes[byte].astype("int32")
        if straddles:
            nxt = tir.if_then_else(byte + 1 < nbytes, codes[tir.min(byte + 1, nbytes - 1)], tir.const(0, "uint8"))
            word = word | (nxt.astype("int32") << 8)
        return (word >> shift.astype("int32")) & mask

    def dequant(o, k):
        blk = (o * K + k) // block
        return (code(o, k) - zero[blk].astype("int32")).astype(x.dtype) * scale[blk]

    w = te.compute((O, K), dequant, name="wq_dequantize")
    k = te.reduce_axis((0, K), name="k")
    y = te.compute(lead + [O], lambda *i: te.sum(x[tuple(i[:-1]) + (k,)] * w[i[-1], k], axis=k), name="wq_matmul")
    rest = list(rest)
    if outliers:
        index, value = rest[0], rest[1]
        rest = rest[2:]
        j = te.reduce_axis((0, outliers), name="j")
        zero_f = tir.const(0.0, x.dtype)
        fix = te.compute(
            lead + [O],
            lambda *i: te.sum(tir.if_then_else(index[j] // K == i[-1],
                                               x[tuple(i[:-1]) + (index[j] % K,)] * value[j], zero_f), axis=j),
            name="wq_outliers",
        )
        y = te.compute(lead + [O], lambda *i: y(*i) + fix(*i), name="wq_add_outliers")
    if has_bias:
        b = rest[0]
        y = te.compute(lead + [O], lambda *i: y(*i) + b[i[-1]], name="wq_bias")
    return y


@lowers("wq_linear")
def _wq_linear(bb, op, x, codes, scale, zero, index, value, b=None):
    n = op.operands[4].type.shape[0]
    args = [x, codes, scale, zero] + ([index, value] if n else []) + ([b] if b is not None else [])
    a = op.attrs
    return bb.emit_te(_wq_linear_te, *args, bits=a["bits"], block=a["block"], out_features=a["out_features"],
                      outliers=n, has_bias=b is not None, primfunc_name_hint="wq_linear")
