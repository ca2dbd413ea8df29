"""The artifact manifest: one typed schema, written by the compiler, checked on read.

``manifest.json`` inside a ``.sliver`` file is the JSON form of :class:`Manifest`.
The compiler (``sliver.package``) builds a ``Manifest`` and writes ``to_json()``;
the runtime reads it with :func:`parse` (bytes) or :meth:`Manifest.from_json` (a
decoded object), which check every field against the schema before anything else
in the archive is used: a missing field, a value of the wrong type, an unknown enum
value, an unexpected key, NaN, an oversized or too deeply nested document are all an
:class:`~sliver.common.errors.ArtifactError` that names the field
(``manifest field inputs[0].shape[1]: expected an integer ≥ 0, got -3``), never a
``KeyError`` or ``TypeError`` further down.

Older formats are migrated on read (:data:`MIGRATIONS`): format version 1 had no
hash of ``golden.npz`` and wrote ``kernels`` only when the model had low-bit layers;
format version 2 had no dynamic dimensions.

Dynamic dimensions (format version 3): ``dims`` lists each dimension variable with its
range (``{"name": "batch", "min": 1, "max": 16}``), and a shape entry is an integer or
a string: an input's is a dimension name, an output's (or an op's) may be an expression
over them as sliver prints it (``"12*batch*seq"``, ``"(seq + 1)//2"``).  A manifest
without dynamic dimensions is still written as format version 2, so runtimes that
predate them keep reading fixed-shape artifacts.

Generating artifacts (format version 4): ``llm`` describes a causal LM's step function
(:mod:`sliver.llm`): the KV cache's size, the vocabulary, the end-of-sequence ids and
the stored tokenizer (``tokenizer.json``, with its size and sha256).  A manifest
without it is written as version 3 (or 2).

This module imports only the standard library and ``sliver.common``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal, Union

from sliver.common.errors import ArtifactError
from sliver.common.records import PassRecord

FORMAT = "sliver-artifact"
FORMAT_VERSION = 4

#: a manifest larger than this is refused before it is parsed
MAX_MANIFEST_BYTES = 32 << 20
#: how deeply free-form JSON (pass notes, the TVM target dict) may nest
MAX_JSON_DEPTH = 32
#: an input or output may hold at most this many elements (2 Gi: larger shapes are junk)
MAX_ELEMENTS = 1 << 31
#: the largest tolerances ``--verify`` accepts from a manifest: beyond them any output
#: would pass (give wider ones to ``CompiledModel.verify`` explicitly if you mean it)
MAX_RTOL = 0.1
MAX_ATOL = 0.1

Arch = Literal["x86_64", "aarch64", "arm"]
DType = Literal["f64", "f32", "f16", "i64", "i32", "i16", "i8", "u8", "bool"]

#: sliver element type → numpy dtype name (the runtime does not import sliver.ir)
NUMPY_DTYPES = {"f64": "float64", "f32": "float32", "f16": "float16", "i64": "int64", "i32": "int32",
                "i16": "int16", "i8": "int8", "u8": "uint8", "bool": "bool"}


class Dim:
    """Annotation for one shape entry: an integer ≥ 0, or a string naming a dynamic
    dimension or an expression over them (checked against the grammar here; the
    names against ``Manifest.dims`` by :meth:`Manifest.check`)."""


#: the longest dimension expression a manifest may hold
MAX_DIM_TEXT = 256
MAX_DIM = 2**31 - 1
_DIM_TOKEN = re.compile(r"\s*(?:(-?\d+)|([A-Za-z_][A-Za-z0-9_]*)|(//|[()+*]))")
_DIM_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _dim_tokens(text: str) -> list[str]:
    tokens, pos = [], 0
    while pos < len(text.rstrip()):
        m = _DIM_TOKEN.match(text, pos)
        if not m:
            raise ValueError(f"unexpected {text[pos:pos + 10]!r}")
        tokens.append(m.group().strip())
        pos = m.end()
    return tokens


def _dim_eval(text: str, value_of) -> int:
    """Evaluate a dimension expression (``term (+ term)*``, ``term = factor (* factor)*``,
    ``factor = int | name | ( expr )//int``); ``value_of(name)`` gives a name's value."""
    tokens = _dim_tokens(text)
    pos = 0

    def peek():
        return tokens[pos] if pos < len(tokens) else ""

    def take(want=None):
        nonlocal pos
        tok = peek()
        if not tok or (want is not None and tok != want):
            raise ValueError(f"expected {want or 'more'} at {tok!r}" if tok else f"expected {want or 'more'}")
        pos += 1
        return tok

    def factor(depth):
        tok = take()
        if tok == "(":
            if depth > 8:
                raise ValueError("nested too deeply")
            inner = expr(depth + 1)
            take(")")
            take("//")
            den = int(take())
            if den <= 0:
                raise ValueError("division by a non-positive number")
            return inner // den
        if re.fullmatch(r"-?\d+", tok):
            if len(tok.lstrip("-")) > 18:
                raise ValueError("number too large")
            return int(tok)
        if _DIM_NAME.fullmatch(tok):
            return value_of(tok)
        raise ValueError(f"unexpected {tok!r}")

    def term(depth):
        v = factor(depth)
        while peek() == "*":
            take()
            v *= factor(depth)
        return v

    def expr(depth=0):
        v = term(depth)
        while peek() == "+":
            take()
            v += term(depth)
        return v

    value = expr()
    if pos != len(tokens):
        raise ValueError(f"unexpected {tokens[pos]!r}")
    return value


def dim_names(text: str) -> set[str]:
    """The dimension names an expression uses (ValueError if it is not one)."""
    names: set[str] = set()

    def value_of(name):
        names.add(name)
        return 1

    _dim_eval(text, value_of)
    return names


def dim_value(entry, sizes: dict) -> int:
    """A shape entry's value for dimension sizes ``sizes`` (name → int)."""
    return entry if isinstance(entry, int) else _dim_eval(entry, sizes.__getitem__)


class JSON:
    """Annotation for a free-form JSON value (checked: JSON types only, finite
    numbers, string keys, nesting at most :data:`MAX_JSON_DEPTH`)."""


def _fail(where: str, problem: str) -> ArtifactError:
    return ArtifactError(f"manifest field {where}: {problem}; rebuild the artifact with `sliver lower`")


def _kind(value) -> str:
    if value is None:
        return "null"
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list",
            dict: "an object"}.get(type(value), type(value).__name__)


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


