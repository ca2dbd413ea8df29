"""The trace rules: one translation rule per supported aten op, all in this table.

Ops that declare the aten ops they come from (``OpDecl.aten``: simple elementwise
functions) get their rule from the declaration (:func:`declared_rule`); the rest are
written here.  A rule reads an fx node's (already translated) arguments and emits sliver ops through
a :class:`~sliver.frontend.builder.Builder`.  :data:`RULES` maps an aten op name to its
rule; :data:`IDENTITY`, :data:`IGNORED` and :data:`FACTORIES` name the ops the driver
handles without a rule.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np

from sliver.frontend.builder import Builder, constant_data, fold_constant
from sliver.ir.core import Value
from sliver.ir.ops import TypeRuleError, all_ops, broadcast_shapes
from sliver.ir.types import from_numpy

RULES: dict[str, Callable] = {}
# ops that are the identity in inference (their first argument is the result)
IDENTITY = {
    "aten.contiguous.default", "aten.clone.default", "aten.dropout.default", "aten.detach.default",
    "aten.alias.default", "aten.feature_dropout.default", "aten.lift_fresh_copy.default",
    "aten.dropout_.default", "aten.alpha_dropout.default", "aten.detach_.default",
}
# ops with no effect on the result: asserts and metadata checks
IGNORED = {
    "aten._assert_tensor_metadata.default", "aten._assert_scalar.default", "aten.sym_constrain_range_for_size.default",
    "aten._assert_async.msg", "aten.sym_size.int",
}
# tensor factories with constant arguments: evaluated at trace time into params
FACTORIES = {
    "aten.arange.default", "aten.arange.start", "aten.arange.start_step", "aten.zeros.default",
    "aten.ones.default", "aten.full.default", "aten.empty.memory_format", "aten.scalar_tensor.default",
    "aten.zeros_like.default", "aten.ones_like.default", "aten.full_like.default", "aten.tril.default",
    "aten.triu.default",
}


def rule(*names):
    def deco(fn):
        for n in names:
            RULES[n] = fn
        return fn

    return deco


def supported_ops() -> list[str]:
    return sorted(set(RULES) | IDENTITY | FACTORIES | {"operator.getitem"})


def _binary_operands(b: Builder, x, y):
    """Promote like torch does for the cases models use: tensor ⊕ scalar keeps the
    tensor's dtype; int tensor ⊕ float tensor/scalar goes to float."""
    if not isinstance(x, Value):
        x, y = y, x
        swapped = True
    else:
        swapped = False
    if isinstance(y, Value) and y.type.dtype != x.type.dtype:
        # promote to the float one
        target = x if x.type.dtype.startswith("f") else y
        x = b.tensor_or_scalar(x, target)
        y = b.tensor_or_scalar(y, target)
    elif isinstance(y, float) and not x.type.dtype.startswith("f"):
        x = b.emit("cast", [x], {"dtype": "f32"})
    y = b.tensor_or_scalar(y, x)
    return (y, x) if swapped else (x, y)


def _axis(a, rank):
    return a % rank if rank else 0


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v) if len(v) == 2 else (v[0], v[0])


# -- elementwise ---------------------------------------------------------------



def declared_rule(decl):
    """The rule of an op that names the aten ops it traces from (``OpDecl.aten``): the
    node's first arguments are the operands, the rest its attributes in declaration
    order, or by keyword."""
    n, names = len(decl.operands), list(decl.attrs)

    def fn(b, *args, **kwargs):
        if len(args) > n + len(names):
            raise TypeRuleError(f"{decl.name} takes {n} operand(s) and the attribute(s) {names}, "
                                f"got {len(args)} arguments")
        attrs = dict(zip(names, args[n:]))
        attrs.update(kwargs)
        return b.emit(decl.name, list(args[:n]), attrs)

    return fn


for _decl in all_ops().values():
    for _aten in _decl.aten:
        rule(f"aten.{_aten}.default", f"aten.{_aten}_.default")(declared_rule(_decl))


@rule("aten.hardtanh.default", "aten.hardtanh_.default")
def _hardtanh(b, x, min_val=-1.0, max_val=1.0):
    return b.emit("clamp", [x], {"min": float(min_val), "max": float(max_val)})


@rule("aten.relu6.default", "aten.relu6_.default")
def _relu6(b, x):
    return b.emit("clamp", [x], {"min": 0.0, "max": 6.0})


@rule("aten.clamp.default", "aten.clamp_.default", "aten.clip.default")
def _clamp(b, x, min=None, max=None):
    f = float if x.type.dtype.startswith("f") else int
    return b.emit("clamp", [x], {"min": None if min is None else f(min), "max": None if max is None else f(max)})


@rule("aten.clamp_min.default")
def _clamp_min(b, x, min):
    return _clamp(b, x, min, None)


@rule("aten.clamp_max.default")
def _clamp_max(b, x, max):
    return _clamp(b, x, None, max)


def _binary_rule(kind):
    def fn(b, x, y, alpha=1):
        x, y = _binary_operands(b, x, y)
        if alpha != 1:
            y = b.emit("mul", [y, b.tensor_or_scalar(alpha, y)])
        return b.emit(kind, [x, y])

    return fn


for _name, _kind in [("add", "add"), ("sub", "sub"), ("mul", "mul"), ("maximum", "maximum"), ("minimum", "minimum")]:
    rule(f"aten.{_name}.Tensor", f"aten.{_name}_.Tensor", f"aten.{_name}.Scalar", f"aten.{_name}.default")(
        _binary_rule(_kind)
    )


rule("aten.min.other")(_binary_rule("minimum"))
rule("aten.max.other")(_binary_rule("maximum"))


@rule("aten.div.Tensor", "aten.div_.Tensor", "aten.div.Scalar")
def _div(b, x, y):
    if isinstance(x, Value) and not x.type.dtype.startswith("f"):
        x = b.emit("cast", [x], {"dtype": "f32"})
    x, y = _binary_operands(b, x, y)
    return b.emit("div", [x, y])


@rule("aten.rsub.Scalar", "aten.rsub.Tensor")
def _rsub(b, x, y, alpha=1):
    return _binary_rule("sub")(b, y, x) if alpha == 1 else _binary_rule("sub")(b, y, b.emit("mul", [x, b.tensor_or_scalar(alpha, x)]))


@rule("aten.pow.Tensor_Scalar", "aten.pow.Tensor_Tensor")
def _pow(b, x, y):
    if y == 2:
        return b.emit("mul", [x, x])
    if y == 0.5:
        return b.emit("sqrt", [x])
    x, y = _binary_operands(b, x, y)
    return b.emit("pow", [x, y])


@rule("aten.reciprocal.default")
def _reciprocal(b, x):
    return b.emit("div", [b.tensor_or_scalar(1.0, x), x])


@rule("aten._to_copy.default", "aten.to.dtype", "aten.to.dtype_layout", "aten.type_as.default")
def _to(b, x, dtype=None, *rest, **kw):
    if isinstance(dtype, Value):  # type_as
        dtype = dtype.type.dtype
    else:
        dtype = kw.get("dtype", dtype)
        dtype = x.type.dtype if dtype is None else from_numpy(dtype)
    return x if dtype == x.type.dtype else b.emit("cast", [x], {"dtype": dtype})


# -- convolution and matrix products ------------------------------------------------


