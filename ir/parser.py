"""Parse the text form written by :mod:`sliver.ir.printer`.

Errors name the line and column and what was expected there.  Types written in
the text are checked against each op's type rule, so a hand-edited file with a
wrong shape fails here rather than deep in a backend.

IR text may come from anywhere, so every error it can cause is an
:class:`IRParseError`: numbers are range-checked (integers fit in 64 bits, shape
dimensions are plain non-negative integers), a tensor holds at most
:data:`MAX_ELEMENTS` elements in at most :data:`MAX_RANK` dimensions, attribute
lists nest at most :data:`MAX_NESTING` deep, each attribute must be of its kind
(:data:`sliver.ir.ops.ATTR_KINDS`), and no param data is allocated or bound
before the whole text has been checked.
"""

from __future__ import annotations

import re

import numpy as np

from sliver.common.errors import IRParseError, SliverError
from sliver.ir.core import Module
from sliver.ir.names import parse_name
from sliver.ir.dims import RESERVED, DimVar, Sym, bounds
from sliver.ir.types import QuantParams, TensorType, to_numpy

#: the most elements one tensor of a parsed module may hold
MAX_ELEMENTS = 2**31 - 1
#: the most dimensions one tensor may have
MAX_RANK = 16
#: how deep attribute lists may nest (``[[1, 2], [3, 4]]`` is 2)
MAX_NESTING = 8
#: the most bytes of zero-filled placeholder params ``parse_module`` creates
#: when no params are given
MAX_PLACEHOLDER_BYTES = 2**30
_INT64 = 2**63

_TOKEN = re.compile(
    r"""
    (?P<ws>[ \t]+|\#[^\n]*)
  | (?P<nl>\n)
  | (?P<value>%(?:[A-Za-z0-9_.]+|"(?:[^"\\\n]|\\.)+"))
  | (?P<symbol>@[A-Za-z0-9_.]+)
  | (?P<string>"(?:[^"\\]|\\.)*")
  | (?P<number>-?(?:\d+\.\d*(?:[eE][-+]?\d+)?|\d+[eE][-+]?\d+|\d+|inf))
  | (?P<word>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<punct>//|[(){}\[\],:=+*-])
    """,
    re.VERBOSE,
)


class _Lexer:
    def __init__(self, text: str):
        self.tokens: list[tuple[str, str, int, int]] = []
        line, col_start, pos = 1, 0, 0
        while pos < len(text):
            m = _TOKEN.match(text, pos)
            if not m:
                raise IRParseError(f"line {line}, column {pos - col_start + 1}: unexpected character {text[pos]!r}")
            kind = m.lastgroup
            if kind == "nl":
                line, col_start = line + 1, m.end()
            elif kind != "ws":
                self.tokens.append((kind, m.group(), line, pos - col_start + 1))
            pos = m.end()
        self.tokens.append(("eof", "", line, pos - col_start + 1))
        self.i = 0
        self.dims: dict[str, DimVar] = {}  # the module's dimension variables (its `where` clause)
        self.in_shape = False

    def peek(self, offset=0):
        return self.tokens[min(self.i + offset, len(self.tokens) - 1)]

    def error(self, message: str, token=None) -> IRParseError:
        kind, text, line, col = token or self.peek()
        found = "end of input" if kind == "eof" else repr(text)
        return IRParseError(f"line {line}, column {col}: {message} (found {found})")

    def next(self):
        tok = self.peek()
        self.i += 1
        return tok

    def expect(self, kind: str, text: str | None = None) -> str:
        tok = self.peek()
        if tok[0] != kind or (text is not None and tok[1] != text):
            raise self.error(f"expected {text or kind}")
        self.i += 1
        return tok[1]

    def accept(self, text: str) -> bool:
        if self.peek()[1] == text and self.peek()[0] in ("punct", "word"):
            self.i += 1
            return True
        return False


def _number(lx: _Lexer, tok):
    text = tok[1]
    if text in ("inf", "-inf") or any(c in text for c in ".eE"):
        return float(text)  # out-of-range floats become ±inf, as in C
    if len(text.lstrip("-")) > 19 or not -_INT64 <= int(text) < _INT64:
        raise lx.error("integer out of the 64-bit range", tok)
    return int(text)


