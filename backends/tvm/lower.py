"""sliver IR → Relax, one lowering rule per op (like TVM's ``register_legalize``).

Built with ``relax.BlockBuilder`` from sliver's own IR, never by re-tracing the
torch model.  Params become Relax constants; the compiled library carries them.
"""

from __future__ import annotations

import math

import numpy as np

from sliver.backends.tvm import lowbit as _lowbit  # noqa: F401 - registers quantize, qconv2d, …
from sliver.backends.tvm import wq_linear as _wq_linear  # noqa: F401 - registers wq_linear
from sliver.backends.tvm.padding import ChannelPadding, channel_padding
from sliver.backends.tvm.provenance import var_name
from sliver.backends.tvm.registry import (LOWERING, LowerContext, _channel_vector, _channels, _const, _dtype, _prim,
                                          _R, _scalar, _shape, lowers, unsupported_ops)
from sliver.common.errors import SliverError

# -- elementwise ---------------------------------------------------------------

_UNARY = {
    "relu": lambda R: R.nn.relu, "silu": lambda R: R.nn.silu, "sigmoid": lambda R: R.sigmoid,
    "tanh": lambda R: R.tanh, "exp": lambda R: R.exp, "log": lambda R: R.log, "sqrt": lambda R: R.sqrt,
    "rsqrt": lambda R: R.rsqrt, "erf": lambda R: R.erf, "sin": lambda R: R.sin, "cos": lambda R: R.cos,
    "neg": lambda R: R.negative, "abs": lambda R: R.abs,
}
_BINARY = {
    "add": lambda R: R.add, "sub": lambda R: R.subtract, "mul": lambda R: R.multiply, "div": lambda R: R.divide,
    "pow": lambda R: R.power, "maximum": lambda R: R.maximum, "minimum": lambda R: R.minimum,
}

for _k, _f in _UNARY.items():
    lowers(_k)(lambda bb, op, x, _f=_f: bb.emit(_f(_R())(x)))
for _k, _f in _BINARY.items():
    lowers(_k)(lambda bb, op, a, b, _f=_f: bb.emit(_f(_R())(a, b)))


@lowers("gelu")
def _gelu(bb, op, x):
    R = _R()
    return bb.emit(R.nn.gelu_tanh(x) if op.attrs["approximate"] == "tanh" else R.nn.gelu(x))


def _hardsigmoid(bb, x):
    R = _R()
    shifted = bb.emit(R.add(x, _scalar(3.0, x)))
    clipped = bb.emit(R.clip(shifted, 0.0, 6.0))
    return bb.emit(R.divide(clipped, _scalar(6.0, x)))


@lowers("leaky_relu")
def _leaky_relu(bb, op, x):
    return bb.emit(_R().nn.leakyrelu(x, float(op.attrs["negative_slope"])))


@lowers("hardsigmoid")
def _hardsigmoid_rule(bb, op, x):
    return _hardsigmoid(bb, x)


@lowers("hardswish")
def _hardswish(bb, op, x):
    return bb.emit(_R().multiply(x, _hardsigmoid(bb, x)))


@lowers("clamp")
def _clamp(bb, op, x):
    R = _R()
    lo, hi = op.attrs["min"], op.attrs["max"]
    if lo is not None and hi is not None:
        return bb.emit(R.clip(x, lo, hi))
    if lo is not None:
        x = bb.emit(R.maximum(x, _scalar(lo, x)))
    if hi is not None:
        x = bb.emit(R.minimum(x, _scalar(hi, x)))
    return x


_COMPARE = {"eq": "equal", "ne": "not_equal", "lt": "less", "le": "less_equal", "gt": "greater",
            "ge": "greater_equal", "logical_and": "logical_and", "logical_or": "logical_or",
            "logical_xor": "logical_xor"}
for _k, _f in _COMPARE.items():
    lowers(_k)(lambda bb, op, a, b, _f=_f: bb.emit(getattr(_R(), _f)(a, b)))


@lowers("logical_not")
def _logical_not(bb, op, x):
    return bb.emit(_R().logical_not(x))


@lowers("where")
def _where(bb, op, cond, a, b):
    return bb.emit(_R().where(cond, a, b))


@lowers("cumsum")
def _cumsum(bb, op, x):
    return bb.emit(_R().cumsum(x, axis=op.attrs["axis"], dtype=_dtype(op.operands[0].type.dtype)))


