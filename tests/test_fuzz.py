"""Differential fuzzing: random multi-branch conv nets (adds, concats, depthwise,
pooling, strides) through trace + interpreter against torch, and a subset through
the x86_64 compiler.

Every case is one test id (``test_interpreter[seed=17]``), so a failure is rerun
with ``pytest tests/test_fuzz.py -k "seed=17"``; the message prints the net.
``SLIVER_FUZZ_SEEDS=START:STOP`` fuzzes another range (the default is 0:200).

Hostile IR text: ``test_ir_text_mutations`` mutates the printed form of real modules
(random conv nets, a ViT, BERT and Llama blocks, QAT and weight-quantized models)
deterministically — token deletions, duplications and swaps, number edits (huge,
negative, float, zero), truncations, deep nesting, unicode, attribute kind changes,
shape edits, line shuffles — and parses each result with and without its params.
Every case must end in a named sliver error or in a module that verifies, runs in
the interpreter with outputs of its declared types, prints and parses back, and
computes the same after the default pass pipeline; it prints its counts
(``pytest -s tests/test_fuzz.py -k mutations``); ``SLIVER_IR_MUTATIONS=COUNT[:SEED]``
mutates each module COUNT times (default 110) from another seed.
"""

import collections
import os
import random
import re
import signal
import time

import numpy as np
import pytest
import torch

import precompile
import sliver
from helpers import assert_close, numpy_inputs, torch_outputs
from sliver.ir.interp import run
from zoo import random_convnet