def _parse_attr(lx: _Lexer, depth: int = 0):
    kind, text, *_ = lx.peek()
    if text == "[" and kind == "punct":
        if depth >= MAX_NESTING:
            raise lx.error(f"attribute lists nest at most {MAX_NESTING} deep")
        lx.next()
        items = []
        while not lx.accept("]"):
            items.append(_parse_attr(lx, depth + 1))
            if not lx.accept(","):
                lx.expect("punct", "]")
                break
        return tuple(items)
    if kind == "number" and not any(c in text for c in ".eEn"):
        return _dim_expr(lx)  # an int, or a symbolic dimension such as 12*seq
    if kind == "word" and text in lx.dims or (kind == "punct" and text == "("):
        return _dim_expr(lx)
    lx.next()
    if kind == "number":
        return _number(lx, lx.tokens[lx.i - 1])
    if kind == "string":
        return re.sub(r"\\(.)", r"\1", text[1:-1])
    if kind == "word":
        words = {"true": True, "false": False, "none": None, "nan": float("nan"), "inf": float("inf")}
        if text in words:
            return words[text]
    lx.i -= 1
    raise lx.error("expected an attribute value")


def _dim_factor(lx: _Lexer, depth: int):
    tok = lx.peek()
    kind, text = tok[0], tok[1]
    if kind == "number" and re.fullmatch(r"-?\d+", text):
        if lx.in_shape and (len(text.lstrip("-")) > 19 or abs(int(text)) > MAX_ELEMENTS):
            raise lx.error(f"dimension larger than {MAX_ELEMENTS}")
        lx.next()
        return _number(lx, tok)
    if kind == "word":
        if text not in lx.dims:
            raise lx.error("expected a dimension: an integer or a dimension variable declared in the func's "
                           "`where` clause")
        lx.next()
        return Sym.var(lx.dims[text])
    if kind == "punct" and text == "(":
        if depth >= MAX_NESTING:
            raise lx.error(f"dimension expressions nest at most {MAX_NESTING} deep")
        lx.next()
        value = _dim_expr(lx, depth + 1)
        lx.expect("punct", ")")
        return value
    if kind == "punct" and text == "-":
        lx.next()
        return -_dim_factor(lx, depth)
    raise lx.error("expected a dimension (an integer, a dimension variable or a parenthesized expression)")


def _dim_term(lx: _Lexer, depth: int):
    value = _dim_factor(lx, depth)
    while lx.peek()[0] == "punct" and lx.peek()[1] in ("*", "//"):
        tok = lx.next()
        rhs = _dim_factor(lx, depth)
        try:
            value = value * rhs if tok[1] == "*" else _floordiv(lx, value, rhs, tok)
        except SliverError as e:
            raise lx.error(str(e), tok) from None
        _check_magnitude(lx, value, tok)
    return value


def _floordiv(lx, a, b, tok):
    if isinstance(b, int) and b <= 0:
        raise lx.error(f"a dimension divides only by a positive integer, not {b}", tok)
    return a // b


def _check_magnitude(lx, value, tok):
    lo, hi = bounds(value)
    if not -_INT64 <= lo and hi < _INT64:
        raise lx.error("dimension expression out of the 64-bit range", tok)


def _dim_expr(lx: _Lexer, depth: int = 0):
    """A dimension: an integer or an expression over the declared dimension variables
    (``batch``, ``12*seq``, ``(seq + -1)//2 + 1``)."""
    value = _dim_term(lx, depth)
    while True:
        tok = lx.peek()
        if tok[0] == "punct" and tok[1] in ("+", "-"):
            lx.next()
            rhs = _dim_term(lx, depth)
        else:
            break
        try:
            value = value + rhs if tok[1] != "-" else value - rhs
        except SliverError as e:
            raise lx.error(str(e), tok) from None
        _check_magnitude(lx, value, tok)
    return value


def _dimension(lx: _Lexer):
    tok = lx.peek()
    lx.in_shape = True
    try:
        d = _dim_expr(lx)
    finally:
        lx.in_shape = False
    lo, hi = bounds(d)
    if lo < 0:
        raise lx.error("expected a dimension (a non-negative integer or expression)", tok)
    if hi > MAX_ELEMENTS:
        raise lx.error(f"dimension larger than {MAX_ELEMENTS}", tok)
    return d


def _where_clause(lx: _Lexer) -> dict[str, DimVar]:
    """``where batch in [1, 16], seq in [1, 512]``: the module's dimension variables."""
    dims: dict[str, DimVar] = {}
    while True:
        tok = lx.peek()
        name = lx.expect("word")
        if name in RESERVED:
            raise lx.error(f"{name!r} is a keyword, not a dimension name", tok)
        if name in dims:
            raise lx.error(f"dimension {name} is declared twice", tok)
        lx.expect("word", "in")
        lx.expect("punct", "[")
        bound = []
        for i in range(2):
            btok = lx.peek()
            if btok[0] != "number" or not btok[1].isdigit():
                raise lx.error("expected a dimension bound (a non-negative integer)")
            if len(btok[1]) > 19 or int(btok[1]) > MAX_ELEMENTS:
                raise lx.error(f"dimension bound larger than {MAX_ELEMENTS}")
            lx.next()
            bound.append(int(btok[1]))
            if i == 0:
                lx.expect("punct", ",")
        lx.expect("punct", "]")
        try:
            dims[name] = DimVar(name, *bound)
        except SliverError as e:
            raise lx.error(str(e), tok) from None
        if not lx.accept(","):
            return dims


