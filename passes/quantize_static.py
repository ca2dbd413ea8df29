"""quantize-static: post-training int8 from a calibration set (static quantization).

Given any number of calibration samples, the pass

1. runs the interpreter over them and observes the input of every ``conv2d`` / ``linear``
   layer with a constant weight (its exact min and max, and a bounded random sample of
   its values: at most ``sample_limit`` values per tensor over all samples);
2. chooses one range per activation tensor: ``method=minmax`` (the observed range),
   ``percentile`` (the ``percentile``-th and ``100 - percentile``-th percentiles of the
   sample) or ``mse`` (the clipping range of least quantization mean squared error on
   the sample, searched over 100 fractions of the observed range); activations become
   asymmetric ``uint8`` codes (``activations=uint8``, a zero point) or symmetric
   ``int8`` codes (``activations=int8``, zero point 0) — the API and the CLI pick the
   target's kind (:attr:`Target.int8_activations`);
3. quantizes the weights per output channel, symmetric, to int8 codes in [-127, 127]
   (the full-range -128 is never used, so two products always fit 16 bits);
4. writes both as ``fake_quant`` ops and folds them with ``fold-fake-quant``'s machinery
   into ``qconv2d`` / ``qdense`` on integer codes — batch norm, per-channel affine ops and
   relu / clamp after a layer go into its epilogue, and a layer whose result only feeds
   the next quantized layer (also through max pooling and reshapes, which commute with
   quantize) emits that layer's codes itself (requantize fusion).

What stays in float, with the reason in the report (the pass's notes, printed by
``sliver lower`` / ``opt``): a layer named in ``skip`` (``;``-separated), a layer whose
weight is computed rather than a constant, a layer whose input is not f32, a layer whose
input carries a super activation when ``keep_super=true`` (``find-outliers`` run on the
module, as ``quantize-activations`` does), a ``matmul`` of two activations (attention:
there is no integer op for it), and a *sensitive* layer: one whose output error from
quantizing its own input and weight (on the first calibration sample, relative to the
output's largest magnitude) exceeds ``max_error``.  A residual ``add`` of two 4-D tensors
that integer layers compute or quantize reads them as codes (``residual_codes``, see
``_residual_codes``: the layers emit bytes, the add runs on dequantized codes); other adds
and ``concat`` run in float between the integer layers (on their f32 epilogue outputs).  Zero padding traced
as ``concat`` s with zero constants (``F.pad``, TensorFlow-style "same" padding) is first
folded into the padding of the conv it feeds, so the conv's codes are padded in the kernel.

The report has one row per layer: the activation range and codes, the layer's own error
vs float, kept-float reasons; and the whole model's output error vs float on the first
calibration sample.

Calibration data: ``calibration`` (handed over by the API, not a CLI option) is an
iterable of samples — one array per model input, or a tuple/list of them — or a path:
an ``.npz`` holding one array per input (named like the inputs, or ``input_0``, …; a
model with one input may use any one name), each either one sample of the input's
shape or a stack ``[S, *shape]``; or a folder of ``.npy`` files, one per sample (or
stack), for a model with one input.  Samples of the wrong shape or dtype, an empty set
and a model with nothing to quantize are :class:`QuantizeError` s.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sliver.common.errors import SliverError
from sliver.common.text import table_lines
from sliver.passes.base import Pass, register

METHODS = ("minmax", "percentile", "mse")
ACTIVATIONS = ("uint8", "int8")
#: symmetric int8 weights use [-127, 127]: no weight is -128, so a pair of u8 x s8 or
#: s8 x s8 products always fits int16 (the aarch64 kernel's smull + smlal2)
W_QMIN, W_QMAX = -127, 127


class QuantizeError(SliverError):
    """Bad calibration data, options or a model with nothing to quantize."""


# -- calibration data ---------------------------------------------------------------------------


def _load_path(path: Path, module) -> list:
    names = [v.name for v in module.inputs]
    if path.is_dir():
        files = sorted(path.glob("*.npy"))
        if not files:
            raise QuantizeError(f"calibration folder {path} holds no .npy files (one file per sample)")
        if len(names) != 1:
            raise QuantizeError(f"calibration folder {path}: a folder of .npy files calibrates a model with one "
                                f"input; @{module.name} takes {len(names)}: use an .npz with one array per input "
                                f"({', '.join(names)})")
        out = []
        for f in files:
            a = _np_load(f)
            out.extend(_unstack(a, module.inputs[0], f"{f.name}"))
        return [(a,) for a in out]
    if not path.is_file():
        raise QuantizeError(f"calibration data {path}: no such file or folder (give an .npz of arrays or a folder "
                            "of .npy files)")
    data = _np_load(path)
    if not hasattr(data, "files"):  # a single .npy
        if len(names) != 1:
            raise QuantizeError(f"calibration data {path} is one array; @{module.name} takes {len(names)} inputs: "
                                f"use an .npz with one array per input ({', '.join(names)})")
        return [(a,) for a in _unstack(data, module.inputs[0], path.name)]
    with data:
        keys = list(data.files)
        if not keys:
            raise QuantizeError(f"calibration data {path} holds no arrays: an empty calibration set")
        if len(names) == 1 and len(keys) == 1:
            chosen = keys
        else:
            chosen = []
            for i, n in enumerate(names):
                k = n if n in keys else f"input_{i}" if f"input_{i}" in keys else None
                if k is None:
                    raise QuantizeError(f"calibration data {path} has no array for input %{n} (give it as {n!r} or "
                                        f"'input_{i}'; the file holds {', '.join(keys)})")
                chosen.append(k)
        per_input = [_unstack(data[k], v, f"{path.name}[{k}]") for k, v in zip(chosen, module.inputs)]
    counts = {len(p) for p in per_input}
    if len(counts) != 1:
        raise QuantizeError(f"calibration data {path}: the inputs have different sample counts "
                            f"({', '.join(str(len(p)) for p in per_input)})")
    return list(zip(*per_input))


def _np_load(path: Path):
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise QuantizeError(f"calibration data {path} is not a readable numpy file (.npz / .npy without "
                            f"pickled objects): {e}") from None


def _unstack(a: np.ndarray, v, where: str) -> list:
    """One sample of ``v``'s shape, or a stack [S, *shape] → a list of samples."""
    shape = tuple(v.type.shape)
    if tuple(a.shape) == shape:
        return [a]
    if a.ndim == len(shape) + 1 and tuple(a.shape[1:]) == shape:
        return list(a)
    raise QuantizeError(f"calibration data {where}: shape {list(a.shape)} is neither input %{v.name}'s shape "
                        f"{list(shape)} nor a stack of them [S, {', '.join(map(str, shape))}]")


