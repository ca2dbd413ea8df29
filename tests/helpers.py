"""Small helpers shared by tests."""

import numpy as np
import torch
from torch import nn

from sliver.ir.parser import parse_module


def torch_outputs(model, inputs):
    with torch.no_grad():
        out = model(*inputs)
    outs = list(out) if isinstance(out, (tuple, list)) else [out]
    return [o.numpy() for o in outs]


def numpy_inputs(inputs):
    return [x.numpy() for x in inputs]


def assert_close(got, want, rtol=1e-4, atol_scale=1e-5, what="output"):
    """Elementwise rtol plus an atol relative to the output's magnitude."""
    assert len(got) == len(want), f"{what}: {len(got)} outputs, expected {len(want)}"
    for i, (g, w) in enumerate(zip(got, want)):
        g, w = np.asarray(g, np.float64), np.asarray(w, np.float64)
        assert g.shape == w.shape, f"{what} {i}: shape {g.shape} != {w.shape}"
        atol = atol_scale * max(float(np.abs(w).max()), 1e-12)
        err = np.abs(g - w)
        bad = err > atol + rtol * np.abs(w)
        assert not bad.any(), (
            f"{what} {i}: {int(bad.sum())} of {w.size} elements differ; max abs err {err.max():.3g}, "
            f"max |ref| {np.abs(w).max():.3g}"
        )


def roundtrip(module):
    """print → parse → print; returns the re-parsed module after checking identity."""
    text = str(module)
    again = parse_module(text, params=module.params)
    assert str(again) == text
    return again


def run_pass(text: str, pipeline: str) -> str:
    """Golden-text helper: parse IR, run a pipeline (verifier on), print."""
    from sliver.passes.manager import PassManager

    module = parse_module(text)
    PassManager(pipeline).run(module)
    return str(module)


def dedent(text: str) -> str:
    import textwrap

    return textwrap.dedent(text).lstrip("\n")


def emulated_first_output(artifact_path, tmp_path, timeout=900, cpu=None):
    """Run a saved artifact on its golden inputs on the emulated Pi (the Pi 4's CPU unless
    ``cpu`` names another); its first output."""
    from sliver.tools.emulator import emulate

    script = tmp_path / "run_first_output.py"
    script.write_text(
        "import sys, numpy as np\n"
        "from sliver.runtime.artifact import load\n"
        "m = load(sys.argv[1])\n"
        "np.save(sys.argv[2], m.run(*m.golden_inputs())[0])\n"
    )
    out = tmp_path / "first_output.npy"
    proc = emulate.run_python([str(script), str(artifact_path), str(out)], timeout=timeout,
                              **({"cpu": cpu} if cpu else {}))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return np.load(out)


class MLPBlock(nn.Module):
    """A pre-norm transformer MLP block: x + down(gelu(up(norm(x))))."""

    def __init__(self, dim=16, hidden=64):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.up = nn.Linear(dim, hidden)
        self.down = nn.Linear(hidden, dim)

    def forward(self, x):
        return x + self.down(torch.nn.functional.gelu(self.up(self.norm(x))))



def workspace_allocs_in_parallel_loops(func, target) -> list[str]:
    """The buffers a scheduled PrimFunc allocates with ``TVMBackendAllocWorkspace``
    inside a parallel loop once TVM lowers it for ``target`` (a ``tvm.target.Target``;
    the TIR that ``tvm.tirx.build`` hands to LLVM): each one costs a pair of TVM runtime
    calls on every iteration (every tile), not one per call of the function.  (Read
    from the lowered TIR's text: TVM 0.27 has no Python statement visitor.)"""
    import re

    import tvm
    from tvm import tirx

    mod = tvm.IRModule({"main": func.with_attr("global_symbol", "main")})
    pipeline, finalize_host, _ = tirx.get_tir_pipeline("default")
    with tvm.transform.PassContext(opt_level=3):
        mod = finalize_host()(pipeline(tirx.transform.BindTarget(tvm.target.Target(target).with_host(target))(mod)))
    found, parallel = [], []  # indents of the enclosing parallel loops
    for line in mod["main"].script().splitlines():
        indent = len(line) - len(line.lstrip())
        while parallel and indent <= parallel[-1]:
            parallel.pop()
        if re.match(r"\s*for .* in T\.parallel\(", line):
            parallel.append(indent)
        elif parallel and "TVMBackendAllocWorkspace(" in line:
            found.append(line.strip().split(" ")[0])
    return found


def relax_module(build, shapes):
    """A Relax module whose ``main(*inputs)`` (float32 inputs of ``shapes``) returns what
    ``build(bb, *params)`` emits."""
    from tvm import relax

    bb = relax.BlockBuilder()
    params = [relax.Var(f"x{i}", relax.TensorType(s, "float32")) for i, s in enumerate(shapes)]
    with bb.function("main", params):
        with bb.dataflow():
            out = bb.emit_output(build(bb, *params))
        bb.emit_func_output(out)
    return bb.finalize()


def front_primfuncs(build, shapes, target) -> dict:
    """:func:`relax_module` through sliver's default front passes for ``target`` (legalize,
    fuse): ``{name: fused PrimFunc}``, what the schedule rules see."""
    import tvm
    from tvm import tirx

    from sliver.backends.tvm import schedules

    with target:
        mod = tvm.transform.Sequential(schedules.front_passes(target=target))(relax_module(build, shapes))
    return {gv.name_hint: f for gv, f in mod.functions_items() if isinstance(f, tirx.PrimFunc)}


def artifact_tests(module: str, build, name: str, rtol: float, exact_after: int | None = None):
    """The compile job and the two artifact tests a test module of ops shares: ``build()``
    gives (model, inputs); the model lowered for x86_64 is checked here against torch on
    every output, lowered for arm64 on the emulated Pi on its first output.  Outputs from
    index ``exact_after`` on (integer results: indices, masks) must be equal, not close.

    Use as ``compiled, test_x86_..., test_arm64_... = artifact_tests(__name__, build, ...)``:
    the precompile worker calls ``<module>.compiled(target)``."""
    import pytest

    import precompile
    import sliver

    def compiled(target):
        model, inputs = build()
        return sliver.lower(model, inputs, target=target, tune=False).save(precompile.out(f"{name}-{target}.sliver"))

    def key(target):
        return ("call", module, "compiled", target)

    @pytest.mark.slow
    @pytest.mark.precompiled.with_args(lambda params: [key("x86_64")])
    def test_x86_artifact_matches_torch():
        model, inputs = build()
        got = sliver.load(precompile.get(key("x86_64"))).run(*numpy_inputs(inputs))
        want = torch_outputs(model, inputs)
        close = len(want) if exact_after is None else exact_after
        assert_close(got[:close], want[:close], rtol=rtol, what=f"{name} x86_64")
        for g, w in zip(got[close:], want[close:]):
            np.testing.assert_array_equal(g, w)

    @pytest.mark.slow
    @pytest.mark.emulated
    @pytest.mark.precompiled.with_args(lambda params: [key("arm64")])
    def test_arm64_artifact_matches_torch_on_the_emulated_pi(tmp_path):
        model, inputs = build()
        got = emulated_first_output(precompile.get(key("arm64")), tmp_path)
        assert_close([got], torch_outputs(model, inputs)[:1], rtol=rtol, what=f"{name} arm64")

    return compiled, test_x86_artifact_matches_torch, test_arm64_artifact_matches_torch_on_the_emulated_pi
