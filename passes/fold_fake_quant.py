"""fold-fake-quant: turn fake-quantized conv2d / linear layers into integer ops.

    conv2d(fake_quant(a, sx, zx), fake_quant(W, sw, zw){axis=0}, b)      (a QAT layer)
      → qconv2d(quantize(a){sx, zx}, Wq, scale = sx·sw[o], b)            (Wq: integer codes)

and the same for linear → qdense.  The codes Wq are torch's own (W's fake-quant
equals (Wq − zw)·sw bit for bit; the pass checks it).  What follows the layer is
folded into the op's epilogue while it is a chain of single users: a batch norm
(scale·g/√(var+eps), (b − mean)·g/√(var+eps) + β), a per-channel or scalar mul / add /
sub by a constant (any sign), then relu / clamp.  Finally a ``quantize`` of the layer's result
(the next low-bit layer's input), also seen through reshapes and max pooling, becomes the layer's
``out_dtype`` (the requantize is fused) when every user of the result quantizes it the
same way.

Integer code types come from the fake-quant range: [0, 2^B−1] → uB, [−2^(B−1), 2^(B−1)−1]
→ iB (B ≥ 2); any other range of 2^B values or fewer is stored as uB codes shifted
by −qmin (so [−1, 0], torch's 1-bit signed range, is u1 with the zero point + 1).

A layer that cannot be folded stays in float, and the pass's report (its notes,
printed by ``sliver lower/opt``) says why: a bit width outside 1–8, per-channel
activation quantization, weight quantization along another axis or with different
zero points per channel, a fake-quant on a computed (non-constant) weight or scale.
With ``strict=true`` such a layer is an error instead.

A relu right after a per-tensor fake-quant (torch.ao's eager QAT quantizes a conv's
output before its ReLU) is folded into that fake-quant first: relu(fq(y)) equals fq(y)
with qmin raised to the zero point, exactly.

It runs first in the default pipeline: before ``fold-batchnorm`` (which would fold a
batch norm into float weights) and ``const-fold`` (which would turn the weight
fake-quants into plain float params).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from sliver.common.errors import SliverError
from sliver.ir.types import int_range
from sliver.passes.base import Pass, register
from sliver.common.text import table_lines


class NotFoldable(Exception):
    """Why a layer stays in float."""


def code_dtype(qmin: int, qmax: int, what: str) -> tuple[str, int]:
    """(integer type, offset): codes are stored as q + offset in that type."""
    levels = qmax - qmin + 1
    bits = max(1, math.ceil(math.log2(levels)))
    if bits > 8:
        raise NotFoldable(f"{what} range [{qmin}, {qmax}] needs {bits} bits; low-bit ops take 1 to 8")
    for dtype in ((f"i{bits}",) if qmin < 0 and bits >= 2 else ()) + (f"u{bits}",):
        lo, hi = int_range(dtype)
        if lo <= qmin and qmax <= hi:
            return dtype, 0
    return f"u{bits}", -qmin


def _const(module, value) -> np.ndarray | None:
    """Data of a param or a scalar constant, else None."""
    data = module.param_data(value)
    if data is not None:
        return data
    op = value.producer
    if op is not None and op.kind == "constant":
        from sliver.ir.types import to_numpy

        return np.full(op.attrs["shape"], op.attrs["value"], to_numpy(op.attrs["dtype"]))
    return None


def _fake_quant_of(module, value):
    op = value.producer
    return op if op is not None and op.kind == "fake_quant" else None


def _layer_name(module, weight) -> str:
    name = weight.name
    return name[: -len(".weight")] if name.endswith(".weight") else name


# -- the plan of one layer ------------------------------------------------------------------


@dataclass
class Plan:
    layer: str
    op: object
    x_fq: object
    x_dtype: str
    x_scale: float
    x_zero_point: int
    w_dtype: str
    w_codes: np.ndarray
    w_zero_point: int
    scale: np.ndarray  # float64 [O]
    bias: np.ndarray | None  # float64 [O]
    a_bits: int
    w_bits: int
    x_clamp: tuple = (None, None)  # float bounds applied before quantize when the range is narrower than the type
    clamp_min: float | None = None
    clamp_max: float | None = None
    folded: list = field(default_factory=list)  # ops absorbed into the epilogue, in order
    epilogue: list = field(default_factory=list)  # their descriptions


def _plan_layer(module, op) -> Plan:
    x, w = op.operands[0], op.operands[1]
    layer = _layer_name(module, w.producer.operands[0] if _fake_quant_of(module, w) else w)
    x_fq, w_fq = _fake_quant_of(module, x), _fake_quant_of(module, w)
    if x_fq is None and w_fq is None:
        raise NotFoldable("not quantized")
    if w_fq is None:
        raise NotFoldable("the input is fake-quantized but the weight is not")
    if x_fq is None:
        raise NotFoldable("the weight is fake-quantized but the input is not (weight-only quantization stays float)")
    # -- activation: per tensor, constant qparams
    if x_fq.attrs["axis"] is not None:
        raise NotFoldable("per-channel activation quantization is not supported (the op takes one input scale)")
    sx, zx = _const(module, x_fq.operands[1]), _const(module, x_fq.operands[2])
    if sx is None or zx is None:
        raise NotFoldable("the input's scale/zero point are computed at run time (dynamic quantization)")
    a_min, a_max = x_fq.attrs["qmin"], x_fq.attrs["qmax"]
    x_dtype, x_off = code_dtype(a_min, a_max, "activation")
    # -- weight: a constant, per output channel (axis 0) or per tensor
    wdata = module.param_data(w_fq.operands[0])
    sw, zw = _const(module, w_fq.operands[1]), _const(module, w_fq.operands[2])
    if wdata is None:
        raise NotFoldable("the weight fake-quant is applied to a computed tensor, not a constant weight")
    if sw is None or zw is None:
        raise NotFoldable("the weight's scale/zero point are not constants")
    o = wdata.shape[0]
    axis = w_fq.attrs["axis"]
    if axis is not None and axis % wdata.ndim != 0:
        raise NotFoldable(f"the weight is quantized along axis {axis}; low-bit ops need axis 0 (output channels)")
    if np.unique(zw).size != 1:
        raise NotFoldable("the weight zero points differ per channel; low-bit ops take one weight zero point")
    w_min, w_max = w_fq.attrs["qmin"], w_fq.attrs["qmax"]
    w_dtype, w_off = code_dtype(w_min, w_max, "weight")
    sw = np.broadcast_to(np.asarray(sw, np.float32).reshape(-1), (o,))
    zw0 = int(np.asarray(zw).reshape(-1)[0])
    if not (float(sx) > 0 and math.isfinite(float(sx)) and np.all(sw > 0) and np.all(np.isfinite(sw))):
        raise NotFoldable("a scale is zero, negative or not finite")
    for what, zp, lo, hi in (("input", int(zx), a_min, a_max), ("weight", zw0, w_min, w_max)):
        if not lo <= zp <= hi:
            raise NotFoldable(f"the {what} zero point {zp} lies outside its range [{lo}, {hi}]")
    codes, exact = _weight_codes(wdata, sw, zw0, w_min, w_max, w_fq)
    if not exact:  # never expected: the same formula as torch's kernel
        raise NotFoldable("the integer weights do not reproduce torch's fake-quantized weights exactly")
    bias = None
    if len(op.operands) == 3:
        b = module.param_data(op.operands[2])
        if b is None:
            raise NotFoldable("the bias is computed, not a constant")
        bias = b.astype(np.float64)
    return Plan(
        layer=layer, op=op, x_fq=x_fq, x_dtype=x_dtype, x_scale=float(sx), x_zero_point=int(zx) + x_off,
        x_clamp=_narrow_range_bounds(x_dtype, x_off, a_min, a_max, int(zx), float(sx)),
        w_dtype=w_dtype, w_codes=(codes + w_off).astype(np.uint8 if w_dtype[0] == "u" else np.int8),
        w_zero_point=zw0 + w_off, scale=float(np.float32(sx)) * sw.astype(np.float64), bias=bias,
        a_bits=int(x_dtype[1:]), w_bits=int(w_dtype[1:]),
    )


def _narrow_range_bounds(dtype, offset, qmin, qmax, zp, scale):
    """Float bounds (lo, hi) that make quantize to ``dtype`` clamp at [qmin, qmax] when that
    range is narrower than the type's (e.g. [-7, 7] in i4, or [zp, 127] after a ReLU).
    clamp(x, (qmin − zp)·s, (qmax − zp)·s) before quantizing is exact: those bounds
    quantize to qmin and qmax (|k·s·(1/s) − k| ≪ 0.5) and quantize is monotone."""
    lo_t, hi_t = int_range(dtype)
    s32 = np.float32(scale)
    lo = float(np.float32(qmin - zp) * s32) if qmin + offset > lo_t else None
    hi = float(np.float32(qmax - zp) * s32) if qmax + offset < hi_t else None
    return lo, hi


def _intersect(lo, hi, lo2, hi2):
    """The bounds of clamp(clamp(y, lo, hi), lo2, hi2) as one clamp, or None when the
    intervals do not overlap (then the composition is not a single clamp of y)."""
    new_lo = lo if lo2 is None else lo2 if lo is None else max(lo, lo2)
    new_hi = hi if hi2 is None else hi2 if hi is None else min(hi, hi2)
    if new_lo is not None and new_hi is not None and new_lo > new_hi:
        return None
    return (None if new_lo is None else float(new_lo)), (None if new_hi is None else float(new_hi))


def _weight_codes(w, sw, zw, qmin, qmax, w_fq):
    """torch's integer codes of a fake-quantized weight, and whether (codes − zw)·sw
    reproduces the fake-quant op's result bit for bit."""
    import torch

    from sliver.ir.ops import quantize_codes

    shape = (-1,) + (1,) * (w.ndim - 1)
    wt = torch.from_numpy(np.ascontiguousarray(w, np.float32))
    st = torch.from_numpy(np.array(sw, np.float32)).reshape(shape)
    codes = quantize_codes(wt, st, zw, qmin, qmax)
    attrs = dict(w_fq.attrs, axis=0 if w_fq.attrs["axis"] is None else w_fq.attrs["axis"])
    want = w_fq.decl.ref(wt, st.reshape(-1), torch.full((w.shape[0],), zw, dtype=torch.int32), **attrs)
    got = (codes - zw).float() * st
    return codes.numpy(), bool(torch.equal(got, want))