class _Schema:
    """Shared (de)serialisation of the manifest's dataclasses."""

    def to_json(self) -> dict:
        return _dump(self)

    @classmethod
    def from_json(cls, data, where: str = ""):
        return _load_dataclass(cls, data, where)

    def check(self, where: str) -> None:
        """Checks across fields (after every field has its type)."""


@dataclass
class Target(_Schema):
    name: str
    arch: Arch
    tvm: JSON  # the TVM target dict (or string) the library was compiled for
    cpu: str | None = None  # LLVM's CPU name the code is for ("znver5", "x86-64-v3", "cortex-a72")
    level: str | None = None  # x86-64: the micro-architecture level the code needs ("x86-64-v3")
    portable: bool | None = None  # True: any CPU of that level/CPU; False: the build machine's exact CPU
    runs_on: str = ""  # which CPUs the library runs on, for people
    int8_dot: str | None = None  # the int8 kernel's instructions ("avx512-vnni", "sdot", "neon"...)


@dataclass
class DimRange(_Schema):
    """A dynamic dimension: the artifact runs any size in ``[min, max]``."""

    name: str
    min: int
    max: int

    def check(self, where: str) -> None:
        if not _DIM_NAME.fullmatch(self.name) or len(self.name) > 64:
            raise _fail(f"{where}.name", f"expected an identifier, got {_short(self.name)}")
        if not 0 <= self.min <= self.max <= MAX_DIM:
            raise _fail(where, f"expected 0 ≤ min ≤ max ≤ {MAX_DIM}, got [{self.min}, {self.max}]")