def _quant_params(lx: _Lexer, fields: dict, shape: tuple, tok) -> QuantParams:
    def bad(message):
        return lx.error(f"bad quantization parameters: {message}", tok)

    unknown = set(fields) - {"scale", "zero_point", "axis"}
    if unknown or "scale" not in fields:
        raise bad(f"q(...) takes scale, zero_point and axis, got {', '.join(sorted(fields)) or 'nothing'}")
    scale, zp, axis = fields["scale"], fields.get("zero_point", 0), fields.get("axis")
    if axis is None:
        scales, zps = (scale,), (zp,)
    else:
        if not isinstance(axis, int) or isinstance(axis, bool) or not 0 <= axis < len(shape):
            raise bad(f"axis {axis!r} is not an axis of a rank-{len(shape)} tensor")
        if not isinstance(scale, tuple) or not isinstance(zp, tuple) or not len(scale) == len(zp) == shape[axis]:
            raise bad(f"per-channel scale and zero_point need {shape[axis]} entries each (axis {axis})")
        scales, zps = scale, zp
    if not all(isinstance(s, float) and s > 0 and s != float("inf") for s in scales):
        raise bad(f"scale must be positive finite floats, got {scale!r}")
    if not all(isinstance(z, int) and not isinstance(z, bool) for z in zps):
        raise bad(f"zero_point must be integers, got {zp!r}")
    try:
        return QuantParams(scale, zp, axis)
    except SliverError as e:
        raise bad(str(e)) from None


def _parse_type(lx: _Lexer) -> TensorType:
    tok = lx.peek()
    dtype = lx.expect("word")
    lx.expect("punct", "[")
    shape = []
    while not lx.accept("]"):
        if len(shape) == MAX_RANK:
            raise lx.error(f"a tensor has at most {MAX_RANK} dimensions")
        shape.append(_dimension(lx))
        if not lx.accept(","):
            lx.expect("punct", "]")
            break
    numel = 1
    for d in shape:
        numel *= bounds(d)[1]
    if numel > MAX_ELEMENTS:
        raise lx.error(f"{dtype}{shape} has {numel} elements; sliver handles at most {MAX_ELEMENTS} per tensor", tok)
    quant = None
    if lx.peek()[1] == "q" and lx.peek(1)[1] == "(":
        lx.next(), lx.next()
        fields = {}
        while not lx.accept(")"):
            key = lx.expect("word")
            lx.expect("punct", "=")
            fields[key] = _parse_attr(lx)
            if not lx.accept(","):
                lx.expect("punct", ")")
                break
        quant = _quant_params(lx, fields, tuple(shape), tok)
    try:
        return TensorType(tuple(shape), dtype, quant)
    except SliverError as e:
        raise lx.error(str(e), tok) from None


def parse_module(text: str, params: dict[str, np.ndarray] | None = None) -> Module:
    """Parse IR text.  ``params`` supplies the data of ``param`` ops by name;
    without it, params are zero-filled placeholders of the printed type (enough
    for structural tests and golden-text comparisons; at most
    :data:`MAX_PLACEHOLDER_BYTES` in all).  Every problem is an
    :class:`IRParseError`."""
    module, pending = parse_structure(text)
    if params is None:
        total = sum(t.numel * to_numpy(t.dtype).itemsize for _, t, _ in pending)
        if total > MAX_PLACEHOLDER_BYTES:
            raise IRParseError(
                f"the params of @{module.name} take {total} bytes; zero placeholders are capped at "
                f"{MAX_PLACEHOLDER_BYTES} bytes: parse it with its params (its .npz file)"
            )
        params = {name: np.zeros(t.shape, to_numpy(t.dtype)) for name, t, _ in pending}
    bind_params(module, pending, params)
    return module


def bind_params(module: Module, pending, params) -> None:
    """Give each param op of ``pending`` (from :func:`parse_structure`) its data from
    ``params``, which must hold an array of exactly the printed type for each."""
    for name, t, (line, col) in pending:
        where = f"line {line}, column {col}: param %{name}"
        if not t.static:
            raise IRParseError(f"{where} is typed {t}: a param has a static shape")
        if name not in params:
            raise IRParseError(f"{where} has no data in the params")
        data = params[name]
        if isinstance(data, np.generic):  # a numpy scalar: the data of a 0-d param
            data = np.asarray(data)
        if not isinstance(data, np.ndarray):
            raise IRParseError(f"{where}: its data is a {type(data).__name__}, not a numpy array")
        if data.shape != t.shape or data.dtype != to_numpy(t.dtype):
            raise IRParseError(f"{where} is {t} in the text but {data.dtype}{list(data.shape)} in the params")
        module.params[name] = data