# -- epilogue: what follows the layer ----------------------------------------------------------


def _channel_vector(module, value, out_type, channel_axis) -> np.ndarray | None:
    """A constant that broadcasts along the channel axis only (or a scalar), as [C] float64."""
    data = _const(module, value)
    if data is None:
        return None
    c = out_type.shape[channel_axis]
    rank = out_type.rank
    shape = (1,) * (rank - data.ndim) + data.shape  # align right, as broadcasting does
    if len(shape) > rank:
        return None
    for i, d in enumerate(shape):
        if d != 1 and i != channel_axis:
            return None
    data = np.asarray(data, np.float64).reshape(-1)
    return np.full(c, data[0]) if data.size == 1 else data if data.size == c else None


def _absorb_epilogue(module, plan: Plan) -> None:
    """Walk the single-user chain after the layer and fold what the epilogue can hold."""
    value = plan.op.result
    channel_axis = 1 if plan.op.kind == "conv2d" else value.type.rank - 1
    clamped = False
    while len(value.uses) == 1 and all(v is not value for v in module.outputs):
        (user, index), = value.uses
        bias = plan.bias if plan.bias is not None else np.zeros_like(plan.scale)
        if user.kind == "batch_norm" and not clamped and index == 0 and channel_axis == 1:
            stats = [module.param_data(v) for v in user.operands[1:]]
            if any(s is None for s in stats):
                break
            mean, var, *affine = (s.astype(np.float64) for s in stats)
            gamma = affine[0] if affine else np.ones_like(mean)
            beta = affine[1] if len(affine) > 1 else np.zeros_like(mean)
            gain = gamma / np.sqrt(var + user.attrs["eps"])
            plan.scale, plan.bias = plan.scale * gain, (bias - mean) * gain + beta
            plan.epilogue.append("batch_norm")
        elif user.kind in ("mul", "add", "sub") and not clamped:
            other = user.operands[1 - index]
            vec = _channel_vector(module, other, user.result.type, channel_axis)
            if vec is None or user.result.type.shape != value.type.shape or (user.kind == "sub" and index != 0):
                break
            if user.kind == "mul":  # any sign: no clamp has been folded yet (clamps come last)
                if not np.all(np.isfinite(vec)):
                    break
                plan.scale, plan.bias = plan.scale * vec, bias * vec
            else:
                plan.bias = bias + vec if user.kind == "add" else bias - vec
            plan.epilogue.append(user.kind)
        elif user.kind in ("relu", "clamp"):
            lo, hi = (0.0, None) if user.kind == "relu" else (user.attrs["min"], user.attrs["max"])
            bounds = _intersect(plan.clamp_min, plan.clamp_max, lo, hi)
            if bounds is None:
                break
            plan.clamp_min, plan.clamp_max = bounds
            clamped = True
            plan.epilogue.append(user.kind)
        else:
            break
        plan.folded.append(user)
        value = user.result


