"""Symbolic dimensions: a tensor dimension is an ``int`` or a :class:`Sym`.

A :class:`Sym` is an integer expression over named dimension variables
(:class:`DimVar`, e.g. ``batch`` in ``[1, 16]``): a polynomial with integer
coefficients whose atoms are variables and floor divisions by a positive integer
(``(seq + 1)//2``).  Arithmetic with ``+``, ``-``, ``*`` and ``//`` keeps the
canonical form, so structurally equal expressions compare equal and hash alike
(``batch*seq*12 == 12*seq*batch``) and an expression that becomes constant
collapses to a plain ``int`` (``seq - seq + 3`` is ``3``).

The rules a shape computation can rely on:

- ``==`` / ``!=`` / ``hash`` are *structural*: ``batch == 4`` is False even though
  ``batch`` may be 4 at run time.  Broadcasting therefore treats a symbolic dim as
  "not 1".
- ``<``, ``<=``, ``>``, ``>=`` decide from the variables' ranges (interval
  arithmetic); when the ranges do not decide (``seq < 8`` with seq in [1, 512]) they
  raise :class:`SymbolicDimError`, which names the expression and the ranges.
- ``int()``, ``operator.index()`` (``range(d)``, ``np.zeros(shape)``) raise
  :class:`SymbolicDimError`: code that needs a static size says so instead of guessing.
- :func:`evaluate` gives the value for concrete variable values (the interpreter and
  the runtime bind them from the inputs' shapes).

Printed form (what the IR text holds): ``batch``, ``12*seq``, ``batch*seq``,
``seq + -1``... see :meth:`Sym.__str__`; :mod:`sliver.ir.parser` reads it back.
"""

from __future__ import annotations

import operator
import re
from dataclasses import dataclass

from sliver.common.errors import SliverError

#: the largest upper bound of a dimension variable (a dimension is an int32, as in TVM)
MAX_DIM = 2**31 - 1
#: the most terms one expression may have, and the most factors in one term (hostile
#: IR text must not be able to expand ``(a+b+c)*(a+b+c)*...`` into millions of terms)
MAX_TERMS = 64
MAX_DEGREE = 8
#: names a dimension variable may not take: the IR text's keywords
RESERVED = frozenset({"true", "false", "none", "nan", "inf", "q", "where", "in", "func", "return", "param"})
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class SymbolicDimError(SliverError):
    """A static size was needed where a dimension is symbolic (or an expression
    sliver's symbolic dims cannot represent)."""


@dataclass(frozen=True, order=True)
class DimVar:
    """A named dimension variable with an inclusive range ``[lo, hi]``."""

    name: str
    lo: int = 1
    hi: int = MAX_DIM

    def __post_init__(self):
        if not isinstance(self.name, str) or not _NAME.fullmatch(self.name) or self.name in RESERVED:
            raise SymbolicDimError(
                f"invalid dimension name {self.name!r}: use a letter or '_', then letters, digits, '_' "
                f"(not one of {', '.join(sorted(RESERVED))})")
        for what in ("lo", "hi"):
            v = getattr(self, what)
            if not isinstance(v, int) or isinstance(v, bool):
                raise SymbolicDimError(f"dimension {self.name}: {what} must be an integer, got {v!r}")
        if not 0 <= self.lo <= self.hi <= MAX_DIM:
            raise SymbolicDimError(
                f"dimension {self.name}: range [{self.lo}, {self.hi}] must satisfy 0 <= min <= max <= {MAX_DIM}")

    def __str__(self) -> str:
        return f"{self.name} in [{self.lo}, {self.hi}]"


# A polynomial: frozenset of (monomial, coefficient); a monomial is a sorted tuple of
# atoms (with repetition for powers); an atom is a DimVar or a _FloorDiv.


@dataclass(frozen=True)
class _FloorDiv:
    num: "Sym"
    den: int

    def key(self):
        return ("~", str(self))

    def __str__(self):
        return f"({self.num})//{self.den}"


