"""Quantization-aware training (QAT) for plain ``torch.nn`` models.

    import sliver.qat
    qmodel = sliver.qat.prepare(model, w_bits=2, a_bits=2, layers={"features.0": 8})
    ... train qmodel as usual (a few epochs from the float weights) ...
    art = sliver.lower(qmodel, (x,), target="arm64")   # → qconv2d / qdense on 2-bit codes

:func:`prepare` swaps every ``nn.Conv2d`` and ``nn.Linear`` for a subclass that
fake-quantizes

* its **weight per output channel**, symmetric: signed codes in
  [−2^(w−1), 2^(w−1)−1], zero point 0 (w = 2…8);
* its **input activation per tensor**, a bits (1…8): unsigned codes [0, 2^a−1]
  when the input is non-negative (after a ReLU, or image pixels), signed
  [−2^(a−1), 2^(a−1)−1] otherwise; zero point 0.  The sign is decided from the first
  training batch.

Scales are **learned** (LSQ, "Learned Step Size Quantization", Esser et al. 2020) with
torch's own learnable fake-quant ops: the rounding uses a straight-through estimator,
the scales get LSQ's gradient scaled by 1/sqrt(numel · qmax).  Each scale is
initialised from the first training batch (2·mean|v|/sqrt(qmax)), so run at least one
forward pass in training mode before exporting.  In eval mode the layers are plain
fake-quant ops, which torch.export captures and sliver's tracer reads; the
``fold-fake-quant`` pass then turns them into integer ``qconv2d`` / ``qdense`` ops.

1-bit weights are refused: torch's affine fake-quant cannot express the symmetric
{−s, +s} of binary weights (1-bit codes give {0, s} or {−s, 0}).  1-bit activations
({0, s} after a ReLU) are fine.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from sliver.common.errors import SliverError
from sliver.common.text import table_lines

EPS = 1e-8


def _signed_range(bits: int) -> tuple[int, int]:
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1


class LearnedQuant(nn.Module):
    """LSQ fake quantization with a learned scale: per tensor (``channels=None``) or
    per channel along axis 0.  ``signed=None`` decides the sign from the first batch."""

    def __init__(self, bits: int, channels: int | None = None, signed: bool | None = None):
        super().__init__()
        self.bits, self.channels = bits, channels
        self.scale = nn.Parameter(torch.ones(channels or 1))
        self.register_buffer("zero_point", torch.zeros(channels or 1))
        # 0: sign not known yet, 1: unsigned, 2: signed.  A buffer, so it travels with the
        # state_dict; mirrored in a Python attribute that forward reads (export-friendly).
        self.signed = signed
        self.initialised = False
        self.register_buffer("mode", torch.tensor(0 if signed is None else 2 if signed else 1, dtype=torch.uint8))

    @property
    def qrange(self) -> tuple[int, int]:
        return _signed_range(self.bits) if self.signed else (0, 2**self.bits - 1)

    @torch.no_grad()
    def _init(self, x: torch.Tensor) -> None:
        if self.signed is None:
            self.signed = bool((x < 0).any())
            self.mode.fill_(2 if self.signed else 1)
        qmax = max(self.qrange[1], 1)
        if self.channels is None:
            mean_abs = x.abs().mean().reshape(1)
        else:
            mean_abs = x.abs().reshape(self.channels, -1).mean(1)
        self.scale.copy_((2 * mean_abs / math.sqrt(qmax)).clamp_min(1e-4))
        self.initialised = True

    def forward(self, x):
        if self.training:
            if not self.initialised:
                self._init(x)
            self.scale.data.clamp_(min=EPS)
        qmin, qmax = self.qrange
        grad = 1.0 / math.sqrt(x.numel() * max(qmax, 1))
        if self.channels is None:
            return torch._fake_quantize_learnable_per_tensor_affine(x, self.scale, self.zero_point, qmin, qmax, grad)
        return torch._fake_quantize_learnable_per_channel_affine(x, self.scale, self.zero_point, 0, qmin, qmax, grad)

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        if int(self.mode):
            self.signed = int(self.mode) == 2
            self.initialised = True  # loaded scales are trained scales

    def extra_repr(self) -> str:
        kind = "per-channel" if self.channels else "per-tensor"
        sign = {None: "sign from first batch", False: "unsigned", True: "signed"}[self.signed]
        return f"bits={self.bits}, {kind}, {sign}"


class _QATLayer:
    """Mixin of the QAT conv/linear: fake-quantized input and weight."""

    w_bits: int
    a_bits: int

    def _setup(self, w_bits: int, a_bits: int) -> None:
        self.w_bits, self.a_bits = w_bits, a_bits
        self.act_quant = LearnedQuant(a_bits)
        self.weight_quant = LearnedQuant(w_bits, channels=self.weight.shape[0], signed=True)


class QATConv2d(_QATLayer, nn.Conv2d):
    def forward(self, x):
        if self.padding_mode != "zeros":
            raise SliverError("sliver.qat supports zero-padded convolutions only")
        return F.conv2d(self.act_quant(x), self.weight_quant(self.weight), self.bias, self.stride, self.padding,
                        self.dilation, self.groups)


class QATLinear(_QATLayer, nn.Linear):
    def forward(self, x):
        return F.linear(self.act_quant(x), self.weight_quant(self.weight), self.bias)


def _bits(value, what: str, lo: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= 8:
        hint = " (1-bit weights: torch's affine fake-quant cannot express ±s; use 2)" if value == 1 and lo == 2 else ""
        raise SliverError(f"sliver.qat: {what} must be an int in {lo}..8, got {value!r}{hint}")
    return value


def prepare(model: nn.Module, w_bits: int = 2, a_bits: int = 2, *, layers: dict | None = None,
            inplace: bool = False) -> nn.Module:
    """Return ``model`` with every Conv2d / Linear replaced by its QAT version.

    ``layers`` overrides per layer (module names as in ``model.named_modules()``):
    an int sets both widths, ``(w_bits, a_bits)`` sets each, ``None`` leaves the
    layer in float.  The weights are shared with ``model`` unless copied
    (``inplace=False``, the default, deep-copies the model first).
    """
    w_bits, a_bits = _bits(w_bits, "w_bits", 2), _bits(a_bits, "a_bits", 1)
    layers = dict(layers or {})
    model = model if inplace else copy.deepcopy(model)
    targets = {name: m for name, m in model.named_modules() if type(m) in (nn.Conv2d, nn.Linear)}
    unknown = sorted(set(layers) - set(targets))
    if unknown:
        raise SliverError(f"sliver.qat.prepare: no Conv2d/Linear named {', '.join(unknown)}; "
                          f"the layers are: {', '.join(targets) or 'none'}")
    for name, m in targets.items():
        bits = layers.get(name, (w_bits, a_bits))
        if bits is None:
            continue
        wb, ab = (bits, bits) if isinstance(bits, int) else bits
        wb, ab = _bits(wb, f"w_bits of {name}", 2), _bits(ab, f"a_bits of {name}", 1)
        m.__class__ = QATConv2d if isinstance(m, nn.Conv2d) else QATLinear
        m._setup(wb, ab)
    return model


def qat_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The QAT layers of a prepared model, in module order."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, _QATLayer)]


def summary(model: nn.Module) -> str:
    """A table of the QAT layers: widths, activation sign and learned scales."""
    rows = [("layer", "kind", "w_bits", "a_bits", "activation", "act scale", "weight scales")]
    for name, m in qat_layers(model):
        aq, wq = m.act_quant, m.weight_quant
        sign = {None: "?", False: "unsigned", True: "signed"}[aq.signed]
        ws = wq.scale.detach()
        rows.append((name, type(m).__name__.removeprefix("QAT"), str(m.w_bits), str(m.a_bits), sign,
                     f"{float(aq.scale.detach()):.4g}", f"{float(ws.min()):.3g}..{float(ws.max()):.3g}"))
    return "\n".join(table_lines(rows)) + "\n"


__all__ = ["prepare", "qat_layers", "summary", "LearnedQuant", "QATConv2d", "QATLinear"]