# -- the rewrite -------------------------------------------------------------------------------


def _reuse_or_add(module, kind, x, attrs, before, name):
    """The result of ``kind(x){attrs}``: an existing one defined before ``before``, or a new one."""
    for u in x.users:
        if u.kind == kind and u.attrs == u.decl.complete_attrs(attrs) and module.ops.index(u) < module.ops.index(before):
            return u.result
    return module.add_op(kind, [x], attrs, before=before, names=[module.fresh_name(name)]).result


def _rewrite(module, plan: Plan):
    op = plan.op
    last = plan.folded[-1].result if plan.folded else op.result
    x = plan.x_fq.operands[0]
    if plan.x_clamp != (None, None):
        lo, hi = plan.x_clamp
        x = _reuse_or_add(module, "clamp", x, {"min": lo, "max": hi}, op, f"{plan.layer}.input_clamp")
    attrs = {"scale": plan.x_scale, "zero_point": plan.x_zero_point, "dtype": plan.x_dtype}
    codes = _reuse_or_add(module, "quantize", x, attrs, op, f"{plan.layer}.input_q")
    w = module.add_param(f"{plan.layer}.qweight", plan.w_codes, before=op, dtype=plan.w_dtype)
    s = module.add_param(f"{plan.layer}.qscale", plan.scale.astype(np.float32), before=op)
    operands = [codes, w, s]
    if plan.bias is not None:
        operands.append(module.add_param(f"{plan.layer}.qbias", plan.bias.astype(np.float32), before=op))
    qattrs = {"x_zero_point": plan.x_zero_point, "w_zero_point": plan.w_zero_point,
              "clamp_min": plan.clamp_min, "clamp_max": plan.clamp_max}
    kind = "qconv2d" if op.kind == "conv2d" else "qdense"
    if kind == "qconv2d":
        qattrs.update({k: op.attrs[k] for k in ("stride", "padding", "dilation", "groups")})
    new = module.add_op(kind, operands, qattrs, before=plan.folded[-1] if plan.folded else op,
                        names=[module.fresh_name(plan.layer)])
    module.replace_all_uses_with(last, new.result)
    return new


