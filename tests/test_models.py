"""The model zoo through the whole spine: trace, print⇄parse, interpreter vs
torch, x86_64 artifact vs torch, arm64 artifact on the emulated Pi vs torch."""

import json

import numpy as np
import pytest

import precompile
import sliver
import zoo
from helpers import assert_close, numpy_inputs, roundtrip, torch_outputs
from sliver.ir.interp import run
from sliver.tools.emulator import emulate

NAMES = list(zoo.MODELS)


@pytest.fixture(scope="session")
def built():
    """name → (model, inputs, torch outputs), built once."""
    out = {}
    for name, make in zoo.MODELS.items():
        model, inputs = make()
        out[name] = (model, inputs, torch_outputs(model, inputs))
    return out


@pytest.fixture(scope="session")
def traced(built):
    return {name: sliver.trace(model, inputs) for name, (model, inputs, _) in built.items()}


def artifact(name, target):
    """The saved artifact of zoo model ``name`` (rebuilt from its seed) lowered for
    ``target``: compiled ahead on the worker process (tests/precompile.py)."""
    return precompile.get(("zoo", name, target))


def arm64_jobs(params):
    return [("zoo", name, "arm64") for name in NAMES]


@pytest.mark.parametrize("name", NAMES)
def test_trace_and_roundtrip(name, traced):
    module = traced[name]
    again = roundtrip(module)
    assert len(again.ops) == len(module.ops)


@pytest.mark.parametrize("name", NAMES)
def test_interpreter_matches_torch(name, built, traced):
    model, inputs, ref = built[name]
    assert_close(run(traced[name], numpy_inputs(inputs)), ref, rtol=1e-4, what=f"{name} interpreter")


@pytest.mark.parametrize("name", NAMES)
def test_default_pipeline_keeps_numerics(name, built, traced):
    model, inputs, ref = built[name]
    module = traced[name].clone()
    sliver.api.optimize(module)
    folded_away = [op for op in module.ops if op.kind == "batch_norm" and op.operands[0].producer is not None
                   and op.operands[0].producer.kind == "conv2d" and len(op.operands[0].uses) == 1]
    assert not folded_away
    assert_close(run(module, numpy_inputs(inputs)), ref, rtol=1e-4, what=f"{name} optimized")


@pytest.mark.slow
@pytest.mark.precompiled.with_args(lambda params: [("zoo", params["name"], "x86_64")])
@pytest.mark.parametrize("name", NAMES)
def test_x86_artifact_matches_torch(name, built):
    model, inputs, ref = built[name]
    got = sliver.load(artifact(name, "x86_64")).run(*numpy_inputs(inputs))
    assert_close(got, ref, rtol=1e-4, atol_scale=1e-4, what=f"{name} x86_64")


@pytest.mark.slow
@pytest.mark.emulated
@pytest.mark.precompiled.with_args(arm64_jobs)
def test_arm64_artifacts_match_torch_on_emulated_pi(built, tmp_path):
    """One qemu process runs every model's arm64 artifact (start-up is the slow part)."""
    script = tmp_path / "run_all.py"
    jobs = {name: str(artifact(name, "arm64")) for name in NAMES}
    script.write_text(
        "import json, sys, numpy as np\n"
        "from sliver.runtime.artifact import load\n"
        "jobs = json.loads(sys.argv[1])\n"
        "for name, path in jobs.items():\n"
        "    m = load(path)\n"
        "    outs = m.run(*m.golden_inputs())\n"
        "    np.savez(sys.argv[2] + '/' + name + '.npz', *outs)\n"
        "    print(name, 'ok')\n"
    )
    proc = emulate.run_python([str(script), json.dumps(jobs), str(tmp_path)], timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for name in NAMES:
        _, _, ref = built[name]
        with np.load(tmp_path / f"{name}.npz") as z:
            got = [z[f"arr_{i}"] for i in range(len(z.files))]
        assert_close(got, ref, rtol=1e-4, atol_scale=1e-4, what=f"{name} arm64 (emulated)")
