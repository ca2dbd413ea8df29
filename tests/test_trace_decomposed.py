"""aten ops the tracer writes with existing sliver ops, each against torch in the
interpreter: conv1d (a conv2d over a height of one), pixel_shuffle/unshuffle
(reshape + permute), roll (slices + concat), group_norm (a layer norm per group + the
affine), linalg_vector_norm, expand_as, and weight norm (computed at trace time)."""

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import sliver
from sliver.common.errors import SliverError
from sliver.ir.interp import run


class Fn(nn.Module):
    def __init__(self, fn, **modules):
        super().__init__()
        self.fn = fn
        for k, v in modules.items():
            setattr(self, k, v)

    def forward(self, *xs):
        return self.fn(self, *xs)


def _check(model, *xs, kinds=None, rtol=1e-5):
    model = model.eval()
    module = sliver.trace(model, xs)
    out = run(module, [x.numpy() for x in xs])[0]
    with torch.no_grad():
        ref = model(*xs).numpy()
    assert out.shape == ref.shape
    np.testing.assert_allclose(out, ref, rtol=rtol, atol=rtol * max(1.0, float(np.abs(ref).max())))
    used = {op.kind for op in module.ops} - {"param", "constant"}
    if kinds is not None:
        assert used <= set(kinds), used
    return module


@pytest.mark.parametrize("kw", [dict(), dict(stride=2, padding=1), dict(padding="same", dilation=2),
                                dict(groups=2, padding=2, bias=False)])
def test_conv1d_is_a_conv2d_of_height_one(kw):
    torch.manual_seed(0)
    bias = kw.pop("bias", True)
    conv = nn.Conv1d(4, 6, 3, bias=bias, **kw)
    module = _check(Fn(lambda m, x: m.conv(x), conv=conv), torch.randn(2, 4, 11), kinds={"conv2d", "reshape"})
    assert sum(op.kind == "conv2d" for op in module.ops) == 1


def test_unbatched_conv1d():
    torch.manual_seed(0)
    conv = nn.Conv1d(3, 5, 3, padding=1)
    _check(Fn(lambda m, x: m.conv(x), conv=conv), torch.randn(3, 9))


@pytest.mark.parametrize("r", [2, 3])
def test_pixel_shuffle_and_unshuffle(r):
    x = torch.randn(1, 2 * r * r, 4, 5)
    _check(Fn(lambda m, x: F.pixel_shuffle(x + 1, r)), x, kinds={"add", "reshape", "permute"})
    _check(Fn(lambda m, x: F.pixel_unshuffle(x + 1, r)), torch.randn(2, 3, 4 * r, 2 * r),
           kinds={"add", "reshape", "permute"})


@pytest.mark.parametrize("shifts, dims", [((2, -1), (2, 3)), (3, 1), (-7, -1), (5, None), ((0, 8), (2, 3))])
def test_roll(shifts, dims):
    x = torch.randn(1, 3, 4, 8)
    fn = (lambda m, x: torch.roll(x * 2, shifts)) if dims is None else (lambda m, x: torch.roll(x * 2, shifts, dims))
    _check(Fn(fn), x, kinds={"mul", "slice", "concat", "reshape"})


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("shape", [(2, 8, 5, 3), (1, 8, 7)])
def test_group_norm(affine, shape):
    torch.manual_seed(0)
    gn = nn.GroupNorm(4, 8, affine=affine, eps=1e-3)
    if affine:
        nn.init.normal_(gn.weight)
        nn.init.normal_(gn.bias)
    _check(Fn(lambda m, x: m.gn(x), gn=gn), torch.randn(*shape) * 3 + 1)


def test_group_norm_needs_divisible_channels():
    class Bad(nn.Module):
        def forward(self, x):
            return F.group_norm(x, 3)

    with pytest.raises(SliverError):
        sliver.trace(Bad(), (torch.randn(1, 8, 4),))


@pytest.mark.parametrize("ord", [2, 1, float("inf")])
@pytest.mark.parametrize("dim, keepdim", [((-1,), True), ((1, 2), False), (None, False)])
def test_vector_norm(ord, dim, keepdim):
    x = torch.randn(2, 3, 5)
    _check(Fn(lambda m, x: torch.linalg.vector_norm(x - 0.5, ord=ord, dim=dim, keepdim=keepdim)), x)


def test_vector_norm_other_orders_are_named_errors():
    with pytest.raises(SliverError, match="ord 3"):
        sliver.trace(Fn(lambda m, x: torch.linalg.vector_norm(x, ord=3)), (torch.randn(4),))


