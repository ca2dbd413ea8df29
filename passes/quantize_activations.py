"""quantize-activations: per-tensor round-to-nearest (RTN) of the inputs of linear
layers, simulated with ``fake_quant``, keeping super activations in float (issue 5,
part 2).

Background: "The Super Weight in Large Language Models" (Yu, Wan et al., 2024).  A
super activation — one channel of one token, hundreds of times the median — sets
the range of a per-tensor activation quantizer and leaves a handful of levels for
everything else.  Holding it out of the range and restoring it in float makes plain
per-tensor RTN competitive.

Every value that feeds a ``linear`` or ``wq_linear`` (as its input ``x``) is replaced,
for those layers, by ``fake_quant(x, scale, zero_point)`` with ``bits``-bit codes:

* ``mode=calibrated`` (default): scale (and zero point) are params, from the range
  of ``x`` in one forward pass of the interpreter on a calibration input — the
  ``inputs`` given through the API, else the data-free input of ``find-outliers``
  (fixed pseudo-random tokens, all-ones masks, standard-normal floats).
  ``symmetric=true``: ``scale = max|x| / (2^(bits-1) - 1)``, zero point 0;
  ``symmetric=false``: ``[min(x, 0), max(x, 0)]`` onto ``[0, 2^bits - 1]``.
* ``mode=dynamic``: ``scale = max(max|x|, 1e-12) / (2^(bits-1) - 1)`` computed in the
  graph for every input (``amax``, ``abs``, ``div`` ops); symmetric only.
* ``keep_super=true``: the channels where the super-activation report finds a
  massive activation at a layer's input are kept in float: they are left out of the
  range (zeroed before ``max``) and restored after ``fake_quant``:
  ``y = fq(x) * (1 - m) + x * m`` with ``m`` the 0/1 channel mask, which gives back
  those channels bit for bit.  The whole channel is kept (every token): the position
  of the spike's token is a property of the input, its channel of the weights.  The
  report is ``index=FILE`` (``sliver outliers --json``), the API's
  ``super_activations``, or — by default — ``find-outliers`` run on the module.

The pass knows nothing of any model.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from sliver.common.errors import SliverError
from sliver.passes.base import Pass, register
from sliver.passes.quantize_weights import check_bits, load_report

MODES = ("calibrated", "dynamic")
_LAYERS = {"linear": ".weight", "wq_linear": ".codes"}


def _layer_key(name: str, suffix: str) -> str:
    """A layer's name from its weight param: ``fc.weight`` / ``fc.codes`` → ``fc``."""
    return name.removesuffix(suffix)


def activation_sites(module, who: str) -> dict:
    """{input value name: (value, [consumer linear / wq_linear ops])}, in program order."""
    sites: dict = {}
    for op in module.ops:
        if op.kind in _LAYERS:
            x = op.operands[0]
            sites.setdefault(x.name, (x, []))[1].append(op)
    if not sites:
        raise SliverError(f"{who}: @{module.name} has no linear layers: activation quantization quantizes the "
                          "inputs of linear / wq_linear ops, so there is nothing to quantize")
    return sites


def kept_channels(report, sites) -> dict[str, list[int]]:
    """{site value name: channels} from a super-activation report: a massive activation
    at channel c of a value consumed by layer L keeps channel c of L's input."""
    by_layer: dict[str, set] = {}
    for a in report.get("super_activations", []):
        for consumer in a.get("consumers", []):
            by_layer.setdefault(_layer_key(consumer, ".weight"), set()).add(int(a["channel"]))
    out = {}
    for name, (x, ops) in sites.items():
        channels = set()
        for op in ops:
            channels |= by_layer.get(_layer_key(op.operands[1].name, _LAYERS[op.kind]), set())
        if channels:
            out[name] = sorted(c for c in channels if 0 <= c < x.type.shape[-1])
    return out


