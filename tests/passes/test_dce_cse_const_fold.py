"""dce, cse and const-fold: golden text and numerics."""

import numpy as np
import torch
from torch import nn

from helpers import assert_close, dedent, numpy_inputs, run_pass, torch_outputs
from sliver.api import optimize, trace
from sliver.ir.interp import run
from sliver.ir.parser import parse_module
from sliver.passes.manager import PassManager


def test_dce_golden():
    before = dedent("""
        func @m(%x: f32[4]) {
          %w = param : f32[4]
          %unused = param : f32[4]
          %a = add(%x, %w) : f32[4]
          %dead = mul(%a, %unused) : f32[4]
          %deader = neg(%dead) : f32[4]
          %b = relu(%a) : f32[4]
          return %b
        }
    """)
    after = dedent("""
        func @m(%x: f32[4]) {
          %w = param : f32[4]
          %a = add(%x, %w) : f32[4]
          %b = relu(%a) : f32[4]
          return %b
        }
    """)
    assert run_pass(before, "dce") == after
    module = parse_module(before)
    PassManager("dce").run(module)
    assert set(module.params) == {"w"}


def test_cse_golden():
    before = dedent("""
        func @m(%x: f32[4]) {
          %c1 = constant {value=2.0} : f32[]
          %c2 = constant {value=2.0} : f32[]
          %a = mul(%x, %c1) : f32[4]
          %b = mul(%x, %c2) : f32[4]
          %s1 = sigmoid(%a) : f32[4]
          %s2 = sigmoid(%b) : f32[4]
          %t = tanh(%a) : f32[4]
          %o = add(%s1, %s2) : f32[4]
          return %o, %t
        }
    """)
    after = dedent("""
        func @m(%x: f32[4]) {
          %c1 = constant {value=2.0} : f32[]
          %a = mul(%x, %c1) : f32[4]
          %s1 = sigmoid(%a) : f32[4]
          %t = tanh(%a) : f32[4]
          %o = add(%s1, %s1) : f32[4]
          return %o, %t
        }
    """)
    assert run_pass(before, "cse") == after


def test_cse_keeps_ops_with_different_attributes():
    text = dedent("""
        func @m(%x: f32[2,3]) {
          %a = softmax(%x) {axis=0} : f32[2,3]
          %b = softmax(%x) : f32[2,3]
          %o = add(%a, %b) : f32[2,3]
          return %o
        }
    """)
    assert run_pass(text, "cse") == text


def test_const_fold_golden():
    before = dedent("""
        func @m(%x: f32[2,3]) {
          %w = param : f32[3,4]
          %wt = permute(%w) {dims=[1, 0]} : f32[4,3]
          %y = linear(%x, %wt) : f32[2,4]
          return %y
        }
    """)
    after = dedent("""
        func @m(%x: f32[2,3]) {
          %wt_folded = param : f32[4,3]
          %y = linear(%x, %wt_folded) : f32[2,4]
          return %y
        }
    """)
    assert run_pass(before, "const-fold") == after


def test_const_fold_leaves_big_broadcasts_alone():
    text = dedent("""
        func @m(%x: f32[64,64]) {
          %c = constant {value=1.0} : f32[]
          %big = expand(%c) {shape=[64, 64]} : f32[64,64]
          %y = add(%x, %big) : f32[64,64]
          return %y
        }
    """)
    assert run_pass(text, "const-fold") == text


class Rotary(nn.Module):
    """Constant tables computed in forward (arange, outer product, cos/sin) and
    a weight transposed in forward: const-fold turns them into params."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(6, 8))
        self.register_buffer("inv", 1.0 / (100 ** (torch.arange(0, 8, 2).float() / 8)))

    def forward(self, x):
        pos = torch.arange(x.shape[1]).float()
        ang = pos[:, None] * self.inv[None, :]
        table = torch.cat([ang.cos(), ang.sin()], -1)
        return (x + table) @ self.w.t() * 2 + 1


def test_pipeline_numerics_and_const_fold_removes_constant_work():
    torch.manual_seed(0)
    model = Rotary().eval()
    x = (torch.randn(1, 5, 8),)
    module = trace(model, x)
    kinds_before = [op.kind for op in module.ops]
    assert "cos" in kinds_before and "permute" in kinds_before
    ref = run(module, numpy_inputs(x), dtype="f64")
    optimize(module, "const-fold,cse,dce")
    kinds = [op.kind for op in module.ops if op.kind not in ("param", "constant")]
    assert "cos" not in kinds and "sin" not in kinds and "permute" not in kinds, kinds
    assert_close(run(module, numpy_inputs(x), dtype="f64"), ref, rtol=1e-6, atol_scale=1e-6)
    assert_close(run(module, numpy_inputs(x)), torch_outputs(model, x), rtol=1e-4)