@dataclass
class TensorSpec(_Schema):
    name: str
    shape: list[Dim]
    dtype: DType

    def check(self, where: str) -> None:
        for i, d in enumerate(self.shape):
            if isinstance(d, int) and d < 0:
                raise _fail(f"{where}.shape[{i}]", f"expected a size ≥ 0, got {d}")
        if not self.static:
            return  # the sizes are checked against Manifest.dims (Manifest.check)
        n = 1
        for d in self.shape:
            n *= d
            if n > MAX_ELEMENTS:
                raise _fail(f"{where}.shape", f"{self.shape} has more than {MAX_ELEMENTS:,} elements")
        if len(self.shape) > 16:
            raise _fail(f"{where}.shape", f"{len(self.shape)} dimensions (at most 16)")

    @property
    def static(self) -> bool:
        return all(isinstance(d, int) for d in self.shape)

    def shape_for(self, sizes: dict) -> list[int]:
        """The shape for dynamic dimension sizes ``sizes`` (name → int)."""
        return [dim_value(d, sizes) for d in self.shape]

    def max_numel(self, dims: list) -> int:
        """An upper bound of the elements (every dynamic dimension at its largest)."""
        top = {d.name: d.max for d in dims}
        n = 1
        for d in self.shape:
            n *= abs(dim_value(d, top)) if isinstance(d, str) else d
        return n

    def fits(self, shape, dims: list) -> bool:
        """Whether a concrete ``shape`` can be this spec's: static entries equal, named
        ones within their range, expressions at most their largest value."""
        ranges = {d.name: d for d in dims}
        if len(shape) != len(self.shape):
            return False
        for d, n in zip(self.shape, shape):
            if isinstance(d, int):
                if d != n:
                    return False
            elif d in ranges:
                if not ranges[d].min <= n <= ranges[d].max:
                    return False
            elif not 0 <= n <= self.max_numel(dims):
                return False
        return True

    @property
    def numpy_dtype(self) -> str:
        return NUMPY_DTYPES[self.dtype]


_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass
class Library(_Schema):
    file: Literal["lib.so"]
    sha256: str
    bytes: int

    def check(self, where: str) -> None:
        if not _SHA256.fullmatch(self.sha256):
            raise _fail(f"{where}.sha256", f"expected 64 lowercase hex digits, got {_short(self.sha256)}")
        if self.bytes < 0:
            raise _fail(f"{where}.bytes", f"expected a size ≥ 0, got {self.bytes}")


@dataclass
class Golden(_Schema):
    file: Literal["golden.npz"]
    rtol: float
    atol: float  # relative to the largest golden output magnitude
    sha256: str | None = None  # None only in artifacts migrated from format version 1

    def check(self, where: str) -> None:
        for name, limit in (("rtol", MAX_RTOL), ("atol", MAX_ATOL)):
            v = getattr(self, name)
            if not 0.0 <= v <= limit:
                raise _fail(f"{where}.{name}", f"expected a tolerance in [0, {limit}], got {v}")
        if self.sha256 is not None and not _SHA256.fullmatch(self.sha256):
            raise _fail(f"{where}.sha256", f"expected 64 lowercase hex digits, got {_short(self.sha256)}")


@dataclass
class Params(_Schema):
    count: int
    bytes: int


@dataclass
class OpInfo(_Schema):
    """One op of the optimized module (for per-layer reports)."""

    name: str
    kind: str
    layer: str | None
    params: list[str]
    shape: list[Dim]