def _lookahead_where(lx: _Lexer) -> dict[str, DimVar]:
    """Read the signature's ``where`` clause (after the arguments, before ``{``) first:
    the argument types use its dimension variables."""
    start = lx.i
    j = start
    while lx.tokens[j][0] != "eof" and not (lx.tokens[j][0] == "punct" and lx.tokens[j][1] == "{"):
        if lx.tokens[j][0] == "word" and lx.tokens[j][1] == "where":
            lx.i = j + 1
            try:
                return _where_clause(lx)
            finally:
                lx.i = start
        j += 1
    return {}


def parse_structure(text: str):
    """Parse and check IR text without binding param data: returns the module and
    its param ops still to be bound, as ``(name, type, (line, column))``."""
    if not isinstance(text, str):
        raise IRParseError(f"IR text must be a str, got {type(text).__name__}")
    lx = _Lexer(text)
    lx.expect("word", "func")
    module = Module(lx.expect("symbol")[1:])
    lx.dims = _lookahead_where(lx)
    env = {}
    pending = []

    def define(tok, value):
        env[parse_name(tok[1])] = value

    def lookup(tok):
        try:
            return env[parse_name(tok[1])]
        except KeyError:
            raise lx.error(f"use of undefined value {tok[1]}", tok) from None

    lx.expect("punct", "(")
    while not lx.accept(")"):
        tok = lx.peek()
        lx.expect("value")
        lx.expect("punct", ":")
        t = _parse_type(lx)
        try:
            define(tok, module.add_input(t, name=parse_name(tok[1])))
        except SliverError as e:
            raise lx.error(str(e), tok) from None
        if not lx.accept(","):
            lx.expect("punct", ")")
            break
    if lx.accept("where"):
        _where_clause(lx)  # already read by _lookahead_where
    lx.expect("punct", "{")

    while not (lx.peek()[0] == "word" and lx.peek()[1] == "return"):
        op_tok = lx.peek()
        lhs = [lx.peek()]
        lx.expect("value")
        while lx.accept(","):
            lhs.append(lx.peek())
            lx.expect("value")
        lx.expect("punct", "=")
        kind_tok = lx.peek()
        kind = lx.expect("word")
        operands = []
        if lx.accept("("):
            while not lx.accept(")"):
                tok = lx.peek()
                lx.expect("value")
                operands.append(lookup(tok))
                if not lx.accept(","):
                    lx.expect("punct", ")")
                    break
        attrs = {}
        if lx.accept("{"):
            while not lx.accept("}"):
                key_tok = lx.peek()
                key = lx.expect("word")
                lx.expect("punct", "=")
                if key in attrs:
                    raise lx.error(f"attribute {key} is given twice", key_tok)
                attrs[key] = _parse_attr(lx)
                if not lx.accept(","):
                    lx.expect("punct", "}")
                    break
        lx.expect("punct", ":")
        types = [_parse_type(lx)]
        while lx.accept(","):
            types.append(_parse_type(lx))
        if len(types) != len(lhs):
            raise lx.error(f"{kind} defines {len(lhs)} value(s) but has {len(types)} type(s)", op_tok)
        names = [parse_name(t[1]) for t in lhs]
        try:
            if kind == "param":
                if operands or attrs:
                    raise SliverError("param takes no operands or attributes")
                if len(types) != 1:
                    raise SliverError("a param defines one value")
                if not types[0].static:
                    raise SliverError(f"param %{names[0]} is typed {types[0]}: a param has a static shape")
                op = module.add_op("param", types=types, names=names)
                pending.append((names[0], types[0], kind_tok[2:]))
            else:
                op = module.add_op(kind, operands, attrs, types=types, names=names)
                inferred = op.decl.infer_types([v.type for v in operands], op.attrs)
                if [str(t) for t in inferred] != [str(t) for t in types]:
                    raise SliverError(
                        f"{kind} result type is written as {', '.join(map(str, types))} but its operands give "
                        f"{', '.join(map(str, inferred))}"
                    )
        except IRParseError:
            raise
        except SliverError as e:
            raise lx.error(str(e), kind_tok) from None
        for tok, value in zip(lhs, op.results):
            define(tok, value)

    lx.expect("word", "return")
    outputs = [lookup(lx.peek())]
    lx.expect("value")
    while lx.accept(","):
        tok = lx.peek()
        lx.expect("value")
        outputs.append(lookup(tok))
    module.set_outputs(outputs)
    lx.expect("punct", "}")
    lx.expect("eof")
    return module, pending