@register
@dataclass(frozen=True)
class QuantizeActivations(Pass):
    """Per-tensor RTN (fake_quant) of linear inputs, calibrated or dynamic; super activations kept in float."""

    name = "quantize-activations"
    lossy = True

    bits: int = 8
    mode: str = "calibrated"
    symmetric: bool = True
    keep_super: bool = False
    index: str = ""
    seed: int = 0
    #: calibration inputs (numpy arrays); not a CLI option
    inputs: tuple | None = field(default=None, compare=False, repr=False)
    #: a find-outliers report (or its super_activations list); not a CLI option
    super_activations: object = field(default=None, compare=False, repr=False)

    def _report(self, module) -> dict:
        if not self.keep_super:
            return {}
        if self.super_activations is not None:
            s = self.super_activations
            return s if isinstance(s, dict) else {"super_activations": list(s)}
        if self.index:
            return load_report(self.index, self.name)
        from sliver.passes.outliers import find_outliers, projections

        if not projections(module) and any(op.kind == "wq_linear" for op in module.ops):
            raise SliverError(f"{self.name}: keep_super finds super activations with find-outliers, which needs the "
                              "float linear layers: run quantize-activations before quantize-weights, or give "
                              "index=FILE (from `sliver outliers MODEL --json FILE`)")
        return find_outliers(module, list(self.inputs) if self.inputs is not None else None, seed=self.seed)

    def run(self, module):
        check_bits(self.bits, self.name)
        if self.mode not in MODES:
            raise SliverError(f"{self.name}: mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.mode == "dynamic" and not self.symmetric:
            raise SliverError(f"{self.name}: mode=dynamic is symmetric only (a runtime zero point would need "
                              "rounding in the graph); use symmetric=true or mode=calibrated")
        sites = activation_sites(module, self.name)
        for name, (x, _) in sites.items():
            if x.type.dtype != "f32":
                raise SliverError(f"{self.name}: the input %{name} of a linear layer is {x.type}; fake_quant "
                                  "needs f32")
        keep = kept_channels(self._report(module), sites)
        ranges = self._calibrate(module, sites, keep) if self.mode == "calibrated" else {}
        notes = []
        for name, (x, ops) in sites.items():
            y, entry = self._insert(module, x, ops, keep.get(name, []), ranges.get(name))
            for op in ops:
                op.set_operand(0, y)
            notes.append({"value": name, "layers": [op.operands[1].name for op in ops], **entry})
        return True, {"sites": notes, "bits": self.bits, "mode": self.mode}

    def _calibrate(self, module, sites, keep) -> dict[str, tuple[float, float]]:
        """(min, max) of every site on the calibration input, kept channels left out."""
        from sliver.ir.interp import check_inputs, run
        from sliver.passes.outliers import default_inputs

        inputs = (check_inputs(module, [np.asarray(a) for a in self.inputs]) if self.inputs is not None
                  else default_inputs(module, seed=self.seed)[0])
        seen = {}

        def observe(op, results):
            for r, t in zip(op.results, results):
                if r.name in sites:
                    seen[r.name] = t.numpy()

        run(module, inputs, observe=observe)
        for v, a in zip(module.inputs, inputs):
            if v.name in sites:
                seen[v.name] = np.asarray(a)
        ranges = {}
        for name in sites:
            a = seen[name].astype(np.float64)
            if keep.get(name):
                a = a.copy()
                a[..., keep[name]] = 0
            ranges[name] = (min(float(a.min()), 0.0), max(float(a.max()), 0.0))
        return ranges

    def _insert(self, module, x, ops, channels, rng):
        before = ops[0]
        base = x.name
        levels = (1 << self.bits) - 1
        qmin, qmax = (-(1 << (self.bits - 1)), (1 << (self.bits - 1)) - 1) if self.symmetric else (0, levels)

        def param(suffix, data):
            return module.add_param(f"{base}.{suffix}", data, before=before)

        def op(kind, *operands, name, **attrs):
            return module.add_op(kind, operands, attrs, before=before, names=[module.fresh_name(f"{base}.{name}")]).result

        mask = None
        if channels:
            m = np.zeros(x.type.shape[-1], np.float32)
            m[channels] = 1
            mask, rest = param("act_keep", m), param("act_quant", 1 - m)
        entry = {"kept_channels": channels}
        zp = param("act_zero_point", np.zeros((), np.int32))
        if self.mode == "dynamic":
            mag = op("abs", x, name="abs")
            if mask is not None:
                mag = op("mul", mag, rest, name="abs_quantized")
            peak = op("amax", mag, axes=list(range(x.type.rank)), name="absmax")
            peak = op("maximum", peak, param("act_floor", np.array(1e-12, np.float32)), name="absmax_floored")
            scale = op("div", peak, param("act_qmax", np.array(qmax, np.float32)), name="scale")
        else:
            lo, hi = rng
            if self.symmetric:
                s = max(-lo, hi) / qmax
                z = 0
            else:
                s = (hi - lo) / levels
                z = int(np.clip(np.rint(-lo / s), 0, levels)) if s > 0 else 0
            s = s if s > 0 else 1.0
            module.params[zp.name] = np.array(z, np.int32)
            scale = param("act_scale", np.array(s, np.float32))
            entry.update(scale=float(np.float32(s)), zero_point=z, range=[lo, hi])
        y = op("fake_quant", x, scale, zp, qmin=qmin, qmax=qmax, name="fq")
        if mask is not None:
            y = op("add", op("mul", y, rest, name="fq_rest"), op("mul", x, mask, name="kept"), name="fq_kept")
        return y, entry
