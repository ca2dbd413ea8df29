"""compile_module(...).primfuncs: which sliver ops each compiled function computes."""

import pytest
import torch
from torch import nn

import sliver
from sliver.api import optimize
from sliver.backends.tvm.build import compile_module


class Block(nn.Module):
    """A ResNet basic block with an identity skip: conv+relu, then conv+add+relu."""

    def __init__(self, c):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        return torch.relu(self.conv2(torch.relu(self.conv1(x))) + x)


def _module():
    torch.manual_seed(0)
    model = nn.Sequential(Block(4), Block(4), nn.Conv2d(4, 8, 1)).eval()
    module = sliver.trace(model, (torch.randn(1, 4, 8, 8),))
    optimize(module)
    return module


def compiled_layers(schedules):
    """compile_module(...).primfuncs of the two-block model (a tests/precompile.py job)."""
    return compile_module(_module(), "x86_64", schedules=schedules).primfuncs


@pytest.mark.slow
@pytest.mark.precompiled.with_args(lambda params: [("call", "test_primfunc_ops", "compiled_layers", s)
                                                   for s in (True, False)])
def test_every_conv_maps_to_the_function_of_its_own_call():
    """Two identical blocks: TVM makes one function per distinct fused group and
    calls it twice, keeping the names of the first call only.  Every conv still maps
    to exactly its own group's function (its weights identify the call), in sliver's
    fused build and in TVM's unfused one."""
    import precompile

    module = _module()
    conv = {op.operands[1].name.removesuffix(".weight"): op.results[0].name for op in module.ops if op.kind == "conv2d"}
    assert sorted(conv) == ["0.conv1", "0.conv2", "1.conv1", "1.conv2", "2"]
    for schedules in (True, False):
        # compile_module(module, "x86_64", schedules=schedules).primfuncs, compiled ahead
        layers = precompile.get(("call", "test_primfunc_ops", "compiled_layers", schedules))
        claimed = {layer: {f for f, ops in layers.items() if op in ops} for layer, op in conv.items()}
        assert all(claimed.values()), (schedules, layers)
        assert claimed["0.conv1"] == claimed["1.conv1"]  # one function (or two) per group, shared
        assert claimed["0.conv2"] == claimed["1.conv2"]
        if schedules:  # fused: conv+add+relu and conv+add+add+relu are different functions
            assert len(claimed["0.conv1"]) == 1 and not claimed["0.conv1"] & claimed["0.conv2"]
        assert not claimed["2"] & (claimed["0.conv1"] | claimed["0.conv2"])
        names = {op.results[0].name for op in module.ops}
        assert all(set(ops) <= names for ops in layers.values())
