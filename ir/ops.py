"""The op set: every op of sliver's IR is declared here, once.

A declaration (:class:`OpDecl`) holds the op's operand names (a trailing ``?``
marks an optional operand), its attributes with defaults (:data:`REQUIRED` for
none), its type rule, its reference semantics, its traits (:data:`TRAITS`) and
the aten ops the torch frontend traces into it.  The printer, parser, verifier,
interpreter, the passes and every backend read these declarations; adding an op
is one declaration here plus one lowering rule per backend (and a test).

Reference semantics run on torch tensors (float64 or float32): they are the
oracle that every pass and every backend is checked against.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

from sliver.common.errors import SliverError
from sliver.ir.attrs import format_attr, normalize
from sliver.ir.dims import Sym, SymbolicDimError, bounds
from sliver.ir.types import DTYPES, TensorType, is_float

REQUIRED = object()

#: The properties an op may declare; passes and backends read them (:meth:`OpDecl.has`)
#: instead of keeping their own lists of op names.  A trait is a promise about the op's
#: semantics: leaving one out is always safe (the op is then treated conservatively).
TRAITS = {
    # each result element is computed from the operands' elements at the same position
    # (after broadcasting) alone: channel analysis couples the channels of a binary one
    "elementwise": "result[i] depends only on the operands' elements at i (broadcasting)",
    # channel analysis and pruning pass channels (and their constant values) through it;
    # the backend's channel padding may run it on padding channels
    "channelwise": "result channel c is computed from channel c of the operand x alone "
                   "(with per-channel params); the channel count and order are kept",
    # fold-fake-quant hoists a quantize above it so that the layer before emits codes
    "commutes_with_quantize": "quantize(op(x)) == op(quantize(x)): the op only moves or selects "
                              "elements (a monotone elementwise map passes through it)",
}


class TypeRuleError(SliverError):
    """Operands or attributes that an op's type rule rejects."""


@dataclass(frozen=True)
class OpDecl:
    name: str
    operands: tuple[str, ...]
    attrs: dict
    infer: Callable  # (types: list[TensorType], **attrs) -> TensorType | list[TensorType]
    ref: Callable | None  # (*tensors, **attrs) -> tensor | tuple of tensors
    doc: str = ""
    pure: bool = True
    extra_verify: Callable | None = field(default=None)
    traits: frozenset = frozenset()
    #: aten ops (``"leaky_relu"`` for ``aten.leaky_relu.default`` and its in-place
    #: ``aten.leaky_relu_.default``) the frontend traces into this op by the generic rule:
    #: the operands first, then the attributes in declaration order (or by keyword)
    aten: tuple[str, ...] = ()
    #: reasoned exemptions from the op-coverage test: ``{"trace" | "ref" | "lower": why}``
    #: (e.g. an op only passes create has no trace rule)
    opt_out: dict = field(default_factory=dict)

    def has(self, *traits: str) -> bool:
        """Whether the op declares every one of ``traits``."""
        unknown = set(traits) - set(TRAITS)
        if unknown:
            raise ValueError(f"unknown op trait(s) {sorted(unknown)}; traits are {sorted(TRAITS)}")
        return set(traits) <= self.traits

    @property
    def unary(self) -> bool:
        """One operand, no optional ones."""
        return len(self.operands) == 1 and self.operands != ("*",)

    @property
    def min_operands(self) -> int:
        return sum(1 for o in self.operands if not o.endswith("?") and o != "*")

    @property
    def variadic(self) -> bool:
        return self.operands == ("*",)

    def complete_attrs(self, attrs: dict) -> dict:
        """Fill defaults and reject unknown or missing attributes."""
        unknown = set(attrs) - set(self.attrs)
        if unknown:
            raise TypeRuleError(f"{self.name} has no attribute(s) {sorted(unknown)}; it takes {sorted(self.attrs)}")
        out = {}
        for k, default in self.attrs.items():
            if k in attrs:
                out[k] = normalize(attrs[k])
            elif default is REQUIRED:
                raise TypeRuleError(f"{self.name} needs attribute {k!r}")
            else:
                out[k] = default
        return out

    def check_arity(self, n: int) -> None:
        if self.variadic:
            if n < 1:
                raise TypeRuleError(f"{self.name} needs at least one operand")
            return
        if not self.min_operands <= n <= len(self.operands):
            want = ", ".join(self.operands)
            raise TypeRuleError(f"{self.name} takes operands ({want}); got {n}")

    def infer_types(self, types: list[TensorType], attrs: dict) -> list[TensorType]:
        self.check_arity(len(types))
        check_attr_kinds(self.name, attrs, types)
        out = self.infer(types, **attrs)
        return list(out) if isinstance(out, (list, tuple)) else [out]


_REGISTRY: dict[str, OpDecl] = {}


def declare(name, operands, attrs=None, *, infer, ref, doc="", traits=(), aten=(), opt_out=None, pure=True,
            verify=None):
    if name in _REGISTRY:
        raise ValueError(f"op {name} declared twice")
    unknown = set(traits) - set(TRAITS)
    bad = set(opt_out or {}) - {"trace", "ref", "lower"}
    if unknown or bad:
        raise ValueError(f"op {name}: unknown trait(s) {sorted(unknown)} or opt-out(s) {sorted(bad)}; "
                         f"traits are {sorted(TRAITS)}, opt-outs trace, ref, lower")
    _REGISTRY[name] = OpDecl(
        name, tuple(operands), {k: (v if v is REQUIRED else normalize(v)) for k, v in (attrs or {}).items()},
        infer, ref, doc, pure, verify, frozenset(traits), tuple(aten), dict(opt_out or {}),
    )
    return _REGISTRY[name]


def get_op(name: str) -> OpDecl:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise SliverError(f"unknown op {name!r}; `sliver ops` lists the {len(_REGISTRY)} ops sliver knows") from None


def all_ops() -> dict[str, OpDecl]:
    return dict(_REGISTRY)


# ----------------------------------------------------------------------------
# helpers for type rules


def _torch():
    import torch

    return torch


def _axis(axis: int, rank: int, op: str) -> int:
    if not -rank <= axis < max(rank, 1):
        raise TypeRuleError(f"{op}: axis {axis} is out of range for rank {rank}")
    return axis % max(rank, 1)


def _same_dtype(op: str, *types: TensorType) -> str:
    dtypes = {t.dtype for t in types}
    if len(dtypes) != 1:
        raise TypeRuleError(f"{op}: operand element types differ ({', '.join(sorted(dtypes))}); insert a cast")
    return dtypes.pop()


def broadcast_shapes(op: str, *shapes) -> tuple[int, ...]:
    rank = max(len(s) for s in shapes)
    out = []
    for i in range(rank):
        dims = {s[i - rank + len(s)] for s in shapes if i - rank + len(s) >= 0} - {1}
        if len(dims) > 1:
            raise TypeRuleError(f"{op}: shapes {', '.join(str(list(s)) for s in shapes)} do not broadcast")
        out.append(dims.pop() if dims else 1)
    return tuple(out)


def _float_only(op: str, t: TensorType) -> None:
    if not is_float(t.dtype):
        raise TypeRuleError(f"{op} needs a floating-point operand, got {t.dtype}")


# ----------------------------------------------------------------------------
# sources

def _param_infer(types):
    raise TypeRuleError("a param's type comes from its data: create params with Module.add_param")


declare("param", (), infer=_param_infer, ref=None, doc="A weight; its data is Module.params[result name].",
        opt_out={"ref": "a param is its data (Module.params), nothing to compute",
                 "lower": "the backend binds each param as a constant itself"})


def _constant_infer(types, *, value, dtype, shape):
    if dtype not in DTYPES:
        raise TypeRuleError(f"constant: unknown dtype {dtype!r}")
    problem = _outside(value, dtype)
    if problem:
        raise TypeRuleError(f"constant: value {value!r} must be {problem}")
    return TensorType(shape, dtype)


def _constant_ref(*, value, dtype, shape):
    from sliver.ir.types import to_numpy

    torch = _torch()
    import numpy as np

    return torch.from_numpy(np.full(shape, value, dtype=to_numpy(dtype)))


declare(
    "constant", (), {"value": REQUIRED, "dtype": "f32", "shape": ()},
    infer=_constant_infer, ref=_constant_ref, doc="A tensor filled with one scalar value.",
)

# ----------------------------------------------------------------------------
# elementwise


