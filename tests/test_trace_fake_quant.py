"""The tracer turns torch's fake-quant ops (and torch.ao's FakeQuantize modules) into
sliver's fake_quant op, with the same results bit for bit."""

import numpy as np
import pytest
import torch
import torch.nn as nn

import sliver
from sliver.common.errors import SliverError
from sliver.ir.interp import run


class AllVariants(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("sc", torch.tensor(0.1))
        self.register_buffer("zp", torch.tensor(2, dtype=torch.int32))
        self.register_buffer("csc", torch.tensor([0.05, 0.2, 0.11]))
        self.register_buffer("czp", torch.tensor([0, 1, -2], dtype=torch.int32))
        self.register_buffer("fzp", torch.zeros(3))
        self.lsc = nn.Parameter(torch.tensor([0.07]))
        self.lzp = nn.Parameter(torch.tensor([2.5]))  # torch rounds half to even: 2
        self.lcsc = nn.Parameter(torch.tensor([0.1, 0.3, 0.05]))
        self.lczp = nn.Parameter(torch.tensor([0.4, -1.5, 9.0]))  # → 0, -2, 7 (clamped)

    def forward(self, x):
        a = torch.fake_quantize_per_tensor_affine(x, 0.1, 2, 0, 15)
        b = torch.fake_quantize_per_tensor_affine(x - a, self.sc, self.zp, 0, 15)
        c = torch.fake_quantize_per_channel_affine(x + b, self.csc, self.czp, 1, -8, 7)
        d = torch._fake_quantize_learnable_per_tensor_affine(c * 3, self.lsc, self.lzp, 0, 15, 1.0)
        e = torch._fake_quantize_learnable_per_channel_affine(d - x, self.lcsc, self.lczp, 1, -8, 7, 1.0)
        f = torch.fake_quantize_per_channel_affine(e, self.csc, self.fzp, 1, -8, 7)
        return f


def test_every_fake_quant_variant_traces_to_fake_quant_bit_for_bit():
    model = AllVariants()
    x = torch.randn(2, 3, 5) * 2
    module = sliver.trace(model, (x,))
    kinds = [op.kind for op in module.ops if op.kind not in ("param", "add", "sub", "mul", "constant")]
    assert kinds == ["fake_quant"] * 6
    axes = [op.attrs["axis"] for op in module.ops if op.kind == "fake_quant"]
    assert axes == [None, None, 1, None, 1, 1]
    with torch.no_grad():
        want = model(x).numpy()
    (got,) = run(module, [x.numpy()])
    assert np.array_equal(got, want)
    zps = [module.params[op.operands[2].name].tolist() for op in module.ops if op.kind == "fake_quant"]
    assert zps[3] == 2 and zps[4] == [0, -2, 7]


def test_torch_ao_fake_quantize_modules_trace():
    """torch.ao's FakeQuantize (observer branches do not export) traces with its current
    scale and zero point; the learnable (LSQ) module too."""
    from torch.ao.quantization import FakeQuantize, MovingAverageMinMaxObserver, MovingAveragePerChannelMinMaxObserver
    from torch.ao.quantization._learnable_fake_quantize import _LearnableFakeQuantize

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.act = FakeQuantize(MovingAverageMinMaxObserver, quant_min=0, quant_max=3)
            self.wq = FakeQuantize(MovingAveragePerChannelMinMaxObserver, quant_min=-2, quant_max=1,
                                   dtype=torch.qint8, qscheme=torch.per_channel_symmetric, ch_axis=0)
            self.lsq = _LearnableFakeQuantize(MovingAverageMinMaxObserver, quant_min=0, quant_max=15,
                                              use_grad_scaling=True)
            self.w = nn.Parameter(torch.randn(4, 6))

        def forward(self, x):
            return self.lsq(torch.nn.functional.linear(self.act(x), self.wq(self.w)).relu())

    net = Net()
    for _ in range(3):  # observe some data
        net(torch.randn(8, 6))
    net.lsq.toggle_observer_update(False)  # keep the learned scale as trained
    x = torch.randn(5, 6)
    module = sliver.trace(net, (x,))
    assert sum(op.kind == "fake_quant" for op in module.ops) == 3
    with torch.no_grad():
        want = net(x).numpy()
    (got,) = run(module, [x.numpy()])
    assert np.array_equal(got, want)
    assert not hasattr(net.act, "forward") or "forward" not in vars(net.act)  # the export patch is undone


def test_fractional_float_zero_point_is_refused():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("zp", torch.tensor([0.5, 0.0, 0.0]))

        def forward(self, x):
            return torch.fake_quantize_per_channel_affine(x, torch.ones(3), self.zp, 1, 0, 7)

    with pytest.raises(SliverError, match="float zero points is supported only when they are all zero"):
        sliver.trace(M(), (torch.randn(2, 3),))