@lowers("cast")
def _cast(bb, op, x):
    return bb.emit(_R().astype(x, _dtype(op.attrs["dtype"])))


@lowers("constant")
def _constant(bb, op):
    from sliver.ir.types import to_numpy

    a = op.attrs
    if not op.result.type.static:  # a symbolic shape: filled at run time
        from tvm import relax

        return bb.emit(_R().full(_shape(bb, a["shape"]), relax.const(a["value"], _dtype(a["dtype"])),
                                 _dtype(a["dtype"])))
    return _const(np.full(a["shape"], a["value"], dtype=to_numpy(a["dtype"])))


# -- convolution and matrix products ------------------------------------------------


@lowers("conv2d")
def _conv2d(bb, op, x, w, b=None):
    """A conv2d (+ bias).  A dense or depthwise conv whose output channel count is
    not a multiple of :data:`CHANNEL_MULTIPLE` (pruned layers: 45, 47, 89 channels)
    is computed with zero filters appended (:func:`channel_padding`): the schedules vectorize over output
    channels, and a count with no factor of 4 leaves them scalar loops (a 47-channel
    3x3 conv ran ~20x slower than a 48-channel one).  The extra channels stay on the
    result (zero: zero filters, zero bias): :func:`_to_relax` carries them through
    channel-wise consumers and slices them off only where a consumer needs the real
    count (see :func:`_padding_kept`).  A conv reading such a padded input gets zero
    weights for the extra input channels (a depthwise conv: zero filters for them,
    so its own extra outputs are zero again).  A depthwise conv whose input is not
    padded pads it with a zero channel ``pad``, which the backend merges into the
    conv's spatial padding copy (:mod:`~sliver.backends.tvm.schedules.channel_select`)."""
    from tvm import relax

    R = _R()
    a = op.attrs
    n_out, per_group = op.operands[1].type.shape[:2]
    n_in = op.operands[0].type.shape[1]
    depthwise = a["groups"] == n_out == n_in and per_group == 1
    groups = a["groups"]
    dtype = np.dtype(_dtype(op.operands[1].type.dtype))
    have = _channels(x)  # > n_in when the producer kept its padding channels
    if have > n_in and not (groups == 1 or depthwise):
        raise SliverError(f"internal error: grouped conv2d %{op.results[0].name} reached with padded input")
    w_shape = list(op.operands[1].type.shape)
    if have > n_in and groups == 1:  # zero weights for the input's padding channels
        shape = (n_out, have - n_in) + tuple(w_shape[2:])
        w = bb.emit(R.concat(relax.Tuple([w, relax.const(np.zeros(shape, dtype))]), axis=1))
        w_shape[1] = have
    if depthwise:
        extra = have - n_out if have > n_in else channel_padding(n_out)
    else:
        extra = channel_padding(n_out) if groups == 1 else 0
    if extra:
        shape = (extra,) + tuple(w_shape[1:])
        w = bb.emit(R.concat(relax.Tuple([w, relax.const(np.zeros(shape, dtype))]), axis=0))
        if b is not None:
            b = bb.emit(R.concat(relax.Tuple([b, relax.const(np.zeros(extra, dtype))]), axis=0))
        if depthwise:
            if have == n_in:
                x = bb.emit(R.nn.pad(x, [0, 0, 0, extra, 0, 0, 0, 0]))
            groups += extra
    y = bb.emit(R.nn.conv2d(x, w, strides=a["stride"], padding=a["padding"], dilation=a["dilation"],
                            groups=groups))
    if b is not None:
        y = bb.emit(R.add(y, _channel_vector(bb, b, 4)))
    return y


@lowers("conv_transpose2d")
def _conv_transpose2d(bb, op, x, w, b=None):
    a = op.attrs
    y = bb.emit(_R().nn.conv2d_transpose(x, w, strides=a["stride"], padding=a["padding"],
                                         output_padding=a["output_padding"], dilation=a["dilation"],
                                         groups=a["groups"], data_layout="NCHW", kernel_layout="IOHW"))
    if b is not None:
        y = bb.emit(_R().add(y, _channel_vector(bb, b, 4)))
    return y


@lowers("linear")
def _linear(bb, op, x, w, b=None):
    from tvm import relax

    have, n_in = int(x.ty.shape[-1]), op.operands[0].type.shape[-1]
    if have > n_in:  # pooled features with padding channels (see _conv2d): zero weights for them
        zeros = np.zeros((op.operands[1].type.shape[0], have - n_in), np.dtype(_dtype(op.operands[1].type.dtype)))
        w = bb.emit(_R().concat(relax.Tuple([w, relax.const(zeros)]), axis=1))
    return bb.emit(_R().linear(x, w, b))