def calibration_samples(data, module) -> list[list[np.ndarray]]:
    """The calibration set as a list of samples (one numpy array per module input),
    every one checked against the module's input types."""
    from sliver.common.numerics import as_numpy
    from sliver.ir.types import to_numpy

    if data is None:
        raise QuantizeError("quantize-static needs calibration data: sliver.quantize(model, calibration=...) or "
                            "`sliver lower --quantize int8 --calibration data.npz`")
    if isinstance(data, (str, Path)):
        samples = _load_path(Path(data), module)
    else:
        if isinstance(data, np.ndarray) or hasattr(data, "numpy"):
            raise QuantizeError("calibration data must be an iterable of samples (a list of arrays, or of tuples of "
                                "arrays for several inputs), not one array; for a stack [S, ...] pass list(stack)")
        try:
            samples = list(data)
        except TypeError:
            raise QuantizeError(f"calibration data must be an iterable of samples or a path, got "
                                f"{type(data).__name__}") from None
    if not samples:
        raise QuantizeError("the calibration set is empty: give at least one sample (a few hundred typical "
                            "inputs calibrate best)")
    out = []
    n = len(module.inputs)
    for i, s in enumerate(samples):
        arrays = list(s) if isinstance(s, (tuple, list)) else [s]
        if len(arrays) != n:
            raise QuantizeError(f"calibration sample {i} has {len(arrays)} array(s); @{module.name} takes {n} "
                                f"input(s) ({', '.join('%' + v.name for v in module.inputs)})")
        checked = []
        for v, a in zip(module.inputs, arrays):
            a = as_numpy(a)
            want = to_numpy(v.type.dtype)
            if tuple(a.shape) != tuple(v.type.shape):
                raise QuantizeError(f"calibration sample {i}: input %{v.name} must have shape {list(v.type.shape)} "
                                    f"(the example input's), got {list(a.shape)}")
            if a.dtype != want:
                raise QuantizeError(f"calibration sample {i}: input %{v.name} must be {v.type.dtype} ({want}), got "
                                    f"{a.dtype}; convert it (e.g. .astype(np.{want}))")
            checked.append(a)
        out.append(checked)
    return out


