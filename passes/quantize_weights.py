"""quantize-weights: weight-only round-to-nearest (RTN) quantization of linear layers
that keeps super weights exactly and clips the other outliers (issue 5, part 2).

Background: "The Super Weight in Large Language Models" (Yu, Wan et al., 2024).  A
few single weights set the quantization range of their tensor (or block); RTN then
spends its levels on them and rounds everything else to zero.  Holding those weights
out of the range and restoring them exactly, and clipping the remaining outliers,
lets RTN use much larger blocks.

Every ``linear`` with a param weight ``W[out, in]`` becomes a ``wq_linear`` (declared
in :mod:`sliver.ir.ops`) whose weight is::

    W.flat[i] = (code[i] - zero[i // block]) * scale[i // block]    (+ kept outliers)

* **Blocks** are runs of ``block`` consecutive elements of the row-major weight:
  ``granularity=tensor`` is one block, ``channel`` one block per output row,
  ``block`` blocks of ``block`` elements (32 … the whole tensor; a block may span
  rows).  A block size that does not divide the tensor is an error unless
  ``pad=true`` (the last block is then shorter).
* **Symmetric** (default): ``scale = a / (2^(bits-1) - 1)`` with ``a`` the largest
  magnitude, codes ``q + 2^(bits-1)`` for ``q`` in ``[-2^(bits-1), 2^(bits-1) - 1]``.
  **Asymmetric** (``symmetric=false``): the range ``[min(lo, 0), max(hi, 0)]`` mapped
  onto ``[0, 2^bits - 1]`` with an integer zero point.
* **Super weights** (``keep_super=true``): the weights of a super-weight index —
  ``index=FILE`` (the JSON of ``sliver outliers --json``, or a list of
  ``{"layer", "row", "column"}``), else found by running the data-free
  ``find-outliers`` analysis on the module — are excluded from their block's range,
  coded as the zero point and stored as float outliers added back: they come back
  bit-exact.
* **Super activations' input channels** (``keep_activations=true``, with
  ``keep_super=true``): for each super activation of the find-outliers report, the
  column of its channel in every linear layer that reads it is held out and kept in
  float like a super weight (the Super Weight paper keeps super activations in higher
  precision; weight-only, the weights they multiply are what rounding can spoil).
* **Scale search** (``search=true``): after the clip search, per block a search in the
  manner of llama.cpp's k-quants: candidate ranges ``[lo * a, hi * b]`` (``a``, ``b``
  from 1 down to 0.5; symmetric: one ratio), each rounded, its scale refit by least
  squares for those codes and rounded again; the least squared error wins.
* **The LM head** (a language model's last linear, mapping onto the vocabulary: see
  :func:`is_lm_head`) stays float32 unless ``head=true`` (a model whose only linear is
  its head has it quantized all the same).
* **Embeddings** (``embedding=true``): every ``take`` of a 2-D float param table along
  axis 0 becomes a ``wq_take`` of the same codes, scales and zero points (an embedding
  read row by row, dequantized where it is read).  A table tied to a quantized head (one
  param, as in SmolLM2 or GPT-2) is quantized once and both ops share its codes.
* **Int8 activations** (``activations=int8``; numerics change): each ``wq_linear``
  reads its input rounded to int8 per run of ``gcd(K, block)`` features (``act_block``,
  symmetric, one scale per run, as llama.cpp's Q8 activations), so that the fused
  kernel multiplies 4-bit codes by 8-bit activations with integer dot products
  (vpdpbusd, vpmaddubsw, sdot/smull) and converts once per run; the kept float outliers
  still read the float input.
* **Clipping** (``clip=true``): per block, the range is scaled by the ``alpha`` in
  ``clip_grid`` values evenly spaced over ``[clip_min, 1]`` that minimizes the squared
  reconstruction error of the block (the weights themselves, no data); ``alpha = 1``
  (no clipping) is a candidate and wins ties, so clipping never increases the error.

Codes are packed into bytes; the TVM backend dequantizes inside the matrix product
(:mod:`sliver.backends.tvm.wq_linear`).  The pass knows nothing of any model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sliver.common.errors import SliverError
from sliver.passes.base import Pass, register

GRANULARITIES = ("tensor", "channel", "block")
#: what the quantized layers read: the float activations, or them rounded to int8 per group
ACTIVATIONS = ("float", "int8")


@dataclass
class QuantizedWeight:
    """One weight in ``wq_linear`` form (codes unpacked, one per element)."""

    shape: tuple[int, int]
    bits: int
    block: int
    codes: np.ndarray  # uint8 [numel], in [0, 2^bits - 1]
    scale: np.ndarray  # float32 [blocks]
    zero: np.ndarray  # uint8 [blocks]
    index: np.ndarray  # int32 [n] flat indices of the kept weights
    value: np.ndarray  # float32 [n] their values
    alpha: np.ndarray  # float64 [blocks] the clip ratio chosen per block (1 = no clipping)

    @classmethod
    def from_params(cls, packed, scale, zero, index, value, *, bits, block, shape) -> "QuantizedWeight":
        """A ``wq_linear``'s params back in this form (``alpha`` unknown: ones)."""
        count = int(shape[0]) * int(shape[1])
        return cls(shape=tuple(shape), bits=bits, block=block, codes=unpack_codes(packed, bits, count),
                   scale=np.asarray(scale, np.float32), zero=np.asarray(zero, np.uint8),
                   index=np.asarray(index, np.int32), value=np.asarray(value, np.float32),
                   alpha=np.ones(len(scale)))

    @property
    def packed(self) -> np.ndarray:
        return pack_codes(self.codes, self.bits)

    @property
    def nbytes(self) -> int:
        """Bytes of the quantized form: packed codes, scales, zero points, outliers."""
        return (self.packed.nbytes + self.scale.nbytes + self.zero.nbytes + self.index.nbytes
                + self.value.nbytes)

    def values(self) -> np.ndarray:
        """The float32 weight in numpy, from the unpacked codes: the same float32
        operations as :meth:`dequantize` (the op's reference), without unpacking."""
        blk = np.arange(self.codes.size) // self.block
        w = (self.codes.astype(np.int32) - self.zero[blk].astype(np.int32)).astype(np.float32) * self.scale[blk]
        np.add.at(w, self.index.astype(np.int64), self.value)
        return w.reshape(self.shape)

    def dequantize(self) -> np.ndarray:
        """The float32 weight, computed by ``wq_linear``'s reference semantics."""
        import torch

        from sliver.ir.ops import wq_dequantize

        t = torch.from_numpy
        w = wq_dequantize(t(self.packed), t(self.scale), t(self.zero), t(self.index), t(self.value),
                          bits=self.bits, block=self.block, shape=self.shape)
        return w.numpy()


