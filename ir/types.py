"""Tensor types of sliver's IR: a shape, an element type and optional quantization.

Element types are short names (``f32``, ``i64``, ``u4``…).  Sub-byte integers
(``i1``–``i7``, ``u1``–``u7``) exist for the low-bit passes; the interpreter holds
them in the smallest numpy integer that fits.  Printed form: ``f32[1,3,32,32]``,
``u4[8,16]q(scale=0.05, zero_point=3)``, ``f32[batch,seq,768]``.

Symbolic dimensions
-------------------
A dimension is an ``int`` or a :class:`~sliver.ir.dims.Sym`: an integer expression
over named dimension variables (``batch`` in ``[1, 16]``), which arise from
``torch.export.Dim``.  Shapes are tuples of those.  An op's type rule handles symbolic
dims by plain arithmetic, unchanged in most cases:

- ``+``, ``-``, ``*``, ``//`` (by an int, or by a dim dividing exactly) keep working and
  give a canonical expression (``numel`` of ``[batch, seq, 12]`` is ``12*batch*seq``),
- ``==`` / ``!=`` / ``in`` / sets are structural (``batch != 1``: broadcasting treats a
  symbolic dim as not 1; two dims are the same only when provably equal),
- ``<``, ``<=``... decide from the variables' ranges or raise
  :class:`~sliver.ir.dims.SymbolicDimError` (a :class:`SliverError`),
- ``int(d)``, ``range(d)``, ``np.zeros(shape)`` raise ``SymbolicDimError``.

So a rule that only does arithmetic and equality on dims needs no change; a rule that
needs a static size says so with :func:`~sliver.ir.dims.static` /
:func:`~sliver.ir.dims.static_shape` ("conv2d needs a static number of channels").
A symbolic dim must never be resolved to an example size.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from sliver.common.errors import SliverError
from sliver.ir.dims import Sym, bounds, dim, is_static

_NUMPY = {
    "f64": np.float64,
    "f32": np.float32,
    "f16": np.float16,
    "i64": np.int64,
    "i32": np.int32,
    "i16": np.int16,
    "i8": np.int8,
    "u8": np.uint8,
    "bool": np.bool_,
}
# Sub-byte integers: i1..i7 live in int8, u1..u7 in uint8.
for _bits in range(1, 8):
    _NUMPY[f"i{_bits}"] = np.int8
    _NUMPY[f"u{_bits}"] = np.uint8

DTYPES = frozenset(_NUMPY)
FLOAT_DTYPES = frozenset({"f64", "f32", "f16"})
_FROM_NUMPY = {np.dtype(v): k for k, v in _NUMPY.items() if not re.fullmatch(r"[iu][1-7]", k)}


def is_float(dtype: str) -> bool:
    return dtype in FLOAT_DTYPES


LOWBIT_DTYPES = frozenset(f"{s}{b}" for s in "iu" for b in range(1, 9))


def is_lowbit(dtype: str) -> bool:
    """An integer code type of 1 to 8 bits (``u1``..``u8``, ``i1``..``i8``)."""
    return dtype in LOWBIT_DTYPES


def int_range(dtype: str) -> tuple[int, int]:
    """(qmin, qmax) of an integer code type: uB → [0, 2^B−1], iB → [−2^(B−1), 2^(B−1)−1]."""
    if not is_lowbit(dtype):
        raise SliverError(f"{dtype!r} is not a 1- to 8-bit integer type (u1..u8, i1..i8)")
    b = int(dtype[1:])
    return (0, 2**b - 1) if dtype[0] == "u" else (-(2 ** (b - 1)), 2 ** (b - 1) - 1)


def bits(dtype: str) -> int:
    """Storage bits of one element (1 for ``bool``)."""
    if dtype == "bool":
        return 1
    return int(dtype[1:])


def to_numpy(dtype: str) -> np.dtype:
    """The numpy dtype that holds values of ``dtype``."""
    try:
        return np.dtype(_NUMPY[dtype])
    except KeyError:
        raise SliverError(f"unknown element type {dtype!r}; known: {', '.join(sorted(DTYPES))}") from None


def from_numpy(dtype) -> str:
    """The sliver element type of a numpy (or torch) dtype."""
    name = str(dtype).replace("torch.", "")
    try:
        return _FROM_NUMPY[np.dtype(name if name != "bool" else np.bool_)]
    except (KeyError, TypeError):
        raise SliverError(f"sliver has no element type for {dtype}") from None


@dataclass(frozen=True)
class QuantParams:
    """Affine quantization of a tensor: real = scale * (q - zero_point).

    ``axis`` is None for per-tensor parameters; otherwise ``scale`` and
    ``zero_point`` are tuples with one entry per slice along ``axis``.
    """

    scale: float | tuple[float, ...]
    zero_point: int | tuple[int, ...] = 0
    axis: int | None = None

    def __post_init__(self):
        per_channel = isinstance(self.scale, tuple)
        if per_channel != (self.axis is not None):
            raise SliverError("per-channel quantization needs tuple scales and an axis; per-tensor needs neither")

    def __str__(self) -> str:
        from sliver.ir.attrs import format_attr  # attrs imports types: import late

        parts = [f"scale={format_attr(self.scale)}", f"zero_point={format_attr(self.zero_point)}"]
        if self.axis is not None:
            parts.append(f"axis={self.axis}")
        return "q(" + ", ".join(parts) + ")"


@dataclass(frozen=True)
class TensorType:
    shape: tuple[int, ...]
    dtype: str
    quant: QuantParams | None = None

    def __post_init__(self):
        object.__setattr__(self, "shape", tuple(dim(d) for d in self.shape))
        if self.dtype not in DTYPES:
            raise SliverError(f"unknown element type {self.dtype!r}; known: {', '.join(sorted(DTYPES))}")
        if any(bounds(d)[0] < 0 for d in self.shape):
            raise SliverError(f"negative dimension in shape [{', '.join(map(str, self.shape))}]")

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def static(self) -> bool:
        """Whether every dimension is an int (no symbolic dims)."""
        return is_static(self.shape)

    @property
    def numel(self) -> "int | Sym":
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def nbytes(self) -> int:
        """Bytes of the packed storage (sub-byte types packed densely)."""
        return (self.numel * bits(self.dtype) + 7) // 8

    def with_shape(self, shape) -> "TensorType":
        return TensorType(tuple(shape), self.dtype, self.quant)

    def with_dtype(self, dtype: str) -> "TensorType":
        return TensorType(self.shape, dtype, None)

    def __str__(self) -> str:
        text = f"{self.dtype}[{','.join(str(d) for d in self.shape)}]"  # a Sym prints as its expression
        if self.quant is not None:
            text += str(self.quant)
        return text

    @staticmethod
    def of(array) -> "TensorType":
        """The type of a numpy array or torch tensor."""
        return TensorType(tuple(array.shape), from_numpy(array.dtype))