# -- observing and choosing ranges ----------------------------------------------------------------


class Observer:
    """Exact min/max of a tensor over all samples plus a bounded uniform random sample
    of its values (for the percentile and MSE range choices)."""

    def __init__(self, limit: int, rng):
        self.lo, self.hi = math.inf, -math.inf
        self.limit, self.rng = limit, rng
        self.parts: list[np.ndarray] = []
        self.seen = 0

    def add(self, a: np.ndarray) -> None:
        a = np.asarray(a, np.float64).reshape(-1)
        if not a.size:
            return
        if not np.all(np.isfinite(a)):
            raise QuantizeError("a calibration sample makes an activation inf or NaN; check the calibration data")
        self.lo, self.hi = min(self.lo, float(a.min())), max(self.hi, float(a.max()))
        take = min(a.size, self.limit)
        self.parts.append(a if take == a.size else self.rng.choice(a, take, replace=False))
        self.seen += a.size
        values = sum(p.size for p in self.parts)
        if values > 2 * self.limit:  # keep a uniform subsample of everything seen so far
            allv = np.concatenate(self.parts)
            self.parts = [self.rng.choice(allv, self.limit, replace=False)]

    def values(self) -> np.ndarray:
        return np.concatenate(self.parts) if self.parts else np.zeros(1)


