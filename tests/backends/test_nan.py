"""IEEE semantics of compiled max/min: NaN propagates, +Inf and -Inf come out as in torch.

TVM's max/min select the other operand when one is NaN (relu(NaN) = 0, a max pool
skips a NaN), and its max pool pads with the largest finite float (a window of -Inf
gave -3.4e38).  sliver legalizes every op that lowers to max/min with NaN-keeping
selects (backends/tvm/schedules/elementwise.py and pool.py).  Each op is checked on
an input holding NaN, +Inf and -Inf (a corner block of -Inf, so a padded pooling
window sees only -Inf), compiled for x86 and for the emulated Pi, against torch and
against sliver's interpreter.
"""

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from helpers import dedent

from sliver.ir.parser import parse_module

#: op name → f(x) in torch; every one lowers to a max or a min
OPS = {
    "relu": torch.relu,
    "relu6": F.relu6,
    "hardtanh": F.hardtanh,
    "clamp_min": lambda x: x.clamp(min=0.1),
    "clamp_max": lambda x: x.clamp(max=0.2),
    "clamp": lambda x: x.clamp(-0.5, 0.5),
    "hardsigmoid": F.hardsigmoid,
    "hardswish": F.hardswish,
    "max_pool2d": lambda x: F.max_pool2d(x, 3, 2, 1),
    "max_pool2d_ceil": lambda x: F.max_pool2d(x, 2, 2, 0, ceil_mode=True),
    "max_pool2d_dilated": lambda x: F.max_pool2d(x, 2, 1, 1, dilation=2),
    "maximum": lambda x: torch.maximum(x, x.transpose(2, 3)),
    "minimum": lambda x: torch.minimum(x, x.transpose(2, 3) * 0.5),
    "softmax": lambda x: torch.softmax(x, -1),
}


class Conv(nn.Module):
    """relu and relu6 fused into a convolution's epilogue."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x):
        y = self.conv(x)
        return torch.relu(y), F.relu6(y)


class AllOps(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = Conv()

    def forward(self, x):
        return tuple(f(x) for f in OPS.values()) + self.conv(x)


NAMES = list(OPS) + ["conv_relu", "conv_relu6"]


def special_input() -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 8, 6, 6, generator=g)
    x[0, 0, 0, 0] = float("nan")
    x[0, 1, 2, 3] = float("inf")
    x[0, 2, 1, 1] = float("-inf")
    x[0, 3, :3, :3] = float("-inf")  # a padded pooling window of -inf only
    x[0, 4, 4, 4] = float("nan")
    x[0, 5, 3, :] = float("nan")  # a whole softmax row
    x[0, 6, 5, 5] = float("inf")
    x[0, 6, 0, 5] = float("-inf")
    return x


def assert_same(got, want, what):
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, what
    assert np.array_equal(np.isnan(got), np.isnan(want)), f"{what}: NaN at {np.argwhere(np.isnan(got) != np.isnan(want))[:5]}"
    for inf in (np.inf, -np.inf):
        assert np.array_equal(got == inf, want == inf), f"{what}: {inf} at {np.argwhere((got == inf) != (want == inf))[:5]}"
    finite = np.isfinite(want)
    np.testing.assert_allclose(got[finite], want[finite], rtol=1e-5, atol=1e-5, err_msg=what)


def _check(outputs, reference):
    assert len(outputs) == len(reference) == len(NAMES)
    wrong = []
    for name, got, want in zip(NAMES, outputs, reference):
        try:
            assert_same(got, want, name)
        except AssertionError as e:
            wrong.append(str(e).splitlines()[0])
    assert not wrong, "ops that lose NaN or Inf:\n" + "\n".join(wrong)


def test_the_special_input_exercises_every_op():
    """The reference outputs do hold NaN, +Inf and -Inf where the ops must keep them."""
    x = special_input()
    with torch.no_grad():
        ref = dict(zip(NAMES, (o.numpy() for o in AllOps().eval()(x))))
    for name in ("relu", "clamp", "hardtanh", "max_pool2d", "maximum", "minimum", "conv_relu", "softmax"):
        assert np.isnan(ref[name]).any(), name
    assert (ref["relu"] == np.inf).any() and (ref["max_pool2d"] == -np.inf).any()


@pytest.fixture(scope="module")
def model_and_input():
    x = special_input()
    model = AllOps().eval()
    with torch.no_grad():
        ref = [o.numpy() for o in model(x)]
    return model, x, ref


def test_the_interpreter_propagates_like_torch(model_and_input):
    from sliver.api import trace
    from sliver.ir.interp import run

    model, x, ref = model_and_input
    _check(run(trace(model, (x,)), [x.numpy()]), ref)


@pytest.mark.slow
def test_compiled_x86_propagates_nan_and_inf(model_and_input):
    import sliver

    model, x, ref = model_and_input
    art = sliver.lower(model, (x,), target="x86_64", tune=False)
    _check(art.load().run(x.numpy()), ref)


AMAX = dedent("""
    func @m(%x: f32[1,8,6,6]) {
      %a = amax(%x) {axes=[2, 3]} : f32[1,8]
      %b = amax(%x) {axes=[1], keepdim=true} : f32[1,1,6,6]
      return %a, %b
    }