def _unary(name, fn, doc, attrs=None, floats=True, aten=()):
    """An elementwise function of one tensor: channel-wise, the result of its operand's type."""
    def infer(types, **attrs):
        if floats:
            _float_only(name, types[0])
        return types[0].with_dtype(types[0].dtype)

    declare(name, ("x",), attrs, infer=infer, ref=fn, doc=doc, traits=("elementwise", "channelwise"), aten=aten)


def _binary(name, fn, doc):
    def infer(types, **attrs):
        a, b = types
        return TensorType(broadcast_shapes(name, a.shape, b.shape), _same_dtype(name, a, b))

    declare(name, ("a", "b"), infer=infer, ref=fn, doc=doc, traits=("elementwise",))


def _hardswish(x):
    return x * (x + 3).clamp(0, 6) / 6


_unary("relu", lambda x: x.clamp_min(0), "max(x, 0)", floats=False, aten=("relu",))
_unary("gelu", lambda x, approximate: _torch().nn.functional.gelu(x, approximate=approximate),
       "Gaussian error linear unit; approximate='tanh' for the tanh form", {"approximate": "none"}, aten=("gelu",))
_unary("silu", lambda x: x * _torch().sigmoid(x), "x * sigmoid(x)", aten=("silu",))
_unary("sigmoid", lambda x: _torch().sigmoid(x), "1 / (1 + exp(-x))", aten=("sigmoid",))
_unary("tanh", lambda x: _torch().tanh(x), "tanh(x)", aten=("tanh",))
_unary("hardswish", _hardswish, "x * clamp(x + 3, 0, 6) / 6", aten=("hardswish",))
_unary("hardsigmoid", lambda x: (x + 3).clamp(0, 6) / 6, "clamp(x + 3, 0, 6) / 6", aten=("hardsigmoid",))
_unary("exp", lambda x: _torch().exp(x), "e^x", aten=("exp",))
_unary("log", lambda x: _torch().log(x), "natural logarithm", aten=("log",))
_unary("sqrt", lambda x: _torch().sqrt(x), "square root", aten=("sqrt",))
_unary("rsqrt", lambda x: _torch().rsqrt(x), "1 / sqrt(x)", aten=("rsqrt",))
_unary("erf", lambda x: _torch().erf(x), "the error function", aten=("erf",))
_unary("sin", lambda x: _torch().sin(x), "sine", aten=("sin",))
_unary("cos", lambda x: _torch().cos(x), "cosine", aten=("cos",))
_unary("leaky_relu", lambda x, negative_slope: _torch().nn.functional.leaky_relu(x, negative_slope),
       "x if x >= 0 else negative_slope * x", {"negative_slope": 0.01}, aten=("leaky_relu",))
_unary("neg", lambda x: -x, "-x", floats=False, aten=("neg",))
_unary("abs", lambda x: x.abs(), "|x|", floats=False, aten=("abs",))
_unary("clamp", lambda x, min, max: x.clamp(min, max), "min(max(x, min), max); either bound may be none",
       {"min": None, "max": None}, floats=False)

_binary("add", lambda a, b: a + b, "a + b (broadcasting)")
_binary("sub", lambda a, b: a - b, "a - b (broadcasting)")
_binary("mul", lambda a, b: a * b, "a * b (broadcasting)")
_binary("div", lambda a, b: a / b, "a / b (broadcasting; true division)")
_binary("pow", lambda a, b: a**b, "a ** b (broadcasting)")
_binary("maximum", lambda a, b: _torch().maximum(a, b), "elementwise max")
_binary("minimum", lambda a, b: _torch().minimum(a, b), "elementwise min")



# comparisons and logic on run-time values (masks built from the inputs: a causal LM's
# 2-D attention mask, RoBERTa's position ids from the padding tokens)


def _compare(name, fn, doc):
    def infer(types, **attrs):
        a, b = types
        _same_dtype(name, a, b)
        return TensorType(broadcast_shapes(name, a.shape, b.shape), "bool")

    declare(name, ("a", "b"), infer=infer, ref=fn, doc=doc + " (broadcasting; a bool tensor)",
            traits=("elementwise",))


_compare("eq", lambda a, b: a == b, "a == b")
_compare("ne", lambda a, b: a != b, "a != b")
_compare("lt", lambda a, b: a < b, "a < b")
_compare("le", lambda a, b: a <= b, "a <= b")
_compare("gt", lambda a, b: a > b, "a > b")
_compare("ge", lambda a, b: a >= b, "a >= b")


def _bool_only(op: str, *types: TensorType) -> None:
    for t in types:
        if t.dtype != "bool":
            raise TypeRuleError(f"{op} needs bool operands, got {t}; compare or cast first")


def _logical(name, fn, doc):
    def infer(types, **attrs):
        _bool_only(name, *types)
        return TensorType(broadcast_shapes(name, *(t.shape for t in types)), "bool")

    operands = ("x",) if name == "logical_not" else ("a", "b")
    traits = ("elementwise", "channelwise") if name == "logical_not" else ("elementwise",)
    declare(name, operands, infer=infer, ref=fn, doc=doc, traits=traits)


_logical("logical_and", lambda a, b: a & b, "a and b on bool tensors (broadcasting)")
_logical("logical_or", lambda a, b: a | b, "a or b on bool tensors (broadcasting)")
_logical("logical_xor", lambda a, b: a ^ b, "a xor b on bool tensors (broadcasting)")
_logical("logical_not", lambda x: ~x, "not x on a bool tensor")


def _where_infer(types):
    cond, a, b = types
    _bool_only("where (condition)", cond)
    return TensorType(broadcast_shapes("where", cond.shape, a.shape, b.shape), _same_dtype("where", a, b))


declare("where", ("cond", "a", "b"), infer=_where_infer, ref=lambda c, a, b: _torch().where(c, a, b),
        doc="a where cond is true, else b (broadcasting; cond is bool)", traits=("elementwise",))


def _scan_infer(op):
    def infer(types, *, axis):
        x = types[0]
        if x.dtype == "bool":
            raise TypeRuleError(f"{op}: cast a bool operand to an integer type first (torch sums it as i64)")
        _axis(axis, x.rank, op)
        return x

    return infer


declare("cumsum", ("x",), {"axis": REQUIRED}, infer=_scan_infer("cumsum"),
        ref=lambda x, axis: _torch().cumsum(x, axis, dtype=x.dtype),
        doc="running sum along axis: y[..., i, ...] = x[..., 0, ...] + … + x[..., i, ...], in x's element type")


def _cast_ref(x, *, dtype):
    from sliver.ir.types import to_numpy

    torch = _torch()
    return torch.from_numpy(x.numpy().astype(to_numpy(dtype)))


declare(
    "cast", ("x",), {"dtype": REQUIRED},
    infer=lambda types, dtype: types[0].with_dtype(dtype), ref=_cast_ref,
    doc="convert the element type", traits=("elementwise", "channelwise"),
)

# ----------------------------------------------------------------------------
# convolution and matrix products