@rule("aten.conv2d.default", "aten.conv2d.padding")
def _conv2d(b, x, w, bias=None, stride=1, padding=0, dilation=1, groups=1):
    stride, dilation = _pair(stride), _pair(dilation)
    if isinstance(padding, str):
        if padding == "valid":
            padding = (0, 0, 0, 0)
        else:  # "same" (stride 1): torch puts the extra pixel at the bottom/right
            kh, kw = w.type.shape[2:]
            th, tw = dilation[0] * (kh - 1), dilation[1] * (kw - 1)
            padding = (th // 2, tw // 2, th - th // 2, tw - tw // 2)
    else:
        ph, pw = _pair(padding)
        padding = (ph, pw, ph, pw)
    ops = [x, w] + ([bias] if bias is not None else [])
    return b.emit("conv2d", ops, {"stride": stride, "padding": padding, "dilation": dilation, "groups": groups})


@rule("aten.conv1d.default", "aten.conv1d.padding")
def _conv1d(b, x, w, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """As a 2-D convolution over a height of one: (N, C, L) → (N, C, 1, L)."""
    def one(v):
        return v if isinstance(v, (int, str)) else v[0]

    unbatched = x.type.rank == 2
    if unbatched:
        x = _reshape_to(b, x, (1,) + x.type.shape)
    x2 = _reshape_to(b, x, x.type.shape[:2] + (1, x.type.shape[2]))
    w2 = _reshape_to(b, w, w.type.shape[:2] + (1, w.type.shape[2]))
    pad = padding if isinstance(padding, str) else (0, one(padding))
    y = _conv2d(b, x2, w2, bias, (1, one(stride)), pad, (1, one(dilation)), groups)
    y = _reshape_to(b, y, y.type.shape[:2] + y.type.shape[3:])
    return _reshape_to(b, y, y.type.shape[1:]) if unbatched else y


@rule("aten.conv_transpose2d.input")
def _conv_transpose2d(b, x, w, bias=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1):
    ph, pw = _pair(padding)
    attrs = {"stride": _pair(stride), "padding": (ph, pw, ph, pw), "output_padding": _pair(output_padding),
             "dilation": _pair(dilation), "groups": groups}
    return b.emit("conv_transpose2d", [x, w] + ([bias] if bias is not None else []), attrs)


@rule("aten.conv_transpose1d.default")
def _conv_transpose1d(b, x, w, bias=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1):
    """As a 2-D transposed convolution over a height of one: (N, C, L) → (N, C, 1, L)."""
    def one(v):
        return v if isinstance(v, int) else v[0]

    unbatched = x.type.rank == 2
    if unbatched:
        x = _reshape_to(b, x, (1,) + x.type.shape)
    x2 = _reshape_to(b, x, x.type.shape[:2] + (1, x.type.shape[2]))
    w2 = _reshape_to(b, w, w.type.shape[:2] + (1, w.type.shape[2]))
    y = _conv_transpose2d(b, x2, w2, bias, (1, one(stride)), (0, one(padding)), (0, one(output_padding)), groups,
                          (1, one(dilation)))
    y = _reshape_to(b, y, y.type.shape[:2] + y.type.shape[3:])
    return _reshape_to(b, y, y.type.shape[1:]) if unbatched else y


@rule("aten.convolution.default")
def _convolution(b, x, w, bias, stride, padding, dilation, transposed, output_padding, groups):
    if len(w.type.shape) not in (3, 4):
        raise TypeRuleError("only 1-D and 2-D convolutions are supported (3-D ones are not)")
    if transposed:
        conv = _conv_transpose1d if len(w.type.shape) == 3 else _conv_transpose2d
        return conv(b, x, w, bias, stride, padding, output_padding, groups, dilation)
    conv = _conv1d if len(w.type.shape) == 3 else _conv2d
    return conv(b, x, w, bias, stride, padding, dilation, groups)


@rule("aten.linear.default")
def _linear(b, x, w, bias=None):
    return b.emit("linear", [x, w] + ([bias] if bias is not None else []))


@rule("aten.matmul.default", "aten.bmm.default", "aten.mm.default")
def _matmul(b, x, y):
    if y.type.rank == 1:
        y2 = b.emit("reshape", [y], {"shape": y.type.shape + (1,)})
        out = b.emit("matmul", [x, y2])
        return b.emit("reshape", [out], {"shape": out.type.shape[:-1]})
    if x.type.rank == 1:
        x2 = b.emit("reshape", [x], {"shape": (1,) + x.type.shape})
        out = b.emit("matmul", [x2, y])
        return b.emit("reshape", [out], {"shape": out.type.shape[:-2] + out.type.shape[-1:]})
    return b.emit("matmul", [x, y])


@rule("aten.einsum.default")
def _einsum(b, equation, operands, path=None):
    """Sums out the labels one operand alone has, then contracts operands pairwise, left
    to right, as one batched matmul each: (batch, free, contracted) @ (batch,
    contracted, free), then reshape and permute to the requested label order."""
    eq = equation.replace(" ", "")
    lhs, arrow, out = eq.partition("->")
    labels = lhs.split(",")
    if "." in eq or len(labels) != len(operands) or any(len(set(t)) != len(t) for t in labels):
        raise TypeRuleError(f"einsum {equation!r}: ellipses and repeated labels in one operand (diagonals) "
                            "are not supported; write it with matmul, permute and reshape")
    if not arrow:
        out = "".join(sorted(c for c in set(lhs) - {","} if lhs.count(c) == 1))
    terms = list(zip(labels, operands))
    for t, x in terms:
        if x.type.rank != len(t):
            raise TypeRuleError(f"einsum {equation!r}: operand {t} has rank {x.type.rank}")
    size = {c: x.type.shape[i] for t, x in terms for i, c in enumerate(t)}
    if any(x.type.shape[i] != size[c] for t, x in terms for i, c in enumerate(t)):
        raise TypeRuleError(f"einsum {equation!r}: a label has different sizes (broadcasting is not supported)")

    def keep(t, x, needed):  # sum out the labels nothing later needs
        drop = [i for i, c in enumerate(t) if c not in needed]
        if drop:
            x = b.emit("sum", [x], {"axes": tuple(drop), "keepdim": False})
            t = "".join(c for c in t if c in needed)
        return t, x

    def arrange(t, x, order):
        dims = tuple(t.index(c) for c in order)
        return x if dims == tuple(range(len(t))) else b.emit("permute", [x], {"dims": dims})

    t, x = terms[0]
    for k in range(1, len(terms) + (len(terms) == 1)):
        later = set(out).union(*[set(u) for u, _ in terms[k + 1:]]) if k < len(terms) else set(out)
        if k == len(terms):  # one operand: sums and a permute
            t, x = keep(t, x, set(out))
            break
        u, y = terms[k]
        t, x = keep(t, x, later | set(u))
        u, y = keep(u, y, later | set(t))
        batch = [c for c in t if c in u and c in later]
        contract = [c for c in t if c in u and c not in later]
        left = [c for c in t if c not in u]
        right = [c for c in u if c not in t]
        n = math.prod

        xs = _reshape_to(b, arrange(t, x, batch + left + contract),
                         (n(size[c] for c in batch), n(size[c] for c in left), n(size[c] for c in contract)))
        ys = _reshape_to(b, arrange(u, y, batch + contract + right),
                         (n(size[c] for c in batch), n(size[c] for c in contract), n(size[c] for c in right)))
        x = _reshape_to(b, b.emit("matmul", [xs, ys]), tuple(size[c] for c in batch + left + right))
        t = "".join(batch + left + right)
    return arrange(t, x, list(out))


@rule("aten.addmm.default")
def _addmm(b, bias, x, y, beta=1, alpha=1):
    out = b.emit("matmul", [x, y])
    if alpha != 1:
        out = b.emit("mul", [out, b.tensor_or_scalar(alpha, out)])
    if beta != 1:
        bias = b.emit("mul", [bias, b.tensor_or_scalar(beta, bias)])
    return b.emit("add", [out, bias])


# -- fake quantization (QAT models) -------------------------------------------------------
#
# torch's fake-quant ops all become one sliver op, fake_quant(x, scale, zero_point)
# {qmin, qmax, axis}: scale an f32 operand (0-d per tensor, [C] per channel), zero_point
# i32.  The learnable (LSQ) variants run the same forward with a float zero point that
# torch rounds half to even and clamps to [qmin, qmax]; sliver does that at trace time,
# so their zero point must be a constant (a param), as it is after training.


def _qparam(b: Builder, v, dtype: str, shape: tuple, what: str) -> Value:
    """A scale/zero-point operand of ``dtype`` and ``shape`` (a Python number becomes a param)."""
    from sliver.ir.types import to_numpy

    if not isinstance(v, Value):
        return b.m.add_param(b.m.fresh_name(f"{b.hint}_{what}"), np.full(shape, v, to_numpy(dtype)))
    if v.type.numel != math.prod(shape):
        raise TypeRuleError(f"fake-quant {what} {v.type} does not fit the expected shape {list(shape)}")
    if v.type.shape == tuple(shape) and v.type.dtype == dtype:
        return v
    data = constant_data(b, v)
    if data is not None:  # a param: reshape/cast it now (named after it, e.g. conv.act_quant.scale)
        name = v.name if b.m.param_data(v) is not None else f"{b.hint}_{what}"
        return b.m.add_param(b.m.fresh_name(name), data.reshape(shape).astype(to_numpy(dtype)))
    if v.type.shape != tuple(shape):
        v = b.emit("reshape", [v], {"shape": tuple(shape)})
    return v if v.type.dtype == dtype else b.emit("cast", [v], {"dtype": dtype})


def _learned_zero_point(b: Builder, zp, qmin, qmax, shape) -> Value:
    """torch's forward of a learnable zero point: round half to even, clamp, as int32."""
    data = constant_data(b, zp) if isinstance(zp, Value) else np.asarray(zp, np.float32)
    if data is None:
        raise TypeRuleError("a learnable fake-quant zero point computed from the inputs is not supported "
                            "(it must be a parameter)")
    rounded = np.clip(np.round(np.asarray(data, np.float32)), qmin, qmax).astype(np.int32).reshape(shape)
    name = zp.name if isinstance(zp, Value) and b.m.param_data(zp) is not None else f"{b.hint}_zero_point"
    return b.m.add_param(b.m.fresh_name(name), rounded)


@rule("aten.fake_quantize_per_tensor_affine.default", "aten.fake_quantize_per_tensor_affine.tensor_qparams",
      "aten._fake_quantize_learnable_per_tensor_affine.default")
def _fake_quant_per_tensor(b, x, scale, zero_point, qmin, qmax, grad_factor=1.0):
    scale = _qparam(b, scale, "f32", (), "scale")
    if b.node_target.startswith("aten._fake_quantize_learnable"):
        zero_point = _learned_zero_point(b, zero_point, qmin, qmax, ())
    else:
        zero_point = _qparam(b, zero_point, "i32", (), "zero_point")
    return b.emit("fake_quant", [x, scale, zero_point], {"qmin": int(qmin), "qmax": int(qmax)})


@rule("aten.fake_quantize_per_channel_affine.default", "aten._fake_quantize_learnable_per_channel_affine.default")
def _fake_quant_per_channel(b, x, scale, zero_point, axis, qmin, qmax, grad_factor=1.0):
    axis = _axis(axis, x.type.rank)
    shape = (x.type.shape[axis],)
    scale = _qparam(b, scale, "f32", shape, "scale")
    if b.node_target.startswith("aten._fake_quantize_learnable"):
        zero_point = _learned_zero_point(b, zero_point, qmin, qmax, shape)
    elif isinstance(zero_point, Value) and zero_point.type.dtype.startswith("f"):
        # torch's per-channel op also takes float zero points, added before rounding
        # (round(x / s + z)), which rounds differently from round(x / s) + z unless z is 0
        data = constant_data(b, zero_point)
        if data is None or np.any(data != 0):
            raise TypeRuleError("fake_quantize_per_channel_affine with float zero points is supported only when they "
                                "are all zero (torch rounds x / scale + zero_point for them); pass int32 zero points")
        zero_point = b.m.add_param(b.m.fresh_name(f"{b.hint}_zero_point"), data.astype(np.int32).reshape(shape))
    else:
        zero_point = _qparam(b, zero_point, "i32", shape, "zero_point")
    return b.emit("fake_quant", [x, scale, zero_point], {"qmin": int(qmin), "qmax": int(qmax), "axis": axis})


# -- normalization --------------------------------------------------------------


@rule("aten.batch_norm.default")
def _batch_norm(b, x, w, bias, mean, var, training, momentum, eps, cudnn_enabled=False):
    if training:
        raise TypeRuleError("batch_norm in training mode: call model.eval() before tracing")
    ops = [x, mean, var] + ([w] if w is not None else [])
    if bias is not None:
        if w is None:
            ops.append(b.m.add_param(b.m.fresh_name("bn_weight"), np.ones(x.type.shape[1], np.float32)))
        ops.append(bias)
    return b.emit("batch_norm", ops, {"eps": float(eps)})


@rule("aten._native_batch_norm_legit_no_training.default")
def _native_bn(b, x, w, bias, mean, var, momentum, eps):
    y = _batch_norm(b, x, w, bias, mean, var, False, momentum, eps)
    return (y, None, None)


@rule("aten.layer_norm.default")
def _layer_norm(b, x, shape, w=None, bias=None, eps=1e-5, cudnn_enable=False):
    ops = [x]
    if w is not None or bias is not None:
        ops.append(w if w is not None else b.m.add_param(b.m.fresh_name("ln_weight"), np.ones(shape, np.float32)))
    if bias is not None:
        ops.append(bias)
    return b.emit("layer_norm", ops, {"axes": len(shape), "eps": float(eps)})


@rule("aten.group_norm.default")
def _group_norm(b, x, groups, w=None, bias=None, eps=1e-5, cudnn_enabled=True):
    """A layer norm over each group, (N, G, C/G·spatial), then the per-channel affine."""
    n, c, rest = x.type.shape[0], x.type.shape[1], x.type.shape[2:]
    if c % groups:
        raise TypeRuleError(f"group_norm: {c} channels do not split into {groups} groups")
    y = _reshape_to(b, x, (n, groups, x.type.numel // (n * groups)))
    y = _reshape_to(b, b.emit("layer_norm", [y], {"axes": 1, "eps": float(eps)}), x.type.shape)
    for v, kind in ((w, "mul"), (bias, "add")):
        if v is not None:
            y = b.emit(kind, [y, _reshape_to(b, v, (c,) + (1,) * len(rest))])
    return y


@rule("aten._weight_norm.default")
def _weight_norm(b, v, g, dim=0):
    """A weight-normalized weight (``nn.utils.weight_norm``, parametrizations): its
    direction and magnitude are params, so the weight is computed now."""
    import torch

    return fold_constant(b, "weight norm", torch._weight_norm, v, g, dim)


@rule("aten.rms_norm.default")
def _rms_norm(b, x, shape, w=None, eps=None):
    if eps is None:
        eps = float(np.finfo(np.float32).eps)
    return b.emit("rms_norm", [x] + ([w] if w is not None else []), {"axes": len(shape), "eps": float(eps)})


# -- pooling --------------------------------------------------------------------


@rule("aten.max_pool2d.default", "aten.max_pool2d_with_indices.default")
def _max_pool2d(b, x, kernel, stride=(), padding=0, dilation=1, ceil_mode=False):
    kernel = _pair(kernel)
    stride = _pair(stride) if stride else kernel
    ph, pw = _pair(padding)
    attrs = {"kernel": kernel, "stride": stride, "padding": (ph, pw, ph, pw), "dilation": _pair(dilation),
             "ceil_mode": bool(ceil_mode)}
    y = b.emit("max_pool2d", [x], attrs)
    return (y, None) if b.node_target.endswith("with_indices.default") else y


@rule("aten.avg_pool2d.default")
def _avg_pool2d(b, x, kernel, stride=(), padding=0, ceil_mode=False, count_include_pad=True, divisor_override=None):
    if divisor_override is not None:
        raise TypeRuleError("avg_pool2d with divisor_override is not supported")
    kernel = _pair(kernel)
    stride = _pair(stride) if stride else kernel
    ph, pw = _pair(padding)
    return b.emit("avg_pool2d", [x], {"kernel": kernel, "stride": stride, "padding": (ph, pw, ph, pw),
                                      "ceil_mode": bool(ceil_mode), "count_include_pad": bool(count_include_pad)})


@rule("aten.adaptive_avg_pool2d.default", "aten._adaptive_avg_pool2d.default")
def _adaptive(b, x, output_size):
    return b.emit("adaptive_avg_pool2d", [x], {"output_size": _pair(output_size)})


@rule("aten.adaptive_avg_pool1d.default")
def _adaptive_1d(b, x, output_size):
    """As a 2-D pool over a height of one: (..., L) → (..., 1, L) → (..., 1, out) → (..., out)."""
    (out,) = output_size if isinstance(output_size, (list, tuple)) else (output_size,)
    y = b.emit("adaptive_avg_pool2d", [_reshape_to(b, x, x.type.shape[:-1] + (1, x.type.shape[-1]))],
               {"output_size": (1, out)})
    return _reshape_to(b, y, x.type.shape[:-1] + (out,))


# -- shape and data movement ------------------------------------------------------------


def _reshape_to(b, x, shape):
    shape = list(shape)
    if -1 in shape:
        known = math.prod(d for d in shape if d != -1)
        shape[shape.index(-1)] = x.type.numel // known if known else 0
    if tuple(shape) == x.type.shape:
        return x
    return b.emit("reshape", [x], {"shape": tuple(shape)})


@rule("aten.reshape.default", "aten.view.default", "aten._unsafe_view.default")
def _reshape(b, x, shape):
    return _reshape_to(b, x, shape)


@rule("aten.flatten.using_ints")
def _flatten(b, x, start=0, end=-1):
    r = x.type.rank
    if r == 0:
        return _reshape_to(b, x, (1,))
    s, e = _axis(start, r), _axis(end, r)
    shape = x.type.shape[:s] + (math.prod(x.type.shape[s:e + 1]),) + x.type.shape[e + 1:]
    return _reshape_to(b, x, shape)


@rule("aten.pad.default", "aten.constant_pad_nd.default")
def _pad(b, x, pad, mode="constant", value=None):
    """F.pad, one axis at a time from the last: constant mode joins constant blocks to
    both sides (a negative amount crops); reflect, replicate and circular gather along
    the axis with constant indices."""
    if len(pad) % 2 or len(pad) // 2 > x.type.rank:
        raise TypeRuleError(f"pad: {list(pad)} must hold a (before, after) pair per padded axis of {x.type}")
    if mode not in ("constant", "reflect", "replicate", "circular"):
        raise TypeRuleError(f"pad: unknown mode {mode!r}")
    for i in range(len(pad) // 2):
        axis, before, after = x.type.rank - 1 - i, pad[2 * i], pad[2 * i + 1]
        n = x.type.shape[axis]
        if mode == "constant":
            if before < 0 or after < 0:
                x = b.emit("slice", [x], {"axis": axis, "start": max(0, -before), "end": n - max(0, -after)})
            pieces = []
            for amount in (before, after):
                shape = list(x.type.shape)
                shape[axis] = amount
                pieces.append(b.const(0 if value is None else value, x.type.dtype, shape) if amount > 0 else None)
            if pieces[0] is not None or pieces[1] is not None:
                x = b.emit("concat", [p for p in (pieces[0], x, pieces[1]) if p is not None], {"axis": axis})
            continue
        if before == after == 0:
            continue
        if before < 0 or after < 0 or (mode == "reflect" and max(before, after) >= n) or (
                mode == "circular" and max(before, after) > n):
            raise TypeRuleError(f"pad: {mode} padding of {before}, {after} does not fit an axis of size {n}")
        index = np.arange(-before, n + after)
        if mode == "replicate":
            index = np.clip(index, 0, n - 1)
        elif mode == "circular":
            index = index % n
        else:
            index = np.abs(index)
            index = np.where(index >= n, 2 * (n - 1) - index, index)
        x = b.emit("take", [x, b.m.add_param(b.m.fresh_name(f"{b.hint}_index"), index.astype(np.int64))],
                   {"axis": axis})
    return x


# -- F.interpolate: resizing as gathers with constant indices and weights ------------------
#
# Each resized axis is a weighted sum of taps, x[..., index_k, ...] * weight_k, whose
# indices and weights depend only on the sizes and are computed now, with torch's
# formulas (aten/src/ATen/native/UpSample.h) in float32 like its CPU kernels: one tap for
# nearest, two for linear, four for cubic.  The axes are resized one after the other
# (separable), the last first, as torch's kernels sum.


def _resize_scale(n_in: int, n_out: int, align_corners: bool, scale) -> np.float32:
    if align_corners:
        return np.float32((n_in - 1) / (n_out - 1)) if n_out > 1 else np.float32(0)
    return np.float32(1.0 / scale) if scale is not None and scale > 0 else np.float32(n_in) / np.float32(n_out)


def _resize_taps(mode: str, n_in: int, n_out: int, align_corners: bool, scale) -> list:
    """[(index[n_out], weight[n_out] or None), ...] for one axis."""
    dst = np.arange(n_out, dtype=np.float32)
    if mode in ("nearest", "nearest-exact"):
        if n_out == n_in:
            return [(np.arange(n_out), None)]
        r = np.float32(1.0 / scale) if scale is not None and scale > 0 else np.float32(n_in) / np.float32(n_out)
        src = np.floor((dst + np.float32(0.5 if mode == "nearest-exact" else 0)) * r)
        return [(np.minimum(src.astype(np.int64), n_in - 1), None)]
    r = _resize_scale(n_in, n_out, align_corners, scale)
    src = r * dst if align_corners else r * (dst + np.float32(0.5)) - np.float32(0.5)
    if mode == "linear":
        src = np.maximum(src, np.float32(0)) if not align_corners else src
        i0 = src.astype(np.int64)
        l1 = (src - i0.astype(np.float32)).astype(np.float32)
        i1 = i0 + (i0 < n_in - 1)
        return [(i0, np.float32(1) - l1), (i1, l1)]
    # cubic (A = -0.75), taps at floor(src) - 1 .. + 2, clamped into the axis
    base = np.floor(src)
    t = (src - base).astype(np.float32)
    a = np.float32(-0.75)

    def near(x):  # |x| <= 1
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x):  # 1 < |x| < 2
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    weights = [far(t + 1), near(t), near(1 - t), far(2 - t)]
    return [(np.clip(base.astype(np.int64) - 1 + k, 0, n_in - 1), w.astype(np.float32)) for k, w in enumerate(weights)]


def _resize(b, x, sizes, mode: str, align_corners: bool = False, scales=None):
    """Resize the last ``len(sizes)`` axes of ``x`` to ``sizes``."""
    from sliver.ir.types import to_numpy

    n = len(sizes)
    scales = list(scales) if scales is not None else [None] * n
    for j in reversed(range(n)):
        axis = x.type.rank - n + j
        n_in, n_out = x.type.shape[axis], int(sizes[j])
        taps = _resize_taps(mode, n_in, n_out, bool(align_corners), scales[j])
        if len(taps) == 1 and np.array_equal(taps[0][0], np.arange(n_in)):
            continue
        total = None
        for index, weight in taps:
            if weight is not None and not weight.any():
                continue
            y = b.emit("take", [x, b.m.add_param(b.m.fresh_name(f"{b.hint}_index"), index)], {"axis": axis})
            if weight is not None and not (weight == 1).all():
                shape = (n_out,) + (1,) * (x.type.rank - axis - 1)
                w = b.m.add_param(b.m.fresh_name(f"{b.hint}_weight"),
                                  weight.reshape(shape).astype(to_numpy(x.type.dtype)))
                y = b.emit("mul", [y, w])
            total = y if total is None else b.emit("add", [total, y])
        x = total
    return x


def _out_sizes(x, output_size, scale_factors, n):
    if output_size is not None:
        return list(output_size), [None] * n if scale_factors is None else list(scale_factors)
    return [int(math.floor(d * s)) for d, s in zip(x.type.shape[-n:], scale_factors)], list(scale_factors)


def _upsample(mode: str, n: int, vec: bool):
    def fn(b, x, output_size=None, *args):
        if not x.type.dtype.startswith("f"):
            raise TypeRuleError(f"interpolate needs a floating-point input, got {x.type}")
        align = False
        if mode not in ("nearest", "nearest-exact"):
            align, args = (args[0] if args else False), args[1:]
        if vec:
            sizes, scales = _out_sizes(x, output_size, args[0] if args else None, n)
        else:  # .default: explicit output size, then one optional scale per axis
            sizes, scales = list(output_size), list(args) + [None] * (n - len(args))
        return _resize(b, x, sizes, mode, align, scales)

    return fn


for _n, _d in ((1, "1d"), (2, "2d"), (3, "3d")):
    for _vec in (True, False):
        _ov = "vec" if _vec else "default"
        rule(f"aten.upsample_nearest{_d}.{_ov}")(_upsample("nearest", _n, _vec))
        rule(f"aten._upsample_nearest_exact{_d}.{_ov}")(_upsample("nearest-exact", _n, _vec))
    _lin = {1: "linear1d", 2: "bilinear2d", 3: "trilinear3d"}[_n]
    rule(f"aten.upsample_{_lin}.vec")(_upsample("linear", _n, True))
    rule(f"aten.upsample_{_lin}.default")(_upsample("linear", _n, False))
rule("aten.upsample_bicubic2d.vec")(_upsample("cubic", 2, True))
rule("aten.upsample_bicubic2d.default")(_upsample("cubic", 2, False))


@rule("aten.pixel_shuffle.default")
def _pixel_shuffle(b, x, r):
    """(N, C·r·r, H, W) → (N, C, r, r, H, W) → (N, C, H, r, W, r) → (N, C, H·r, W·r)."""
    *lead, c, h, w = x.type.shape
    y = _reshape_to(b, x, (*lead, c // (r * r), r, r, h, w))
    k = len(lead)
    y = b.emit("permute", [y], {"dims": tuple(range(k)) + tuple(k + d for d in (0, 3, 1, 4, 2))})
    return _reshape_to(b, y, (*lead, c // (r * r), h * r, w * r))


@rule("aten.pixel_unshuffle.default")
def _pixel_unshuffle(b, x, r):
    """(N, C, H·r, W·r) → (N, C, H, r, W, r) → (N, C, r, r, H, W) → (N, C·r·r, H, W)."""
    *lead, c, h, w = x.type.shape
    y = _reshape_to(b, x, (*lead, c, h // r, r, w // r, r))
    k = len(lead)
    y = b.emit("permute", [y], {"dims": tuple(range(k)) + tuple(k + d for d in (0, 2, 4, 1, 3))})
    return _reshape_to(b, y, (*lead, c * r * r, h // r, w // r))


@rule("aten.roll.default")
def _roll(b, x, shifts, dims=()):
    """Each axis as two slices joined in swapped order; no dims: the flattened tensor."""
    shifts = [shifts] if isinstance(shifts, int) else list(shifts)
    dims = [dims] if isinstance(dims, int) else list(dims)
    if not dims:
        return _reshape_to(b, _roll(b, _reshape_to(b, x, (x.type.numel,)), shifts, [0]), x.type.shape)
    for shift, d in zip(shifts, dims):
        axis = _axis(d, x.type.rank)
        n = x.type.shape[axis]
        shift %= n
        if shift:
            tail = b.emit("slice", [x], {"axis": axis, "start": n - shift, "end": n})
            head = b.emit("slice", [x], {"axis": axis, "start": 0, "end": n - shift})
            x = b.emit("concat", [tail, head], {"axis": axis})
    return x


@rule("aten.unflatten.int")
def _unflatten(b, x, dim, sizes):
    d = _axis(dim, x.type.rank)
    return _reshape_to(b, x, x.type.shape[:d] + tuple(sizes) + x.type.shape[d + 1:])


@rule("aten.unsqueeze.default")
def _unsqueeze(b, x, dim):
    dim = dim % (x.type.rank + 1)
    return _reshape_to(b, x, x.type.shape[:dim] + (1,) + x.type.shape[dim:])


@rule("aten.squeeze.dim", "aten.squeeze.dims", "aten.squeeze.default")
def _squeeze(b, x, dims=None):
    r = x.type.rank
    if dims is None:
        dims = range(r)
    elif isinstance(dims, int):
        dims = [dims]
    drop = {_axis(d, r) for d in dims if x.type.shape[_axis(d, r)] == 1}
    return _reshape_to(b, x, tuple(d for i, d in enumerate(x.type.shape) if i not in drop))


@rule("aten.permute.default")
def _permute(b, x, dims):
    dims = tuple(_axis(d, x.type.rank) for d in dims)
    return x if dims == tuple(range(x.type.rank)) else b.emit("permute", [x], {"dims": dims})


@rule("aten.transpose.int")
def _transpose(b, x, d0, d1):
    dims = list(range(x.type.rank))
    d0, d1 = _axis(d0, x.type.rank), _axis(d1, x.type.rank)
    dims[d0], dims[d1] = dims[d1], dims[d0]
    return _permute(b, x, dims)


@rule("aten.t.default")
def _t(b, x):
    return _permute(b, x, list(range(x.type.rank))[::-1])


@rule("aten.expand.default")
def _expand(b, x, shape):
    shape = list(shape)
    offset = len(shape) - x.type.rank
    for i, d in enumerate(shape):
        if d == -1:
            shape[i] = x.type.shape[i - offset]
    if x.type.rank < len(shape):
        x = _reshape_to(b, x, (1,) * offset + x.type.shape)
    return x if tuple(shape) == x.type.shape else b.emit("expand", [x], {"shape": tuple(shape)})


@rule("aten.expand_as.default")
def _expand_as(b, x, other):
    return _expand(b, x, other.type.shape)


@rule("aten.cat.default", "aten.concat.default")
def _cat(b, xs, dim=0):
    xs = [x for x in xs if x.type.numel > 0 or len(xs) == 1]
    if len(xs) == 1:
        return xs[0]
    return b.emit("concat", xs, {"axis": _axis(dim, xs[0].type.rank)})


@rule("aten.slice.Tensor")
def _slice(b, x, dim=0, start=None, end=None, step=1):
    from sliver.ir.ops import slice_bounds

    ax = _axis(dim, x.type.rank)
    size = x.type.shape[ax]
    s, e, n = slice_bounds(size, 0 if start is None else start, size if end is None else end, step)
    if (s, n, step) == (0, size, 1):
        return x
    return b.emit("slice", [x], {"axis": ax, "start": s, "end": e if n else s, "step": step})


@rule("aten.select.int")
def _select(b, x, dim, index):
    ax = _axis(dim, x.type.rank)
    index = index % x.type.shape[ax]
    y = b.emit("slice", [x], {"axis": ax, "start": index, "end": index + 1, "step": 1})
    return _reshape_to(b, y, x.type.shape[:ax] + x.type.shape[ax + 1:])


@rule("aten.split.Tensor", "aten.split_with_sizes.default", "aten.chunk.default")
def _split(b, x, sizes, dim=0):
    ax = _axis(dim, x.type.rank)
    total = x.type.shape[ax]
    if b.node_target.startswith("aten.chunk"):
        sizes = -(-total // sizes)
    if isinstance(sizes, int):
        sizes = [min(sizes, total - s) for s in range(0, total, sizes)]
    out, start = [], 0
    for n in sizes:
        out.append(_slice(b, x, ax, start, start + n))
        start += n
    return tuple(out)


@rule("aten.unbind.int")
def _unbind(b, x, dim=0):
    ax = _axis(dim, x.type.rank)
    return tuple(_select(b, x, ax, i) for i in range(x.type.shape[ax]))


@rule("aten.index_select.default")
def _index_select(b, x, dim, index):
    return b.emit("take", [x, index], {"axis": _axis(dim, x.type.rank)})


@rule("aten.embedding.default")
def _embedding(b, w, indices, padding_idx=-1, *_):
    return b.emit("take", [w, indices], {"axis": 0})


# -- reductions and attention -------------------------------------------------------------


@rule("aten.softmax.int", "aten._softmax.default", "aten._safe_softmax.default")
def _softmax(b, x, dim, dtype_or_half=None):
    """``_safe_softmax`` (torch's attention decomposition) gives zeros, not NaN, where
    every element along ``dim`` is -inf."""
    axis = _axis(dim, x.type.rank)
    y = b.emit("softmax", [x], {"axis": axis})
    if b.node_target == "aten._safe_softmax.default":
        top = b.emit("amax", [x], {"axes": (axis,), "keepdim": True})
        dead = b.emit("eq", [top, b.const(float("-inf"), x.type.dtype)])
        y = b.emit("where", [dead, b.const(0.0, x.type.dtype), y])
    return y


def _reduce_rule(kind):
    def fn(b, x, dims=None, keepdim=False, dtype=None):
        if not dims:
            dims = range(x.type.rank)
        axes = tuple(sorted({_axis(d, x.type.rank) for d in dims}))
        # torch sums bool and integer tensors as i64, and reduces in ``dtype`` when given
        out = from_numpy(dtype) if dtype is not None else (
            "i64" if kind == "sum" and not x.type.dtype.startswith("f") else x.type.dtype)
        if out != x.type.dtype:
            x = b.emit("cast", [x], {"dtype": out})
        return b.emit(kind, [x], {"axes": axes, "keepdim": bool(keepdim)})

    return fn


rule("aten.mean.dim", "aten.mean.default")(_reduce_rule("mean"))
rule("aten.sum.dim_IntList", "aten.sum.default")(_reduce_rule("sum"))
rule("aten.amax.default")(_reduce_rule("amax"))


@rule("aten.linalg_vector_norm.default")
def _vector_norm(b, x, ord=2, dim=None, keepdim=False, dtype=None):
    """ord 2: sqrt(sum(x·x)); ord 1: sum(|x|); ord ∞: amax(|x|)."""
    if ord == 2:
        return b.emit("sqrt", [_reduce_rule("sum")(b, b.emit("mul", [x, x]), dim, keepdim)])
    if ord == 1:
        return _reduce_rule("sum")(b, b.emit("abs", [x]), dim, keepdim)
    if ord == float("inf"):
        return _reduce_rule("amax")(b, b.emit("abs", [x]), dim, keepdim)
    raise TypeRuleError(f"vector_norm: ord {ord} is not supported (2, 1 and inf are)")


@rule("aten.scaled_dot_product_attention.default")
def _sdpa(b, q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    ops = [q, k, v] + ([attn_mask] if attn_mask is not None else [])
    return b.emit("attention", ops, {"causal": bool(is_causal), "scale": None if scale is None else float(scale)})


# -- masks and indexing built from constants (e.g. transformers' attention masks) ---------
#
# Hugging Face models build their attention masks from arange/ones buffers with
# comparisons, `&` and advanced indexing.  Whatever depends only on params and
# constants is evaluated at trace time into a param; `x & all-true` is x
# (broadcast); `x[const_idx, ...]` becomes a reshape + take.  Anything else that
# would need a comparison or a logical op at run time is refused clearly.


@rule("aten.to.device")
def _to_device(b, x, device=None, dtype=None, *rest, **kw):
    return _to(b, x, dtype)


def _new_filled(fill):
    def fn(b, x, size, *rest, dtype=None, **kw):
        if fill is None:  # new_full(x, size, fill_value)
            value = rest[0] if rest else kw["fill_value"]
        else:
            value = fill
        np_dtype = np.dtype(str(dtype).replace("torch.", "")) if dtype is not None else None
        from sliver.ir.types import to_numpy

        data = np.full(tuple(size), value, dtype=np_dtype if np_dtype is not None else to_numpy(x.type.dtype))
        return b.m.add_param(b.m.fresh_name(b.hint), data)

    return fn


rule("aten.new_ones.default")(_new_filled(1))
rule("aten.new_zeros.default")(_new_filled(0))
rule("aten.new_full.default")(_new_filled(None))

def _all_constant(b, *args) -> bool:
    """Whether every tensor among ``args`` is computed from params and constants alone."""
    return all(not isinstance(a, Value) or constant_data(b, a) is not None for a in args)


for _name in ("ge", "gt", "le", "lt", "eq", "ne"):
    def _compare_rule(b, x, y, _name=_name):
        """Folded into a param when both sides are constant (masks built from aranges),
        else a run-time comparison (masks built from the inputs)."""
        import torch

        if _all_constant(b, x, y):
            return fold_constant(b, f"comparison {_name}", getattr(torch, _name), x, y)
        return b.emit(_name, list(_binary_operands(b, x, y)))

    rule(f"aten.{_name}.Scalar", f"aten.{_name}.Tensor")(_compare_rule)


@rule("aten.where.self", "aten.where.ScalarOther", "aten.where.ScalarSelf", "aten.where.Scalar")
def _where(b, cond, x, y):
    """Folded when everything is constant; with a constant all-true or all-false
    condition (T5's relative-position buckets), the branch it picks; else a `where` op."""
    import torch

    if _all_constant(b, cond, x, y):
        return fold_constant(b, "where", lambda p, q, r: torch.where(p, torch.as_tensor(q), torch.as_tensor(r)),
                             cond, x, y)
    c = constant_data(b, cond)
    if c is not None and (c.all() or not c.any()):
        pick, other = (x, y) if c.all() else (y, x)
        if isinstance(pick, Value):
            shape = broadcast_shapes("where", c.shape, pick.type.shape,
                                     other.type.shape if isinstance(other, Value) else ())
            return _expand(b, pick, shape)
    if cond.type.dtype != "bool":
        cond = b.emit("ne", [cond, b.tensor_or_scalar(0, cond)])
    if not isinstance(x, Value) and not isinstance(y, Value):  # two scalars: torch's default types
        kinds = {type(x), type(y)}
        x = b.const(x, "f32" if float in kinds else "bool" if kinds == {bool} else "i64")
    x, y = _binary_operands(b, x, y)
    return b.emit("where", [cond, x, y])


@rule("aten.masked_fill.Scalar", "aten.masked_fill.Tensor")
def _masked_fill(b, x, mask, value):
    """``x.masked_fill(mask, value)`` is ``where(mask, value, x)`` with ``x``'s shape and
    dtype (the mask broadcasts to ``x``; the value is cast to ``x``'s dtype).  Folded
    when everything is constant (Swin's shifted-window attention mask is built from
    slices of a constant image mask)."""
    if isinstance(value, Value) and value.type.shape != ():
        raise TypeRuleError(f"masked_fill needs a scalar or 0-dim value, got shape {list(value.type.shape)}")
    if _all_constant(b, x, mask, value):
        return fold_constant(b, "masked_fill", lambda p, m, v: p.masked_fill(m, v), x, mask, value)
    if tuple(broadcast_shapes("masked_fill", mask.type.shape, x.type.shape)) != tuple(x.type.shape):
        raise TypeRuleError(f"masked_fill: the mask's shape {list(mask.type.shape)} does not broadcast to the "
                            f"input's {list(x.type.shape)}")
    value = b.tensor_or_scalar(value, x)
    return _where(b, mask, value, x)


def _logic_rule(kind: str):
    """``&``, ``|``, ``^`` of bool tensors (torch's bitwise ops on bools are the logical
    ones); folded when both sides are constant, simplified against a constant all-true or
    all-false side, else a run-time op."""
    # the result when a constant side is all true / all false: the other side ("x"), its negation, or a constant
    absorb = {"logical_and": {True: "x", False: False}, "logical_or": {True: True, False: "x"},
              "logical_xor": {True: "not x", False: "x"}}[kind]

    def fn(b, x, y):
        import torch

        if _all_constant(b, x, y):
            fold = getattr(torch, kind)
            return fold_constant(b, kind.replace("_", " "), lambda p, q: fold(torch.as_tensor(p), torch.as_tensor(q)),
                                 x, y)
        x, y = (y, x) if not isinstance(x, Value) or constant_data(b, x) is not None else (x, y)
        if isinstance(y, bool):
            y = b.const(y, "bool")
        if not isinstance(y, Value) or x.type.dtype != "bool" or y.type.dtype != "bool":
            other = y.type if isinstance(y, Value) else repr(y)
            raise TypeRuleError(f"bitwise operations on integer tensors ({x.type}, {other}) are not supported; "
                                "only on bool tensors (masks)")
        c = constant_data(b, y)
        if c is not None and (c.all() or not c.any()):
            shape = broadcast_shapes(kind, c.shape, x.type.shape)
            result = absorb[bool(c.all())]
            if result == "x":
                return _expand(b, x, shape)
            if result == "not x":
                return _expand(b, b.emit("logical_not", [x]), shape)
            return b.m.add_param(b.m.fresh_name(b.hint), np.full(shape, result, np.bool_))
        return b.emit(kind, [x, y])

    return fn


rule("aten.__and__.Tensor", "aten.bitwise_and.Tensor", "aten.logical_and.default", "aten.__and__.Scalar",
     "aten.bitwise_and.Scalar")(_logic_rule("logical_and"))
rule("aten.__or__.Tensor", "aten.bitwise_or.Tensor", "aten.logical_or.default", "aten.__or__.Scalar",
     "aten.bitwise_or.Scalar")(_logic_rule("logical_or"))
rule("aten.__xor__.Tensor", "aten.bitwise_xor.Tensor", "aten.logical_xor.default")(_logic_rule("logical_xor"))


@rule("aten.bitwise_not.default", "aten.logical_not.default")
def _not(b, x):
    import torch

    if constant_data(b, x) is not None:
        return fold_constant(b, "logical not", torch.logical_not, x)
    if x.type.dtype != "bool":
        if b.node_target.startswith("aten.bitwise_not"):
            raise TypeRuleError(f"bitwise not of an integer tensor ({x.type}) is not supported; only of bool masks")
        return b.emit("eq", [x, b.tensor_or_scalar(0, x)])
    return b.emit("logical_not", [x])


@rule("aten.diff.default")
def _diff(b, x, n=1, dim=-1, prepend=None, append=None):
    """x[1:] - x[:-1] along ``dim``, ``n`` times, after joining ``prepend`` and ``append``
    (bool tensors: x[1:] != x[:-1], as torch)."""
    import torch

    if _all_constant(b, x, prepend, append):
        return fold_constant(b, "diff", lambda *a: torch.diff(*a), x, n, dim, prepend, append)
    axis = _axis(dim, x.type.rank)
    parts = [p for p in (prepend, x, append) if p is not None]
    if len(parts) > 1:
        x = _cat(b, [p if p.type.dtype == x.type.dtype else b.emit("cast", [p], {"dtype": x.type.dtype})
                     for p in parts], axis)
    for _ in range(n):
        size = x.type.shape[axis]
        hi = _slice(b, x, axis, 1, size)
        lo = _slice(b, x, axis, 0, max(size - 1, 0))
        x = b.emit("ne" if x.type.dtype == "bool" else "sub", [hi, lo])
    return x


@rule("aten.cumsum.default")
def _cumsum(b, x, dim, dtype=None):
    """torch sums bool and integer tensors as i64 (unless ``dtype`` says otherwise)."""
    import torch

    out = from_numpy(dtype) if dtype is not None else ("i64" if not x.type.dtype.startswith("f") else x.type.dtype)
    if constant_data(b, x) is not None:
        return fold_constant(b, "cumsum", lambda t: torch.cumsum(t, dim, dtype=dtype), x)
    if x.type.dtype != out:
        x = b.emit("cast", [x], {"dtype": out})
    return b.emit("cumsum", [x], {"axis": _axis(dim, x.type.rank)})


@rule("aten.gather.default")
def _gather(b, x, dim, index, sparse_grad=False):
    import torch

    if _all_constant(b, x, index):
        return fold_constant(b, "gather", torch.gather, x, dim, index)
    return b.emit("gather", [x, index], {"axis": _axis(dim, x.type.rank)})


def _arg_rule(kind):
    def fn(b, x, dim=None, keepdim=False):
        import torch

        if constant_data(b, x) is not None:
            return fold_constant(b, kind, getattr(torch, kind), x, dim, keepdim)
        if dim is None:  # over all elements, as one flat axis
            y = b.emit(kind, [_reshape_to(b, x, (x.type.numel,))], {"axis": 0, "keepdim": False})
            return _reshape_to(b, y, (1,) * x.type.rank) if keepdim else y
        return b.emit(kind, [x], {"axis": _axis(dim, x.type.rank), "keepdim": bool(keepdim)})

    return fn


@rule("aten.sort.default", "aten.sort.stable")
def _sort(b, x, *args, dim=-1, descending=False, stable=None):
    """(values, indices); sliver sorts stably (equal elements keep their order)."""
    if b.node_target == "aten.sort.default":
        dim, descending = (list(args) + [dim, descending][len(args):])[:2]
    return _sorted(b, x, _axis(dim, x.type.rank), bool(descending))


def _sorted(b, x, axis: int, descending: bool):
    attrs = {"axis": axis, "descending": descending}
    return b.emit("sort", [x], attrs), b.emit("argsort", [x], attrs)


@rule("aten.argsort.default", "aten.argsort.stable")
def _argsort(b, x, *args, dim=-1, descending=False, stable=None):
    if b.node_target == "aten.argsort.default":
        dim, descending = (list(args) + [dim, descending][len(args):])[:2]
    return b.emit("argsort", [x], {"axis": _axis(dim, x.type.rank), "descending": bool(descending)})


@rule("aten.topk.default")
def _topk(b, x, k, dim=-1, largest=True, sorted=True):
    """The first k of a stable sort: (values, indices), the k largest (or smallest) in order."""
    axis = _axis(dim, x.type.rank)
    values, indices = _sorted(b, x, axis, bool(largest))
    return _slice(b, values, axis, 0, k), _slice(b, indices, axis, 0, k)


rule("aten.argmax.default")(_arg_rule("argmax"))
rule("aten.argmin.default")(_arg_rule("argmin"))


@rule("aten.index.Tensor")
def _index(b, x, indices):
    """``x[..., i, j, ...]`` with adjacent integer index tensors (constant or computed,
    e.g. CLIP's pooler picks each sequence's end token by an argmax): one flat index
    ``i * d_j + j`` (negative indices wrapped), then a take along the flattened axes."""
    if _all_constant(b, x, *indices):
        return fold_constant(b, "indexing", lambda t, *ix: t[tuple(slice(None) if i is None else i for i in ix)],
                             x, *indices)
    k = 0
    while k < len(indices) and indices[k] is None:
        k += 1
    tail = list(indices[k:])
    if any(i is None or i.type.dtype not in ("i64", "i32", "i16", "i8", "u8") for i in tail):
        raise TypeRuleError("indexing is supported with adjacent integer index tensors only (no bool masks, which "
                            "select a data-dependent number of elements, and no gaps between index tensors)")
    dims = x.type.shape[k:k + len(tail)]
    consts = [constant_data(b, i) for i in tail]
    if all(c is not None for c in consts):
        arrays = np.broadcast_arrays(*[c.astype(np.int64) for c in consts])
        flat = np.zeros(arrays[0].shape, np.int64)
        for a, d in zip(arrays, dims):
            flat = flat * d + a % d
        where = b.m.add_param(b.m.fresh_name(f"{b.hint}_index"), np.ascontiguousarray(flat))
    else:
        where = None
        for i, c, d in zip(tail, consts, dims):
            if c is not None:
                i = b.m.add_param(b.m.fresh_name(f"{b.hint}_index"), np.ascontiguousarray(c.astype(np.int64) % d))
            else:
                if i.type.dtype != "i64":
                    i = b.emit("cast", [i], {"dtype": "i64"})
                negative = b.emit("lt", [i, b.const(0, "i64")])
                i = b.emit("where", [negative, b.emit("add", [i, b.const(d, "i64")]), i])
            where = i if where is None else b.emit("add", [b.emit("mul", [where, b.const(d, "i64")]), i])
    xf = _reshape_to(b, x, x.type.shape[:k] + (math.prod(dims),) + x.type.shape[k + len(tail):])
    return b.emit("take", [xf, where], {"axis": k})


# -- in-place writes into fresh tensors (BEiT's relative position index) ---------------------
#
# A model that writes into a tensor it just made (``idx = zeros(...); idx[1:, 1:] = ...``)
# is functionalized first (frontend/driver.py): its writes become the scatter ops below,
# usually on constants (folded now), else joins of slices.


@rule("aten.stack.default")
def _stack(b, xs, dim=0):
    axis = dim % (xs[0].type.rank + 1)
    return _cat(b, [_unsqueeze(b, x, axis) for x in xs], axis)


@rule("aten.meshgrid.indexing", "aten.meshgrid.default")
def _meshgrid(b, xs, indexing="ij"):
    """Each 1-D tensor broadcast over the grid (``xy``: the first two axes swapped)."""
    sizes = [x.type.numel for x in xs]
    xy = indexing == "xy" and len(xs) >= 2
    shape = ([sizes[1], sizes[0]] + sizes[2:]) if xy else sizes
    out = []
    for i, x in enumerate(xs):
        at = {0: 1, 1: 0}.get(i, i) if xy else i
        view = [1] * len(xs)
        view[at] = sizes[i]
        out.append(_expand(b, _reshape_to(b, x, view), shape))
    return tuple(out)


@rule("aten.slice_scatter.default")
def _slice_scatter(b, x, src, dim=0, start=None, end=None, step=1):
    """x with x[..., start:end:step, ...] replaced by src."""
    import torch

    if _all_constant(b, x, src):
        return fold_constant(b, "slice_scatter", torch.slice_scatter, x, src, dim, start, end, step)
    from sliver.ir.ops import slice_bounds

    axis = _axis(dim, x.type.rank)
    n = x.type.shape[axis]
    s, e, count = slice_bounds(n, 0 if start is None else start, n if end is None else end, step)
    if src.type.dtype != x.type.dtype:
        src = b.emit("cast", [src], {"dtype": x.type.dtype})
    if step != 1 and count > 1:
        raise TypeRuleError("writing a strided slice of a tensor computed from the inputs is not supported")
    parts = [_slice(b, x, axis, 0, s) if s > 0 else None, src, _slice(b, x, axis, s + count, n) if s + count < n else None]
    return _cat(b, [p for p in parts if p is not None], axis)


@rule("aten.select_scatter.default")
def _select_scatter(b, x, src, dim, index):
    import torch

    if _all_constant(b, x, src):
        return fold_constant(b, "select_scatter", torch.select_scatter, x, src, dim, index)
    axis = _axis(dim, x.type.rank)
    index %= x.type.shape[axis]
    return _slice_scatter(b, x, _unsqueeze(b, src, axis), axis, index, index + 1)


@rule("aten.copy.default")
def _copy(b, x, src, non_blocking=False):
    """The functional form of ``x.copy_(src)``: src in x's type and shape."""
    if not isinstance(src, Value):
        return _fill(b, x, src)
    if src.type.dtype != x.type.dtype:
        src = b.emit("cast", [src], {"dtype": x.type.dtype})
    return _expand(b, src, x.type.shape)


@rule("aten.fill.Tensor", "aten.fill.Scalar")
def _fill(b, x, value):
    """A tensor of x's type and shape holding ``value`` (a scalar or a 0-d tensor)."""
    from sliver.ir.types import to_numpy

    data = constant_data(b, value) if isinstance(value, Value) else np.asarray(value)
    if data is not None:
        return b.m.add_param(b.m.fresh_name(b.hint), np.full(x.type.shape, data, to_numpy(x.type.dtype)))
    if value.type.dtype != x.type.dtype:
        value = b.emit("cast", [value], {"dtype": x.type.dtype})
    return _expand(b, _reshape_to(b, value, (1,) * x.type.rank), x.type.shape)


# -- recurrent layers: nn.LSTM, nn.GRU and nn.RNN unrolled over the (fixed) sequence length --------


def _rnn_cell(b, kind, xt, h, c, w_hh, b_hh, w_hr):
    """One time step: ``xt`` is the input's projection (x W_ih^T + b_ih) at this step."""
    hp = b.emit("linear", [h, w_hh] + ([b_hh] if b_hh is not None else []))
    n = h.type.shape[-1] if kind != "lstm" or w_hr is None else w_hr.type.shape[1]
    gates = lambda v, k, count: _slice(b, v, v.type.rank - 1, k * n, (k + 1) * n)  # noqa: E731
    if kind == "lstm":
        g = b.emit("add", [xt, hp])
        i, f = b.emit("sigmoid", [gates(g, 0, 4)]), b.emit("sigmoid", [gates(g, 1, 4)])
        cand, o = b.emit("tanh", [gates(g, 2, 4)]), b.emit("sigmoid", [gates(g, 3, 4)])
        c = b.emit("add", [b.emit("mul", [f, c]), b.emit("mul", [i, cand])])
        h = b.emit("mul", [o, b.emit("tanh", [c])])
        if w_hr is not None:
            h = b.emit("linear", [h, w_hr])
        return h, c
    if kind == "gru":  # r, z, n; n = tanh(x_n + r * (h W_hn^T + b_hn)); h' = (1 - z) * n + z * h
        r = b.emit("sigmoid", [b.emit("add", [gates(xt, 0, 3), gates(hp, 0, 3)])])
        z = b.emit("sigmoid", [b.emit("add", [gates(xt, 1, 3), gates(hp, 1, 3)])])
        cand = b.emit("tanh", [b.emit("add", [gates(xt, 2, 3), b.emit("mul", [r, gates(hp, 2, 3)])])])
        one_minus_z = b.emit("sub", [b.const(1.0, z.type.dtype), z])
        return b.emit("add", [b.emit("mul", [one_minus_z, cand]), b.emit("mul", [z, h])]), None
    return b.emit(kind.removeprefix("rnn_"), [b.emit("add", [xt, hp])]), None  # rnn_tanh, rnn_relu


def _rnn(kind):
    """aten.lstm.input / gru.input / rnn_tanh.input / rnn_relu.input: the layers and
    directions unrolled step by step over the sequence (its length is fixed at trace
    time); each layer's input projection is one linear over all steps."""

    def fn(b, x, hx, params, has_biases, num_layers, dropout, train, bidirectional, batch_first):
        dirs = 2 if bidirectional else 1
        unbatched = x.type.rank == 2
        if unbatched:  # (L, H_in), whatever batch_first says
            x = _reshape_to(b, x, (x.type.shape[0], 1, x.type.shape[1]))
        elif batch_first:
            x = _permute(b, x, (1, 0, 2))
        states = list(hx) if kind == "lstm" else [hx]
        if unbatched:
            states = [_reshape_to(b, s, (s.type.shape[0], 1, s.type.shape[1])) for s in states]
        per = len(params) // (num_layers * dirs)
        steps = x.type.shape[0]
        h_n, c_n = [], []
        for layer in range(num_layers):
            outs = []
            for d in range(dirs):
                w = params[(layer * dirs + d) * per:(layer * dirs + d + 1) * per]
                w_ih, w_hh = w[0], w[1]
                b_ih, b_hh = (w[2], w[3]) if has_biases else (None, None)
                w_hr = w[-1] if per - 2 - 2 * bool(has_biases) == 1 else None
                xp = b.emit("linear", [x, w_ih] + ([b_ih] if b_ih is not None else []))
                h = _select(b, states[0], 0, layer * dirs + d)
                c = _select(b, states[1], 0, layer * dirs + d) if kind == "lstm" else None
                ys = [None] * steps
                for t in (range(steps) if d == 0 else reversed(range(steps))):
                    h, c = _rnn_cell(b, kind, _select(b, xp, 0, t), h, c, w_hh, b_hh, w_hr)
                    ys[t] = _reshape_to(b, h, (1,) + h.type.shape)
                outs.append(_cat(b, ys, 0))
                h_n.append(_reshape_to(b, h, (1,) + h.type.shape))
                if c is not None:
                    c_n.append(_reshape_to(b, c, (1,) + c.type.shape))
            x = _cat(b, outs, 2)
        results = [x, _cat(b, h_n, 0)] + ([_cat(b, c_n, 0)] if kind == "lstm" else [])
        if unbatched:
            return tuple(_reshape_to(b, r, (r.type.shape[0], r.type.shape[2])) for r in results)
        if batch_first:
            results[0] = _permute(b, results[0], (1, 0, 2))
        return tuple(results)

    return fn


rule("aten.lstm.input")(_rnn("lstm"))
rule("aten.gru.input")(_rnn("gru"))
rule("aten.rnn_tanh.input")(_rnn("rnn_tanh"))
rule("aten.rnn_relu.input")(_rnn("rnn_relu"))