@lowers("matmul")
def _matmul(bb, op, a, b):
    return bb.emit(_R().matmul(a, b))


# -- quantization ------------------------------------------------------------------


@lowers("fake_quant")
def _fake_quant(bb, op, x, scale, zero_point):
    """Float simulation, torch's kernel step by step: q = clip(round(x * (1 / scale)) + zp,
    qmin, qmax); y = (q - zp) * scale.  TVM's round is LLVM's nearbyint (half to even), and
    the reciprocal is taken in float32 like torch's ``1.0f / scale``; so this matches
    torch bit for bit.  (The integer ops quantize/qconv2d/... are lowered in lowbit.py.)"""
    R = _R()
    a = op.attrs
    t = op.operands[0].type
    if a["axis"] is not None:  # [C] → broadcast along axis
        ax = a["axis"] % t.rank
        shape = [1] * t.rank
        shape[ax] = -1
        scale = bb.emit(R.reshape(scale, shape))
        zero_point = bb.emit(R.reshape(zero_point, shape))
    dt = _dtype(t.dtype)
    scale = bb.emit(R.astype(scale, "float32"))
    inv = bb.emit(R.divide(_scalar(1.0, scale), scale))
    zp = bb.emit(R.astype(zero_point, dt))
    if dt != "float32":
        inv, scale = bb.emit(R.astype(inv, dt)), bb.emit(R.astype(scale, dt))
    q = bb.emit(R.add(R.round(R.multiply(x, inv)), zp))
    # torch's kernels cast the rounded value to an integer before clamping: NaN lands on qmin, and so does
    # +Inf per channel (per tensor +Inf clamps to qmax); the clip itself keeps NaN (IEEE max/min)
    kept = R.isfinite(q) if a["axis"] is not None else R.logical_not(R.isnan(q))
    q = bb.emit(R.where(kept, R.clip(q, float(a["qmin"]), float(a["qmax"])), _scalar(float(a["qmin"]), q)))
    return bb.emit(R.multiply(R.subtract(q, zp), scale))


# -- normalization ----------------------------------------------------------------


@lowers("batch_norm")
def _batch_norm(bb, op, x, mean, var, w=None, b=None):
    """(x - mean) * (w / sqrt(var + eps)) + b, as a per-channel scale and shift."""
    R = _R()
    rank = op.operands[0].type.rank
    scale = bb.emit(R.rsqrt(R.add(var, _scalar(op.attrs["eps"], var))))
    if w is not None:
        scale = bb.emit(R.multiply(scale, w))
    shift = bb.emit(R.negative(R.multiply(mean, scale)))
    if b is not None:
        shift = bb.emit(R.add(shift, b))
    y = bb.emit(R.multiply(x, _channel_vector(bb, scale, rank)))
    return bb.emit(R.add(y, _channel_vector(bb, shift, rank)))


@lowers("layer_norm")
def _layer_norm(bb, op, x, w=None, b=None):
    t = op.operands[0].type
    n = op.attrs["axes"]
    shape = t.shape[-n:]
    from sliver.ir.types import to_numpy

    dt = to_numpy(t.dtype)
    w = w if w is not None else _const(np.ones(shape, dt))
    b = b if b is not None else _const(np.zeros(shape, dt))
    axes = list(range(t.rank - n, t.rank))
    return bb.emit(_R().nn.layer_norm(x, w, b, axes=axes, epsilon=op.attrs["eps"]))


@lowers("rms_norm")
def _rms_norm(bb, op, x, w=None):
    from sliver.ir.types import to_numpy

    t = op.operands[0].type
    n = op.attrs["axes"]
    w = w if w is not None else _const(np.ones(t.shape[-n:], to_numpy(t.dtype)))
    return bb.emit(_R().nn.rms_norm(x, w, axes=list(range(t.rank - n, t.rank)), epsilon=op.attrs["eps"]))


# -- pooling --------------------------------------------------------------------


@lowers("max_pool2d")
def _max_pool(bb, op, x):
    a = op.attrs
    return bb.emit(_R().nn.max_pool2d(x, a["kernel"], a["stride"], a["padding"], a["dilation"], a["ceil_mode"]))


