import numpy as np
import torch
from torch import nn

from helpers import assert_close, dedent, numpy_inputs, run_pass, torch_outputs
from sliver.api import optimize, trace
from sliver.ir.interp import run

BEFORE = dedent("""
    func @m(%x: f32[1,3,8,8]) {
      %c.weight = param : f32[4,3,3,3]
      %bn.mean = param : f32[4]
      %bn.var = param : f32[4]
      %bn.weight = param : f32[4]
      %bn.bias = param : f32[4]
      %conv = conv2d(%x, %c.weight) {padding=[1, 1, 1, 1]} : f32[1,4,8,8]
      %bn = batch_norm(%conv, %bn.mean, %bn.var, %bn.weight, %bn.bias) : f32[1,4,8,8]
      %relu = relu(%bn) : f32[1,4,8,8]
      return %relu
    }
""")

AFTER = dedent("""
    func @m(%x: f32[1,3,8,8]) {
      %c.weight = param : f32[4,3,3,3]
      %c.bias = param : f32[4]
      %conv = conv2d(%x, %c.weight, %c.bias) {padding=[1, 1, 1, 1]} : f32[1,4,8,8]
      %relu = relu(%conv) : f32[1,4,8,8]
      return %relu
    }
""")


def test_golden_text():
    assert run_pass(BEFORE, "fold-batchnorm") == AFTER


def test_not_folded_when_conv_has_other_users():
    text = BEFORE.replace("return %relu", "return %relu, %conv")
    assert run_pass(text, "fold-batchnorm") == text


def test_not_folded_after_relu():
    # batch norm after an activation cannot move into the conv
    text = dedent("""
        func @m(%x: f32[1,3,8,8]) {
          %c.weight = param : f32[4,3,3,3]
          %m = param : f32[4]
          %v = param : f32[4]
          %conv = conv2d(%x, %c.weight) : f32[1,4,6,6]
          %r = relu(%conv) : f32[1,4,6,6]
          %bn = batch_norm(%r, %m, %v) : f32[1,4,6,6]
          return %bn
        }
    """)
    assert run_pass(text, "fold-batchnorm") == text


class ConvBN(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.b1 = nn.BatchNorm2d(8)
        self.c2 = nn.Conv2d(8, 8, 3, groups=8, bias=False)  # depthwise, no bias
        self.b2 = nn.BatchNorm2d(8, affine=False)
        self.fc = nn.Linear(8, 5)
        self.b3 = nn.BatchNorm1d(5)

    def forward(self, x):
        y = torch.relu(self.b1(self.c1(x)))
        y = self.b2(self.c2(y))
        return self.b3(self.fc(y.mean((2, 3))))


def test_numerics_match_torch_and_every_bn_is_gone():
    torch.manual_seed(0)
    model = ConvBN().eval()
    with torch.no_grad():
        for bn in (model.b1, model.b2, model.b3):
            bn.running_mean.uniform_(-1, 1)
            bn.running_var.uniform_(0.5, 2)
            if bn.affine:
                bn.weight.uniform_(0.5, 1.5)
                bn.bias.uniform_(-1, 1)
    x = (torch.randn(1, 3, 10, 10),)
    module = trace(model, x)
    assert sum(op.kind == "batch_norm" for op in module.ops) == 3
    before64 = run(module, numpy_inputs(x), dtype="f64")
    optimize(module, "fold-batchnorm")
    assert not any(op.kind == "batch_norm" for op in module.ops)
    after64 = run(module, numpy_inputs(x), dtype="f64")
    # float64 math on float32-rounded folded weights: differences are float32 rounding only
    assert_close(after64, before64, rtol=1e-6, atol_scale=1e-6)
    assert_close(run(module, numpy_inputs(x)), torch_outputs(model, x), rtol=1e-4)