def quant_params(lo: float, hi: float, kind: str) -> tuple[float, int, int, int]:
    """(scale, zero_point, qmin, qmax) that represent [lo, hi] (widened to hold 0)."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    if kind == "int8":
        m = max(-lo, hi)
        s = m / 127.0 if m > 0 else 1.0
        return float(np.float32(s)), 0, -128, 127
    s = (hi - lo) / 255.0 if hi > lo else 1.0
    s = float(np.float32(s))
    z = int(np.clip(np.rint(-lo / s), 0, 255))
    return s, z, 0, 255


def _fq_error(v: np.ndarray, lo: float, hi: float, kind: str) -> float:
    s, z, qmin, qmax = quant_params(lo, hi, kind)
    q = np.clip(np.rint(v / s) + z, qmin, qmax)
    return float(np.mean(((q - z) * s - v) ** 2))


def choose_range(obs: Observer, method: str, kind: str, percentile: float) -> tuple[float, float]:
    lo, hi = min(obs.lo, 0.0), max(obs.hi, 0.0)
    if method == "minmax" or hi == lo:
        return lo, hi
    v = obs.values()
    if method == "percentile":
        if kind == "int8":
            m = float(np.percentile(np.abs(v), percentile))
            return max(lo, -m), min(hi, m)
        return min(float(np.percentile(v, 100 - percentile)), 0.0), max(float(np.percentile(v, percentile)), 0.0)
    # mse: shrink the observed range by a common fraction (kept inside it)
    best, best_err = (lo, hi), _fq_error(v, lo, hi, kind)
    for f in np.linspace(0.2, 1.0, 100)[:-1]:
        err = _fq_error(v, lo * f, hi * f, kind)
        if err < best_err:
            best, best_err = (lo * f, hi * f), err
    return best


# -- the pass ------------------------------------------------------------------------------------


def _is_zero(module, v) -> bool:
    p = v.producer
    if p is not None and p.kind == "constant":
        return float(p.attrs["value"]) == 0.0
    data = module.param_data(v)
    return data is not None and not np.any(data)


def unpad(module, v):
    """``(x, [top, left, bottom, right])`` when ``v`` is ``x`` zero-padded on its two
    spatial axes by ``concat`` s with all-zero constants (how ``F.pad`` and TensorFlow-style
    "same" padding trace), else ``(v, None)``."""
    pads, found = [0, 0, 0, 0], False
    while v.producer is not None and v.producer.kind == "concat" and len(v.type.shape) == 4:
        op = v.producer
        axis = op.attrs["axis"] % 4
        inner = [i for i, o in enumerate(op.operands) if not _is_zero(module, o)]
        sizes = [o.type.shape[axis] for o in op.operands]
        if axis not in (2, 3) or len(inner) != 1 or not all(isinstance(n, int) for n in sizes):
            break
        i = inner[0]
        before, after = sum(sizes[:i]), sum(sizes[i + 1:])
        pads[axis - 2] += before
        pads[axis] += after
        v, found = op.operands[i], True
    return v, (pads if found else None)


def fold_zero_padding(module) -> int:
    """Fold zero padding made of ``concat`` s into the ``conv2d`` s it feeds (their
    ``padding``; the same values in float): the conv's input becomes the unpadded tensor,
    the one quantized, and its codes are padded by the kernel with the zero point (the
    code of 0.0), instead of a float concat and a quantize of the padded tensor.  Returns
    how many convs changed."""
    n = 0
    for op in module.ops:
        if op.kind != "conv2d":
            continue
        x, pads = unpad(module, op.operands[0])
        if pads is None:
            continue
        op.set_operand(0, x)
        old = op.attrs.get("padding", (0, 0, 0, 0))
        op.attrs["padding"] = type(old)(int(a) + b for a, b in zip(old, pads))
        n += 1
    if n:
        from sliver.passes.dce import dce

        dce(module)
    return n


def _layer_name(w) -> str:
    return w.name.removesuffix(".weight")


def _site_error(op, x: np.ndarray, w: np.ndarray, b, xq: tuple, wq) -> float:
    """The layer's own output error from quantizing its input (per tensor) and weight
    (per channel): max |y_q - y| / max |y| on one sample."""
    import torch

    s, z, qmin, qmax = xq
    xt = torch.from_numpy(np.asarray(x, np.float32))
    wt = torch.from_numpy(np.asarray(w, np.float32))
    bt = None if b is None else torch.from_numpy(np.asarray(b, np.float32))
    xf = torch.fake_quantize_per_tensor_affine(xt, s, z, qmin, qmax)
    sw, = wq
    wf = torch.fake_quantize_per_channel_affine(wt, torch.from_numpy(sw), torch.zeros(len(sw), dtype=torch.int32),
                                                0, W_QMIN, W_QMAX)
    ref, got = op.decl.ref(xt, wt, bt, **op.attrs), op.decl.ref(xf, wf, bt, **op.attrs)
    den = float(ref.abs().max())
    return float((got - ref).abs().max()) / den if den > 0 else float((got - ref).abs().max())


def weight_scales(w: np.ndarray) -> np.ndarray:
    """Per-output-channel symmetric int8 scales (an all-zero channel gets scale 1)."""
    amax = np.abs(w.reshape(w.shape[0], -1)).max(axis=1).astype(np.float64)
    return np.where(amax > 0, amax / W_QMAX, 1.0).astype(np.float32)


@register
@dataclass(frozen=True)
class QuantizeStatic(Pass):
    """Post-training int8 from calibration data: conv2d/linear -> qconv2d/qdense; per-layer report."""

    name = "quantize-static"
    lossy = True

    method: str = "minmax"
    percentile: float = 99.99
    activations: str = "uint8"
    keep_super: bool = False
    max_error: float = 0.1
    skip: str = ""
    sample_limit: int = 200000
    #: residual adds of integer layers read their operands as codes (see _residual_codes)
    residual_codes: bool = True
    seed: int = 0
    #: the calibration set (see the module doc); not a CLI option
    calibration: object = field(default=None, compare=False, repr=False)
    #: a find-outliers report (or its super_activations list); not a CLI option
    super_activations: object = field(default=None, compare=False, repr=False)

    def _check(self):
        if self.method not in METHODS:
            raise QuantizeError(f"{self.name}: method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.activations not in ACTIVATIONS:
            raise QuantizeError(f"{self.name}: activations must be uint8 (asymmetric) or int8 (symmetric), got "
                                f"{self.activations!r}")
        if not 50.0 < self.percentile <= 100.0:
            raise QuantizeError(f"{self.name}: percentile must be in (50, 100], got {self.percentile!r}")
        if not self.max_error > 0:
            raise QuantizeError(f"{self.name}: max_error must be positive, got {self.max_error!r}")
        if self.sample_limit < 1:
            raise QuantizeError(f"{self.name}: sample_limit must be at least 1, got {self.sample_limit!r}")

    def _super_layers(self, module, samples) -> dict[str, list[int]]:
        """{layer weight name: super-activation channels at its input}."""
        if not self.keep_super:
            return {}
        s = self.super_activations
        if s is None:
            from sliver.passes.outliers import find_outliers

            s = find_outliers(module, list(samples[0]), seed=self.seed)
        report = s if isinstance(s, dict) else {"super_activations": list(s)}
        out: dict[str, list[int]] = {}
        for a in report.get("super_activations", []):
            for consumer in a.get("consumers", []):
                out.setdefault(consumer, []).append(int(a["channel"]))
        return out

    def run(self, module):
        from sliver.passes.dce import dce
        from sliver.passes.fold_fake_quant import FoldFakeQuant

        self._check()
        samples = calibration_samples(self.calibration, module)
        padding_folded = fold_zero_padding(module)
        skip = {s.strip() for s in self.skip.split(";") if s.strip()}
        supers = self._super_layers(module, samples)
        rows, sites = [], {}
        for op in module.ops:
            if op.kind == "matmul":
                rows.append({"layer": op.result.name, "op": "matmul", "quantized": False,
                             "reason": "a matmul of two activations (attention): no integer op for it"})
                continue
            if op.kind not in ("conv2d", "linear"):
                continue
            x, w = op.operands[0], op.operands[1]
            layer = _layer_name(w)
            row = {"layer": layer, "op": op.kind, "quantized": False}
            rows.append(row)
            wdata = module.param_data(w)
            reason = None
            if layer in skip:
                reason = "kept in float by skip="
            elif wdata is None:
                reason = "the weight is computed, not a constant"
            elif x.type.dtype != "f32" or w.type.dtype != "f32":
                reason = f"the input is {x.type.dtype}, not f32"
            elif len(op.operands) == 3 and module.param_data(op.operands[2]) is None:
                reason = "the bias is computed, not a constant"
            elif w.name in supers:
                reason = f"super activation at input channel(s) {sorted(set(supers[w.name]))} (keep_super)"
            if reason:
                row["reason"] = reason
                continue
            sites.setdefault(x.name, (x, []))[1].append((op, row))
        if not sites:
            kinds = ", ".join(f"{r['layer']} ({r['reason']})" for r in rows) or "none"
            raise QuantizeError(f"{self.name}: @{module.name} has no layer to quantize (conv2d / linear with a "
                                f"constant weight and an f32 input); layers: {kinds}")
        adds = _residual_adds(module) if self.residual_codes else {}
        first, ranges = self._calibrate(module, samples, sites, [v for op in adds for v in op.operands])
        # quantize each site: choose ranges, measure each layer's own error, keep the sensitive ones
        kept_sites = {}
        for name, (x, ops) in sites.items():
            lo, hi = ranges[name]
            xq = quant_params(lo, hi, self.activations)
            keep = []
            for op, row in ops:
                w = module.param_data(op.operands[1])
                b = module.param_data(op.operands[2]) if len(op.operands) == 3 else None
                sw = weight_scales(w)
                err = _site_error(op, first[name], w, b, xq, (sw,))
                row.update(range=[float(lo), float(hi)], observed=[float(ranges[name + "#obs"][0]),
                                                                   float(ranges[name + "#obs"][1])],
                           scale=xq[0], zero_point=xq[1], x_dtype="u8" if self.activations == "uint8" else "i8",
                           error=err)
                if err > self.max_error:
                    row["reason"] = f"sensitive: its own output error {err:.3g} > max_error={self.max_error:g}"
                    continue
                keep.append((op, row, sw))
            if keep:
                kept_sites[name] = (x, keep, xq)
        if not kept_sites:
            raise QuantizeError(f"{self.name}: every quantizable layer of @{module.name} is too sensitive "
                                f"(max_error={self.max_error:g}): " +
                                "; ".join(f"{r['layer']}: {r['reason']}" for r in rows if r.get("reason")))
        from sliver.ir.interp import run as interp_run

        float_out = interp_run(module, samples[0])
        for name, (x, keep, xq) in kept_sites.items():
            self._insert(module, x, keep, xq)
        _, fold_notes = FoldFakeQuant(strict=True).run(module)
        dce(module)
        residual = self._residual_codes(module, adds, ranges)
        folded = {r["layer"]: r for r in fold_notes["layers"] if r["folded"]}
        for row in rows:
            f = folded.get(row["layer"])
            if f is not None and "reason" not in row:
                row.update(quantized=True, qop=f["op"], epilogue=f["epilogue"], out=residual.get(f["value"], f["out"]))
            elif "reason" not in row:
                row["reason"] = "could not be folded"
        quant_out = interp_run(module, samples[0])
        from sliver.passes.base import max_relative_error

        model_error = max_relative_error(quant_out, float_out)
        notes = {"layers": rows, "method": self.method, "activations": self.activations,
                 "samples": len(samples), "model_error": model_error, "padding_folded": padding_folded,
                 "residual_adds": residual.get("#adds", 0)}
        notes["text"] = format_report(notes)
        return True, notes

    def _calibrate(self, module, samples, sites, extra=()):
        from sliver.ir.interp import run

        rng = np.random.default_rng(self.seed)
        observers = {name: Observer(self.sample_limit, rng) for name in [*sites, *(v.name for v in extra)]}
        first: dict[str, np.ndarray] = {}
        for i, sample in enumerate(samples):
            def observe(op, results):
                for r, t in zip(op.results, results):
                    if r.name in observers:
                        a = t.numpy()
                        observers[r.name].add(a)
                        if i == 0:
                            first[r.name] = a
            for v, a in zip(module.inputs, sample):
                if v.name in observers:
                    observers[v.name].add(a)
                    if i == 0:
                        first[v.name] = a
            run(module, sample, observe=observe)
        ranges = {}
        for name, obs in observers.items():
            ranges[name] = choose_range(obs, self.method, self.activations, self.percentile)
            ranges[name + "#obs"] = (obs.lo, obs.hi)
        return first, ranges

    def _residual_codes(self, module, adds, ranges) -> dict:
        """Residual adds of integer layers on codes: each operand of ``add(a, b)`` that a
        qconv2d computes in f32 is quantized (its range observed on the float model), one
        that is quantized already (the next layer's input) reuses those codes, and the add
        reads them dequantized: ``add(dequantize(qa), dequantize(qb))``.  The layers then
        emit the codes themselves (requantize fusion; max pooling between commutes), so
        the add, its relu and the next quantize are one elementwise pass over bytes instead
        of f32 tensors.  Returns {layer result name: codes dtype} of the layers that now
        emit codes and "#adds": how many adds read codes."""
        from sliver.passes.dce import dce
        from sliver.passes.fold_fake_quant import _fuse_requantize, _reuse_or_add

        done = 0
        for op, names in adds.items():
            if op.module is not module or not _residual_operands_ok(op):
                continue
            dq = []
            for i, v in enumerate(op.operands):
                q = next((u for u in v.users if u.kind == "quantize"), None)
                if q is not None:
                    attrs = dict(q.attrs)
                else:
                    s, z, _, _ = quant_params(*ranges[names[i]], self.activations)
                    attrs = {"scale": s, "zero_point": z, "dtype": "u8" if self.activations == "uint8" else "i8"}
                codes = _reuse_or_add(module, "quantize", v, attrs, op, f"{v.name}.q")
                dq.append(_reuse_or_add(module, "dequantize", codes, {"scale": attrs["scale"],
                                                                      "zero_point": attrs["zero_point"]},
                                        op, f"{v.name}.dq"))
            for i, d in enumerate(dq):
                op.set_operand(i, d)
            done += 1
        if not done:
            return {}
        fused = _fuse_requantize(module)
        dce(module)
        return {**fused, "#adds": done}

    def _insert(self, module, x, keep, xq):
        """fake_quant on the site's input (per tensor) and on each layer's weight (per
        channel, symmetric), for fold-fake-quant to fold."""
        s, z, qmin, qmax = xq
        before = keep[0][0]
        base = x.name
        sp = module.add_param(module.fresh_name(f"{base}.act_scale"), np.array(s, np.float32), before=before)
        zp = module.add_param(module.fresh_name(f"{base}.act_zero_point"), np.array(z, np.int32), before=before)
        y = module.add_op("fake_quant", [x, sp, zp], {"qmin": qmin, "qmax": qmax}, before=before,
                          names=[module.fresh_name(f"{base}.fq")]).result
        for op, row, sw in keep:
            w = op.operands[1]
            layer = row["layer"]
            wsp = module.add_param(module.fresh_name(f"{layer}.w_scale"), sw, before=op)
            wzp = module.add_param(module.fresh_name(f"{layer}.w_zero_point"), np.zeros(len(sw), np.int32), before=op)
            wf = module.add_op("fake_quant", [w, wsp, wzp], {"qmin": W_QMIN, "qmax": W_QMAX, "axis": 0}, before=op,
                               names=[module.fresh_name(f"{layer}.w_fq")]).result
            op.set_operand(0, y)
            op.set_operand(1, wf)


def _residual_adds(module) -> dict:
    """{add op: its operands' names} of the 4-D f32 adds of two same-shape tensors (the
    residual adds of CNNs), observed during calibration for :meth:`QuantizeStatic._residual_codes`."""
    out = {}
    for op in module.ops:
        if op.kind != "add" or len(op.operands) != 2 or len(op.result.type.shape) != 4:
            continue
        if all(v.type.dtype == "f32" and v.type.shape == op.result.type.shape for v in op.operands):
            out[op] = [v.name for v in op.operands]
    return out


def _residual_operands_ok(op) -> bool:
    """After folding: every operand of the add is a qconv2d's f32 result (it will emit
    codes) or is quantized already (its codes exist)."""
    for v in op.operands:
        p = v.producer
        if any(u.kind == "quantize" for u in v.users):
            continue
        if p is None or p.kind != "qconv2d" or p.attrs["out_dtype"] != "f32" or len(v.uses) != 1:
            return False
    return op.operands[0] is not op.operands[1]


def format_report(notes: dict) -> str:
    """One line per conv2d/linear/matmul: quantized (range, codes, own error, epilogue,
    output) or why it stays float."""
    rows = [("layer", "op", "range", "codes", "error", "epilogue", "out / reason")]
    for r in notes["layers"]:
        rng = "-" if "range" not in r else f"[{r['range'][0]:.4g}, {r['range'][1]:.4g}]"
        err = "-" if "error" not in r else f"{r['error']:.2e}"
        if r["quantized"]:
            codes = f"{r['x_dtype']} zp {r['zero_point']}/i8"
            rows.append((r["layer"], r["qop"], rng, codes, err, "+".join(r["epilogue"]) or "-", r["out"]))
        else:
            rows.append((r["layer"], r["op"], rng, "float", err, "-", r["reason"]))
    n = sum(r["quantized"] for r in notes["layers"])
    head = (f"quantize-static ({notes['method']}, {notes['activations']} activations, {notes['samples']} "
            f"calibration samples): {n} of {len(notes['layers'])} layers int8; model output error vs float "
            f"{notes['model_error']:.3g} (first sample)"
            + (f"; {notes['residual_adds']} residual add(s) on codes" if notes.get("residual_adds") else "") + "\n")
    return head + "\n".join(table_lines(rows, indent="  ")) + "\n"