@dataclass
class TokenizerFile(_Schema):
    """The tokenizer a generating artifact carries: the ``tokenizers`` library's JSON."""

    file: Literal["tokenizer.json"]
    sha256: str
    bytes: int

    def check(self, where: str) -> None:
        if not _SHA256.fullmatch(self.sha256):
            raise _fail(f"{where}.sha256", f"expected 64 lowercase hex digits, got {_short(self.sha256)}")
        if not 0 < self.bytes <= MAX_TOKENIZER_BYTES:
            raise _fail(f"{where}.bytes", f"expected a size in [1, {MAX_TOKENIZER_BYTES:,}], got {self.bytes}")


#: the largest tokenizer.json an artifact may carry
MAX_TOKENIZER_BYTES = 64 << 20

#: a generating artifact's step function: inputs and outputs by name (sliver.llm)
LLM_INPUTS = ("input_ids", "position", "k_cache", "v_cache")
LLM_OUTPUTS = ("logits", "k_cache_out", "v_cache_out")


@dataclass
class LLM(_Schema):
    """A generating artifact (a causal LM's step function over a static KV cache)."""

    max_len: int  # cache positions: prompt plus generated tokens
    layers: int
    kv_heads: int
    head_dim: int
    vocab: int
    eos: list[int]  # end-of-sequence token ids (generation stops after one)
    tokenizer: TokenizerFile | None = None

    def check(self, where: str) -> None:
        for name in ("max_len", "layers", "kv_heads", "head_dim", "vocab"):
            if not 1 <= getattr(self, name) <= MAX_DIM:
                raise _fail(f"{where}.{name}", f"expected a size in [1, {MAX_DIM}], got {getattr(self, name)}")
        for i, e in enumerate(self.eos):
            if not 0 <= e < self.vocab:
                raise _fail(f"{where}.eos[{i}]", f"expected a token id in [0, {self.vocab}), got {e}")

    def check_step(self, manifest: "Manifest") -> None:
        """The step function's inputs and outputs are what the generation loop passes."""
        cache = [self.layers, self.kv_heads, self.max_len, self.head_dim]
        want_in = [("input_ids", None, "i64"), ("position", [1], "i64"), ("k_cache", cache, "f32"),
                   ("v_cache", cache, "f32")]
        want_out = [("logits", [1, self.vocab], "f32"), ("k_cache_out", cache, "f32"), ("v_cache_out", cache, "f32")]
        for kind, want in (("inputs", want_in), ("outputs", want_out)):
            specs = getattr(manifest, kind)
            got = [(s.name, s.shape, s.dtype) for s in specs]
            if len(got) != len(want) or any(
                    g[0] != w[0] or g[2] != w[2] or (w[1] is not None and g[1] != w[1]) for g, w in zip(got, want)):
                raise _fail("llm", f"a generating artifact's {kind} are {want}, got {got}")
        ids = manifest.inputs[0].shape
        ranges = {d.name: d for d in manifest.dims}
        one_token = ids == [1, 1]
        dynamic = (len(ids) == 2 and ids[0] == 1 and isinstance(ids[1], str) and ids[1] in ranges
                   and ranges[ids[1]].min == 1 and ranges[ids[1]].max == self.max_len)
        if not (one_token or dynamic):
            raise _fail("inputs[0].shape", f"a generating artifact's input_ids are [1, 1] or [1, tokens] with tokens "
                                           f"in [1, {self.max_len}], got {ids}")

    @staticmethod
    def prefill_tokens(manifest: "Manifest") -> int | None:
        """How many tokens one step takes: 1, or None for any number (the whole prompt)."""
        return 1 if manifest.inputs[0].shape == [1, 1] else None


@dataclass
class Tuning(_Schema):
    database: str | None  # the tuning database's key, None without one
    tuned: list[str]  # compiled functions whose schedule came from it
    kernels: int  # compiled functions in all