""")


@pytest.mark.slow
def test_compiled_amax_propagates_nan_and_inf():
    import sliver
    from sliver.ir.interp import run

    x = special_input()
    want = [x.amax((2, 3)).numpy(), x.amax(1, keepdim=True).numpy()]
    module = parse_module(AMAX)
    for got, w, what in zip(run(module, [x.numpy()]), want, ("amax hw", "amax c")):
        assert_same(got, w, f"interpreter {what}")
    art = sliver.lower(module, (x,), target="x86_64", tune=False)
    for got, w, what in zip(art.load().run(x.numpy()), want, ("amax hw", "amax c")):
        assert_same(got, w, f"compiled {what}")


@pytest.mark.slow
@pytest.mark.emulated
def test_compiled_arm64_propagates_nan_and_inf_on_the_emulated_pi(model_and_input, tmp_path):
    import sliver
    from sliver.tools.emulator import emulate

    model, x, ref = model_and_input
    art = sliver.lower(model, (x,), target="arm64", tune=False)
    path = art.save(tmp_path / "nan.sliver")
    np.savez(tmp_path / "in.npz", x.numpy())
    proc = emulate.run_module(["run", str(path), "--inputs", str(tmp_path / "in.npz"), "--output",
                               str(tmp_path / "out.npz")])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    with np.load(tmp_path / "out.npz") as z:
        outputs = [z[k] for k in z.files]
    _check(outputs, ref)


FAKE_QUANT = dedent("""
    func @m(%x: f32[1,8,6,6]) {
      %s = param : f32[]
      %zp = param : i32[]
      %sc = param : f32[8]
      %zc = param : i32[8]
      %a = fake_quant(%x, %s, %zp) {qmin=-128, qmax=127} : f32[1,8,6,6]
      %b = fake_quant(%x, %sc, %zc) {qmin=0, qmax=255, axis=1} : f32[1,8,6,6]
      return %a, %b
    }
""")


@pytest.mark.slow
def test_compiled_fake_quant_maps_nan_and_inf_like_torch():
    """Not a max/min: torch's fake quantization turns NaN into qmin and ±Inf into the
    bounds, and the compiled float simulation must agree (its clip keeps NaN now)."""
    import sliver
    from sliver.ir.interp import run

    x = special_input()
    module = parse_module(FAKE_QUANT)
    module.params.update(s=np.array(0.05, np.float32), zp=np.array(3, np.int32),
                         sc=np.linspace(0.01, 0.08, 8).astype(np.float32), zc=np.arange(8, dtype=np.int32) * 10)
    want = [torch.fake_quantize_per_tensor_affine(x, 0.05, 3, -128, 127).numpy(),
            torch.fake_quantize_per_channel_affine(x, torch.from_numpy(module.params["sc"]),
                                                   torch.from_numpy(module.params["zc"]), 1, 0, 255).numpy()]
    assert not np.isnan(want[0]).any()
    for got, w, what in zip(run(module, [x.numpy()]), want, ("per tensor", "per channel")):
        assert_same(got, w, f"interpreter {what}")
    art = sliver.lower(module, (x,), target="x86_64", tune=False)
    for got, w, what in zip(art.load().run(x.numpy()), want, ("per tensor", "per channel")):
        assert_same(got, w, f"compiled {what}")