def pack_codes(codes: np.ndarray, bits: int) -> np.ndarray:
    """Pack unsigned ``bits``-bit codes into a little-endian bit stream of bytes
    (code ``i`` occupies bits ``[i * bits, (i + 1) * bits)``)."""
    codes = np.asarray(codes, np.uint8).reshape(-1)
    planes = np.unpackbits(codes[:, None], axis=1, bitorder="little")[:, :bits]
    return np.packbits(planes.reshape(-1), bitorder="little")


def unpack_codes(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
    """The inverse of :func:`pack_codes`: the first ``count`` codes (uint8)."""
    planes = np.unpackbits(np.asarray(packed, np.uint8), bitorder="little")[:count * bits].reshape(count, bits)
    return np.packbits(planes, axis=1, bitorder="little").reshape(count)


def check_bits(bits: int, who: str) -> None:
    if not isinstance(bits, int) or not 2 <= bits <= 8:
        raise SliverError(f"{who}: bits must be an integer in 2..8, got {bits!r}")


def block_size(shape, granularity: str, block: int, pad: bool, layer: str) -> int:
    """The block size (in elements) of a ``shape`` weight; errors name the layer."""
    numel = int(np.prod(shape))
    if granularity == "tensor":
        return numel
    if granularity == "channel":
        return int(shape[-1])
    if granularity != "block":
        raise SliverError(f"quantize-weights: granularity must be one of {', '.join(GRANULARITIES)}, "
                          f"got {granularity!r}")
    if block < 1:
        raise SliverError(f"quantize-weights: block must be >= 1, got {block}")
    if block >= numel:
        return numel
    if numel % block and not pad:
        raise SliverError(
            f"quantize-weights: block size {block} does not divide layer {layer} "
            f"({'x'.join(map(str, shape))} = {numel} elements, rows of {shape[-1]}); "
            f"choose a block size that divides {numel}, or pad=true to let the last block be shorter"
        )
    return block


def _blocks(flat: np.ndarray, block: int, fill) -> np.ndarray:
    """``flat`` as [blocks, block], the tail filled with ``fill``."""
    n = -(-flat.size // block)
    out = np.full(n * block, fill, flat.dtype)
    out[:flat.size] = flat
    return out.reshape(n, block)


def _round(w, valid, scale, zero, bits):
    """Codes of blocks ``w`` [blocks, B] for float32 ``scale`` and integer ``zero`` per
    block, and each block's squared error over its ``valid`` entries: the one place the
    rounding is defined (the clip and scale searches and the final codes all call it)."""
    levels = (1 << bits) - 1
    s = scale[:, None]
    codes = np.clip(np.rint(w / s) + zero[:, None], 0, levels)
    codes = np.where(valid, codes, zero[:, None])
    w_hat = (codes - zero[:, None]).astype(np.float32) * s  # float32, as wq_linear computes it
    err = np.where(valid, (w_hat.astype(np.float64) - w) ** 2, 0.0).sum(1)
    return codes, err


def _range_params(lo, hi, bits, symmetric):
    """float32 scales and integer zero points mapping the ranges [lo, hi] onto the codes."""
    levels = (1 << bits) - 1
    if symmetric:
        qmax = (1 << (bits - 1)) - 1
        scale = (np.maximum(np.abs(lo), np.abs(hi)) / qmax).astype(np.float32)
        scale[scale == 0] = 1.0
        return scale, np.full(scale.shape, 1 << (bits - 1), np.int64)
    scale = ((hi - lo) / levels).astype(np.float32)
    scale[scale == 0] = 1.0
    return scale, np.clip(np.rint(-lo / scale), 0, levels).astype(np.int64)


def _rtn(w, valid, lo, hi, alpha, bits, symmetric):
    """Codes, float32 scales and zero points of blocks ``w`` [blocks, B] (float32)
    for ranges ``[lo, hi] * alpha`` (per block), and each block's squared error."""
    scale, zero = _range_params(lo * alpha, hi * alpha, bits, symmetric)
    codes, err = _round(w, valid, scale, zero, bits)
    return codes.astype(np.uint8), scale, zero.astype(np.uint8), err


def _refit(w, valid, codes, zero):
    """The least-squares scale of each block for its codes (zero point fixed):
    sum(w q) / sum(q^2) with q = code - zero; 0 where every q is 0."""
    q = codes - zero[:, None]
    num = np.where(valid, w * q, 0.0).sum(1, dtype=np.float64)
    den = np.where(valid, q * q, 0.0).sum(1, dtype=np.float64)
    return np.where(den > 0, num / np.maximum(den, 1), 0.0)


def _search(w, valid, lo, hi, bits, symmetric, best, grid):
    """Improve ``best`` = (codes, scale, zero, err) per block by a search in the manner
    of llama.cpp's k-quants (make_qkx2_quants): candidate ranges [lo * a, hi * b] (a, b
    over ``grid`` steps from 1 to 0.5; symmetric: one ratio), each rounded, its scale
    refit by least squares for those codes and the block rounded again; a candidate
    replaces the best only where its squared error is strictly smaller."""
    codes, scale, zero, err = (np.asarray(best[0], np.float64), best[1].copy(), best[2].astype(np.int64),
                               best[3].copy())
    steps = np.linspace(1.0, 0.5, grid)
    pairs = [(a, a) for a in np.linspace(1.0, 0.3, 2 * grid)] if symmetric else [(a, b) for a in steps for b in steps]
    for a, b in pairs:
        s0, z = _range_params(lo * a, hi * b, bits, symmetric)
        c, e = _round(w, valid, s0, z, bits)
        s1 = _refit(w, valid, c, z).astype(np.float32)
        ok = s1 > 0
        s1 = np.where(ok, s1, s0).astype(np.float32)
        c1, e1 = _round(w, valid, s1, z, bits)
        for cand_c, cand_s, cand_e in ((c, s0, e), (c1, s1, e1)):
            better = cand_e < err
            if better.any():
                codes[better], scale[better], zero[better], err[better] = (cand_c[better], cand_s[better],
                                                                            z[better], cand_e[better])
    return codes.astype(np.uint8), scale.astype(np.float32), zero.astype(np.uint8), err


def quantize_weight(w: np.ndarray, *, bits: int, block: int, symmetric: bool = True, clip: bool = False,
                    keep=(), clip_min: float = 0.2, clip_grid: int = 25, search: bool = False,
                    search_grid: int = 8) -> QuantizedWeight:
    """RTN-quantize a 2-D weight in blocks of ``block`` flat elements, holding out the
    flat indices ``keep`` (restored exactly) and, with ``clip``, searching a clip
    ratio per block, with ``search`` a scale and range per block (see the module doc)."""
    check_bits(bits, "quantize-weights")
    w = np.asarray(w, np.float32)
    if w.ndim != 2:
        raise SliverError(f"quantize-weights: expected a 2-D weight, got shape {list(w.shape)}")
    if not 0 < clip_min <= 1 or clip_grid < 1:
        raise SliverError(f"quantize-weights: need 0 < clip_min <= 1 and clip_grid >= 1 "
                          f"(got clip_min={clip_min}, clip_grid={clip_grid})")
    flat = w.reshape(-1)
    keep = np.unique(np.asarray(keep, np.int64).reshape(-1))
    if keep.size and (keep.min() < 0 or keep.max() >= flat.size):
        raise SliverError(f"quantize-weights: kept index out of range for a weight of {flat.size} elements")
    held = np.zeros(flat.size, bool)
    held[keep] = True
    wb = _blocks(flat, block, np.float32(0))
    valid = _blocks(~held, block, False)
    lo = np.where(valid, wb, 0).min(1).astype(np.float64)
    hi = np.where(valid, wb, 0).max(1).astype(np.float64)

    alphas = np.linspace(1.0, clip_min, clip_grid) if clip else np.ones(1)
    best_alpha = np.ones(len(wb))
    best_err = None
    for a in alphas:  # alpha = 1 first: a later candidate must be strictly better
        err = _rtn(wb, valid, lo, hi, a, bits, symmetric)[3]
        if best_err is None:
            best_err = err
            continue
        better = err < best_err
        best_err = np.where(better, err, best_err)
        best_alpha = np.where(better, a, best_alpha)
    codes, scale, zero, err = _rtn(wb, valid, lo, hi, best_alpha, bits, symmetric)
    if search:
        codes, scale, zero, err = _search(wb, valid, lo, hi, bits, symmetric, (codes, scale, zero, err), search_grid)
    return QuantizedWeight(
        shape=tuple(w.shape), bits=bits, block=block, codes=codes.reshape(-1)[:flat.size], scale=scale, zero=zero,
        index=keep.astype(np.int32), value=flat[keep].astype(np.float32), alpha=best_alpha,
    )


# ----------------------------------------------------------------------------
# the super-weight index


def load_report(path, who: str):
    """A find-outliers report (``sliver outliers MODEL --json FILE``) from a file."""
    path = Path(path)
    if not path.is_file():
        raise SliverError(f"{who}: outlier report {path}: no such file "
                          "(write one with `sliver outliers MODEL --json FILE`)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise SliverError(f"{who}: outlier report {path} is not JSON: {e}") from None


def super_weight_index(source) -> list[tuple[str, int, int]]:
    """(layer, row, column) triples from a find-outliers report, its JSON file, or a
    list of ``{"layer", "row", "column"}`` / ``(layer, row, column)``."""
    if isinstance(source, (str, Path)):
        source = load_report(source, "quantize-weights")
    if isinstance(source, dict):
        source = source.get("super_weights", [])
    out = []
    for entry in source:
        try:
            if isinstance(entry, dict):
                out.append((str(entry["layer"]), int(entry["row"]), int(entry["column"])))
            else:
                layer, row, col = entry
                out.append((str(layer), int(row), int(col)))
        except (KeyError, TypeError, ValueError):
            raise SliverError(f"quantize-weights: super-weight index entry {entry!r} needs layer, row and column") \
                from None
    return out


def super_activation_columns(report) -> list[tuple[str, int]]:
    """(weight, input column) of every linear that reads a super activation of a
    find-outliers report: the activation's channel in each of its consumers."""
    out = []
    for a in report.get("super_activations", []) if isinstance(report, dict) else []:
        for consumer in a.get("consumers", []):
            if (consumer, int(a["channel"])) not in out:
                out.append((consumer, int(a["channel"])))
    return out


def linear_layers(module, who: str) -> list:
    """The linear ops with a 2-D float param weight; a clear error when there are none."""
    ops = [op for op in module.ops if op.kind == "linear"
           and (w := module.param_data(op.operands[1])) is not None and w.ndim == 2
           and np.issubdtype(w.dtype, np.floating)]
    if not ops:
        raise SliverError(f"{who}: @{module.name} has no linear layers with a param weight; weight-only "
                          "quantization rewrites linear ops, so there is nothing to quantize")
    return ops


#: ops that only select or reshape a head's logits on their way to the output (a
#: generating step keeps the last position's: ``slice`` then ``reshape``)
_LOGITS_VIEWS = ("slice", "reshape", "squeeze")


def _is_output(module, value) -> bool:
    """Whether ``value`` is an output of ``module``, directly or through a chain of
    single-use :data:`_LOGITS_VIEWS` that keep its last axis."""
    last = value.type.shape[-1] if value.type.shape else None
    while not any(value is v for v in module.outputs):
        users = value.users
        if len(users) != 1 or users[0].kind not in _LOGITS_VIEWS or len(users[0].results) != 1:
            return False
        nxt = users[0].result
        if not nxt.type.shape or nxt.type.shape[-1] != last:
            return False
        value = nxt
    return True


def is_lm_head(module, op) -> bool:
    """Whether the linear ``op`` is a language model's head: its result is an output of
    ``module`` (or reaches one through slices and reshapes of its positions, as a
    generating step's last-token logits do) and it has as many output features as an
    embedding table (a ``take`` of a param table, read by token ids) has rows: the
    vocabulary."""
    if not _is_output(module, op.result):
        return False
    out = op.operands[1].type.shape[0]
    return any(o.kind == "take" and module.param_data(o.operands[0]) is not None
               and o.operands[0].type.shape[o.attrs["axis"]] == out for o in module.ops)


# ----------------------------------------------------------------------------
# the pass


@register
@dataclass(frozen=True)
class QuantizeWeights(Pass):
    """Weight-only RTN of linear layers (wq_linear); with keep_super=true super weights stay exact, with clip=true outliers are clipped by search."""

    name = "quantize-weights"
    lossy = True

    bits: int = 8
    symmetric: bool = True
    granularity: str = "channel"
    block: int = 128
    pad: bool = False
    clip: bool = False
    clip_min: float = 0.2
    clip_grid: int = 25
    keep_super: bool = False
    index: str = ""
    head: bool = False
    embedding: bool = False
    keep_activations: bool = False
    search: bool = False
    search_grid: int = 4
    activations: str = "float"
    #: super weights given directly ((layer, row, column) triples); not a CLI option
    super_weights: tuple | None = field(default=None, compare=False, repr=False)
    #: input channels of super activations given directly ((layer, column) pairs); not a CLI option
    super_columns: tuple | None = field(default=None, compare=False, repr=False)

    def _columns(self, module) -> list[tuple[str, int]]:
        if not (self.keep_super and self.keep_activations):
            return []
        if self.super_columns is not None:
            return [(str(n), int(c)) for n, c in self.super_columns]
        if self.index:
            return super_activation_columns(load_report(self.index, self.name))
        from sliver.passes.outliers import find_outliers

        return super_activation_columns(find_outliers(module))

    def _index(self, module) -> list[tuple[str, int, int]]:
        if not self.keep_super:
            return []
        if self.super_weights is not None:
            return super_weight_index(self.super_weights)
        if self.index:
            return super_weight_index(self.index)
        from sliver.passes.outliers import find_outliers

        return super_weight_index(find_outliers(module))

    def run(self, module):
        check_bits(self.bits, self.name)
        if self.activations not in ACTIVATIONS:
            raise SliverError(f"{self.name}: activations must be one of {', '.join(ACTIVATIONS)}, "
                              f"got {self.activations!r}")
        if self.granularity not in GRANULARITIES:
            raise SliverError(f"{self.name}: granularity must be one of {', '.join(GRANULARITIES)}, "
                              f"got {self.granularity!r}")
        ops = linear_layers(module, self.name)
        heads = [op for op in ops if is_lm_head(module, op)]
        if not self.head:
            ops = [op for op in ops if op not in heads] or ops
        weights = {op.operands[1].name for op in ops}
        keep: dict[str, list[int]] = {}
        for layer, row, col in self._index(module):
            if layer not in weights:
                raise SliverError(f"{self.name}: the super-weight index names {layer}, which is not the weight "
                                  f"of a linear layer of @{module.name}")
            shape = module.params[layer].shape
            if not (0 <= row < shape[0] and 0 <= col < shape[1]):
                raise SliverError(f"{self.name}: super weight {layer}[{row},{col}] is outside its {list(shape)} weight")
            keep.setdefault(layer, []).append(row * shape[1] + col)
        for layer, col in self._columns(module):
            if layer in weights and 0 <= col < module.params[layer].shape[1]:
                rows, cols = module.params[layer].shape
                keep.setdefault(layer, []).extend(np.arange(rows, dtype=np.int64) * cols + col)

        layers, done = [], {}

        def quantize(wv, **note):
            """The QuantizedWeight of param ``wv`` (once per param) and its layer record."""
            if wv.name in done:
                return done[wv.name][0]
            w = module.params[wv.name]
            block = block_size(w.shape, self.granularity, self.block, self.pad, wv.name)
            q = quantize_weight(w, bits=self.bits, block=block, symmetric=self.symmetric, clip=self.clip,
                                keep=keep.get(wv.name, ()), clip_min=self.clip_min, clip_grid=self.clip_grid,
                                search=self.search, search_grid=self.search_grid)
            w_hat = q.values()
            layers.append({
                "layer": wv.name, "shape": list(w.shape), "block": block, "blocks": int(q.scale.size),
                "kept": [[int(i) // w.shape[1], int(i) % w.shape[1]] for i in q.index],
                "clip_alpha_mean": float(q.alpha.mean()), "clipped_blocks": int((q.alpha < 1).sum()),
                "rel_error": float(np.linalg.norm(w_hat - w) / max(np.linalg.norm(w), 1e-30)),
                "bytes": q.nbytes, "bytes_f32": int(w.size * 4), **note,
            })
            done[wv.name] = (q, None)
            return q

        # embeddings first: a table tied to the head is read by the first ops, so its codes
        # are defined before them and the head's wq_linear reuses them
        for op in embeddings(module) if self.embedding else []:
            wv = op.operands[0]
            q = quantize(wv, embedding=True)
            done[wv.name] = (q, _rewrite_take(module, op, q, done[wv.name][1]))
        for op in ops:
            wv = op.operands[1]
            q = quantize(wv)
            done[wv.name] = (q, _rewrite(module, op, q, done[wv.name][1], self.activations == "int8"))
        kept_float = [op.operands[1].name for op in heads if not self.head and op not in ops]
        embeddings_float = [] if self.embedding else [op.operands[0].name for op in embeddings(module)]
        return True, {"layers": layers, "bits": self.bits, "symmetric": self.symmetric, "head_kept_float": kept_float,
                      "embeddings_kept_float": embeddings_float}


def embeddings(module) -> list:
    """The ``take`` ops reading rows (axis 0) of a 2-D float param table."""
    return [op for op in module.ops if op.kind == "take" and op.attrs["axis"] == 0
            and (t := module.param_data(op.operands[0])) is not None and t.ndim == 2
            and np.issubdtype(t.dtype, np.floating)]


def _params(module, base, q, before, params):
    """The params holding ``q`` (made before op ``before``, or ``params`` made already)."""
    if params is not None:
        return params
    return [module.add_param(f"{base}.{suffix}", data, before=before) for suffix, data in
            (("codes", q.packed), ("scale", q.scale), ("zero", q.zero), ("out_index", q.index),
             ("out_value", q.value))]


def _replace(module, op, new, wv) -> None:
    name = op.result.name
    module.replace_all_uses_with(op.result, new.result)
    module.erase(op)
    if not wv.uses:
        module.erase(wv.producer)
    module.rename(new.result, name)


def _rewrite_take(module, op, q: QuantizedWeight, params=None) -> list:
    """take(table, ids) → wq_take(codes, scale, zero, out_index, out_value, ids); the params."""
    wv, ids = op.operands
    params = _params(module, wv.name.removesuffix(".weight"), q, op, params)
    new = module.add_op("wq_take", [*params, ids], {"bits": q.bits, "block": q.block, "rows": q.shape[0],
                                                     "columns": q.shape[1]},
                        before=op, names=[module.fresh_name(op.result.name)])
    _replace(module, op, new, wv)
    return params


def _rewrite(module, op, q: QuantizedWeight, params=None, int8_activations: bool = False) -> list:
    """linear(x, W, b?) → wq_linear(x, codes, scale, zero, out_index, out_value, b?); the params.
    ``int8_activations``: the op reads x rounded to int8 per run of gcd(K, block) features
    (``act_block``), the runs the fused kernel's weight groups are made of."""
    import math

    x, wv, *bias = op.operands
    params = _params(module, wv.name.removesuffix(".weight"), q, op, params)
    attrs = {"bits": q.bits, "block": q.block, "out_features": q.shape[0]}
    if int8_activations:
        attrs["act_block"] = math.gcd(int(q.shape[1]), int(q.block))
    new = module.add_op("wq_linear", [x, *params, *bias], attrs, before=op, names=[module.fresh_name(op.result.name)])
    _replace(module, op, new, wv)
    return params
