"""sliver IR → Relax, one lowering rule per op (like TVM's ``register_legalize``).

Built with ``relax.BlockBuilder`` from sliver's own IR, never by re-tracing the
torch model.  Params become Relax constants; the compiled library carries them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from sliver.backends.tvm.provenance import var_name
from sliver.common.errors import SliverError
from sliver.ir.ops import all_ops

LOWERING: dict[str, Callable] = {}


def lowers(*kinds):
    def deco(fn):
        for k in kinds:
            LOWERING[k] = fn
        return fn

    return deco


def _R():
    from tvm import relax

    return relax.op


def _scalar(value, like):
    from tvm import relax

    return relax.const(value, like.ty.dtype)


def _const(array: np.ndarray):
    from tvm import relax

    return relax.const(array)


def _dtype(kind: str) -> str:
    """sliver element type → TVM dtype string (sub-byte codes ``u2``, ``i4``… are held
    one per byte, as ``uint8`` / ``int8``)."""
    if kind == "bool":
        return "bool"
    if kind[0] in "iu" and int(kind[1:]) < 8:
        kind = kind[0] + "8"
    letter = {"f": "float", "i": "int", "u": "uint"}[kind[0]]
    return f"{letter}{kind[1:]}"


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


@lowers("cast")
def _cast(bb, op, x):
    return bb.emit(_R().astype(x, _dtype(op.attrs["dtype"])))


@lowers("constant")
def _constant(bb, op):
    from sliver.ir.types import to_numpy

    a = op.attrs
    return _const(np.full(a["shape"], a["value"], dtype=to_numpy(a["dtype"])))


# -- convolution and matrix products ------------------------------------------------


def _channel_vector(bb, v, rank: int):
    """[C] → [1, C, 1, …] so it broadcasts over NCHW."""
    return bb.emit(_R().reshape(v, [1, -1] + [1] * (rank - 2)))


#: Output channels of a conv2d are padded up to a multiple of this (see :func:`_conv2d`)…
CHANNEL_MULTIPLE = 8
#: … and from this many on, to a multiple of twice that: a count of an odd number of
#: 8-wide vectors (247 -> 248, 471 -> 472) leaves the micro-kernel one vector of output
#: channels, and on small maps (a Winograd conv on 7x7 has 4 tiles) too few
#: accumulators.  One thread, AVX2: Winograd 3x3 on 7x7, 180 -> 248 channels 0.49 ms vs
#: 180 -> 256 0.33 ms; 184 -> 184 0.34 ms vs 184 -> 192 0.18 ms; on 4x4, 360 -> 472
#: 0.63 ms vs 360 -> 480 0.46 ms.
WIDE_CHANNELS = 128


def channel_padding(n: int) -> int:
    """How many zero channels the lowering appends to a conv output of ``n`` channels."""
    if n <= CHANNEL_MULTIPLE:
        return 0
    return -n % (2 * CHANNEL_MULTIPLE if n >= WIDE_CHANNELS else CHANNEL_MULTIPLE)


def _channels(expr) -> int:
    """The channel count (axis 1) of a lowered NCHW value."""
    return int(expr.ty.shape[1])


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
    return bb.emit(_R().strided_slice(x, [a["axis"]], [a["start"]], [a["end"]], [a["step"]], assume_inbound=True))


@lowers("take")
def _take(bb, op, x, idx):
    return bb.emit(_R().take(x, idx, axis=op.attrs["axis"], mode="clip"))  # never read out of bounds


@lowers("reshape")
def _reshape(bb, op, x):
    return bb.emit(_R().reshape(x, list(op.attrs["shape"])))


@lowers("permute")
def _permute(bb, op, x):
    return bb.emit(_R().permute_dims(x, list(op.attrs["dims"])))


@lowers("expand")
def _expand(bb, op, x):
    return bb.emit(_R().broadcast_to(x, list(op.attrs["shape"])))


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


@lowers("attention")
def _attention(bb, op, q, k, v, mask=None):
    """softmax(q k^T * scale + mask) v, written out in Relax ops on [B, H, S, D]."""
    R = _R()
    qt, kt = op.operands[0].type, op.operands[1].type
    groups = qt.shape[1] // kt.shape[1]
    if groups > 1:
        k = bb.emit(R.repeat(k, groups, axis=1))
        v = bb.emit(R.repeat(v, groups, axis=1))
    scale = op.attrs["scale"] if op.attrs["scale"] is not None else 1.0 / math.sqrt(qt.shape[-1])
    scores = bb.emit(R.matmul(q, R.permute_dims(k, [0, 1, 3, 2])))
    scores = bb.emit(R.multiply(scores, _scalar(scale, scores)))
    if mask is not None:
        if op.operands[3].type.dtype == "bool":
            neg = _scalar(float("-inf"), scores)
            scores = bb.emit(R.where(mask, scores, neg))
        else:
            scores = bb.emit(R.add(scores, mask))
    if op.attrs["causal"]:
        L, S = qt.shape[-2], kt.shape[-2]
        from sliver.ir.types import to_numpy

        causal = np.where(np.tril(np.ones((L, S), bool)), 0.0, -np.inf).astype(to_numpy(qt.dtype))
        scores = bb.emit(R.add(scores, _const(causal)))
    probs = bb.emit(R.nn.softmax(scores, axis=-1))
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


def unsupported_ops(module) -> list[str]:
    return sorted({op.kind for op in module.ops if op.kind != "param" and op.kind not in LOWERING})


@dataclass
class LowerContext:
    """What lowering rules may consult and record (a rule sees it as ``bb.context``):
    the target (a :class:`~sliver.backends.tvm.targets.Target`; None: this machine's),
    ``kernels`` (``{layer: kernel}`` for layers with a choice of kernels), ``sources``
    (C files the library must link, for kernels called as packed functions) and
    ``defines`` (``NAME=VALUE`` macros those C files are compiled with)."""

    target: object = None
    kernels: dict = field(default_factory=dict)
    sources: set = field(default_factory=set)
    defines: set = field(default_factory=set)


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
    bb = relax.BlockBuilder()
    params = [relax.Var(v.name, relax.TensorType(v.type.shape, _dtype(v.type.dtype))) for v in module.inputs]
    env = {id(v): p for v, p in zip(module.inputs, params)}
    pads: dict = {}  # id(value) -> the value of its padding channels (its lowered form has extra ones)
    with bb.function("main", params):
        with bb.dataflow():
            for index, op in enumerate(module.ops):
                if op.kind == "param":
                    env[id(op.result)] = _const(module.params[op.result.name])
                    continue
                emitter = _NamedEmitter(bb, var_name(op, index), context)
                kept = _padding_kept(module, op, env, pads)
                args = []
                for v in op.operands:
                    arg = env[id(v)]
                    if id(v) in pads and kept is None:
                        arg = _unpad(emitter, arg, v)
                    elif kept is not None and op.kind in _PAD_BINARY and v.producer is not None \
                            and v.producer.kind == "param" and _channel_extent(op, v) not in (None, 1):
                        arg = _pad_param(emitter, op, v, arg, env, pads)
                    args.append(arg)
                out = _widened_selection(emitter, module, op, args)
                if out is not None:  # extra real channels, read through zero weights: their value is unknown
                    pads[id(op.result)] = math.nan
                else:
                    out = LOWERING[op.kind](emitter, op, *args)
                env[id(op.result)] = out
                if isinstance(out, relax.Expr) and op.results[0].type.rank in (2, 4) \
                        and _channels(out) > op.results[0].type.shape[1] and id(op.result) not in pads:
                    pads[id(op.result)] = kept if kept is not None else 0.0  # a conv's own zero filters
            outs = [_unpad(bb, env[id(v)], v) if id(v) in pads else env[id(v)] for v in module.outputs]
            result = outs[0] if len(outs) == 1 else relax.Tuple(outs)
            gv = bb.emit_output(result)
        bb.emit_func_output(gv)
    return bb.finalize()


#: Channel-wise ops that may run on a value with padding channels: the padding
#: channels stay apart from the real ones (they are sliced off before anything that
#: mixes channels, except convs, which read them through zero weights).  The unary
#: ones are the elementwise maps the op declarations mark channel-wise.
_PAD_UNARY = {name for name, decl in all_ops().items() if decl.unary and decl.has("elementwise", "channelwise")}
_PAD_BINARY = {"add", "sub", "mul", "maximum", "minimum"}
_PAD_POOLS = {"max_pool2d", "adaptive_avg_pool2d", "mean"}


def _channel_extent(op, v) -> int | None:
    """``v``'s extent along ``op``'s result channel axis (1) under broadcasting, None
    when ``v`` has no such axis."""
    axis = 1 - (op.results[0].type.rank - v.type.rank)
    return v.type.shape[axis] if 0 <= axis < v.type.rank else None


def _unpad(bb, expr, v):
    """The real channels of a padded value (a view: consumer convs read it in place)."""
    return bb.emit(_R().strided_slice(expr, [1], [0], [v.type.shape[1]], assume_inbound=True))


def _pad_param(bb, op, v, expr, env, pads):
    """A per-channel param of a channel-wise op on padded values, zero-extended to
    their channel count."""
    from tvm import relax

    have = next(_channels(env[id(u)]) for u in op.operands if id(u) in pads)
    axis = 1 - (op.results[0].type.rank - v.type.rank)
    shape = list(v.type.shape)
    shape[axis] = have - shape[axis]
    zeros = relax.const(np.zeros(shape, np.dtype(_dtype(v.type.dtype))))
    return bb.emit(_R().concat(relax.Tuple([expr, zeros]), axis=axis))


def _widened_selection(bb, module, op, args):
    """A channel ``slice`` or ``take`` whose users are all dense convs, widened as a
    conv output would be padded (:func:`channel_padding`) with more real channels of its
    input (the slice's run extended within the input's channels, else a gather
    with the last index repeated; a take with its last index repeated); None for
    any other op.  The convs read the extra channels through zero weight columns
    (:func:`_conv2d`), as they read a producer's padding channels, so results do
    not change; but a conv reading 45 of 64 channels copies and transforms its
    input with scalar loops, and a Winograd conv then took minutes to compile.  The
    selection stays part of the conv's function
    (:mod:`~sliver.backends.tvm.schedules.channel_select`)."""
    from tvm import relax

    t = op.results[0].type
    if op.kind not in ("slice", "take") or t.rank != 4 or op.attrs["axis"] % 4 != 1 \
            or any(o is op.result for o in module.outputs) \
            or not op.result.uses or any(u.kind != "conv2d" or u.attrs["groups"] != 1 or u.operands[0] is not op.result
                                         for u, _ in op.result.uses):
        return None
    n = t.shape[1]
    extra = channel_padding(n)
    if not extra:
        return None
    x = args[0]
    have = _channels(x)
    if op.kind == "slice":
        a = op.attrs
        if a["step"] != 1:
            return None
        if a["end"] + extra <= have:
            return bb.emit(_R().strided_slice(x, [1], [a["start"]], [a["end"] + extra], assume_inbound=True))
        idx = np.arange(a["start"], a["end"])
    else:
        idx = module.param_data(op.operands[1])
        if idx is None or idx.ndim != 1:
            return None
    idx = np.concatenate([idx, np.full(extra, idx[-1])]).astype(np.int64)
    return bb.emit(_R().take(x, relax.const(idx), axis=1, mode="clip"))


def _padding_kept(module, op, env, pads) -> float | None:
    """When ``op`` can run on its operands' padding channels, the value its own padding
    channels will hold (finite); None when the padding must be sliced off first.

    Allowed: convs with one group or depthwise (the rule gives the padding channels zero
    weights), linear layers likewise; slices and gathers (along channels they read
    only real ones); elementwise ops of :data:`_PAD_UNARY` / :data:`_PAD_BINARY` whose
    activation operands are all padded alike and whose params have one value per real
    channel (zero-extended) or broadcast along channels; spatial pooling and means.
    The value matters only to stay finite, so that zero weights keep it out of the
    real channels."""
    import torch

    padded = [v for v in op.operands if id(v) in pads]
    if not padded or op.results[0].type.rank not in (2, 4):
        return None
    if op.kind in ("slice", "take") and padded == [op.operands[0]]:
        # a channel view or gather reads real channels only (its range and indices are checked
        # against them): reading the padded value directly saves a copy; along another axis the
        # padding channels stay
        return pads[id(op.operands[0])]
    if op.kind == "linear":  # the rule gives the padding channels zero weights; its output has none
        return 0.0 if padded == [op.operands[0]] and op.operands[0].type.rank == 2 else None
    if op.kind == "conv2d":
        n_out, per_group = op.operands[1].type.shape[:2]
        dense = op.attrs["groups"] == 1
        depthwise = op.attrs["groups"] == n_out == op.operands[0].type.shape[1] and per_group == 1
        return 0.0 if padded == [op.operands[0]] and (dense or depthwise) else None
    if op.kind in _PAD_POOLS:
        if op.kind == "mean" and 1 in [a % op.operands[0].type.rank for a in op.attrs["axes"]]:
            return None
        return pads[id(op.operands[0])]
    if op.kind not in _PAD_UNARY | _PAD_BINARY or op.results[0].type.rank != 4:
        return None
    have = {_channels(env[id(v)]) for v in padded}
    values = []
    for v in op.operands:
        if id(v) in pads:
            values.append(pads[id(v)])
            continue
        extent = _channel_extent(op, v)
        if v.producer is None or v.producer.kind != "param" or extent not in (1, op.results[0].type.shape[1]):
            return None  # an activation with the real channel count, or an odd-shaped param
        if extent == 1:
            data = module.params[v.name]
            if data.size != 1:
                return None
            values.append(float(data.reshape(())))
        else:
            values.append(0.0)  # zero-extended
    if len(have) != 1:
        return None
    with torch.no_grad():
        out = float(op.decl.ref(*[torch.tensor([x], dtype=torch.float32) for x in values], **op.attrs)[0])
    return out if math.isfinite(out) else None


# lowering rules kept in their own files register themselves into LOWERING on import
from sliver.backends.tvm import lowbit as _lowbit  # noqa: E402,F401 - registers quantize, qconv2d, …
from sliver.backends.tvm import wq_linear as _wq_linear  # noqa: E402,F401 - registers wq_linear
