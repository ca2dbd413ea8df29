"""leaky_relu end to end: traced from torch (module, functional, in place), run by the
interpreter, compiled for x86_64, and passed through by pruning as the elementwise,
channel-wise op its declaration says it is."""

import numpy as np
import pytest
import torch
from torch import nn

import sliver
from helpers import assert_close, dedent, numpy_inputs, roundtrip, torch_outputs
from sliver.common.errors import SliverError
from sliver.ir.interp import run
from sliver.ir.ops import get_op
from sliver.ir.parser import parse_module
from sliver.passes.channels import ChannelAnalysis
from sliver.passes.manager import PassManager, make_pass
from sliver.passes.prune import masked_copy


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.act = nn.LeakyReLU(0.2)
        self.b = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        y = self.b(self.act(self.a(x)))
        return nn.functional.leaky_relu(y) + nn.functional.leaky_relu_(y.clone(), -0.5)


def _inputs():
    torch.manual_seed(1)
    return (torch.randn(1, 3, 8, 8),)


def test_traced_from_the_module_the_functional_and_the_in_place_form():
    module = sliver.trace(Net(), _inputs())
    slopes = [op.attrs["negative_slope"] for op in module.ops if op.kind == "leaky_relu"]
    assert slopes == [0.2, 0.01, -0.5]
    roundtrip(module)


def test_interpreter_matches_torch():
    model, inputs = Net().eval(), _inputs()
    assert_close(run(sliver.trace(model, inputs), numpy_inputs(inputs)), torch_outputs(model, inputs), rtol=1e-5)


def test_ir_text_and_reference_semantics():
    m = parse_module(dedent("""
        func @m(%x: f32[5]) {
          %y = leaky_relu(%x) {negative_slope=0.1} : f32[5]
          return %y
        }
    """))
    x = np.array([-2.0, -0.5, 0.0, 0.5, 3.0], np.float32)
    np.testing.assert_allclose(run(m, [x])[0], [-0.2, -0.05, 0.0, 0.5, 3.0], rtol=1e-6)
    with pytest.raises(SliverError, match="floating-point"):
        parse_module("func @m(%x: i32[5]) {\n  %y = leaky_relu(%x) : i32[5]\n  return %y\n}\n")


def test_pruning_passes_channels_through_it():
    assert get_op("leaky_relu").has("elementwise", "channelwise")
    module = sliver.trace(Net(), _inputs())
    analysis = ChannelAnalysis.run(module)
    assert not [op for op, _ in analysis.barriers if op.kind == "leaky_relu"]
    act = next(op for op in module.ops if op.kind == "leaky_relu")
    assert analysis.nodes(act.result) == analysis.nodes(act.operands[0])
    # conv a's channels 1 and 5 are dropped through the activation; the result is the masked model's
    masks = {"b": [0, 2, 3, 4, 6, 7]}
    want = run(masked_copy(module, masks), numpy_inputs(_inputs()))
    PassManager([make_pass("prune", masks=masks)]).run(module)
    assert next(op for op in module.ops if op.kind == "leaky_relu").result.type.shape == (1, 6, 8, 8)
    assert_close(run(module, numpy_inputs(_inputs())), want, rtol=1e-5)


@pytest.mark.slow
def test_x86_artifact_matches_torch(tmp_path):
    model, inputs = Net().eval(), _inputs()
    path = sliver.lower(model, inputs, target="x86_64").save(tmp_path / "leaky.sliver")
    got = sliver.load(path).run(*numpy_inputs(inputs))
    assert_close(got, torch_outputs(model, inputs), rtol=1e-4, atol_scale=1e-5, what="leaky_relu x86_64")