@dataclass
class Manifest(_Schema):
    """Everything ``manifest.json`` says about an artifact."""

    format: Literal["sliver-artifact"]
    format_version: int
    model: str
    sliver_version: str
    tvm_version: str
    python: str
    created: str
    target: Target
    pipeline: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    library: Library
    golden: Golden
    params: Params
    #: what each pass did (None: built before pass records were kept)
    passes: list[PassRecord] | None = None
    ops: list[OpInfo] = field(default_factory=list)
    #: compiled function → the sliver ops (result names) it computes
    primfuncs: dict[str, list[str]] = field(default_factory=dict)
    tuning: Tuning = field(default_factory=lambda: Tuning(None, [], 0))
    #: compiled functions that are Winograd convolutions
    winograd: list[str] = field(default_factory=list)
    #: low-bit layer → the kernel it got (``bitserial``, ``int8``)
    kernels: dict[str, str] = field(default_factory=dict)
    #: the dynamic dimensions (empty: every shape is fixed)
    dims: list[DimRange] = field(default_factory=list)
    #: a generating artifact's step function and tokenizer (None: an ordinary artifact)
    llm: LLM | None = None

    def check(self, where: str) -> None:
        if self.format_version != FORMAT_VERSION:
            raise _fail("format_version", f"expected {FORMAT_VERSION}, got {self.format_version}")
        for kind in ("inputs", "outputs"):
            names = [s.name for s in getattr(self, kind)]
            dup = sorted({n for n in names if names.count(n) > 1})
            if dup:
                raise _fail(kind, f"the name(s) {', '.join(map(repr, dup))} occur more than once")
        declared = [d.name for d in self.dims]
        if len(set(declared)) != len(declared):
            raise _fail("dims", f"a dimension is declared twice ({', '.join(declared)})")
        bound = set()
        for kind in ("inputs", "outputs", "ops"):
            for i, spec in enumerate(getattr(self, kind)):
                for j, d in enumerate(spec.shape):
                    if not isinstance(d, str):
                        continue
                    here = f"{kind}[{i}].shape[{j}]"
                    if len(d) > MAX_DIM_TEXT:
                        raise _fail(here, f"a dimension expression of {len(d)} characters (at most {MAX_DIM_TEXT})")
                    try:
                        names = dim_names(d)
                    except (ValueError, OverflowError) as e:
                        raise _fail(here, f"not a dimension expression ({e}): {_short(d)}") from None
                    if names - set(declared):
                        raise _fail(here, f"uses {', '.join(sorted(names - set(declared)))}, not in dims")
                    if kind == "inputs":
                        if d not in declared:
                            raise _fail(here, f"an input dimension is a size or a name in dims, got {_short(d)}")
                        bound.add(d)
        if set(declared) - bound:
            raise _fail("dims", f"{', '.join(sorted(set(declared) - bound))} is no input's dimension")
        for kind in ("inputs", "outputs"):
            for i, spec in enumerate(getattr(self, kind)):
                if not spec.static and spec.max_numel(self.dims) > MAX_ELEMENTS:
                    raise _fail(f"{kind}[{i}].shape", f"{spec.shape} may hold more than {MAX_ELEMENTS:,} elements")
        if self.llm is not None:
            self.llm.check_step(self)

    def bind(self, shapes) -> dict[str, int]:
        """The dynamic dimensions' sizes read from the inputs' ``shapes``, each checked
        (:class:`~sliver.common.errors.InputError` for a wrong static size, a size outside
        its range, or two inputs disagreeing on a dimension)."""
        from sliver.common.errors import InputError

        ranges = {d.name: d for d in self.dims}
        sizes: dict[str, int] = {}
        for spec, shape in zip(self.inputs, shapes):
            shape = list(shape)
            if len(shape) == len(spec.shape):
                for axis, (d, n) in enumerate(zip(spec.shape, shape)):
                    if isinstance(d, int) and d == n:
                        continue
                    if isinstance(d, int):
                        break
                    r = ranges[d]
                    if not r.min <= n <= r.max:
                        raise InputError(
                            f"input {spec.name!r}: dimension {axis} ({d}) must be in [{r.min}, {r.max}], got {n} "
                            f"(shape {shape}); the artifact was lowered for that range: lower again with a wider "
                            "torch.export.Dim for other sizes")
                    if sizes.setdefault(d, n) != n:
                        raise InputError(f"input {spec.name!r}: dimension {axis} ({d}) is {n}, but an earlier input "
                                         f"has {d} = {sizes[d]}; they must agree")
                else:
                    continue
            want = "[" + ", ".join(map(str, spec.shape)) + "]"
            fixed = "" if self.dims else " (artifacts are compiled for fixed shapes: lower again for a new shape)"
            raise InputError(f"input {spec.name!r} must have shape {want}, got {shape}{fixed}")
        return sizes

    def to_json(self) -> dict:
        data = _dump(self)
        if self.llm is not None:
            return data
        data["format_version"] = 3  # no generation: the version-3 form, which older runtimes read
        del data["llm"]
        if not self.dims:  # fixed shapes: the version-2 form, which older runtimes read
            data["format_version"] = 2
            del data["dims"]
        return data

    @classmethod
    def from_json(cls, data, where: str = "") -> "Manifest":
        """Check (and migrate, if older) a decoded manifest."""
        if not isinstance(data, dict):
            raise ArtifactError(f"manifest: expected a JSON object, got {_kind(data)}")
        if data.get("format") != FORMAT:
            raise _fail("format", f"expected {FORMAT!r}, got {_short(data.get('format'))} (not a sliver artifact)")
        version = data.get("format_version")
        if type(version) is not int:
            raise _fail("format_version", f"expected an integer, got {_kind(version)}")
        if version > FORMAT_VERSION:
            raise _fail("format_version", f"version {version} is newer than this sliver reads ({FORMAT_VERSION}); "
                                          "upgrade sliver on this machine")
        while version in MIGRATIONS:
            data = MIGRATIONS[version](data)
            version = data["format_version"]
        return _load_dataclass(cls, data, where)

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=2, sort_keys=True)