@lowers("avg_pool2d")
def _avg_pool(bb, op, x):
    a = op.attrs
    return bb.emit(_R().nn.avg_pool2d(x, a["kernel"], a["stride"], a["padding"], (1, 1), a["ceil_mode"],
                                      a["count_include_pad"]))


@lowers("adaptive_avg_pool2d")
def _adaptive(bb, op, x):
    R = _R()
    out = op.attrs["output_size"]
    if tuple(out) == (1, 1):  # global pooling: a plain mean lowers to a simple reduction
        return bb.emit(R.mean(x, axis=[2, 3], keepdims=True))
    return bb.emit(R.nn.adaptive_avg_pool2d(x, out))


# -- shape and data movement ------------------------------------------------------------


@lowers("concat")
def _concat(bb, op, *xs):
    from tvm import relax

    return bb.emit(_R().concat(relax.Tuple(list(xs)), axis=op.attrs["axis"]))


@lowers("slice")
def _slice(bb, op, x):
    a = op.attrs
    return bb.emit(_R().strided_slice(x, [a["axis"]], [_prim(bb, a["start"])], [_prim(bb, a["end"])], [a["step"]],
                                      assume_inbound=True))


@lowers("take")
def _take(bb, op, x, idx):
    return bb.emit(_R().take(x, idx, axis=op.attrs["axis"], mode="clip"))  # never read out of bounds


@lowers("gather")
def _gather(bb, op, x, idx):
    return bb.emit(_R().gather_elements(x, idx, axis=op.attrs["axis"]))


@lowers("reshape")
def _reshape(bb, op, x):
    return bb.emit(_R().reshape(x, _shape(bb, op.attrs["shape"])))


@lowers("permute")
def _permute(bb, op, x):
    return bb.emit(_R().permute_dims(x, list(op.attrs["dims"])))


@lowers("expand")
def _expand(bb, op, x):
    return bb.emit(_R().broadcast_to(x, _shape(bb, op.attrs["shape"])))


# -- reductions and attention -------------------------------------------------------------


@lowers("softmax")
def _softmax(bb, op, x):
    return bb.emit(_R().nn.softmax(x, axis=op.attrs["axis"]))


@lowers("mean")
def _mean(bb, op, x):
    return bb.emit(_R().mean(x, axis=list(op.attrs["axes"]), keepdims=op.attrs["keepdim"]))


@lowers("sum")
def _sum(bb, op, x):
    return bb.emit(_R().sum(x, axis=list(op.attrs["axes"]), keepdims=op.attrs["keepdim"]))


@lowers("amax")
def _amax(bb, op, x):
    return bb.emit(_R().max(x, axis=list(op.attrs["axes"]), keepdims=op.attrs["keepdim"]))


@lowers("argmax", "argmin")
def _arg(bb, op, x):
    fn = _R().argmax if op.kind == "argmax" else _R().argmin
    return bb.emit(fn(x, axis=op.attrs["axis"], keepdims=op.attrs["keepdim"]))


def _sorted_order(bb, op, x):
    """(x with the sorted axis last, the stable argsort along it, the permutation back).

    Written in plain Relax ops, because TVM's sort calls ``tvm.contrib.sort``, which the
    TVM runtime on a device does not carry: the rank of element i is the number of elements
    that come before it (smaller, or equal and earlier); the k-th index is the i of rank k.
    Both are [n, n] comparisons per row: fine for the axes models sort (scores, a few
    hundred elements), quadratic for long ones."""
    R = _R()
    t = op.operands[0].type
    axis, n = op.attrs["axis"] % t.rank, t.shape[op.attrs["axis"] % t.rank]
    dims = [d for d in range(t.rank) if d != axis] + [axis]
    back = [dims.index(d) for d in range(t.rank)]
    if dims != list(range(t.rank)):
        x = bb.emit(R.permute_dims(x, dims))
    xi, xj = bb.emit(R.expand_dims(x, [-1])), bb.emit(R.expand_dims(x, [-2]))  # [.., n(i), 1], [.., 1, n(j)]
    ahead = bb.emit((R.greater if op.attrs["descending"] else R.less)(xj, xi))
    earlier = _const(np.tril(np.ones((n, n), bool), -1))  # [i, j]: j < i
    before = bb.emit(R.logical_or(ahead, R.logical_and(R.equal(xj, xi), earlier)))
    rank = bb.emit(R.sum(R.astype(before, "int64"), axis=[-1]))  # [.., n(i)]
    positions = np.arange(n, dtype=np.int64)
    hit = bb.emit(R.equal(R.expand_dims(rank, [-2]), _const(positions.reshape(n, 1))))  # [.., n(k), n(i)]
    order = bb.emit(R.sum(R.where(hit, _const(positions.reshape(1, n)), _const(np.zeros((), np.int64))), axis=[-1]))
    return x, order, back