def _hoist_quantize(module, q) -> bool:
    """quantize(reshape(y)) → reshape(quantize(y)) (and every op declared
    ``commutes_with_quantize``, e.g. max_pool2d; clamp likewise) when that op feeds only
    the quantize: the codes are the same, and the layer before can then emit them."""
    src = q.operands[0]
    r = src.producer
    if r is None or not r.decl.has("commutes_with_quantize") or len(src.uses) != 1 or any(v is src for v in module.outputs):
        return False
    inner = module.add_op(q.kind, [r.operands[0]], q.attrs, before=r, names=[module.fresh_name(q.result.name)])
    out = module.add_op(r.kind, [inner.result], r.attrs, before=q, names=[module.fresh_name(r.result.name)])
    module.replace_all_uses_with(q.result, out.result)
    name = r.result.name
    module.erase(q)
    module.erase(r)
    module.rename(out.result, name)
    return True


def _absorb_clamp(module, c) -> bool:
    """clamp(qconv2d(...)) → qconv2d(...){clamp bounds intersected} (f32 result, single use)."""
    if c.kind != "clamp":
        return False
    src = c.operands[0]
    p = src.producer
    if p is None or p.kind not in ("qconv2d", "qdense") or p.attrs["out_dtype"] != "f32" or len(src.uses) != 1:
        return False
    if any(v is src for v in module.outputs):
        return False
    bounds = _intersect(p.attrs["clamp_min"], p.attrs["clamp_max"], c.attrs["min"], c.attrs["max"])
    if bounds is None:
        return False
    new = module.add_op(p.kind, p.operands, dict(p.attrs, clamp_min=bounds[0], clamp_max=bounds[1]), before=p,
                        names=[module.fresh_name(src.name)])
    module.replace_all_uses_with(c.result, new.result)
    name = src.name
    module.erase(c)
    module.erase(p)
    module.rename(new.result, name)
    return True