def _from_v1(data: dict) -> dict:
    """Format version 1 → 2: ``golden.sha256`` (unknown: None) and ``kernels`` always present."""
    data = dict(data)
    data["format_version"] = 2
    data.setdefault("kernels", {})
    return data


def _from_v2(data: dict) -> dict:
    """Format version 2 → 3: ``dims`` (none: every shape fixed)."""
    data = dict(data)
    data["format_version"] = 3
    if "dims" in data:
        raise _fail("dims", "not a field of format version 2 (a damaged or foreign manifest)")
    data["dims"] = []
    return data


def _from_v3(data: dict) -> dict:
    """Format version 3 → 4: ``llm`` (none: not a generating artifact)."""
    data = dict(data)
    data["format_version"] = 4
    if "llm" in data:
        raise _fail("llm", "not a field of format version 3 (a damaged or foreign manifest)")
    data["llm"] = None
    return data


#: format version → the function that turns it into the next version
MIGRATIONS = {1: _from_v1, 2: _from_v2, 3: _from_v3}


def parse(raw: bytes) -> Manifest:
    """The manifest in ``raw`` (the bytes of ``manifest.json``), checked."""
    if len(raw) > MAX_MANIFEST_BYTES:
        raise ArtifactError(f"manifest: {len(raw):,} bytes is more than the {MAX_MANIFEST_BYTES:,} a manifest may have")
    try:
        data = json.loads(raw.decode("utf-8"), parse_constant=_no_constant)
    except RecursionError:
        raise ArtifactError("manifest: the JSON is nested too deeply") from None
    except (UnicodeDecodeError, ValueError) as e:
        raise ArtifactError(f"manifest: not valid JSON ({e})") from None
    return Manifest.from_json(data)


def _no_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


# --- the checker ------------------------------------------------------------------------