def _conv2d_infer(types, *, stride, padding, dilation, groups):
    x, w = types[0], types[1]
    if x.rank != 4 or w.rank != 4:
        raise TypeRuleError(f"conv2d needs NCHW input and OIHW weight, got {x} and {w}")
    n, c, h, wd = x.shape
    o, ci, kh, kw = w.shape
    if c != ci * groups:
        raise TypeRuleError(f"conv2d: input has {c} channels but weight {w} with groups={groups} expects {ci * groups}")
    if o % groups:
        raise TypeRuleError(f"conv2d: {o} output channels do not split into {groups} groups")
    if len(types) == 3 and types[2].shape != (o,):
        raise TypeRuleError(f"conv2d: bias must be [{o}], got {types[2]}")
    pt, pl, pb, pr = padding
    oh = (h + pt + pb - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    ow = (wd + pl + pr - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    if oh <= 0 or ow <= 0:
        raise TypeRuleError(f"conv2d: input {x} is too small for a {kh}x{kw} kernel")
    return TensorType((n, o, oh, ow), _same_dtype("conv2d", *types))


def _conv2d_ref(x, w, b=None, *, stride, padding, dilation, groups):
    F = _torch().nn.functional
    pt, pl, pb, pr = padding
    if (pt, pl) != (pb, pr):
        x = F.pad(x, (pl, pr, pt, pb))
        pt = pl = 0
    return F.conv2d(x, w, b, stride, (pt, pl), dilation, groups)


declare(
    "conv2d", ("x", "w", "b?"),
    {"stride": (1, 1), "padding": (0, 0, 0, 0), "dilation": (1, 1), "groups": 1},
    infer=_conv2d_infer, ref=_conv2d_ref,
    doc="2-D convolution, NCHW input, OIHW weight; padding = [top, left, bottom, right]",
)


def _conv_transpose2d_infer(types, *, stride, padding, output_padding, dilation, groups):
    x, w = types[0], types[1]
    if x.rank != 4 or w.rank != 4:
        raise TypeRuleError(f"conv_transpose2d needs an NCHW input and an IOHW weight, got {x} and {w}")
    n, c, h, wd = x.shape
    ci, og, kh, kw = w.shape
    if c != ci or ci % groups:
        raise TypeRuleError(f"conv_transpose2d: input has {c} channels but weight {w} ([in, out/groups, kh, kw]) "
                            f"with groups={groups} expects {ci}, a multiple of {groups}")
    o = og * groups
    if len(types) == 3 and types[2].shape != (o,):
        raise TypeRuleError(f"conv_transpose2d: bias must be [{o}], got {types[2]}")
    if any(p >= max(s, d) for p, s, d in zip(output_padding, stride, dilation)):
        raise TypeRuleError(f"conv_transpose2d: output_padding {list(output_padding)} must be smaller than the "
                            f"stride or the dilation")
    pt, pl, pb, pr = padding
    oh = (h - 1) * stride[0] - pt - pb + dilation[0] * (kh - 1) + output_padding[0] + 1
    ow = (wd - 1) * stride[1] - pl - pr + dilation[1] * (kw - 1) + output_padding[1] + 1
    if oh <= 0 or ow <= 0:
        raise TypeRuleError(f"conv_transpose2d: padding {list(padding)} leaves no output for input {x}")
    return TensorType((n, o, oh, ow), _same_dtype("conv_transpose2d", *types))


def _conv_transpose2d_ref(x, w, b=None, *, stride, padding, output_padding, dilation, groups):
    """The full transposed convolution, extended by output_padding at the bottom/right, then
    cropped by padding on each side."""
    F = _torch().nn.functional
    full = F.conv_transpose2d(x, w, None, stride, 0, 0, groups, dilation)
    full = F.pad(full, (0, output_padding[1], 0, output_padding[0]))
    pt, pl, pb, pr = padding
    y = full[:, :, pt:full.shape[2] - pb, pl:full.shape[3] - pr]
    return y if b is None else y + b.reshape(1, -1, 1, 1)


declare(
    "conv_transpose2d", ("x", "w", "b?"),
    {"stride": (1, 1), "padding": (0, 0, 0, 0), "output_padding": (0, 0), "dilation": (1, 1), "groups": 1},
    infer=_conv_transpose2d_infer, ref=_conv_transpose2d_ref,
    doc="2-D transposed convolution (the gradient of conv2d), NCHW input, IOHW weight ([in, out/groups, kh, kw]); "
        "padding = [top, left, bottom, right] crops the full output, output_padding extends it at the bottom/right",
)


def _linear_infer(types):
    x, w = types[0], types[1]
    if w.rank != 2 or x.rank < 1 or x.shape[-1] != w.shape[1]:
        raise TypeRuleError(f"linear: input {x} does not match weight {w} ([out, in])")
    if len(types) == 3 and types[2].shape != (w.shape[0],):
        raise TypeRuleError(f"linear: bias must be [{w.shape[0]}], got {types[2]}")
    return TensorType(x.shape[:-1] + (w.shape[0],), _same_dtype("linear", *types))


declare(
    "linear", ("x", "w", "b?"), infer=_linear_infer,
    ref=lambda x, w, b=None: _torch().nn.functional.linear(x, w, b),
    doc="x @ w.T + b, w is [out, in]",
)


def _matmul_infer(types):
    a, b = types
    if a.rank < 2 or b.rank < 2:
        raise TypeRuleError(f"matmul needs operands of rank >= 2, got {a} and {b}")
    if a.shape[-1] != b.shape[-2]:
        raise TypeRuleError(f"matmul: inner dimensions differ in {a} @ {b}")
    batch = broadcast_shapes("matmul", a.shape[:-2], b.shape[:-2])
    return TensorType(batch + (a.shape[-2], b.shape[-1]), _same_dtype("matmul", a, b))


declare("matmul", ("a", "b"), infer=_matmul_infer, ref=lambda a, b: a @ b,
        doc="batched matrix product with broadcasting batch dims")

# ----------------------------------------------------------------------------
# normalization


def _per_channel(op, x, *params):
    for p in params:
        if p.shape != (x.shape[1],):
            raise TypeRuleError(f"{op}: per-channel operand {p} does not match {x.shape[1]} channels of {x}")


def _batch_norm_infer(types, *, eps):
    x = types[0]
    if x.rank < 2:
        raise TypeRuleError(f"batch_norm needs rank >= 2, got {x}")
    _per_channel("batch_norm", x, *types[1:])
    return x.with_dtype(_same_dtype("batch_norm", *types))


def _batch_norm_ref(x, mean, var, w=None, b=None, *, eps):
    return _torch().nn.functional.batch_norm(x, mean, var, w, b, False, 0.0, eps)


declare(
    "batch_norm", ("x", "mean", "var", "w?", "b?"), {"eps": 1e-5},
    infer=_batch_norm_infer, ref=_batch_norm_ref, traits=("channelwise",),
    doc="inference batch norm over axis 1: (x - mean) / sqrt(var + eps) * w + b",
)


def _last_axes_norm_infer(op):
    def infer(types, *, axes, eps):
        x = types[0]
        if axes < 1 or axes > x.rank:
            raise TypeRuleError(f"{op}: cannot normalize the last {axes} axes of {x}")
        for p in types[1:]:
            if p.shape != x.shape[-axes:]:
                raise TypeRuleError(f"{op}: affine operand {p} must have shape {list(x.shape[-axes:])}")
        return x.with_dtype(_same_dtype(op, *types))

    return infer


def _layer_norm_ref(x, w=None, b=None, *, axes, eps):
    return _torch().nn.functional.layer_norm(x, x.shape[-axes:], w, b, eps)


def _rms_norm_ref(x, w=None, *, axes, eps):
    dims = tuple(range(-axes, 0))
    y = x * _torch().rsqrt(x.pow(2).mean(dims, keepdim=True) + eps)
    return y * w if w is not None else y


declare(
    "layer_norm", ("x", "w?", "b?"), {"axes": 1, "eps": 1e-5},
    infer=_last_axes_norm_infer("layer_norm"), ref=_layer_norm_ref,
    doc="layer norm over the last `axes` axes",
)
declare(
    "rms_norm", ("x", "w?"), {"axes": 1, "eps": 1e-6},
    infer=_last_axes_norm_infer("rms_norm"), ref=_rms_norm_ref,
    doc="x / sqrt(mean(x^2) + eps) * w over the last `axes` axes",
)

# ----------------------------------------------------------------------------
# pooling


def _pool_out(size, k, s, p0, p1, d, ceil):
    span = size + p0 + p1 - d * (k - 1) - 1
    out = (-(-span // s) if ceil else span // s) + 1
    # PyTorch: the last window must start inside the input or left padding
    if ceil and (out - 1) * s >= size + p0:
        out -= 1
    return out


def _pool_infer(op):
    def infer(types, *, kernel, stride, padding, ceil_mode, dilation=(1, 1), count_include_pad=True):
        x = types[0]
        if x.rank != 4:
            raise TypeRuleError(f"{op} needs an NCHW input, got {x}")
        pt, pl, pb, pr = padding
        oh = _pool_out(x.shape[2], kernel[0], stride[0], pt, pb, dilation[0], ceil_mode)
        ow = _pool_out(x.shape[3], kernel[1], stride[1], pl, pr, dilation[1], ceil_mode)
        if oh <= 0 or ow <= 0:
            raise TypeRuleError(f"{op}: input {x} is too small for a {kernel[0]}x{kernel[1]} window")
        return x.with_shape((x.shape[0], x.shape[1], oh, ow))

    return infer


def _sym_padding(op, padding):
    pt, pl, pb, pr = padding
    if (pt, pl) != (pb, pr):
        raise TypeRuleError(f"{op}: asymmetric padding {list(padding)} is not supported")
    return (pt, pl)


def _max_pool_ref(x, *, kernel, stride, padding, dilation, ceil_mode):
    return _torch().nn.functional.max_pool2d(x, kernel, stride, _sym_padding("max_pool2d", padding), dilation, ceil_mode)


def _avg_pool_ref(x, *, kernel, stride, padding, ceil_mode, count_include_pad):
    return _torch().nn.functional.avg_pool2d(
        x, kernel, stride, _sym_padding("avg_pool2d", padding), ceil_mode, count_include_pad
    )


declare(
    "max_pool2d", ("x",),
    {"kernel": REQUIRED, "stride": REQUIRED, "padding": (0, 0, 0, 0), "dilation": (1, 1), "ceil_mode": False},
    infer=_pool_infer("max_pool2d"), ref=_max_pool_ref, doc="2-D max pooling, NCHW",
    # padding never wins a window (it is -inf), so a monotone quantize passes through
    traits=("channelwise", "commutes_with_quantize"),
)
declare(
    "avg_pool2d", ("x",),
    {"kernel": REQUIRED, "stride": REQUIRED, "padding": (0, 0, 0, 0), "ceil_mode": False, "count_include_pad": True},
    infer=_pool_infer("avg_pool2d"), ref=_avg_pool_ref, doc="2-D average pooling, NCHW", traits=("channelwise",),
)


def _adaptive_infer(types, *, output_size):
    x = types[0]
    if x.rank != 4:
        raise TypeRuleError(f"adaptive_avg_pool2d needs an NCHW input, got {x}")
    return x.with_shape(x.shape[:2] + tuple(output_size))


declare(
    "adaptive_avg_pool2d", ("x",), {"output_size": REQUIRED}, infer=_adaptive_infer,
    ref=lambda x, output_size: _torch().nn.functional.adaptive_avg_pool2d(x, output_size),
    doc="average pooling to a fixed output size, NCHW", traits=("channelwise",),
)

# ----------------------------------------------------------------------------
# shape and data movement


def _concat_infer(types, *, axis):
    first = types[0]
    ax = _axis(axis, first.rank, "concat")
    for t in types[1:]:
        if t.rank != first.rank or any(a != b for i, (a, b) in enumerate(zip(t.shape, first.shape)) if i != ax):
            raise TypeRuleError(f"concat along axis {axis}: {first} and {t} differ elsewhere")
    shape = list(first.shape)
    shape[ax] = sum(t.shape[ax] for t in types)
    return first.with_shape(shape).with_dtype(_same_dtype("concat", *types))


declare("concat", ("*",), {"axis": REQUIRED}, infer=_concat_infer,
        ref=lambda *xs, axis: _torch().cat(xs, axis), doc="join tensors along an axis")


def _provably(condition) -> bool:
    """Whether a comparison of dims holds for every size in the variables' ranges."""
    try:
        return bool(condition())
    except SymbolicDimError:
        return False


def slice_bounds(size, start, end, step: int) -> tuple:
    """Clamp python-style bounds to [0, size]; returns (start, end, length).

    Symbolic sizes and bounds (``x[:, :seq]``) are resolved when the variables' ranges
    decide every clamp (a bound that is at least ``size`` is ``size``; a non-negative
    start within it stays), else :class:`SymbolicDimError`."""
    if not any(isinstance(d, Sym) for d in (size, start, end)):
        start, end, _ = slice(start, end, step).indices(size)
        return start, end, max(0, -(-(end - start) // step))

    def clamp(i):
        if isinstance(i, int) and i < 0:
            i = i + size  # python's negative index from the end
        if isinstance(i, int) and i == 0:
            return 0
        if _provably(lambda: i >= size):
            return size
        if _provably(lambda: i <= size):
            return i if i >= 0 else 0  # decided from the ranges, or SymbolicDimError
        raise SymbolicDimError(f"whether {i} is within the size {size} depends on the sizes")

    try:
        start, end = clamp(start), clamp(end)
        length = end - start
        if length <= 0:
            return start, end, 0
        return start, end, (length + step - 1) // step if step > 1 else length
    except SymbolicDimError as e:
        raise TypeRuleError(f"slice [{start}:{end}:{step}] of a dimension of size {size}: {e}") from None


def _slice_infer(types, *, axis, start, end, step):
    x = types[0]
    if step < 1:
        raise TypeRuleError(f"slice: step must be >= 1, got {step}")
    ax = _axis(axis, x.rank, "slice")
    shape = list(x.shape)
    shape[ax] = slice_bounds(x.shape[ax], start, end, step)[2]
    return x.with_shape(shape)


def _slice_ref(x, *, axis, start, end, step):
    index = [slice(None)] * x.dim()
    index[axis] = slice(start, end, step)
    return x[tuple(index)]


declare("slice", ("x",), {"axis": REQUIRED, "start": 0, "end": REQUIRED, "step": 1},
        infer=_slice_infer, ref=_slice_ref, doc="x[..., start:end:step, ...] along one axis (a view when step is 1)")


def _take_infer(types, *, axis):
    x, idx = types
    if idx.dtype not in ("i64", "i32"):
        raise TypeRuleError(f"take: indices must be i64 or i32, got {idx}")
    ax = _axis(axis, x.rank, "take")
    return x.with_shape(x.shape[:ax] + idx.shape + x.shape[ax + 1:])


def _take_ref(x, idx, *, axis):
    torch = _torch()
    flat = torch.index_select(x, axis, idx.reshape(-1).long())
    return flat.reshape(x.shape[:axis] + idx.shape + x.shape[axis + 1:])


declare("take", ("x", "indices"), {"axis": 0}, infer=_take_infer, ref=_take_ref,
        doc="gather whole slices of x along axis by an index tensor (embedding, index_select)")


def _gather_infer(types, *, axis):
    x, idx = types
    if idx.dtype not in ("i64", "i32"):
        raise TypeRuleError(f"gather: indices must be i64 or i32, got {idx}")
    ax = _axis(axis, x.rank, "gather")
    if idx.rank != x.rank or any(i > d for a, (i, d) in enumerate(zip(idx.shape, x.shape)) if a != ax):
        raise TypeRuleError(f"gather: indices {idx} must have the rank of {x} and no larger size off axis {axis}")
    return x.with_shape(idx.shape)


declare("gather", ("x", "indices"), {"axis": REQUIRED}, infer=_gather_infer,
        ref=lambda x, idx, axis: _torch().gather(x, axis, idx.long()),
        doc="y[i][j][k] = x[i][indices[i][j][k]][k] for axis 1 (torch.gather): one element per index, "
            "indices in [0, x.shape[axis])")


def _reshape_infer(types, *, shape):
    x = types[0]
    if math.prod(shape, start=1) != x.numel:
        raise TypeRuleError(f"reshape: cannot view {x} as {list(shape)}")
    return x.with_shape(shape)


declare("reshape", ("x",), {"shape": REQUIRED}, infer=_reshape_infer,
        ref=lambda x, shape: x.reshape(shape), doc="same elements, new shape (no -1: the tracer resolves it)",
        traits=("commutes_with_quantize",))


def _permute_infer(types, *, dims):
    x = types[0]
    if sorted(dims) != list(range(x.rank)):
        raise TypeRuleError(f"permute: {list(dims)} is not a permutation of the {x.rank} axes of {x}")
    return x.with_shape([x.shape[d] for d in dims])


declare("permute", ("x",), {"dims": REQUIRED}, infer=_permute_infer,
        ref=lambda x, dims: x.permute(dims), doc="reorder axes")


def _expand_infer(types, *, shape):
    x = types[0]
    if broadcast_shapes("expand", x.shape, shape) != tuple(shape):
        raise TypeRuleError(f"expand: {x} does not broadcast to {list(shape)}")
    return x.with_shape(shape)


declare("expand", ("x",), {"shape": REQUIRED}, infer=_expand_infer,
        ref=lambda x, shape: x.expand(shape), doc="broadcast to a larger shape")

# ----------------------------------------------------------------------------
# reductions and attention


def _softmax_infer(types, *, axis):
    _float_only("softmax", types[0])
    _axis(axis, types[0].rank, "softmax")
    return types[0]


declare("softmax", ("x",), {"axis": -1}, infer=_softmax_infer,
        ref=lambda x, axis: _torch().softmax(x, axis), doc="softmax along an axis")


def _reduce(name, fn, doc, opt_out=None):
    def infer(types, *, axes, keepdim):
        x = types[0]
        norm = {_axis(a, x.rank, name) for a in axes}
        if len(norm) != len(axes):
            raise TypeRuleError(f"{name}: axes {list(axes)} name an axis twice")
        if not axes and x.rank:
            raise TypeRuleError(f"{name}: name the axes to reduce (torch reads an empty list as all of them)")
        shape = [1 if i in norm else d for i, d in enumerate(x.shape) if keepdim or i not in norm]
        return x.with_shape(shape)

    declare(name, ("x",), {"axes": REQUIRED, "keepdim": False}, infer=infer, ref=fn, doc=doc, opt_out=opt_out)


def _arg_infer(op):
    def infer(types, *, axis, keepdim):
        x = types[0]
        ax = _axis(axis, x.rank, op)
        if x.rank and x.shape[ax] == 0:
            raise TypeRuleError(f"{op}: axis {axis} of {x} is empty")
        shape = [1 if i == ax else d for i, d in enumerate(x.shape) if keepdim or i != ax]
        return TensorType(shape, "i64")

    return infer


declare("argmax", ("x",), {"axis": REQUIRED, "keepdim": False}, infer=_arg_infer("argmax"),
        ref=lambda x, axis, keepdim: _torch().argmax(x, axis, keepdim),
        doc="index (i64) of the largest element along axis; the first one among equals")
declare("argmin", ("x",), {"axis": REQUIRED, "keepdim": False}, infer=_arg_infer("argmin"),
        ref=lambda x, axis, keepdim: _torch().argmin(x, axis, keepdim),
        doc="index (i64) of the smallest element along axis; the first one among equals")


def _sort_infer(op):
    def infer(types, *, axis, descending):
        x = types[0]
        _axis(axis, x.rank, op)
        if x.dtype == "bool":
            raise TypeRuleError(f"{op}: cast a bool operand to an integer type first")
        return x if op == "sort" else x.with_dtype("i64")

    return infer


declare("sort", ("x",), {"axis": -1, "descending": False}, infer=_sort_infer("sort"),
        ref=lambda x, axis, descending: _torch().sort(x, dim=axis, descending=descending, stable=True).values,
        doc="x's elements sorted along axis (ascending, or descending)")
declare("argsort", ("x",), {"axis": -1, "descending": False}, infer=_sort_infer("argsort"),
        ref=lambda x, axis, descending: _torch().sort(x, dim=axis, descending=descending, stable=True).indices,
        doc="the indices (i64) that sort x along axis; stable: equal elements keep their order")


_reduce("mean", lambda x, axes, keepdim: x.mean(axes, keepdim=keepdim), "mean over axes")
_reduce("sum", lambda x, axes, keepdim: x.sum(axes, keepdim=keepdim), "sum over axes")


def _attention_infer(types, *, causal, scale):
    q, k, v = types[:3]
    if q.rank != 4 or k.rank != 4 or v.rank != 4:
        raise TypeRuleError(f"attention needs [batch, heads, seq, dim] operands, got {q}, {k}, {v}")
    if q.shape[-1] != k.shape[-1] or k.shape[-2] != v.shape[-2] or k.shape[1] != v.shape[1]:
        raise TypeRuleError(f"attention: q {q}, k {k}, v {v} do not fit together")
    if q.shape[1] % k.shape[1]:
        raise TypeRuleError(f"attention: {q.shape[1]} query heads do not group over {k.shape[1]} key heads")
    if len(types) == 4:
        broadcast_shapes("attention mask", types[3].shape, q.shape[:-1] + (k.shape[-2],))
    return q.with_shape(q.shape[:-1] + (v.shape[-1],))


def _attention_ref(q, k, v, mask=None, *, causal, scale):
    torch = _torch()
    groups = q.shape[1] // k.shape[1]
    if groups > 1:
        k = k.repeat_interleave(groups, 1)
        v = v.repeat_interleave(groups, 1)
    s = scale if scale is not None else 1.0 / math.sqrt(q.shape[-1])
    scores = (q @ k.transpose(-1, -2)) * s
    if mask is not None:
        scores = scores + mask if mask.dtype != torch.bool else scores.masked_fill(~mask, float("-inf"))
    if causal:
        L, S = q.shape[-2], k.shape[-2]
        keep = torch.ones(L, S, dtype=torch.bool).tril()
        scores = scores.masked_fill(~keep, float("-inf"))
    probs = torch.softmax(scores, -1)
    if mask is not None:  # as torch's SDPA: a query that may attend to nothing gets zeros, not NaN
        probs = probs.masked_fill((scores == float("-inf")).all(-1, keepdim=True), 0.0)
    return probs @ v


declare(
    "attention", ("q", "k", "v", "mask?"), {"causal": False, "scale": None},
    infer=_attention_infer, ref=_attention_ref,
    doc="softmax(q @ k^T * scale + mask) @ v on [batch, heads, seq, dim]; grouped k/v heads allowed; a row the "
        "mask hides entirely gives zeros (as torch's scaled_dot_product_attention)",
)

# ----------------------------------------------------------------------------
# quantization (the op contract is in each op's doc below)
#
# Rounding follows torch's fake-quant kernels bit for bit:
#     q = clamp(zero_point + nearbyint(x * inv_scale), qmin, qmax),  inv_scale = 1.0f / float(scale)
# i.e. x is multiplied by the float32 reciprocal of the float32 scale (not divided
# by the scale), nearbyint rounds half to even, and the result is clamped.  This step
# is always float32 math, also when the interpreter runs in float64.
# Integer products in qconv2d / qdense are accumulated exactly (float64 holds every
# int32 sum exactly), then rescaled in the input's float type.

#: the quantization ops come from the fake-quant folding and activation quantization passes
_MADE_BY_PASSES = "made by the quantization passes from fake-quantized or float layers, never traced from torch"

def _qcheck_zero_point(op: str, what: str, zp: int, dtype: str) -> None:
    from sliver.ir.types import int_range

    lo, hi = int_range(dtype)
    if not isinstance(zp, int) or not lo <= zp <= hi:
        raise TypeRuleError(f"{op}: {what} {zp!r} is outside the range [{lo}, {hi}] of {dtype}")


def _qcheck_codes(op: str, what: str, t: TensorType) -> None:
    from sliver.ir.types import is_lowbit

    if not is_lowbit(t.dtype):
        raise TypeRuleError(f"{op}: {what} must hold 1- to 8-bit integer codes (u1..u8, i1..i8), got {t}")


def _qcheck_scale(op: str, scale) -> None:
    if not isinstance(scale, float) or not (scale > 0 and math.isfinite(scale)):
        raise TypeRuleError(f"{op}: scale must be a positive finite float, got {scale!r}")


def _inv_scale(scale):
    """torch's ``1.0f / scale`` as a float32 0-d tensor (``scale`` a float or float tensor)."""
    torch = _torch()
    s = torch.as_tensor(scale, dtype=torch.float32)
    return torch.ones((), dtype=torch.float32) / s


def quantize_codes(x, scale, zero_point, qmin: int, qmax: int):
    """clamp(zero_point + nearbyint(x * (1.0f / scale)), qmin, qmax) as int64, torch's
    fake-quant integer step; ``scale``/``zero_point`` broadcast against ``x``."""
    torch = _torch()
    r = torch.round(x * _inv_scale(scale)) + torch.as_tensor(zero_point)  # round: half to even, like nearbyint
    return torch.nan_to_num(r, nan=float(qmin)).clamp(qmin, qmax).long()  # NaN → qmin, as torch's per-tensor kernel


def _fake_quant_infer(types, *, qmin, qmax, axis):
    x, scale, zp = types
    _float_only("fake_quant", x)
    if not (isinstance(qmin, int) and isinstance(qmax, int)) or qmin > qmax:
        raise TypeRuleError(f"fake_quant: needs integer qmin <= qmax, got qmin={qmin!r}, qmax={qmax!r}")
    if scale.dtype != "f32" or zp.dtype != "i32":
        raise TypeRuleError(f"fake_quant: scale must be f32 and zero_point i32 (as torch wants), got {scale}, {zp}")
    if axis is None:
        if scale.shape != () or zp.shape != ():
            raise TypeRuleError(f"fake_quant: per-tensor (axis=none) needs 0-d scale and zero_point, got {scale}, {zp}")
    else:
        ax = _axis(axis, x.rank, "fake_quant")
        if scale.shape != (x.shape[ax],) or zp.shape != (x.shape[ax],):
            raise TypeRuleError(
                f"fake_quant: per-channel along axis {axis} needs scale and zero_point of shape [{x.shape[ax]}], "
                f"got {scale}, {zp}"
            )
    return x


def _fake_quant_ref(x, scale, zero_point, *, qmin, qmax, axis):
    # Always float32 math (then back to x's type): a float64 product x * (1/scale)
    # rounds differently near ties, and fake-quantized weights must be torch's exactly
    # even when const-fold or the float64 interpreter evaluates them.
    torch = _torch()
    scale, zero_point, xf = scale.float(), zero_point.int(), x.float()
    if axis is None:
        return torch.fake_quantize_per_tensor_affine(xf, scale, zero_point, qmin, qmax).to(x.dtype)
    if zero_point.numel() and not (qmin <= int(zero_point.min()) and int(zero_point.max()) <= qmax):
        # torch refuses these (per tensor it accepts them); a hand-edited module gets a named error
        raise TypeRuleError(f"fake_quant: per-channel zero points {zero_point.tolist()[:8]} must lie in [qmin, qmax] "
                            f"= [{qmin}, {qmax}]")
    return torch.fake_quantize_per_channel_affine(xf, scale, zero_point, axis % x.dim(), qmin, qmax).to(x.dtype)


declare(
    "fake_quant", ("x", "scale", "zero_point"), {"qmin": REQUIRED, "qmax": REQUIRED, "axis": None},
    infer=_fake_quant_infer, ref=_fake_quant_ref,
    doc="(clamp(round(x / scale) + zero_point, qmin, qmax) - zero_point) * scale, per tensor (axis none, "
        "0-d scale/zero_point) or per channel along axis; torch.fake_quantize_per_*_affine bit for bit",
)


def _quantize_infer(types, *, scale, zero_point, dtype):
    x = types[0]
    _float_only("quantize", x)
    from sliver.ir.types import is_lowbit

    if not is_lowbit(dtype):
        raise TypeRuleError(f"quantize: dtype must be a 1- to 8-bit integer type (u1..u8, i1..i8), got {dtype!r}")
    _qcheck_scale("quantize", scale)
    _qcheck_zero_point("quantize", "zero_point", zero_point, dtype)
    return x.with_dtype(dtype)


def _quantize_ref(x, *, scale, zero_point, dtype):
    from sliver.ir.types import int_range, to_numpy

    torch = _torch()
    q = quantize_codes(x.float(), scale, zero_point, *int_range(dtype))  # float32 math, as fake_quant
    return q.to(getattr(torch, str(to_numpy(dtype))))


declare(
    "quantize", ("x",), {"scale": REQUIRED, "zero_point": 0, "dtype": REQUIRED},
    # elementwise, but not declared channelwise: channel analysis marks an unknown channel
    # value NaN, which quantize would turn into the code qmin; pruning runs on float graphs
    infer=_quantize_infer, ref=_quantize_ref, traits=("elementwise",), opt_out={"trace": _MADE_BY_PASSES},
    doc="integer codes clamp(round(x / scale) + zero_point, qmin, qmax) of dtype (u1..u8, i1..i8); "
        "torch's fake-quant rounding: x * (1.0f / scale), half to even",
)


def _dequantize_infer(types, *, scale, zero_point):
    q = types[0]
    _qcheck_codes("dequantize", "its operand", q)
    _qcheck_scale("dequantize", scale)
    _qcheck_zero_point("dequantize", "zero_point", zero_point, q.dtype)
    return q.with_dtype("f32")


def _dequantize_ref(q, *, scale, zero_point):
    torch = _torch()
    return (q.float() - float(zero_point)) * torch.tensor(scale, dtype=torch.float32)


declare(
    "dequantize", ("q",), {"scale": REQUIRED, "zero_point": 0},
    infer=_dequantize_infer, ref=_dequantize_ref, traits=("elementwise",), opt_out={"trace": _MADE_BY_PASSES},
    doc="(q - zero_point) * scale as f32",  # not channelwise, as quantize
)

_QEPILOGUE = {
    "x_zero_point": 0, "w_zero_point": 0, "clamp_min": None, "clamp_max": None,
    "out_dtype": "f32", "out_scale": None, "out_zero_point": 0,
}


def _qlayer_infer(op, types, out_shape, attrs):
    """Checks shared by qconv2d and qdense; returns the result type."""
    x, w, scale = types[:3]
    _qcheck_codes(op, "input x", x)
    _qcheck_codes(op, "weight w", w)
    _qcheck_zero_point(op, "x_zero_point", attrs["x_zero_point"], x.dtype)
    _qcheck_zero_point(op, "w_zero_point", attrs["w_zero_point"], w.dtype)
    o = w.shape[0]
    if scale.dtype != "f32" or scale.shape != (o,):
        raise TypeRuleError(f"{op}: scale must be f32[{o}] (one per output channel), got {scale}")
    if len(types) == 4 and (types[3].dtype != "f32" or types[3].shape != (o,)):
        raise TypeRuleError(f"{op}: bias must be f32[{o}], got {types[3]}")
    lo, hi = attrs["clamp_min"], attrs["clamp_max"]
    for name, bound in (("clamp_min", lo), ("clamp_max", hi)):
        if bound is not None and not isinstance(bound, (int, float)):
            raise TypeRuleError(f"{op}: {name} must be a number or none, got {bound!r}")
    if lo is not None and hi is not None and lo > hi:
        raise TypeRuleError(f"{op}: clamp_min {lo} > clamp_max {hi}")
    out = attrs["out_dtype"]
    if out == "f32":
        if attrs["out_scale"] is not None or attrs["out_zero_point"] != 0:
            raise TypeRuleError(f"{op}: out_scale/out_zero_point only apply when out_dtype is an integer type")
        return TensorType(out_shape, "f32")
    from sliver.ir.types import is_lowbit

    if not is_lowbit(out):
        raise TypeRuleError(f"{op}: out_dtype must be f32 or a 1- to 8-bit integer type, got {out!r}")
    _qcheck_scale(op, attrs["out_scale"])
    _qcheck_zero_point(op, "out_zero_point", attrs["out_zero_point"], out)
    return TensorType(out_shape, out)


def _qlayer_epilogue(acc, scale, bias, *, clamp_min, clamp_max, out_dtype, out_scale, out_zero_point, **_):
    """acc (exact integers, float64) → acc·scale[o] + bias[o] → clamp → f32 or requantized codes.

    ``scale`` broadcasts over acc's channel axis already; the rescale runs in the scale's
    float type (f32, or f64 when the interpreter runs in float64)."""
    y = acc.to(scale.dtype) * scale
    if bias is not None:
        y = y + bias.to(scale.dtype)
    if clamp_min is not None or clamp_max is not None:
        y = y.clamp(clamp_min, clamp_max)
    if out_dtype == "f32":
        return y
    return _quantize_ref(y, scale=out_scale, zero_point=out_zero_point, dtype=out_dtype)


def _qconv2d_infer(types, *, stride, padding, dilation, groups, **attrs):
    x, w = types[0], types[1]
    shape_types = [TensorType(x.shape, "f32"), TensorType(w.shape, "f32")]
    try:
        shape = _conv2d_infer(shape_types, stride=stride, padding=padding, dilation=dilation, groups=groups).shape
    except TypeRuleError as e:
        raise TypeRuleError(str(e).replace("conv2d", "qconv2d", 1)) from None
    return _qlayer_infer("qconv2d", types, shape, attrs)


def _qconv2d_ref(x, w, scale, bias=None, *, stride, padding, dilation, groups, x_zero_point, w_zero_point, **attrs):
    xs = x.double() - x_zero_point  # padded taps are 0 here, i.e. hold x_zero_point as codes
    ws = w.double() - w_zero_point
    acc = _conv2d_ref(xs, ws, None, stride=stride, padding=padding, dilation=dilation, groups=groups)
    return _qlayer_epilogue(acc, scale.reshape(1, -1, 1, 1),
                            None if bias is None else bias.reshape(1, -1, 1, 1), **attrs)


declare(
    "qconv2d", ("x", "w", "scale", "b?"),
    {"stride": (1, 1), "padding": (0, 0, 0, 0), "dilation": (1, 1), "groups": 1, **_QEPILOGUE},
    infer=_qconv2d_infer, ref=_qconv2d_ref, opt_out={"trace": _MADE_BY_PASSES},
    doc="low-bit conv2d on integer codes: acc = Σ (x - x_zero_point)(w - w_zero_point) exactly (padding holds "
        "x_zero_point), y = clamp(acc * scale[o] + b[o], clamp_min, clamp_max), then f32 or quantized to "
        "out_dtype with out_scale/out_zero_point",
)


def _qdense_infer(types, **attrs):
    x, w = types[0], types[1]
    if w.rank != 2 or x.rank < 1 or x.shape[-1] != w.shape[1]:
        raise TypeRuleError(f"qdense: input {x} does not match weight {w} ([out, in])")
    return _qlayer_infer("qdense", types, x.shape[:-1] + (w.shape[0],), attrs)


def _qdense_ref(x, w, scale, bias=None, *, x_zero_point, w_zero_point, **attrs):
    acc = (x.double() - x_zero_point) @ (w.double() - w_zero_point).T
    return _qlayer_epilogue(acc, scale, bias, **attrs)


declare(
    "qdense", ("x", "w", "scale", "b?"), dict(_QEPILOGUE),
    infer=_qdense_infer, ref=_qdense_ref, opt_out={"trace": _MADE_BY_PASSES},
    doc="low-bit linear on integer codes: acc = Σ_k (x - x_zero_point)(w[o,k] - w_zero_point) exactly, then the "
        "qconv2d epilogue (scale, bias, clamp, f32 or requantized out_dtype)",
)


# ----------------------------------------------------------------------------
# weight-only quantized linear layers (issue 5: outlier-preserving quantization)


def _wq_linear_infer(types, *, bits, block, out_features, act_block=0):
    x, codes, scale, zero, index, value = types[:6]
    if not 2 <= bits <= 8:
        raise TypeRuleError(f"wq_linear: bits must lie in 2..8, got {bits}")
    if act_block and (x.shape[-1] % act_block if isinstance(x.shape[-1], int) else True):
        raise TypeRuleError(f"wq_linear: act_block {act_block} must divide the input's {x.shape[-1]} features")
    if x.rank < 1 or out_features < 1 or block < 1:
        raise TypeRuleError(f"wq_linear: need an input of rank >= 1, out_features >= 1 and block >= 1, "
                            f"got {x}, out_features={out_features}, block={block}")
    _float_only("wq_linear", x)
    numel = out_features * x.shape[-1]
    blocks = -(-numel // block)
    packed = TensorType((numel,), f"u{bits}").nbytes  # the codes as one little-endian bit stream
    want = [(codes, "codes", "u8", (packed,)), (scale, "scale", x.dtype, (blocks,)),
            (zero, "zero", "u8", (blocks,)), (index, "out_index", "i32", None), (value, "out_value", x.dtype, None)]
    for t, what, dtype, shape in want:
        if t.dtype != dtype or t.rank != 1 or (shape is not None and t.shape != shape):
            expect = f"{dtype}[{shape[0]}]" if shape else f"{dtype}[n]"
            raise TypeRuleError(f"wq_linear: {what} must be {expect} for a [{out_features},{x.shape[-1]}] weight "
                                f"in blocks of {block} at {bits} bits, got {t}")
    if index.shape != value.shape:
        raise TypeRuleError(f"wq_linear: out_index {index} and out_value {value} differ in length")
    if len(types) == 7 and types[6].shape != (out_features,):
        raise TypeRuleError(f"wq_linear: bias must be [{out_features}], got {types[6]}")
    return x.with_shape(x.shape[:-1] + (out_features,))


def unpack_codes(packed, bits: int, count: int):
    """The ``count`` unsigned ``bits``-bit codes of a packed bit stream (torch, int32)."""
    torch = _torch()
    p = torch.cat([packed.to(torch.int32), torch.zeros(1, dtype=torch.int32)])
    pos = torch.arange(count, dtype=torch.int64) * bits
    byte, shift = pos >> 3, (pos & 7).to(torch.int32)
    return ((p[byte] | (p[byte + 1] << 8)) >> shift) & ((1 << bits) - 1)


def wq_dequantize(codes, scale, zero, index, value, *, bits, block, shape):
    """The float weight of a ``wq_linear``: (code - zero[blk]) * scale[blk] with
    blk = flat index // block, then the float outliers added at their flat indices."""
    torch = _torch()
    numel = shape[0] * shape[1]
    u = unpack_codes(codes, bits, numel)
    blk = torch.arange(numel) // block
    w = (u - zero.to(torch.int32)[blk]).to(scale.dtype) * scale[blk]
    w = w.index_add(0, index.long(), value.to(scale.dtype))
    return w.reshape(shape)


def quantize_activations(x, act_block: int):
    """``x`` (float) rounded to int8 per run of ``act_block`` along its last axis, as
    ``wq_linear`` with ``act_block`` reads it: ``a = rint(x * (127 / max|x|))`` clamped to
    [-127, 127] (half to even), returned dequantized, ``a * (max|x| / 127)`` (a run of
    zeros stays 0); every step in float32 arithmetic."""
    torch = _torch()
    shape = x.shape
    xr = x.to(torch.float32).reshape(*shape[:-1], shape[-1] // act_block, act_block)
    amax = xr.abs().amax(-1, keepdim=True)
    inv = torch.where(amax > 0, torch.tensor(127.0, dtype=torch.float32) / amax, torch.zeros_like(amax))
    a = torch.round(xr * inv).clamp(-127, 127)
    return (a * (amax / torch.tensor(127.0, dtype=torch.float32))).reshape(shape).to(x.dtype)


def _wq_linear_ref(x, codes, scale, zero, index, value, b=None, *, bits, block, out_features, act_block=0):
    torch = _torch()
    shape = (out_features, x.shape[-1])
    if not act_block:
        w = wq_dequantize(codes, scale, zero, index, value, bits=bits, block=block, shape=shape)
        return torch.nn.functional.linear(x, w.to(x.dtype), b)
    # int8 activations for the codes' part; the kept float outliers read the float x
    w = wq_dequantize(codes, scale, zero, index[:0], value[:0], bits=bits, block=block, shape=shape)
    kept = torch.zeros(shape[0] * shape[1], dtype=x.dtype).index_add(0, index.long(), value.to(x.dtype))
    y = torch.nn.functional.linear(quantize_activations(x, act_block), w.to(x.dtype), b)
    return y + torch.nn.functional.linear(x, kept.reshape(shape))


declare(
    "wq_linear", ("x", "codes", "scale", "zero", "out_index", "out_value", "b?"),
    {"bits": REQUIRED, "block": REQUIRED, "out_features": REQUIRED, "act_block": 0},
    infer=_wq_linear_infer, ref=_wq_linear_ref,
    opt_out={"trace": "made by the outlier-preserving weight quantization pass, never traced from torch"},
    doc="weight-only quantized linear: x @ W.T + b with W[out_features, K] = (code - zero[i // block]) * "
        "scale[i // block] at flat index i (codes: bits-bit, packed little-endian into u8), plus the float "
        "outliers out_value added at flat indices out_index; act_block > 0: the codes' part reads x rounded to "
        "int8 per run of act_block features (quantize_activations), the outliers the float x",
)


def _wq_take_infer(types, *, bits, block, rows, columns):
    codes, scale, zero, index, value, idx = types
    if not 2 <= bits <= 8:
        raise TypeRuleError(f"wq_take: bits must lie in 2..8, got {bits}")
    if rows < 1 or columns < 1 or block < 1:
        raise TypeRuleError(f"wq_take: need rows, columns and block >= 1, got rows={rows}, columns={columns}, "
                            f"block={block}")
    if idx.dtype not in ("i64", "i32"):
        raise TypeRuleError(f"wq_take: indices must be i64 or i32, got {idx}")
    numel = rows * columns
    blocks = -(-numel // block)
    packed = TensorType((numel,), f"u{bits}").nbytes
    want = [(codes, "codes", "u8", (packed,)), (scale, "scale", None, (blocks,)), (zero, "zero", "u8", (blocks,)),
            (index, "out_index", "i32", None), (value, "out_value", scale.dtype, None)]
    for t, what, dtype, shape in want:
        if (dtype is not None and t.dtype != dtype) or t.rank != 1 or (shape is not None and t.shape != shape):
            expect = f"{dtype or 'f32'}[{shape[0] if shape else 'n'}]"
            raise TypeRuleError(f"wq_take: {what} must be {expect} for a [{rows},{columns}] table in blocks of "
                                f"{block} at {bits} bits, got {t}")
    _float_only("wq_take", scale)
    if index.shape != value.shape:
        raise TypeRuleError(f"wq_take: out_index {index} and out_value {value} differ in length")
    return scale.with_shape(idx.shape + (columns,))


def _wq_take_ref(codes, scale, zero, index, value, idx, *, bits, block, rows, columns):
    table = wq_dequantize(codes, scale, zero, index, value, bits=bits, block=block, shape=(rows, columns))
    return _take_ref(table, idx, axis=0)


declare(
    "wq_take", ("codes", "scale", "zero", "out_index", "out_value", "indices"),
    {"bits": REQUIRED, "block": REQUIRED, "rows": REQUIRED, "columns": REQUIRED},
    infer=_wq_take_infer, ref=_wq_take_ref,
    opt_out={"trace": "made by the weight quantization pass (embedding=true), never traced from torch"},
    doc="rows of a weight-only quantized table (a quantized embedding): take(W, indices, axis=0) with W[rows, "
        "columns] dequantized as in wq_linear (codes packed little-endian, (code - zero) * scale per block of "
        "flat indices, plus the float outliers)",
)


_reduce("amax", lambda x, axes, keepdim: x.amax(axes, keepdim=keepdim),
        "max over axes (dynamic activation ranges: amax(abs(x)))")


# ----------------------------------------------------------------------------
# attribute kinds: what each attribute may hold, checked before an op's type rule
# runs, so that a hand-edited or hostile IR text (``padding=[1.5, 1, 1, 1]``,
# ``stride=[0, 0]``, ``keepdim="yes"``) is a TypeRuleError naming the attribute, never
# a crash inside a type rule, the interpreter or a backend.

_INT64 = 2**63
_INT32 = 2**31


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and -_INT64 <= v < _INT64


def _is_num(v) -> bool:
    return (isinstance(v, float) or _is_int(v)) and not isinstance(v, bool)


def _outside(value, dtype: str) -> str | None:
    """None when ``value`` is a value of element type ``dtype``, else what it must be:
    floats finite within the type's range (or ±inf, nan), integers integral and
    within the type's range."""
    import numpy as np

    from sliver.ir.types import int_range, is_lowbit, to_numpy

    if is_float(dtype):
        big = float(np.finfo(to_numpy(dtype)).max)
        if _is_num(value) and (not math.isfinite(value) or abs(value) <= big):
            return None
        return f"a {dtype} value (a number of magnitude at most {big:g}, inf or nan)"
    if dtype == "bool":
        lo, hi = 0, 1
    elif is_lowbit(dtype):
        lo, hi = int_range(dtype)
    else:
        lo, hi = int(np.iinfo(to_numpy(dtype)).min), int(np.iinfo(to_numpy(dtype)).max)
    return None if _is_int(value) and lo <= value <= hi else f"a {dtype} value (an integer in [{lo}, {hi}])"


def _int(lo=None, optional=False):
    what = "an integer" + (f" >= {lo}" if lo is not None else "") + (" or none" if optional else "")

    def check(v, types):
        if v is None and optional:
            return None
        return None if _is_int(v) and (lo is None or v >= lo) else what

    return check


def _ints(n=None, lo=None):
    """A list of sizes, strides or axes: each an int32 (like every tensor dimension)."""
    what = (f"a list of {n} integers" if n else "a list of integers") + (
        f" in [{lo}, {_INT32 - 1}]" if lo is not None else f" of magnitude below {_INT32}")

    def check(v, types):
        ok = isinstance(v, tuple) and (n is None or len(v) == n) and len(v) <= 64
        ok = ok and all(_is_int(d) and (lo if lo is not None else -_INT32) <= d < _INT32 for d in v)
        return None if ok else what

    return check


def _dims():
    """A shape: each dimension an int in [0, 2^31 - 1] or a symbolic dimension within it."""
    what = f"a list of integers in [0, {_INT32 - 1}] or symbolic dimensions within it"

    def ok(d):
        if isinstance(d, Sym):
            lo, hi = bounds(d)
            return 0 <= lo and hi < _INT32
        return _is_int(d) and 0 <= d < _INT32

    def check(v, types):
        return None if isinstance(v, tuple) and len(v) <= 64 and all(ok(d) for d in v) else what

    return check


def _index(v, types):
    """A position along an axis: an integer, or a symbolic dimension (``x[:seq]``)."""
    return None if _is_int(v) or isinstance(v, Sym) else "an integer or a symbolic dimension"


def _num(optional=False, positive=False, finite=False):
    what = ("a positive " if positive else "a ") + ("finite number" if finite else "number") + (
        " or none" if optional else "")

    def check(v, types):
        if v is None and optional:
            return None
        ok = _is_num(v) and (not positive or v > 0) and (not finite or math.isfinite(v))
        return None if ok else what

    return check


def _bound(dtype=None):
    """A clamp bound: none, or a value (not nan) of ``dtype`` (default: the first operand's type)."""

    def check(v, types):
        if v is None:
            return None
        t = dtype or types[0].dtype
        if isinstance(v, float) and math.isnan(v):
            return f"none or a {t} value, not nan"
        problem = _outside(v, t)
        return problem and f"none or {problem}"

    return check


def _bool(v, types):
    return None if isinstance(v, bool) else "true or false"


def _choice(*names):
    what = "one of " + ", ".join(f'"{n}"' for n in names)
    return lambda v, types: None if isinstance(v, str) and v in names else what


def _dtype(v, types):
    return None if isinstance(v, str) and v in DTYPES else "an element type (" + ", ".join(sorted(DTYPES)) + ")"


_CONV = {"stride": _ints(2, 1), "padding": _ints(4, 0), "dilation": _ints(2, 1), "groups": _int(1)}
_EPILOGUE = {"x_zero_point": _int(), "w_zero_point": _int(), "clamp_min": _bound("f32"), "clamp_max": _bound("f32"),
             "out_dtype": _dtype, "out_scale": _num(True), "out_zero_point": _int()}
_NORM = {"axes": _int(1), "eps": _num(finite=True)}
_REDUCE = {"axes": _ints(), "keepdim": _bool}
_POOL = {"kernel": _ints(2, 1), "stride": _ints(2, 1), "padding": _ints(4, 0), "ceil_mode": _bool}

#: op name → attribute name → check (returns None, or what the attribute must be)
ATTR_KINDS: dict[str, dict[str, Callable]] = {
    "constant": {"value": _num(), "dtype": _dtype, "shape": _dims()},
    "gelu": {"approximate": _choice("none", "tanh")},
    "clamp": {"min": _bound(), "max": _bound()},
    "leaky_relu": {"negative_slope": _num(finite=True)},
    "cast": {"dtype": _dtype},
    "cumsum": {"axis": _int()},
    "conv2d": _CONV,
    "conv_transpose2d": {**_CONV, "output_padding": _ints(2, 0)},
    "batch_norm": {"eps": _num(finite=True)},
    "layer_norm": _NORM,
    "rms_norm": _NORM,
    "max_pool2d": {**_POOL, "dilation": _ints(2, 1)},
    "avg_pool2d": {**_POOL, "count_include_pad": _bool},
    "adaptive_avg_pool2d": {"output_size": _ints(2, 1)},
    "concat": {"axis": _int()},
    "slice": {"axis": _int(), "start": _index, "end": _index, "step": _int(1)},
    "take": {"axis": _int()},
    "gather": {"axis": _int()},
    "argmax": {"axis": _int(), "keepdim": _bool},
    "argmin": {"axis": _int(), "keepdim": _bool},
    "sort": {"axis": _int(), "descending": _bool},
    "argsort": {"axis": _int(), "descending": _bool},
    "reshape": {"shape": _dims()},
    "permute": {"dims": _ints()},
    "expand": {"shape": _dims()},
    "softmax": {"axis": _int()},
    "mean": _REDUCE,
    "sum": _REDUCE,
    "amax": _REDUCE,
    "attention": {"causal": _bool, "scale": _num(True, finite=True)},
    "fake_quant": {"qmin": _int(), "qmax": _int(), "axis": _int(optional=True)},
    "quantize": {"scale": _num(), "zero_point": _int(), "dtype": _dtype},
    "dequantize": {"scale": _num(), "zero_point": _int()},
    "qconv2d": {**_CONV, **_EPILOGUE},
    "qdense": _EPILOGUE,
    "wq_linear": {"bits": _int(), "block": _int(1), "out_features": _int(1), "act_block": _int(0)},
    "wq_take": {"bits": _int(), "block": _int(1), "rows": _int(1), "columns": _int(1)},
}


def check_attr_kinds(op: str, attrs: dict, types: list[TensorType]) -> None:
    """Raise :class:`TypeRuleError` when an attribute of ``op`` holds the wrong kind of
    value (a float where an int belongs, a list of the wrong length, a zero stride, a
    clamp bound its operand's type cannot hold…); ``types`` are the operand types."""
    kinds = ATTR_KINDS.get(op, {})
    for name, value in attrs.items():
        check = kinds.get(name)
        problem = check(value, types) if check is not None else None
        if problem:
            raise TypeRuleError(f"{op}: attribute {name} must be {problem}, got {format_attr(value)}")
