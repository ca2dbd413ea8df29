"""compile_module(layers=...): which sliver ops each compiled function computes."""

import pytest
import torch
from torch import nn

import sliver
from sliver.api import optimize
from sliver.backends.tvm.build import compile_module


@pytest.mark.slow
def test_every_conv_is_claimed_even_when_tvm_deduplicates_its_function():
    """Two identical conv+relu blocks share one fused function; both convs map to it,
    and TVM's own (unfused) pipeline maps each conv to its conv and bias functions."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
                          nn.Conv2d(4, 8, 1)).eval()
    module = sliver.trace(model, (torch.randn(1, 4, 8, 8),))
    optimize(module)
    convs = [op.results[0].name for op in module.ops if op.kind == "conv2d"]
    assert len(convs) == 3
    for schedules in (True, False):
        layers = {}
        compile_module(module, "x86_64", schedules=schedules, layers=layers)
        claimed = {op: [f for f, ops in layers.items() if op in ops] for op in convs}
        assert all(claimed.values()), (schedules, layers)
        # the two same-shape convs share their function(s); the 1x1 conv has its own
        assert claimed[convs[0]] == claimed[convs[1]]
        assert not set(claimed[convs[2]]) & set(claimed[convs[0]])
    # every name in the map is an op of the module
    names = {op.results[0].name for op in module.ops}
    assert all(set(ops) <= names for ops in layers.values())