def from_json(cls, data, where: str = ""):
    """An instance of the dataclass ``cls`` from decoded JSON, every field checked
    against its annotation (an :class:`ArtifactError` naming ``where.field`` if not)."""
    return _load_dataclass(cls, data, where)


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls) -> dict[str, Any]:
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def _load_dataclass(cls, data, where: str):
    if not isinstance(data, dict):
        raise _fail(where or "(top level)", f"expected an object, got {_kind(data)}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    extra = sorted(set(data) - set(fields), key=str)
    if extra:
        name = extra[0]
        raise _fail(_join(where, str(name)), "not a field of this format (a damaged or foreign manifest)")
    hints = _hints(cls)
    values = {}
    for name, f in fields.items():
        here = _join(where, name)
        if name not in data:
            if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING:
                continue
            raise _fail(here, "missing")
        values[name] = _convert(hints[name], data[name], here)
    obj = cls(**values)
    if isinstance(obj, _Schema):
        obj.check(where or "manifest")
    return obj


def _join(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name


def _convert(tp, value, where: str):
    origin = typing.get_origin(tp)
    if tp is JSON:
        _check_json(value, where, 0)
        return value
    if tp is Dim:
        if type(value) is int or (isinstance(value, str) and value):
            return value
        raise _fail(where, f"expected an integer, got {_kind(value)} (a shape entry is a size, or a dynamic "
                           "dimension's name or expression)")
    if origin is Union or origin is types.UnionType:
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        if value is None:
            raise _fail(where, f"expected {_describe(inner)}, got null")
        return _convert(inner, value, where)
    if origin is Literal:
        allowed = typing.get_args(tp)
        if not isinstance(value, str) or value not in allowed:
            raise _fail(where, f"expected one of {', '.join(map(repr, allowed))}, got {_short(value)}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise _fail(where, f"expected a string, got {_kind(value)}")
        return value
    if tp is bool:
        if type(value) is not bool:
            raise _fail(where, f"expected a boolean, got {_kind(value)}")
        return value
    if tp is int:
        if type(value) is not int:
            raise _fail(where, f"expected an integer, got {_kind(value)}")
        return value
    if tp is float:
        if type(value) not in (int, float) or not math.isfinite(value):
            raise _fail(where, f"expected a finite number, got {_short(value) if type(value) is float else _kind(value)}")
        return float(value)
    if origin is list:
        if not isinstance(value, list):
            raise _fail(where, f"expected a list, got {_kind(value)}")
        (item,) = typing.get_args(tp)
        return [_convert(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise _fail(where, f"expected an object, got {_kind(value)}")
        _, item = typing.get_args(tp) or (str, JSON)
        return {k: _convert(item, v, f"{where}[{k!r}]") for k, v in value.items()}
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return _load_dataclass(tp, value, where)
    raise TypeError(f"manifest schema: unsupported annotation {tp!r}")  # a bug in this module, not in the file


def _describe(tp) -> str:
    if typing.get_origin(tp) is list:
        return "a list"
    return {str: "a string", int: "an integer", float: "a number", bool: "a boolean"}.get(tp, "an object")


def _check_json(value, where: str, depth: int) -> None:
    if depth > MAX_JSON_DEPTH:
        raise _fail(where, f"nested more than {MAX_JSON_DEPTH} levels deep")
    if value is None or type(value) in (bool, int, str):
        return
    if type(value) is float:
        if not math.isfinite(value):
            raise _fail(where, f"expected a finite number, got {value}")
        return
    if type(value) is list:
        for i, v in enumerate(value):
            _check_json(v, f"{where}[{i}]", depth + 1)
        return
    if type(value) is dict:
        for k, v in value.items():
            if not isinstance(k, str):
                raise _fail(where, f"expected string keys, got {_kind(k)}")
            _check_json(v, f"{where}[{k!r}]", depth + 1)
        return
    raise _fail(where, f"expected a JSON value, got {type(value).__name__}")


def _dump(x):
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return {f.name: _dump(getattr(x, f.name)) for f in dataclasses.fields(x)}
    if isinstance(x, dict):
        return {k: _dump(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_dump(v) for v in x]
    return x
