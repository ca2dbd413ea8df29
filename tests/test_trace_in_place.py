"""Writes into tensors a model has just made (BEiT's relative position index:
``idx = zeros(...); idx[1:, 1:] = ...; idx[0, :] = n``): the tracer functionalizes them
into scatters, folded when constant and joins of slices when computed; plus stack and
meshgrid, against torch in the interpreter."""

import numpy as np
import pytest
import torch
from torch import nn

import sliver
from helpers import roundtrip
from sliver.ir.interp import run


class Fn(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, *xs):
        return self.fn(*xs)


def _check(fn, *xs, kinds=None):
    model = Fn(fn).eval()
    module = sliver.trace(model, xs)
    with torch.no_grad():
        want = model(*xs).numpy()
    np.testing.assert_allclose(run(module, [x.numpy() for x in xs])[0], want, rtol=1e-6, atol=1e-6)
    if kinds is not None:
        assert {op.kind for op in module.ops} <= set(kinds) | {"param", "constant"}, {op.kind for op in module.ops}
    roundtrip(module)
    return module


def _relative_index(x):
    """BEiT's relative position index for a 2 x 3 window, built in place."""
    coords = torch.stack(torch.meshgrid(torch.arange(2), torch.arange(3), indexing="ij"))
    flat = coords.flatten(1)
    rel = (flat[:, :, None] - flat[:, None, :]).permute(1, 2, 0).contiguous()
    rel[:, :, 0] += 1
    rel[:, :, 1] += 2
    rel[:, :, 0] *= 5
    idx = torch.zeros(7, 7, dtype=rel.dtype)
    idx[1:, 1:] = rel.sum(-1)
    idx[0, 0:] = 15
    idx[0:, 0] = 16
    idx[0, 0] = 17
    return x[idx.reshape(-1)].reshape(7, 7, -1)


def test_a_constant_index_built_in_place_folds():
    _check(_relative_index, torch.randn(18, 2), kinds={"take", "reshape"})


def test_writes_into_a_computed_tensor():
    def fn(x, y):
        z = x.clone()
        z[1:3] = y * 2
        z[0] = y[0]
        z[:, -1].fill_(7.0)
        return z

    _check(fn, torch.randn(5, 4), torch.randn(2, 4), kinds={"slice", "concat", "mul", "reshape", "expand"})


@pytest.mark.parametrize("indexing", ["ij", "xy"])
def test_stack_and_meshgrid_of_computed_tensors(indexing):
    def fn(a, b):
        gx, gy = torch.meshgrid(a * 2, b, indexing=indexing)
        return torch.stack([gx, gy, gx + gy], dim=-1)

    _check(fn, torch.randn(3), torch.randn(4))