@lowers("sort")
def _sort(bb, op, x):
    x, order, back = _sorted_order(bb, op, x)
    y = bb.emit(_R().gather_elements(x, order, axis=-1))
    return y if back == list(range(len(back))) else bb.emit(_R().permute_dims(y, back))


@lowers("argsort")
def _argsort(bb, op, x):
    _, order, back = _sorted_order(bb, op, x)
    return order if back == list(range(len(back))) else bb.emit(_R().permute_dims(order, back))


def _constant_behind(bb, expr):
    """The array of the constant ``expr`` is, through broadcasts and reshapes; None if it is none."""
    from tvm import relax
    from tvm.ir.expr import Constant

    views = {"relax.broadcast_to", "relax.reshape", "relax.expand_dims", "relax.permute_dims"}
    while isinstance(expr, relax.Var):
        value = bb.lookup_binding(expr)
        if not (isinstance(value, relax.Call) and getattr(value.op, "name", None) in views):
            return None
        expr = value.args[0]
    return expr.value.numpy() if isinstance(expr, Constant) else None


@lowers("attention")
def _attention(bb, op, q, k, v, mask=None):
    """softmax(q k^T * scale + mask) v, written out in Relax ops on [B, H, S, D].  A constant
    mask that hides nothing (all true, or all zeros added) is left out: ViT-B/16 traces with
    an all-true one, whose where and dead-row check cost 6% of its time."""
    R = _R()
    if mask is not None:
        const = _constant_behind(bb, mask)
        if const is not None and (bool(const.all()) if const.dtype == bool else not np.any(const)):
            mask = None
    qt, kt = op.operands[0].type, op.operands[1].type
    groups = qt.shape[1] // kt.shape[1]
    # grouped key/value heads (query head h reads kv head h // groups): with static
    # shapes the queries of a kv head's group are stacked as rows, [B, kv, groups*L, D]
    # (a reshape: heads are contiguous), so each kv head's keys and values are read as
    # they are instead of repeated to every query head (a copy of the whole KV cache per
    # layer and step in a generating artifact); the scores are viewed back as [B, H, L, S]
    grouped = groups > 1 and qt.static and kt.static and len(qt.shape) == 4
    if grouped:
        B, H, L, D = qt.shape
        q = bb.emit(R.reshape(q, [B, kt.shape[1], groups * L, D]))
    elif groups > 1:
        k = bb.emit(R.repeat(k, groups, axis=1))
        v = bb.emit(R.repeat(v, groups, axis=1))
    scale = op.attrs["scale"] if op.attrs["scale"] is not None else 1.0 / math.sqrt(qt.shape[-1])
    if grouped and groups * L <= D:
        # few query rows (a decode step): (k q^T)^T, transposing the few rows of q and of
        # the scores instead of the whole cache of keys
        scores = bb.emit(R.permute_dims(R.matmul(k, R.permute_dims(q, [0, 1, 3, 2])), [0, 1, 3, 2]))
    else:
        scores = bb.emit(R.matmul(q, R.permute_dims(k, [0, 1, 3, 2])))
    if grouped:
        scores = bb.emit(R.reshape(scores, [B, H, L, kt.shape[-2]]))
    scores = bb.emit(R.multiply(scores, _scalar(scale, scores)))
    if mask is not None:
        if op.operands[3].type.dtype == "bool":
            neg = _scalar(float("-inf"), scores)
            scores = bb.emit(R.where(mask, scores, neg))
        else:
            scores = bb.emit(R.add(scores, mask))
    if op.attrs["causal"] and not (qt.static and kt.static):  # the mask of this run's sizes
        from tvm import relax

        L, S = _prim(bb, qt.shape[-2]), _prim(bb, kt.shape[-2])
        ones = bb.emit(R.full([L, S], relax.const(True, "bool"), "bool"))
        scores = bb.emit(R.where(bb.emit(R.tril(ones)), scores, _scalar(float("-inf"), scores)))
    elif op.attrs["causal"]:
        L, S = qt.shape[-2], kt.shape[-2]
        from sliver.ir.types import to_numpy

        causal = np.where(np.tril(np.ones((L, S), bool)), 0.0, -np.inf).astype(to_numpy(qt.dtype))
        scores = bb.emit(R.add(scores, _const(causal)))
    probs = bb.emit(R.nn.softmax(scores, axis=-1))
    if mask is not None:  # a row the mask hides entirely: zeros, as torch (softmax would give NaN)
        dead = bb.emit(R.equal(R.max(scores, axis=-1, keepdims=True), _scalar(float("-inf"), scores)))
        probs = bb.emit(R.where(dead, _scalar(0.0, probs), probs))
    if grouped:
        probs = bb.emit(R.reshape(probs, [B, kt.shape[1], groups * L, kt.shape[-2]]))
        out = bb.emit(R.matmul(probs, v))
        return bb.emit(R.reshape(out, [B, H, L, op.operands[2].type.shape[-1]]))
    return bb.emit(R.matmul(probs, v))


