"""Masks computed from the inputs at run time: comparisons, logical ops, ``where``,
``cumsum``, ``diff``, ``masked_fill`` and attention rows the mask hides entirely (what a causal LM's
mask helper does with a 2-D attention mask, and RoBERTa with its padding tokens).
Traced from torch, checked against torch in the interpreter, as x86_64 artifacts and
on the emulated Pi, and the IR text of each op."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import sliver
from helpers import artifact_tests, assert_close, dedent, numpy_inputs, roundtrip, torch_outputs
from sliver.common.errors import SliverError
from sliver.ir.interp import run
from sliver.ir.parser import parse_module

OPS = {"eq", "ne", "lt", "le", "gt", "ge", "logical_and", "logical_or", "logical_xor", "logical_not", "where",
       "cumsum"}


class Masks(nn.Module):
    """x f32[2,6,8], ids i64[2,6], mask i64[2,6] (0 marks padding) → f32[2,6,8], i64[2,6]."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.proj = nn.Linear(8, 8)

    def forward(self, x, ids, mask):
        valid = mask.bool()
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        keep = ((ids != 3) & valid) | (ids > 90)
        step = torch.diff(ids, prepend=ids[:, :1] - 1, dim=-1)
        odd = (step == 1) ^ (ids <= 10)
        low = (x < 0.5) & ~(x >= 1.5)
        y = torch.where(keep[..., None], x, -x) * odd[..., None].float() + torch.where(low, 1.0, x)
        y = y.masked_fill(~valid[..., None], -2.0)  # a where() with the padding rows' value
        causal = torch.ones(6, 6, dtype=torch.bool).tril()
        attend = causal[None, None] & valid[:, None, None, :]  # rows of left padding attend to nothing
        q = self.proj(y).reshape(2, 6, 2, 4).transpose(1, 2)
        att = F.scaled_dot_product_attention(q, q, q, attn_mask=attend).transpose(1, 2).reshape(2, 6, 8)
        safe = torch.ops.aten._safe_softmax(torch.where(attend, 1.0, float("-inf")), -1).sum(-1)
        return y + att + pos[..., None] + safe.transpose(1, 2), pos * (ids >= 48).sum(-1, keepdim=True)


def build(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 6, 8, generator=g)
    ids = torch.randint(0, 96, (2, 6), generator=g)
    mask = torch.ones(2, 6, dtype=torch.long)
    mask[0, :2] = 0
    mask[1, -1] = 0
    return Masks().eval(), (x, ids, mask)


def test_traced_into_run_time_ops_and_round_trips():
    model, inputs = build()
    module = sliver.trace(model, inputs)
    kinds = {op.kind for op in module.ops}
    assert OPS - {"lt", "ge"} <= kinds, sorted(OPS - kinds)  # x < 0.5 may fold into ge/lt either way
    roundtrip(module)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_interpreter_matches_torch(seed):
    model, inputs = build(seed)
    want = torch_outputs(model, inputs)
    assert not np.isnan(want[0]).any()
    got = run(sliver.trace(model, inputs), numpy_inputs(inputs))
    assert_close(got[:1], want[:1], rtol=1e-5)
    np.testing.assert_array_equal(got[1], want[1])


def test_constant_masks_still_fold():
    class Const(nn.Module):
        def forward(self, x):
            i = torch.arange(5)
            m = (i[:, None] >= i[None, :]) & (i[None, :] != 3) | (i[:, None] == 0)
            return torch.where(m, x, 0.0)

    module = sliver.trace(Const(), (torch.randn(5, 5),))
    assert {op.kind for op in module.ops} <= {"param", "where", "constant"}


def test_bitwise_ops_on_integers_are_refused_by_name():
    class Bits(nn.Module):
        def forward(self, ids):
            return ids & 7

    with pytest.raises(SliverError, match="bitwise operations on integer tensors"):
        sliver.trace(Bits(), (torch.arange(4),))


def test_ir_text_and_type_rules():
    m = parse_module(dedent("""
        func @m(%a: i64[4], %b: i64[4], %x: f32[4]) {
          %lt = lt(%a, %b) : bool[4]
          %ne = ne(%a, %b) : bool[4]
          %both = logical_and(%lt, %ne) : bool[4]
          %no = logical_not(%both) : bool[4]
          %y = where(%no, %x, %x) : f32[4]
          %c = cumsum(%a) {axis=0} : i64[4]
          return %y, %c
        }
    """))
    roundtrip(m)
    a, b = np.array([1, 2, 3, 4]), np.array([2, 2, 5, 1])
    x = np.arange(4, dtype=np.float32)
    y, c = run(m, [a, b, x])
    np.testing.assert_array_equal(c, [1, 3, 6, 10])
    np.testing.assert_array_equal(y, x)
    with pytest.raises(SliverError, match="needs bool operands"):
        parse_module("func @m(%a: i64[4]) {\n  %y = logical_not(%a) : bool[4]\n  return %y\n}\n")
    with pytest.raises(SliverError, match="element types differ"):
        parse_module("func @m(%a: i64[4], %x: f32[4]) {\n  %y = lt(%a, %x) : bool[4]\n  return %y\n}\n")
    with pytest.raises(SliverError, match="cast a bool operand"):
        parse_module("func @m(%a: bool[4]) {\n  %y = cumsum(%a) {axis=0} : bool[4]\n  return %y\n}\n")


def test_a_fully_masked_attention_row_is_zeros_as_in_torch():
    q = torch.randn(1, 1, 3, 4)
    mask = torch.tensor([[False, False, False], [True, False, False], [True, True, True]])
    from sliver.ir.ops import get_op

    got = get_op("attention").ref(q, q, q, mask, causal=False, scale=None)
    torch.testing.assert_close(got, F.scaled_dot_product_attention(q, q, q, attn_mask=mask))
    assert not got[0, 0, 0].any()


compiled, test_x86_artifact_matches_torch, test_arm64_artifact_matches_torch_on_the_emulated_pi = artifact_tests(
    __name__, build, "masks", rtol=1e-4, exact_after=1)


def test_constant_operands_broadcast_against_symbolic_dims():
    class Sym(nn.Module):
        def forward(self, x):
            keep = (x > 0) & torch.ones((), dtype=torch.bool)  # x & all-true is x, of x's symbolic shape
            return torch.where(torch.ones(1, dtype=torch.bool), torch.where(keep, x, 0.0), x)

    batch = torch.export.Dim("batch", min=1, max=8)
    module = sliver.trace(Sym(), (torch.randn(3, 4),), dynamic_shapes=({0: batch},))
    for n in (1, 5):
        x = torch.randn(n, 4)
        np.testing.assert_array_equal(run(module, [x.numpy()])[0], Sym()(x).numpy())