def test_expand_as():
    _check(Fn(lambda m, x, y: (x * 2).expand_as(y) + y), torch.randn(1, 4, 1), torch.randn(3, 4, 5))


def test_weight_norm_is_computed_at_trace_time():
    torch.manual_seed(0)
    conv = nn.utils.parametrizations.weight_norm(nn.Conv1d(4, 4, 3, padding=1), dim=2)
    module = _check(Fn(lambda m, x: m.conv(x), conv=conv), torch.randn(1, 4, 9))
    assert "mul" not in {op.kind for op in module.ops}  # no norm computed at run time


def test_min_and_max_of_two_tensors():
    x, y = torch.randn(2, 5), torch.randn(1, 5)
    _check(Fn(lambda m, x, y: torch.min(x, y) + torch.max(x * 2, y)), x, y, kinds={"minimum", "maximum", "add", "mul"})


class RelativeBuckets(nn.Module):
    """T5-style: a where() on constants from aranges, then added to the input."""

    def forward(self, x):
        n = x.shape[-1]
        rel = torch.arange(n)[None, :] - torch.arange(n)[:, None]
        big = torch.where(rel > 2, torch.full_like(rel, 3), rel)
        big = torch.min(big, torch.full_like(big, 1))
        return x + torch.where(big < 0, big, 0).to(x.dtype)


def test_where_of_constants_is_folded():
    module = _check(RelativeBuckets(), torch.randn(2, 6, 6), kinds={"add", "cast"})
    assert sum(op.kind == "param" for op in module.ops) == 1


def test_where_with_a_constant_all_true_condition_picks_a_branch():
    class Pick(nn.Module):
        def forward(self, x, y):
            return torch.where(torch.ones(3, 1, dtype=torch.bool), x * 2, y)

    _check(Pick(), torch.randn(1, 4), torch.randn(3, 4), kinds={"mul", "expand"})


def test_where_on_the_inputs_is_a_where_op():
    c = torch.tensor([True, False, True, False])
    _check(Fn(lambda m, c, x: torch.where(c, x, 0.0)), c, torch.randn(4), kinds={"where"})
    _check(Fn(lambda m, x: torch.where(x > 0, x, 2 * x)), torch.randn(3, 4), kinds={"gt", "mul", "where"})


class ShiftedWindowMask(nn.Module):
    """Swin's attention mask: region ids painted into slices of a constant image, window
    differences turned into -100/0 by two masked_fills, added to the scores."""

    def forward(self, scores):
        img = torch.zeros(1, 4, 4, 1)
        count = 0
        for h in (slice(0, -2), slice(-2, -1), slice(-1, None)):
            for w in (slice(0, -2), slice(-2, -1), slice(-1, None)):
                img[:, h, w, :] = count
                count += 1
        windows = img.view(1, 2, 2, 2, 2, 1).permute(0, 1, 3, 2, 4, 5).reshape(-1, 4)
        mask = windows.unsqueeze(1) - windows.unsqueeze(2)
        mask = mask.masked_fill(mask != 0, -100.0).masked_fill(mask == 0, 0.0)
        return scores + mask


def test_masked_fill_of_constants_is_folded():
    module = _check(ShiftedWindowMask(), torch.randn(4, 4, 4), kinds={"add"})
    assert sum(op.kind == "param" for op in module.ops) == 1


def test_masked_fill_on_the_inputs_is_a_where_op():
    # a mask that broadcasts to the input, a float scalar, a 0-dim tensor value, and an
    # int tensor (the value takes the tensor's dtype, as in torch)
    x = torch.randn(2, 3, 5)
    _check(Fn(lambda m, x, c: x.masked_fill(c, float("-inf")).exp()), x, torch.rand(3, 1) > 0.5,
           kinds={"where", "exp"})
    _check(Fn(lambda m, x: x.masked_fill(x < 0, torch.tensor(0.5))), x, kinds={"lt", "where"})
    _check(Fn(lambda m, x: x.masked_fill(x > 2, 7.9)), torch.arange(-3, 6).reshape(3, 3),
           kinds={"gt", "where"})


def test_masked_fill_with_a_mask_larger_than_the_input_is_refused():
    with pytest.raises(SliverError, match="does not broadcast"):
        sliver.trace(Fn(lambda m, x, c: x.masked_fill(c, 0.0)).eval(), (torch.randn(3), torch.rand(2, 3) > 0.5))


@pytest.mark.parametrize("dim, keepdim", [((-1,), True), ((0, 2), False)])
def test_amax(dim, keepdim):
    _check(Fn(lambda m, x: torch.amax(x * 3, dim=dim, keepdim=keepdim)), torch.randn(2, 3, 5), kinds={"mul", "amax"})