def _atom_key(a):
    return (a.name,) if isinstance(a, DimVar) else a.key()


def _poly(terms: dict) -> "int | Sym":
    terms = {m: c for m, c in terms.items() if c != 0}
    if len(terms) > MAX_TERMS or any(len(m) > MAX_DEGREE for m in terms):
        raise SymbolicDimError(f"dimension expression too large (more than {MAX_TERMS} terms or a product of "
                               f"more than {MAX_DEGREE} dimensions)")
    if not terms:
        return 0
    if set(terms) == {()}:
        return terms[()]
    return Sym(terms)


class Sym:
    """A symbolic dimension expression (see the module doc)."""

    __slots__ = ("_terms", "_hash", "_text")

    def __init__(self, terms: dict):
        self._terms = dict(sorted(terms.items(), key=lambda kv: (-len(kv[0]), [_atom_key(a) for a in kv[0]])))
        self._hash = hash(frozenset(self._terms.items()))
        self._text = None

    # -- construction ----------------------------------------------------------
    @staticmethod
    def var(v: DimVar) -> "Sym":
        return Sym({(v,): 1})

    @staticmethod
    def _of(x) -> dict:
        if isinstance(x, Sym):
            return x._terms
        if isinstance(x, bool) or not isinstance(x, int):
            raise SymbolicDimError(f"cannot combine a symbolic dimension with {x!r} (a dimension is an integer)")
        return {(): x} if x else {}

    # -- arithmetic --------------------------------------------------------------
    def __add__(self, other):
        if not isinstance(other, (int, Sym)):
            return NotImplemented
        out = dict(self._terms)
        for m, c in Sym._of(other).items():
            out[m] = out.get(m, 0) + c
        return _poly(out)

    __radd__ = __add__

    def __neg__(self):
        return _poly({m: -c for m, c in self._terms.items()})

    def __sub__(self, other):
        if not isinstance(other, (int, Sym)):
            return NotImplemented
        return self + (-other)

    def __rsub__(self, other):
        if not isinstance(other, int):
            return NotImplemented
        return (-self) + other

    def __mul__(self, other):
        if not isinstance(other, (int, Sym)):
            return NotImplemented
        out: dict = {}
        if len(self._terms) * len(Sym._of(other)) > MAX_TERMS * MAX_TERMS:
            raise SymbolicDimError(f"dimension expression too large: ({self}) * ({other})")
        for m1, c1 in self._terms.items():
            for m2, c2 in Sym._of(other).items():
                m = tuple(sorted(m1 + m2, key=_atom_key))
                out[m] = out.get(m, 0) + c1 * c2
        return _poly(out)

    __rmul__ = __mul__

    def __floordiv__(self, other):
        if isinstance(other, Sym):
            return _divide_exact(self, other)
        if isinstance(other, bool) or not isinstance(other, int):
            return NotImplemented
        if other <= 0:
            raise SymbolicDimError(f"cannot divide the dimension {self} by {other}")
        if other == 1:
            return self
        exact = {m: c // other for m, c in self._terms.items() if c % other == 0}
        rest = {m: c for m, c in self._terms.items() if c % other != 0}
        if not rest:
            return _poly(exact)
        # floor((D + R) / k) = D/k + floor(R / k) when D/k is an integer
        rest_const = rest.pop((), 0)
        if not rest:
            return _poly({**exact, (): exact.get((), 0) + rest_const // other})
        return _poly(exact) + Sym({(_FloorDiv(_poly({**rest, (): rest_const}), other),): 1})

    def __rfloordiv__(self, other):
        if not isinstance(other, int):
            return NotImplemented
        raise SymbolicDimError(f"{other} // ({self}): dividing by a symbolic dimension is not supported")

    def __mod__(self, other):
        if isinstance(other, int) and not isinstance(other, bool) and other > 0:
            result = self - (self // other) * other
            return result
        raise SymbolicDimError(f"({self}) % {other!r}: only the remainder by a positive integer is supported")

    def __rmod__(self, other):
        """``i % size`` for an index: ``i`` when 0 <= i < size, ``i + size`` when -size <= i < 0
        (python's modulo in the ranges indexing uses), else SymbolicDimError."""
        if not isinstance(other, int) or isinstance(other, bool):
            return NotImplemented
        if other >= 0 and self > other:
            return other
        if other < 0 and self + other >= 0:
            return self + other
        raise SymbolicDimError(f"{other} % ({self}): the index may be out of range ({describe_vars(self)})")

    def __truediv__(self, other):
        raise SymbolicDimError(f"({self}) / {other}: a dimension divides only by floor division")

    __rtruediv__ = __truediv__

    # -- comparisons -------------------------------------------------------------
    def __eq__(self, other):
        if isinstance(other, Sym):
            return self._hash == other._hash and self._terms == other._terms
        return False  # a Sym never collapses to a constant: structurally different from any int

    def __ne__(self, other):
        return not self == other

    def __hash__(self):
        return self._hash

    def _decide(self, other, op, text):
        if not isinstance(other, (int, Sym)) or isinstance(other, bool):
            return NotImplemented
        lo, hi = bounds(self - other)
        if op(lo, 0) and op(hi, 0):
            return True
        if not op(lo, 0) and not op(hi, 0):
            return False
        raise SymbolicDimError(
            f"whether {self} {text} {other} depends on the size ({describe_vars(self, other)}): "
            "this needs a static dimension here")

    def __lt__(self, other):
        return self._decide(other, operator.lt, "<")

    def __le__(self, other):
        return self._decide(other, operator.le, "<=")

    def __gt__(self, other):
        return self._decide(other, operator.gt, ">")

    def __ge__(self, other):
        return self._decide(other, operator.ge, ">=")

    def __bool__(self):
        return bool(self._decide(0, operator.ne, "!="))

    # -- no silent concretization -------------------------------------------------
    def __int__(self):
        raise SymbolicDimError(f"dimension {self} is symbolic ({describe_vars(self)}); a static size is needed here")

    __index__ = __int__

    def __float__(self):
        raise SymbolicDimError(f"dimension {self} is symbolic ({describe_vars(self)}); a static size is needed here")

    # -- queries -------------------------------------------------------------------
    @property
    def vars(self) -> frozenset:
        out = set()
        for m in self._terms:
            for a in m:
                if isinstance(a, DimVar):
                    out.add(a)
                else:
                    out |= a.num.vars
        return frozenset(out)

    @property
    def as_var(self) -> DimVar | None:
        """The variable when this expression is exactly one variable, else None."""
        if len(self._terms) == 1:
            (m, c), = self._terms.items()
            if c == 1 and len(m) == 1 and isinstance(m[0], DimVar):
                return m[0]
        return None

    def terms(self):
        """(atoms, coefficient) pairs; atoms are DimVars or floor divisions (``.num``, ``.den``)."""
        return list(self._terms.items())

    def __str__(self):
        if self._text is None:
            parts = []
            for m, c in self._terms.items():
                factors = [a.name if isinstance(a, DimVar) else str(a) for a in m]
                if not factors:
                    parts.append(str(c))
                elif c == 1:
                    parts.append("*".join(factors))
                else:
                    parts.append("*".join([str(c)] + factors))
            self._text = " + ".join(parts)
        return self._text

    def __repr__(self):
        return f"Sym({self})"


def _divide_exact(a: Sym, b: Sym):
    """a // b when b is a single term c*monomial dividing every term of a exactly."""
    if len(b._terms) == 1:
        (mb, cb), = b._terms.items()
        out = {}
        for m, c in a._terms.items():
            rest = list(m)
            try:
                for atom in mb:
                    rest.remove(atom)
            except ValueError:
                break
            if c % cb:
                break
            out[tuple(rest)] = c // cb
        else:
            return _poly(out)
    if a == b:
        return 1
    raise SymbolicDimError(f"({a}) // ({b}): dividing by a symbolic dimension is supported only when it divides exactly")


def is_sym(d) -> bool:
    return isinstance(d, Sym)


def is_static(shape) -> bool:
    """Whether every dimension of ``shape`` is an int."""
    return not any(isinstance(d, Sym) for d in shape)


def dim(d):
    """Normalize one dimension: an int (numpy ints and the like via ``__index__``) or a Sym."""
    if isinstance(d, Sym):
        return d
    if isinstance(d, DimVar):
        return Sym.var(d)
    if isinstance(d, bool):
        raise SymbolicDimError(f"a dimension is an integer, got {d!r}")
    try:
        return operator.index(d)
    except TypeError:
        raise SymbolicDimError(f"a dimension is an integer or a symbolic dimension, got {d!r}") from None


def bounds(d) -> tuple[int, int]:
    """Inclusive (lo, hi) of a dimension over its variables' ranges (interval arithmetic)."""
    if not isinstance(d, Sym):
        return d, d
    lo_sum = hi_sum = 0
    for m, c in d._terms.items():
        lo, hi = 1, 1
        for a in m:
            if isinstance(a, DimVar):
                alo, ahi = a.lo, a.hi
            else:
                nlo, nhi = bounds(a.num)
                alo, ahi = nlo // a.den, nhi // a.den
            cands = (lo * alo, lo * ahi, hi * alo, hi * ahi)
            lo, hi = min(cands), max(cands)
        lo, hi = (c * lo, c * hi) if c >= 0 else (c * hi, c * lo)
        lo_sum, hi_sum = lo_sum + lo, hi_sum + hi
    return lo_sum, hi_sum


def largest(d) -> int:
    """The largest value of a dimension over its variables' ranges (an int stays as it
    is): what size reports (MACs, bytes) count for a dynamic dimension."""
    return bounds(d)[1]


def evaluate(d, env: dict) -> int:
    """The value of a dimension for variable values ``env`` (name → int)."""
    if not isinstance(d, Sym):
        return d
    total = 0
    for m, c in d._terms.items():
        v = c
        for a in m:
            if isinstance(a, DimVar):
                try:
                    v *= env[a.name]
                except KeyError:
                    raise SymbolicDimError(f"no value for dimension {a.name}") from None
            else:
                v *= evaluate(a.num, env) // a.den
        total += v
    return total


def substitute(value, env: dict):
    """``value`` (a dim, or nested tuples/lists of values) with every Sym evaluated."""
    if isinstance(value, Sym):
        return evaluate(value, env)
    if isinstance(value, tuple):
        return tuple(substitute(v, env) for v in value)
    if isinstance(value, list):
        return [substitute(v, env) for v in value]
    return value


def vars_of(value) -> set:
    """Every DimVar in a dimension, shape, attribute value or TensorType."""
    if isinstance(value, Sym):
        return set(value.vars)
    if isinstance(value, (tuple, list)):
        out = set()
        for v in value:
            out |= vars_of(v)
        return out
    shape = getattr(value, "shape", None)
    if isinstance(shape, tuple):
        return vars_of(shape)
    return set()


def describe_vars(*dims) -> str:
    vs = set()
    for d in dims:
        vs |= vars_of(d)
    return ", ".join(str(v) for v in sorted(vs)) or "no variables"


def static(d, what: str = "this") -> int:
    """``d`` as an int, or a SymbolicDimError saying that ``what`` needs a static size."""
    if isinstance(d, Sym):
        raise SymbolicDimError(f"{what} needs a static size, but the dimension is {d} ({describe_vars(d)})")
    return d


def static_shape(shape, what: str = "this") -> tuple[int, ...]:
    """``shape`` as ints, or a SymbolicDimError naming ``what``."""
    if not is_static(shape):
        raise SymbolicDimError(
            f"{what} needs a static shape, but the shape is [{', '.join(map(str, shape))}] ({describe_vars(shape)})")
    return tuple(shape)