def _fuse_requantize(module) -> dict[str, str]:
    """A qconv2d/qdense whose f32 result is only quantized (one way) emits the codes
    itself; returns {layer result name: out_dtype}."""
    changed = True
    while changed:
        changed = False
        for q in [op for op in module.ops if op.kind in ("quantize", "clamp")]:
            if q.module is module and (_hoist_quantize(module, q) or _absorb_clamp(module, q)):
                changed = True
    fused = {}
    for q in [op for op in module.ops if op.kind == "quantize"]:
        if q.module is not module:
            continue
        src = q.operands[0]
        p = src.producer
        if p is None or p.kind not in ("qconv2d", "qdense") or p.attrs["out_dtype"] != "f32":
            continue
        users = src.users
        if any(v is src for v in module.outputs) or not all(u.kind == "quantize" and u.attrs == q.attrs for u in users):
            continue
        attrs = dict(p.attrs, out_dtype=q.attrs["dtype"], out_scale=q.attrs["scale"],
                     out_zero_point=q.attrs["zero_point"])
        new = module.add_op(p.kind, p.operands, attrs, before=p, names=[module.fresh_name(src.name)])
        for u in users:
            module.replace_all_uses_with(u.result, new.result)
            module.erase(u)
        name = src.name
        module.erase(p)
        module.rename(new.result, name)
        fused[name] = q.attrs["dtype"]
    return fused