_start, _stop = (int(s) for s in os.environ.get("SLIVER_FUZZ_SEEDS", "0:200").split(":"))
SEEDS = list(range(_start, _stop))
COMPILED = SEEDS[:: max(1, len(SEEDS) // 10)][:10]


def _check(seed, got, model, inputs, what):
    try:
        assert_close(got, torch_outputs(model, inputs), rtol=1e-4, atol_scale=1e-5, what=what)
    except AssertionError as e:
        raise AssertionError(f"seed {seed}: {e}\nthe net:\n{model.describe()}") from None


@pytest.mark.parametrize("seed", SEEDS, ids=lambda s: f"seed={s}")
def test_interpreter(seed):
    model, inputs = random_convnet(seed)
    module = sliver.trace(model, inputs)
    _check(seed, run(module, numpy_inputs(inputs)), model, inputs, "interpreter")
    sliver.api.optimize(module)  # the default pipeline must not change results
    _check(seed, run(module, numpy_inputs(inputs)), model, inputs, "optimized")


@pytest.mark.slow
@pytest.mark.precompiled.with_args(lambda params: [("fuzz", params["seed"])])
@pytest.mark.parametrize("seed", COMPILED, ids=lambda s: f"seed={s}")
def test_compiled_x86(seed):
    model, inputs = random_convnet(seed)
    # sliver.lower(random_convnet(seed), target="x86_64"), compiled ahead on the worker process
    got = sliver.load(precompile.get(("fuzz", seed))).run(*numpy_inputs(inputs))
    _check(seed, got, model, inputs, "x86_64 artifact")


# -- hostile IR text ----------------------------------------------------------------

_TOKEN = re.compile(r'%[A-Za-z0-9_.]+|@[A-Za-z0-9_.]+|"(?:[^"\\]|\\.)*"|-?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?'
                    r"|[A-Za-z_][A-Za-z0-9_]*|\s+|.", re.S)
_NUMBERS = ["0", "-1", "1", "2", "3", "-0", "1.5", "-2.5", "0.0", "1.", "007", "65536", "2147483648",
            "99999999999", "9223372036854775807", "9223372036854775808", "-9223372036854775809",
            "18446744073709551617", "1e308", "1e309", "-1e309", "1e-320", "inf", "-inf", "nan", "9" * 40, "9" * 5000]
_WORDS = ["f32", "f64", "f16", "i64", "i32", "i8", "u8", "u4", "i1", "bool", "true", "false", "none", "nan", "inf",
          "q", "func", "return", "param", "relu", "conv2d", "reshape", "concat", "attention", "qconv2d", "wq_linear",
          "constant", "stride", "padding", "axis", "dtype", "shape", "x", "__class__", "batch", "seq", "where", "in"]
_UNICODE = ["\u00e9", "\u200b", "\ufeff", "\U0001F600", "\x00", "\u0661", "\uff10", "\u2212", "\r", "\t",
            "\x0c", "\\", '"', "'", "#", "\u0301"]
_ATTR_VALUES = ['"1"', "true", "none", "[1]", "[1, 1, 1]", "[[1, 2]]", "1.0", "-1", "[]", "[1.5, 1, 1, 1]",
                "[0, 0]", "[-1, -1, -1, -1]", "[true, false]", "nan", '"tanh"', '"x"', "[none]", "99999999999",
                "[99999999999, 1]", "[2147483648, 2147483648]", "0", "1e308", "[1e308, 1]", "inf", "-inf"]
_DIMS = ["0", "-1", "1.5", "99999999999", "", "1,1", "4294967296", "1e3", "2147483647", "65536,65536",
         "batch", "batch*batch*batch*batch", "(batch", "batch//0", "batch + -99", "nope", "batch*99999999999",
         "(batch + 1)//2", "2*batch", "where", "-batch"]
_QUANT = ["q(scale=0.5)", "q(scale=0.5, zero_point=3)", "q(scale=-1.0)", "q(scale=0.0)", "q(scale=inf)",
          "q(scale=1)", 'q(scale="a")', "q(scale=[0.5, 0.5], zero_point=[0, 0], axis=0)", "q(scale=0.5, axis=7)",
          "q(scale=0.5, zero_point=1.5)", "q(scale=0.5, bogus=1)", "q()", "q(scale=0.5,", "q(scale=[[[0.5]]])"]
_KINDS = ("delete", "dup", "swap", "swap_adjacent", "number", "number", "truncate", "nest", "unicode", "attr", "attr",
          "word", "value", "line_delete", "line_dup", "line_swap", "insert", "dtype", "dim", "big_param", "quant")


def ir_mutations(text: str, rng: random.Random, count: int):
    """``count`` (kind, mutated text) pairs of ``text``, chosen by ``rng``."""
    toks = _TOKEN.findall(text)
    assert "".join(toks) == text
    solid = [i for i, t in enumerate(toks) if not t.isspace()]
    numbers = [i for i in solid if re.fullmatch(r"-?\d.*|inf|nan", toks[i])]
    words = [i for i in solid if re.fullmatch(r"[A-Za-z_]\w*", toks[i])]
    values = [i for i in solid if toks[i].startswith("%")]
    lines = text.split("\n")
    attrs = [m.span(1) for m in re.finditer(r"\w+=((?:\[[^{}=]*?\]|[^,}\[]+))", text)]
    types = list(re.finditer(r"\b([fiu]\d+|bool)\[([0-9,]*)\]", text))
    param_types = list(re.finditer(r"param : \w+\[([0-9,]*)\]", text))

    def splice(span, new):
        return text[:span[0]] + new + text[span[1]:]

    for k in range(count):
        kind = _KINDS[k % len(_KINDS)]
        ts = list(toks)
        if kind == "delete":
            del ts[rng.choice(solid)]
        elif kind == "dup":
            i = rng.choice(solid)
            ts.insert(i, ts[i])
        elif kind == "swap":
            a, b = rng.choice(solid), rng.choice(solid)
            ts[a], ts[b] = ts[b], ts[a]
        elif kind == "swap_adjacent":
            p = rng.randrange(len(solid) - 1)
            a, b = solid[p], solid[p + 1]
            ts[a], ts[b] = ts[b], ts[a]
        elif kind == "number":
            ts[rng.choice(numbers)] = rng.choice(_NUMBERS)
        elif kind == "word":
            ts[rng.choice(words)] = rng.choice(_WORDS)
        elif kind == "value":
            ts[rng.choice(values)] = ts[rng.choice(values)]
        elif kind == "insert":
            ts.insert(rng.choice(solid), toks[rng.choice(solid)])
        elif kind == "dtype":
            ts[rng.choice([i for i in words if re.fullmatch(r"[fiu]\d+|bool", toks[i])])] = rng.choice(
                ["f64", "f16", "i64", "i32", "i8", "u4", "bool", "u1", "f32"])
        else:
            ts = None
        if ts is not None:
            yield kind, "".join(ts)
        elif kind == "truncate":
            yield kind, text[:rng.randrange(len(text))]
        elif kind == "nest":
            depth = rng.choice([9, 50, 1000, 100000])
            yield kind, splice(rng.choice(attrs), "[" * depth + "1" + "]" * depth)
        elif kind == "unicode":
            p = rng.randrange(len(text))
            yield kind, text[:p] + rng.choice(_UNICODE) + text[p:]
        elif kind == "attr":
            yield kind, splice(rng.choice(attrs), rng.choice(_ATTR_VALUES))
        elif kind in ("line_delete", "line_dup", "line_swap"):
            ls = list(lines)
            a, b = rng.randrange(len(ls)), rng.randrange(len(ls))
            if kind == "line_delete":
                del ls[a]
            elif kind == "line_dup":
                ls.insert(a, ls[a])
            else:
                ls[a], ls[b] = ls[b], ls[a]
            yield kind, "\n".join(ls)
        elif kind == "dim":
            m = rng.choice(types)
            dims = m.group(2).split(",") if m.group(2) else []
            if dims and rng.random() < 0.7:
                dims[rng.randrange(len(dims))] = rng.choice(_DIMS)
            else:
                dims.append(rng.choice(_DIMS))
            yield kind, splice(m.span(2), ",".join(dims))
        elif kind == "big_param":
            new = rng.choice(["99999999999", "100000,100000", "65536,65536,4", "1" + ",1" * 100, "1" + ",1" * 5000])
            yield kind, splice(rng.choice(param_types).span(1), new)
        elif kind == "quant":
            yield kind, splice((rng.choice(types).end(),) * 2, rng.choice(_QUANT))


def _ir_corpus():
    """Printed modules of real models: (name, text, params)."""
    import sliver.qat
    from sliver.passes.manager import PassManager
    import zoo

    corpus = []

    def add(name, module):
        corpus.append((name, str(module), dict(module.params)))

    for seed in range(3):
        model, inputs = random_convnet(seed)
        module = sliver.trace(model, inputs)
        add(f"random_convnet({seed})", module)
        sliver.api.optimize(module)
        add(f"random_convnet({seed}) optimized", module)
    for build in (zoo.vit, zoo.bert_encoder):
        model, inputs = build(depth=1)
        add(build.__name__, sliver.trace(model, inputs))
    # symbolic dimensions: a dynamic batch (and sequence length) in types and attributes
    from torch.export import Dim

    def two(inputs):  # torch.export fixes a dimension whose example size is 1
        return tuple(torch.cat([x, x]) for x in inputs)

    model, inputs = random_convnet(0)
    add("random_convnet(0) dynamic batch",
        sliver.trace(model, two(inputs), dynamic_shapes=({0: Dim("batch", min=1, max=8)},)))
    model, inputs = zoo.bert_encoder(depth=1)
    dims = {0: Dim("batch", min=1, max=4), 1: Dim("seq", min=2, max=16)}
    add("bert_encoder dynamic", sliver.trace(model, two(inputs), dynamic_shapes=tuple(
        dims if i == 0 else None for i in range(len(inputs)))))
    model, inputs = zoo.llama_decoder(depth=1)
    module = sliver.trace(model, inputs)
    add("llama_decoder", module)
    PassManager("quantize-activations{mode=dynamic},quantize-weights{bits=4,block=32}").run(module)
    add("llama_decoder quantized", module)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.Hardswish(), torch.nn.MaxPool2d(2),
                              torch.nn.Hardtanh(), torch.nn.Flatten(), torch.nn.Linear(4 * 3 * 3, 10))
    qat = sliver.qat.prepare(net, 4, 4).eval()
    x = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    qat(x)  # initialises the activation scales
    module = sliver.trace(qat, (x,))
    add("qat", module)
    sliver.api.optimize(module)
    add("qat folded", module)
    return corpus


class _Hang(Exception):
    pass


def _sizes(module) -> dict:
    """A size for each symbolic dimension of ``module`` (within its range)."""
    return {v.name: min(v.hi, max(v.lo, 3)) for v in module.dim_vars()}


def _inputs(module):
    from sliver.ir.dims import substitute
    from sliver.ir.types import is_float, to_numpy

    rng = np.random.default_rng(0)
    shapes = [substitute(v.type.shape, _sizes(module)) for v in module.inputs]
    return [rng.standard_normal(shape).astype(to_numpy(v.type.dtype)) if is_float(v.type.dtype)
            else np.zeros(shape, to_numpy(v.type.dtype)) for v, shape in zip(module.inputs, shapes)]


def _ir_case(text, params):
    """What one mutated text comes to: a SliverError class name or "runs"."""
    from sliver.common.errors import SliverError
    from sliver.ir.parser import parse_module
    from sliver.ir.types import to_numpy
    from sliver.ir.verifier import verify

    try:
        module = parse_module(text, params=params)
        verify(module)
        inputs = _inputs(module)
        outputs = run(module, inputs)
    except SliverError as e:
        return type(e).__name__
    from sliver.ir.dims import substitute

    for v, y in zip(module.outputs, outputs, strict=True):
        assert y.shape == substitute(v.type.shape, _sizes(module)) and y.dtype == to_numpy(v.type.dtype), (
            f"output %{v.name} is typed {v.type} but the interpreter gives {y.dtype}{list(y.shape)}")
    again = str(module)
    assert str(parse_module(again, params=module.params)) == again, "print → parse → print changed the module"
    for name in module.params:  # the corpus' arrays stay as they are, whatever a pass does
        module.params[name] = module.params[name].copy()
    try:
        sliver.api.optimize(module)  # the default pipeline, verifier on
    except SliverError as e:
        return f"runs; optimize: {type(e).__name__}"
    optimized = run(module, inputs)
    for y, z in zip(outputs, optimized, strict=True):
        scale = float(np.abs(y[np.isfinite(y)]).max(initial=0.0)) if y.dtype.kind == "f" else 0.0
        np.testing.assert_allclose(z, y, rtol=1e-4, atol=1e-5 * max(scale, 1e-12), equal_nan=True,
                                   err_msg="the optimized module computes something else")
    return "runs, optimizes"


#: mutated texts per corpus module, and the seed of the first module's mutations;
#: ``SLIVER_IR_MUTATIONS=COUNT[:SEED]`` runs more or others
_count, _, _seed = os.environ.get("SLIVER_IR_MUTATIONS", "110").partition(":")
MUTATIONS_PER_MODULE, MUTATION_SEED = int(_count), int(_seed or 0)


def test_ir_text_mutations():
    start = time.monotonic()
    counts, failures = collections.Counter(), []
    kinds = collections.Counter()

    def hang(*_):
        raise _Hang()

    previous = signal.signal(signal.SIGALRM, hang)
    try:
        for index, (name, text, params) in enumerate(_ir_corpus()):
            assert _ir_case(text, params) == "runs, optimizes", name  # the unmutated module is valid
            for kind, mutated in ir_mutations(text, random.Random(MUTATION_SEED + index), MUTATIONS_PER_MODULE):
                kinds[kind] += 1
                for with_params in (True, False):
                    signal.setitimer(signal.ITIMER_REAL, 10)
                    try:
                        counts[_ir_case(mutated, params if with_params else None)] += 1
                    except _Hang:
                        counts["hang"] += 1
                        failures.append((name, kind, with_params, "hang (> 10 s)", mutated))
                    except Exception as e:  # the point of the test: anything but a SliverError is a bug
                        counts[f"crash {type(e).__name__}"] += 1
                        failures.append((name, kind, with_params, f"{type(e).__name__}: {e}", mutated))
                    finally:
                        signal.setitimer(signal.ITIMER_REAL, 0)
    finally:
        signal.signal(signal.SIGALRM, previous)
    texts, cases = sum(kinds.values()), sum(counts.values())
    print(f"\nIR text mutations: {texts} texts, {cases} cases (with and without params) in "
          f"{time.monotonic() - start:.1f} s")
    print("  by mutation: " + ", ".join(f"{k} {n}" for k, n in sorted(kinds.items())))
    print("  outcomes: " + ", ".join(f"{k} {n}" for k, n in counts.most_common()))
    print(f"  crashes and hangs: {len(failures)}")
    assert texts >= min(1000, 11 * MUTATIONS_PER_MODULE)
    assert not failures, "\n".join(f"{n} / {k} / params={p}: {e[:300]}\n--- text:\n{t[:2000]}"
                                    for n, k, p, e, t in failures[:5])


def test_params_file_mutations(tmp_path):
    """Truncated and byte-flipped ``.npz`` params files beside a module's text: each
    loads the very same weights or is an IRParseError (zipfile's CRC-32 catches a
    flipped weight byte)."""
    from sliver.common.errors import SliverError
    from sliver.ir.io import load_module, params_path, save_module

    model, inputs = random_convnet(0)
    path = save_module(sliver.trace(model, inputs), tmp_path / "m.sir")
    good = load_module(path).params
    blob = params_path(path).read_bytes()
    rng = random.Random(0)
    cases = [blob[:n] for n in sorted(rng.sample(range(len(blob)), 60))]
    for _ in range(240):
        flipped = bytearray(blob)
        for p in rng.sample(range(len(blob)), rng.choice([1, 1, 2, 8])):
            flipped[p] ^= 1 << rng.randrange(8)
        cases.append(bytes(flipped))
    counts = collections.Counter()
    for data in cases:
        params_path(path).write_bytes(data)
        try:
            params = load_module(path).params
        except SliverError as e:
            counts[type(e).__name__] += 1
            continue
        assert params.keys() == good.keys() and all(np.array_equal(params[k], good[k]) for k in good)
        counts["same weights"] += 1
    print(f"\nparams file mutations: {len(cases)}: " + ", ".join(f"{k} {n}" for k, n in counts.most_common()))
    assert sum(counts.values()) == len(cases) == 300
