"""Tracer details: tensor factories are evaluated at trace time."""

import numpy as np
import pytest
import torch

import sliver
from sliver.common.errors import SliverError
from sliver.ir.interp import run


class Factories(torch.nn.Module):
    def forward(self, x):
        return x + torch.zeros_like(x) + torch.ones(x.shape[-1]) + torch.arange(4).float()


def test_factories_become_params_and_like_factories_read_only_shapes():
    module = sliver.trace(Factories(), (torch.randn(2, 4),))
    assert {op.kind for op in module.ops} == {"param", "add", "cast"}
    x = np.random.default_rng(0).standard_normal((2, 4)).astype(np.float32)
    (got,) = run(module, [x])
    np.testing.assert_allclose(got, Factories()(torch.from_numpy(x)).numpy(), rtol=1e-6)


def test_factory_of_a_computed_tensor_is_refused():
    class Tril(torch.nn.Module):
        def forward(self, x):
            return torch.tril(x)

    with pytest.raises(SliverError, match="aten.tril.default of a tensor computed from the inputs is not supported"):
        sliver.trace(Tril(), (torch.randn(3, 3),))