def _narrow_through_relu(module) -> int:
    """relu(fake_quant(y){qmin, qmax}) = fake_quant(y){max(qmin, zp), qmax} exactly (per
    tensor, constant zero point): the grid values below zero are exactly those relu
    zeroes.  torch.ao's eager QAT puts the output fake-quant before the ReLU; narrowing
    makes it the next layer's input quantizer."""
    count = 0
    for op in list(module.ops):
        if op.module is not module or op.kind not in ("relu", "clamp"):
            continue
        if op.kind == "clamp" and (op.attrs["min"] != 0 or op.attrs["max"] is not None):
            continue
        fq = _fake_quant_of(module, op.operands[0])
        if fq is None or fq.attrs["axis"] is not None:
            continue
        zp = _const(module, fq.operands[2])
        if zp is None or not fq.attrs["qmin"] <= int(zp) <= fq.attrs["qmax"]:
            continue
        attrs = dict(fq.attrs, qmin=max(fq.attrs["qmin"], int(zp)))
        new = module.add_op("fake_quant", fq.operands, attrs, before=op, names=[module.fresh_name(op.result.name)])
        module.replace_all_uses_with(op.result, new.result)
        module.erase(op)
        count += 1
    return count


# -- the pass ----------------------------------------------------------------------------------


@register
@dataclass(frozen=True)
class FoldFakeQuant(Pass):
    """Fake-quantized conv2d/linear (QAT) -> qconv2d/qdense on 1-8-bit integer codes."""

    name = "fold-fake-quant"
    strict: bool = False  # a quantized layer that cannot be folded is an error (default: it stays float)

    def run(self, module):
        from sliver.passes.dce import dce

        narrowed = _narrow_through_relu(module)
        layers = []
        for op in list(module.ops):
            if op.module is not module or op.kind not in ("conv2d", "linear"):
                continue
            try:
                plan = _plan_layer(module, op)
            except NotFoldable as e:
                w = op.operands[1]
                fq = _fake_quant_of(module, w)
                name = _layer_name(module, fq.operands[0] if fq else w)
                if self.strict and str(e) != "not quantized":
                    raise SliverError(f"fold-fake-quant: layer {name} ({op.kind}) cannot be folded: {e}") from None
                layers.append({"layer": name, "op": op.kind, "folded": False, "reason": str(e)})
                continue
            _absorb_epilogue(module, plan)
            new = _rewrite(module, plan)
            layers.append({"layer": plan.layer, "op": new.kind, "folded": True, "value": new.result.name,
                           "w_bits": plan.w_bits, "a_bits": plan.a_bits, "x_dtype": plan.x_dtype,
                           "w_dtype": plan.w_dtype, "epilogue": plan.epilogue, "out": "f32"})
        if not any(row["folded"] for row in layers):
            if narrowed:
                dce(module)
            return bool(narrowed), {"layers": layers, "text": format_report(layers)}
        dce(module)
        for row in layers:  # the folded op takes the layer's name once the float op is gone
            value = row.get("value")
            if value and value != row["layer"] and not module.name_taken(row["layer"]):
                module.rename(next(v for v in module.values() if v.name == value), row["layer"])
                row["value"] = row["layer"]
        fused = _fuse_requantize(module)
        for row in layers:
            if row.get("value") in fused:
                row["out"] = fused[row["value"]]
        return True, {"layers": layers, "text": format_report(layers)}


def format_report(layers: list[dict]) -> str:
    """One line per conv/linear: folded (bits, code types, epilogue, output) or why not."""
    if not layers:
        return "fold-fake-quant: no conv2d/linear layers\n"
    rows = [("layer", "op", "bits", "codes x/w", "epilogue", "out / reason")]
    for r in layers:
        if r["folded"]:
            rows.append((r["layer"], r["op"], f"W{r['w_bits']}A{r['a_bits']}", f"{r['x_dtype']}/{r['w_dtype']}",
                         "+".join(r["epilogue"]) or "-", r["out"]))
        else:
            rows.append((r["layer"], r["op"], "float", "-", "-", r["reason"]))
    n = sum(r["folded"] for r in layers)
    head = f"fold-fake-quant: {n} of {len(layers)} conv2d/linear layers folded to low-bit ops\n"
    return head + "\n".join(table_lines(rows, indent="  ")) + "\n"
