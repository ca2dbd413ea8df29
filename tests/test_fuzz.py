"""Differential fuzzing: random multi-branch conv nets (adds, concats, depthwise,
pooling, strides) through trace + interpreter against torch, and a subset through
the x86_64 compiler.

Every case is one test id (``test_interpreter[seed=17]``), so a failure is rerun
with ``pytest tests/test_fuzz.py -k "seed=17"``; the message prints the net.
``SLIVER_FUZZ_SEEDS=START:STOP`` fuzzes another range (the default is 0:200).
"""

import os

import pytest

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