# -- the module ---------------------------------------------------------------------------


class _NamedEmitter:
    """The BlockBuilder a lowering rule sees: ``emit`` and ``emit_te`` name vars after the op
    (:func:`~sliver.backends.tvm.provenance.var_name`); ``context`` is the
    :class:`LowerContext` the rule may consult and record its choices in."""

    def __init__(self, bb, name: str, context: "LowerContext"):
        self._bb, self._name, self.context = bb, name, context

    def emit(self, expr, name_hint: str = ""):
        return self._bb.emit(self._bind_nested(expr), name_hint=name_hint or self._name)

    def emit_te(self, func, *args, **kwargs):
        kwargs.setdefault("name_hint", self._name)
        return self._bb.emit_te(func, *args, **kwargs)

    def _bind_nested(self, expr):
        """Emit nested calls first, under the op's name (Relax would name them ``lv``)."""
        from tvm import relax

        def has_call(e) -> bool:
            return isinstance(e, relax.Call) or (isinstance(e, relax.Tuple) and any(map(has_call, e.fields)))

        def bind(e):
            if isinstance(e, relax.Call):
                return self.emit(e)
            return relax.Tuple([bind(f) for f in e.fields]) if has_call(e) else e

        if isinstance(expr, relax.Call) and any(map(has_call, expr.args)):
            return relax.Call(expr.op, [bind(a) for a in expr.args], expr.attrs, expr.ty_args, expr.span)
        return expr

    def __getattr__(self, attr):
        return getattr(self._bb, attr)




def to_relax(module, context: LowerContext | None = None):
    """Build a Relax IRModule whose ``main`` computes ``module``; rules see ``context``
    (``bb.context``) and record their choices in it."""
    from sliver.backends.tvm.targets import host_target

    context = context if context is not None else LowerContext()
    if context.target is None:
        context.target = host_target()
    return _to_relax(module, context)


def _to_relax(module, context: LowerContext):
    from tvm import relax

    missing = unsupported_ops(module)
    if missing:
        raise SliverError(f"the TVM backend has no lowering for: {', '.join(missing)}")
    from tvm import tirx

    from sliver.backends.tvm.registry import prim_expr

    bb = relax.BlockBuilder()
    dims = module.dim_vars()  # symbolic dimensions: TIR shape variables with their ranges
    context.tir_vars = {v.name: tirx.Var(v.name, "int64") for v in dims}
    params = [relax.Var(v.name, relax.TensorType([prim_expr(d, context.tir_vars) if not isinstance(d, int) else d
                                                  for d in v.type.shape], _dtype(v.type.dtype)))
              for v in module.inputs]
    env = {id(v): p for v, p in zip(module.inputs, params)}
    padding = ChannelPadding(module, env)
    attrs = {"tir_var_upper_bound": {v.name: v.hi for v in dims},
             "tir_non_negative_var": [v.name for v in dims]} if dims else None
    with bb.function("main", params, attrs=attrs):
        with bb.dataflow():
            for index, op in enumerate(module.ops):
                if op.kind == "param":
                    env[id(op.result)] = _const(module.params[op.result.name])
                    continue
                emitter = _NamedEmitter(bb, var_name(op, index), context)
                env[id(op.result)] = padding.lower_op(emitter, op, LOWERING[op.kind])
            outs = [padding.output(bb, v) for v in module.outputs]
            result = outs[0] if len(outs) == 1 else relax.Tuple(outs)
            gv = bb.emit_output(result)
        bb.emit_func_output(gv)
    return bb.finalize()
