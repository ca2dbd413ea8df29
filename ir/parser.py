"""Parse the text form written by :mod:`sliver.ir.printer`.

Errors name the line and column and what was expected there.  Types written in
the text are checked against each op's type rule, so a hand-edited file with a
wrong shape fails here rather than deep in a backend.
"""

from __future__ import annotations

import re

import numpy as np

from sliver.common.errors import IRParseError, SliverError
from sliver.ir.core import Module
from sliver.ir.types import QuantParams, TensorType

_TOKEN = re.compile(
    r"""
    (?P<ws>[ \t]+|\#[^\n]*)
  | (?P<nl>\n)
  | (?P<value>%[A-Za-z0-9_.]+)
  | (?P<symbol>@[A-Za-z0-9_.]+)
  | (?P<string>"(?:[^"\\]|\\.)*")
  | (?P<number>-?(?:\d+\.\d*(?:[eE][-+]?\d+)?|\d+[eE][-+]?\d+|\d+|inf))
  | (?P<word>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<punct>[(){}\[\],:=])
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


def _parse_attr(lx: _Lexer):
    kind, text, *_ = lx.peek()
    if text == "[" and kind == "punct":
        lx.next()
        items = []
        while not lx.accept("]"):
            items.append(_parse_attr(lx))
            if not lx.accept(","):
                lx.expect("punct", "]")
                break
        return tuple(items)
    lx.next()
    if kind == "number":
        if text in ("inf", "-inf"):
            return float(text)
        return float(text) if any(c in text for c in ".eE") else int(text)
    if kind == "string":
        return re.sub(r"\\(.)", r"\1", text[1:-1])
    if kind == "word":
        words = {"true": True, "false": False, "none": None, "nan": float("nan"), "inf": float("inf")}
        if text in words:
            return words[text]
    lx.i -= 1
    raise lx.error("expected an attribute value")


def _parse_type(lx: _Lexer) -> TensorType:
    tok = lx.peek()
    dtype = lx.expect("word")
    lx.expect("punct", "[")
    shape = []
    while not lx.accept("]"):
        shape.append(int(lx.expect("number")))
        if not lx.accept(","):
            lx.expect("punct", "]")
            break
    quant = None
    if lx.peek()[1] == "q" and lx.peek(1)[1] == "(":
        lx.next(), lx.next()
        fields = {}
        while not lx.accept(")"):
            key = lx.expect("word")
            lx.expect("punct", "=")
            fields[key] = _parse_attr(lx)
            lx.accept(",")
        try:
            quant = QuantParams(**fields)
        except (TypeError, SliverError) as e:
            raise lx.error(f"bad quantization parameters: {e}", tok) from None
    try:
        return TensorType(tuple(shape), dtype, quant)
    except SliverError as e:
        raise lx.error(str(e), tok) from None


def parse_module(text: str, params: dict[str, np.ndarray] | None = None) -> Module:
    """Parse IR text.  ``params`` supplies the data of ``param`` ops by name;
    without it, params are zero-filled placeholders of the printed type (enough
    for structural tests and golden-text comparisons)."""
    lx = _Lexer(text)
    lx.expect("word", "func")
    module = Module(lx.expect("symbol")[1:])
    env = {}

    def define(tok, value):
        env[tok[1][1:]] = value

    def lookup(tok):
        try:
            return env[tok[1][1:]]
        except KeyError:
            raise lx.error(f"use of undefined value {tok[1]}", tok) from None

    lx.expect("punct", "(")
    while not lx.accept(")"):
        tok = lx.peek()
        lx.expect("value")
        lx.expect("punct", ":")
        try:
            define(tok, module.add_input(_parse_type(lx), name=tok[1][1:]))
        except IRParseError:
            raise
        except SliverError as e:
            raise lx.error(str(e), tok) from None
        if not lx.accept(","):
            lx.expect("punct", ")")
            break
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
                key = lx.expect("word")
                lx.expect("punct", "=")
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
        names = [t[1][1:] for t in lhs]
        try:
            if kind == "param":
                if params is not None and names[0] not in params:
                    raise SliverError(f"no data for param %{names[0]} in the params file")
                data = params[names[0]] if params is not None else np.zeros(types[0].shape, _np_dtype(types[0]))
                if data.shape != types[0].shape or data.dtype != _np_dtype(types[0]):
                    raise SliverError(
                        f"param %{names[0]} is {types[0]} in the text but {data.dtype}{list(data.shape)} in the params file"
                    )
                if operands or attrs:
                    raise SliverError("param takes no operands or attributes")
                op = module.add_op("param", types=types, names=names)
                module.params[names[0]] = data
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
    return module


def _np_dtype(t: TensorType):
    from sliver.ir.types import to_numpy

    return to_numpy(t.dtype)
