"""F.pad in every mode and adaptive_avg_pool1d trace onto existing ops (concat of
constants, slice, take with constant indices, a 2-D adaptive pool) and match torch."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import sliver
from sliver.common.errors import SliverError
from sliver.ir.interp import run


class Pad(torch.nn.Module):
    def __init__(self, pad, mode, value=None):
        super().__init__()
        self.pad, self.mode, self.value = pad, mode, value

    def forward(self, x):
        if self.mode == "constant":
            return F.pad(x * 1.5, self.pad, mode="constant", value=self.value or 0.0)
        return F.pad(x * 1.5, self.pad, mode=self.mode)


def _check(model, x):
    module = sliver.trace(model, (x,))
    out = run(module, [x.numpy()])[0]
    ref = model(x).numpy()
    assert out.shape == ref.shape
    np.testing.assert_array_equal(out, ref)  # pads only move or fill elements: exact
    return module


@pytest.mark.parametrize("mode", ["constant", "reflect", "replicate", "circular"])
@pytest.mark.parametrize("pad, shape", [((1, 2), (1, 3, 6)), ((2, 0, 1, 3), (1, 3, 5, 6)),
                                        ((0, 0, 3, 1), (1, 3, 5, 6))])
def test_pad_modes_match_torch(mode, pad, shape):
    torch.manual_seed(0)
    module = _check(Pad(pad, mode), torch.randn(*shape))
    kinds = {op.kind for op in module.ops}
    assert ("concat" in kinds) == (mode == "constant")
    assert ("take" in kinds) == (mode != "constant")


def test_constant_pad_value_negative_amounts_and_3d():
    torch.manual_seed(0)
    module = _check(Pad((-1, 2, 1, -2), "constant", value=-0.25), torch.randn(1, 2, 5, 6))
    assert "slice" in {op.kind for op in module.ops}
    _check(Pad((1, 1, 2, 0, 1, 1), "replicate"), torch.randn(1, 2, 3, 4, 5))


def test_reflect_pad_wider_than_the_axis_is_a_named_error():
    class Wide(torch.nn.Module):
        def forward(self, x):  # torch rejects this too, but only at run time
            return F.pad(x, (4, 4), mode="reflect")

    with pytest.raises(SliverError):
        sliver.trace(Wide(), (torch.randn(1, 2, 3),))


@pytest.mark.parametrize("size", [1, 3, 4])
def test_adaptive_avg_pool1d(size):
    class Pool(torch.nn.Module):
        def forward(self, x):
            return F.adaptive_avg_pool1d(x + 1, size)

    x = torch.randn(1, 4, 10)
    module = sliver.trace(Pool(), (x,))
    np.testing.assert_allclose(run(module, [x.numpy()])[0], Pool()(x).numpy(), rtol=1e-6, atol=1e-6)
    assert "adaptive_avg_pool2d" in {op.kind for op in module.ops}
