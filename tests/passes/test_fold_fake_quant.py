"""fold-fake-quant: QAT conv2d/linear layers → qconv2d/qdense on integer codes."""

import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import sliver
from helpers import dedent
from sliver.common.errors import SliverError
from sliver.ir.interp import run
from sliver.ir.parser import parse_module
from sliver.passes.fold_fake_quant import code_dtype
from sliver.passes.manager import PassManager


def fold(module, pipeline="fold-fake-quant"):
    (record, *_) = PassManager(pipeline).run(module)
    return record


# -- golden text ------------------------------------------------------------------------------

BEFORE = dedent("""
    func @net(%x: f32[1,2,6,6]) {
      %as = param : f32[]
      %az = param : i32[]
      %xq = fake_quant(%x, %as, %az) {qmin=0, qmax=15} : f32[1,2,6,6]
      %c.weight = param : f32[4,2,3,3]
      %ws = param : f32[4]
      %wz = param : i32[4]
      %wq = fake_quant(%c.weight, %ws, %wz) {qmin=-2, qmax=1, axis=0} : f32[4,2,3,3]
      %c.bias = param : f32[4]
      %conv = conv2d(%xq, %wq, %c.bias) {stride=[2, 2], padding=[1, 1, 1, 1]} : f32[1,4,3,3]
      %mean = param : f32[4]
      %var = param : f32[4]
      %bn = batch_norm(%conv, %mean, %var) : f32[1,4,3,3]
      %relu = relu(%bn) : f32[1,4,3,3]
      %flat = reshape(%relu) {shape=[1, 36]} : f32[1,36]
      %s2 = param : f32[]
      %z2 = param : i32[]
      %fq2 = fake_quant(%flat, %s2, %z2) {qmin=0, qmax=3} : f32[1,36]
      %fc.weight = param : f32[5,36]
      %s3 = param : f32[]
      %z3 = param : i32[]
      %wq2 = fake_quant(%fc.weight, %s3, %z3) {qmin=-1, qmax=0} : f32[5,36]
      %fc = linear(%fq2, %wq2) : f32[1,5]
      return %fc
    }
""")

AFTER = dedent("""
    func @net(%x: f32[1,2,6,6]) {
      %c.input_q = quantize(%x) {scale=0.25, zero_point=3, dtype="u4"} : u4[1,2,6,6]
      %c.qweight = param : i2[4,2,3,3]
      %c.qscale = param : f32[4]
      %c.qbias = param : f32[4]
      %c = qconv2d(%c.input_q, %c.qweight, %c.qscale, %c.qbias) {stride=[2, 2], padding=[1, 1, 1, 1], x_zero_point=3, clamp_min=0.0, out_dtype="u2", out_scale=0.5} : u2[1,4,3,3]
      %flat = reshape(%c) {shape=[1, 36]} : u2[1,36]
      %fc.qweight = param : u1[5,36]
      %fc.qscale = param : f32[5]
      %fc = qdense(%flat, %fc.qweight, %fc.qscale) {w_zero_point=1} : f32[1,5]
      return %fc
    }
""")


def golden_params(rng):
    return {
        "as": np.float32(0.25).reshape(()), "az": np.int32(3).reshape(()),
        "c.weight": rng.standard_normal((4, 2, 3, 3)).astype(np.float32),
        "ws": np.array([0.5, 0.25, 1.0, 0.75], np.float32), "wz": np.zeros(4, np.int32),
        "c.bias": rng.standard_normal(4).astype(np.float32),
        "mean": rng.standard_normal(4).astype(np.float32), "var": (rng.random(4) + 0.5).astype(np.float32),
        "s2": np.float32(0.5).reshape(()), "z2": np.int32(0).reshape(()),
        "fc.weight": rng.standard_normal((5, 36)).astype(np.float32),
        "s3": np.float32(0.125).reshape(()), "z3": np.int32(0).reshape(()),
    }


def test_golden_conv_bn_relu_flatten_linear(rng):
    params = golden_params(rng)
    module = parse_module(BEFORE, params=dict(params))
    x = rng.standard_normal((1, 2, 6, 6)).astype(np.float32) * 2
    (want,) = run(module, [x])
    record = fold(module)
    text = str(module)
    assert text == AFTER
    # codes and epilogue
    w = params["c.weight"]
    codes = np.clip(np.round(w / params["ws"].reshape(-1, 1, 1, 1)), -2, 1)
    assert np.array_equal(module.params["c.qweight"], codes.astype(np.int8))
    gain = 1 / np.sqrt(params["var"].astype(np.float64) + 1e-5)
    np.testing.assert_allclose(module.params["c.qscale"], 0.25 * params["ws"] * gain, rtol=1e-6)
    np.testing.assert_allclose(module.params["c.qbias"], (params["c.bias"] - params["mean"]) * gain, rtol=1e-5)
    # [-1, 0] weights (torch's signed 1-bit range) are u1 codes with the zero point shifted by one
    assert set(np.unique(module.params["fc.qweight"])) <= {0, 1}
    (got,) = run(module, [x])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
    rows = record.notes["layers"]
    assert [(r["layer"], r["op"], r["w_bits"], r["a_bits"], r["epilogue"], r["out"]) for r in rows] == [
        ("c", "qconv2d", 2, 4, ["batch_norm", "relu"], "u2"), ("fc", "qdense", 1, 2, [], "f32")]
    assert "c      qconv2d  W2A4  u4/i2      batch_norm+relu  u2" in record.notes["text"]


@pytest.mark.parametrize("qmin,qmax,dtype,offset", [
    (0, 1, "u1", 0), (-1, 0, "u1", 1), (-2, 1, "i2", 0), (0, 3, "u2", 0), (-1, 1, "i2", 0), (-7, 7, "i4", 0),
    (0, 255, "u8", 0), (-128, 127, "i8", 0), (3, 10, "u3", -3), (-128, 0, "i8", 0), (-200, 50, "u8", 200),
])
def test_code_types_of_fake_quant_ranges(qmin, qmax, dtype, offset):
    assert code_dtype(qmin, qmax, "x") == (dtype, offset)


# -- numerics against the fake-quant torch model ------------------------------------------------


class FQ(nn.Module):
    """A conv/linear with torch fake-quant ops: input per tensor (scale, zp, range),
    weight per channel (or per tensor) symmetric-ish with its own range."""

    def __init__(self, layer, a, w, a_scale=0.1, a_zp=0, w_zp=0, per_tensor_w=False):
        super().__init__()
        self.layer, self.a, self.w, self.a_scale, self.a_zp = layer, a, w, a_scale, a_zp
        flat = layer.weight.detach().abs().reshape(layer.weight.shape[0], -1).amax(1)
        top = max(abs(w[0]), abs(w[1]), 1)
        scale = (flat / top).clamp_min(1e-3)
        self.register_buffer("ws", scale.max().reshape(()) if per_tensor_w else scale)
        self.register_buffer("wz", torch.full(self.ws.shape, w_zp, dtype=torch.int32))

    def forward(self, x):
        x = torch.fake_quantize_per_tensor_affine(x, self.a_scale, self.a_zp, *self.a)
        if self.ws.dim() == 0:
            w = torch.fake_quantize_per_tensor_affine(self.layer.weight, self.ws, self.wz, *self.w)
        else:
            w = torch.fake_quantize_per_channel_affine(self.layer.weight, self.ws, self.wz, 0, *self.w)
        if isinstance(self.layer, nn.Conv2d):
            c = self.layer
            return F.conv2d(x, w, c.bias, c.stride, c.padding, c.dilation, c.groups)
        return F.linear(x, w, self.layer.bias)


def signed(b):
    return (-(2 ** (b - 1)), 2 ** (b - 1) - 1)


def unsigned(b):
    return (0, 2**b - 1)


CASES = {
    # name: (layer, activation range, weight range, activation zero point, input shape)
    "W1A1": (lambda: nn.Conv2d(4, 6, 3, padding=1), unsigned(1), (0, 1), 0, (2, 4, 7, 7)),
    "W1A1-signed-w": (lambda: nn.Conv2d(4, 6, 3, padding=1), unsigned(1), (-1, 0), 0, (2, 4, 7, 7)),
    "W2A2-pad-zp": (lambda: nn.Conv2d(3, 5, 3, padding=2, stride=2), unsigned(2), signed(2), 2, (1, 3, 9, 8)),
    "W3A3-dilated": (lambda: nn.Conv2d(5, 4, 3, padding=2, dilation=2), signed(3), signed(3), -1, (1, 5, 8, 8)),
    "W4A4-depthwise": (lambda: nn.Conv2d(8, 8, 3, padding=1, groups=8), unsigned(4), signed(4), 7, (2, 8, 6, 6)),
    "W8A8": (lambda: nn.Conv2d(6, 7, 1), unsigned(8), signed(8), 128, (1, 6, 5, 5)),
    # ranges narrower than their code type (i4 holds [-8, 7]): quantize clamps at -7 exactly
    "W4A4-narrow-symmetric": (lambda: nn.Conv2d(4, 6, 3, padding=1), (-7, 7), (-7, 7), 0, (1, 4, 6, 6)),
    "W2A8-linear": (lambda: nn.Linear(33, 9), signed(8), signed(2), 0, (3, 33)),
    "W4A2-linear-3d": (lambda: nn.Linear(10, 4), unsigned(2), signed(4), 1, (2, 3, 10)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_single_layer_matches_fake_quant_torch(case):
    make, a, w, azp, shape = CASES[case]
    torch.manual_seed(hash(case) % 1000)
    model = FQ(make(), a, w, a_scale=0.3, a_zp=azp).eval()
    x = torch.randn(shape) * 1.5 + 0.5
    module = sliver.trace(model, (x,))
    record = fold(module)
    assert record.notes["layers"][0]["folded"], record.notes["text"]
    assert not any(op.kind in ("conv2d", "linear", "fake_quant") for op in module.ops)
    with torch.no_grad():
        want = model(x).numpy()
    for dtype in (None, "f64"):
        (got,) = run(module, [x.numpy()], dtype=dtype)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


class Net(nn.Module):
    """Mixed widths, BN, per-channel affine, clamp, flatten, linear; requantize fused."""

    def __init__(self):
        super().__init__()
        self.c1 = FQ(nn.Conv2d(3, 8, 3, padding=1), signed(8), signed(4), a_scale=0.05)
        self.bn = nn.BatchNorm2d(8)
        self.c2 = FQ(nn.Conv2d(8, 8, 3, padding=1, stride=2), unsigned(2), signed(2), a_scale=0.4)
        self.c3 = FQ(nn.Conv2d(8, 8, 3, padding=1, groups=8), unsigned(3), signed(3), a_scale=0.3)
        self.register_buffer("gain", torch.rand(1, 8, 1, 1) * 2 - 0.5)  # some negative
        self.fc = FQ(nn.Linear(8 * 4 * 4, 10), unsigned(2), signed(2), a_scale=0.5)
        with torch.no_grad():
            self.bn.running_mean.uniform_(-0.5, 0.5)
            self.bn.running_var.uniform_(0.5, 2)

    def forward(self, x):
        y = F.relu(self.bn(self.c1(x)))
        y = F.relu(self.c2(y))
        y = (self.c3(y) * self.gain).clamp(0, 2.0)
        return self.fc(y.flatten(1))


def test_mixed_network_matches_fake_quant_torch():
    torch.manual_seed(3)
    model = Net().eval()
    x = torch.randn(16, 3, 8, 8)
    module = sliver.trace(model, (x,))
    record = fold(module, "fold-fake-quant,fold-batchnorm,const-fold,cse,dce")
    rows = record.notes["layers"]
    assert [(r["op"], r["w_bits"], r["a_bits"], r["out"]) for r in rows] == [
        ("qconv2d", 4, 8, "u2"), ("qconv2d", 2, 2, "u3"), ("qconv2d", 3, 3, "u2"), ("qdense", 2, 2, "f32")]
    assert rows[2]["epilogue"] == ["mul", "clamp"]
    kinds = [op.kind for op in module.ops if op.kind != "param"]
    assert kinds == ["quantize", "qconv2d", "qconv2d", "qconv2d", "reshape", "qdense"]
    with torch.no_grad():
        want = model(x).numpy()
    (got,) = run(module, [x.numpy()])
    # exact integer math vs torch's float conv: a requantization at a rounding tie may
    # flip by one step, so compare per sample and require nearly all to agree
    close = np.isclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max()).all(axis=1)
    assert close.mean() >= 0.9, close
    assert (got.argmax(1) == want.argmax(1)).mean() >= 0.9


# -- what stays in float, and why ---------------------------------------------------------------


def layer_text(act, weight_fq, extra=""):
    return dedent(f"""
        func @m(%x: f32[2,8]) {{
          %s = param : f32[]
          %z = param : i32[]
          %cs = param : f32[8]
          %cz = param : i32[8]
          %ws = param : f32[4]
          %wz = param : i32[4]
          %w = param : f32[4,8]
          {extra}
          %xq = {act} : f32[2,8]
          %wq = {weight_fq} : f32[4,8]
          %y = linear(%xq, %wq) : f32[2,4]
          return %y
        }}
    """).replace("\n  \n", "\n")


BAD = {
    "16-bit activations": (
        "fake_quant(%x, %s, %z) {qmin=0, qmax=65535}", "fake_quant(%w, %ws, %wz) {qmin=-2, qmax=1, axis=0}", "",
        "activation range [0, 65535] needs 16 bits; low-bit ops take 1 to 8"),
    "9-bit weights": (
        "fake_quant(%x, %s, %z) {qmin=0, qmax=3}", "fake_quant(%w, %ws, %wz) {qmin=-256, qmax=255, axis=0}", "",
        "weight range [-256, 255] needs 9 bits"),
    "per-channel activations": (
        "fake_quant(%x, %cs, %cz) {qmin=0, qmax=3, axis=1}", "fake_quant(%w, %ws, %wz) {qmin=-2, qmax=1, axis=0}", "",
        "per-channel activation quantization is not supported"),
    "weight along axis 1": (
        "fake_quant(%x, %s, %z) {qmin=0, qmax=3}", "fake_quant(%w, %cs, %cz) {qmin=-2, qmax=1, axis=1}", "",
        "quantized along axis 1; low-bit ops need axis 0"),
    "computed weight": (
        "fake_quant(%x, %s, %z) {qmin=0, qmax=3}", "fake_quant(%w2, %ws, %wz) {qmin=-2, qmax=1, axis=0}",
        "%w2 = mul(%w, %w) : f32[4,8]", "applied to a computed tensor, not a constant weight"),
    "dynamic activation scale": (
        "fake_quant(%x, %s2, %z) {qmin=0, qmax=3}", "fake_quant(%w, %ws, %wz) {qmin=-2, qmax=1, axis=0}",
        "%s2 = mul(%s, %s) : f32[]", "computed at run time (dynamic quantization)"),
    "weight zero points per channel": (
        "fake_quant(%x, %s, %z) {qmin=0, qmax=3}", "fake_quant(%w, %ws, %wz2) {qmin=-2, qmax=1, axis=0}",
        "%wz2 = param : i32[4]", "weight zero points differ per channel"),
    "float weight": ("fake_quant(%x, %s, %z) {qmin=0, qmax=3}", "relu(%w)", "",
                     "the input is fake-quantized but the weight is not"),
    "zero point out of range": (
        "fake_quant(%x, %s, %z5) {qmin=0, qmax=3}", "fake_quant(%w, %ws, %wz) {qmin=-2, qmax=1, axis=0}",
        "%z5 = constant {value=5, dtype=\"i32\"} : i32[]", "the input zero point 5 lies outside its range [0, 3]"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_unfoldable_layers_stay_float_with_the_reason(case, rng):
    act, wfq, extra, reason = BAD[case]
    params = {"s": np.float32(0.5).reshape(()), "z": np.int32(0).reshape(()),
              "cs": np.full(8, 0.5, np.float32), "cz": np.zeros(8, np.int32), "ws": np.full(4, 0.25, np.float32),
              "wz": np.zeros(4, np.int32), "w": rng.standard_normal((4, 8)).astype(np.float32),
              "wz2": np.array([0, 1, 0, 0], np.int32)}
    text = layer_text(act, wfq, extra)
    module = parse_module(text, params={k: v for k, v in params.items() if f"%{k} = param" in text})
    before = str(module)
    x = rng.standard_normal((2, 8)).astype(np.float32)
    (want,) = run(module, [x])
    record = fold(module)
    assert str(module) == before and not record.changed
    (row,) = record.notes["layers"]
    assert not row["folded"] and reason in row["reason"]
    assert reason in record.notes["text"]
    (got,) = run(module, [x])
    assert np.array_equal(got, want)
    with pytest.raises(SliverError, match=r"layer \w+ \(linear\) cannot be folded: .*" + re.escape(reason)):
        PassManager("fold-fake-quant{strict=true}").run(parse_module(text, params=module.params))


def test_plain_float_model_is_untouched(example):
    model, inputs = example
    module = sliver.trace(model, inputs)
    before = str(module)
    record = fold(module)
    assert str(module) == before and not record.changed
    assert all(r["reason"] == "not quantized" for r in record.notes["layers"])


def test_cli_lists_the_pass_and_prints_the_report(tmp_path, capsys):
    from sliver.tools.cli import main

    assert main(["passes"]) == 0
    assert "fold-fake-quant" in capsys.readouterr().out
    src = tmp_path / "qnet.py"
    src.write_text(dedent("""
        import sys
        sys.path[:0] = [%r, %r]
        import torch
        from test_fold_fake_quant import Net

        def model():
            torch.manual_seed(0)
            return Net().eval(), (torch.randn(1, 3, 8, 8),)
    """ % (str(Path(__file__).parent), str(Path(__file__).parent.parent))))
    assert main(["opt", f"{src}:model", "-o", str(tmp_path / "q.sir")]) == 0
    err = capsys.readouterr().err
    assert "fold-fake-quant: 4 of 4 conv2d/linear layers folded" in err
    assert "qconv2d  W2A2  u2/i2" in err
    assert "qconv2d(" in (tmp_path / "q.sir").read_text()


class PoolNet(nn.Module):
    """conv → relu → max pool (padded) → a 12-bit layer (stays float) → flatten → linear."""

    def __init__(self):
        super().__init__()
        self.c1 = FQ(nn.Conv2d(3, 8, 3, padding=1), unsigned(8), signed(3), a_scale=0.01)
        self.c2 = FQ(nn.Conv2d(8, 8, 3, padding=1), unsigned(3), signed(12), a_scale=0.2)
        self.c3 = FQ(nn.Conv2d(8, 8, 1), unsigned(3), signed(3), a_scale=0.2)
        self.fc = FQ(nn.Linear(8 * 2 * 2, 5), unsigned(2), signed(2), a_scale=0.3)

    def forward(self, x):
        y = F.max_pool2d(F.relu(self.c1(x)), 3, 2, padding=1)
        y = F.max_pool2d(F.relu(self.c3(F.relu(self.c2(y)))), 2)
        return self.fc(y.flatten(1))


def pool_net():
    torch.manual_seed(5)
    return PoolNet().eval(), torch.rand(4, 3, 8, 8)


def test_requantize_moves_through_max_pool_and_flatten():
    model, x = pool_net()
    module = sliver.trace(model, (x,))
    record = fold(module)
    rows = record.notes["layers"]
    assert [(r["layer"], r["folded"], r.get("out")) for r in rows] == [
        ("c1.layer", True, "f32"), ("c2.layer", False, None), ("c3.layer", True, "u2"), ("fc.layer", True, "f32")]
    assert "weight range [-2048, 2047] needs 12 bits" in rows[1]["reason"]
    kinds = [op.kind for op in module.ops if op.kind not in ("param", "fake_quant")]
    assert kinds == ["quantize", "qconv2d", "max_pool2d", "conv2d", "relu", "quantize", "qconv2d", "max_pool2d",
                     "reshape", "qdense"]
    with torch.no_grad():
        want = model(x).numpy()
    (got,) = run(module, [x.numpy()])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


class AllCases(nn.Module):
    """Every single-layer case of CASES side by side (one input and output each), and
    PoolNet (max pools on codes, a layer left in float): one compile for all."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(7)
        self.names = sorted(CASES) + ["PoolNet"]
        self.layers = nn.ModuleList(
            [FQ(CASES[n][0](), CASES[n][1], CASES[n][2], a_scale=0.3, a_zp=CASES[n][3]) for n in self.names[:-1]]
            + [pool_net()[0]])

    def forward(self, *xs):
        return tuple(layer(x) for layer, x in zip(self.layers, xs))


def _all_cases():
    model = AllCases().eval()
    g = torch.Generator().manual_seed(8)
    return model, tuple(torch.randn(CASES[n][4], generator=g) * 1.5 + 0.5 for n in model.names[:-1]) + (pool_net()[1],)


@pytest.fixture(scope="module")
def all_cases():
    model, xs = _all_cases()
    with torch.no_grad():
        want = [y.numpy() for y in model(*xs)]
    return model, xs, want


def lowered_all_cases(target):
    """AllCases lowered for ``target`` (a tests/precompile.py job): the saved artifact's path."""
    import precompile

    model, xs = _all_cases()
    return sliver.lower(model, xs, target=target, rtol=1e-5, atol=1e-5).save(precompile.out(f"cases-{target}.sliver"))


@pytest.mark.slow
@pytest.mark.precompiled.with_args(lambda params: [("call", "test_fold_fake_quant", "lowered_all_cases", "x86_64")])
def test_all_cases_compiled_for_x86_match_fake_quant_torch(all_cases):
    """The default pipeline end to end on x86_64: folded layers use the low-bit lowering;
    PoolNet's layer left in float keeps its input fake_quant (lowered as float simulation)."""
    import precompile
    from sliver.runtime.artifact import read

    model, xs, want = all_cases
    art = read(precompile.get(("call", "test_fold_fake_quant", "lowered_all_cases", "x86_64")))  # compiled ahead
    rows = art.manifest.passes[0].notes["layers"]  # the fold-fake-quant record, as saved
    assert [r["layer"] for r in rows if not r["folded"]] == [f"layers.{len(CASES)}.c2.layer"]
    # its input; its weight was const-folded
    assert sum(op.kind == "fake_quant" for op in art.manifest.ops) == 1
    got = art.load()(*[x.numpy() for x in xs])
    for name, g_, w_ in zip(model.names, got, want):
        np.testing.assert_allclose(g_, w_, rtol=1e-5, atol=1e-5 * np.abs(w_).max(), err_msg=name)


@pytest.mark.slow
@pytest.mark.emulated
@pytest.mark.precompiled.with_args(lambda params: [("call", "test_fold_fake_quant", "lowered_all_cases", "arm64")])
def test_all_cases_arm64_artifact_matches_fake_quant_torch_on_emulated_pi(capsys):
    """The arm64 artifact's golden outputs are the torch model's; --verify checks them on
    the emulated Pi at 1e-5 (relative to each output's magnitude)."""
    import precompile
    from sliver.tools.cli import main

    path = precompile.get(("call", "test_fold_fake_quant", "lowered_all_cases", "arm64"))  # compiled ahead
    assert main(["run", str(path), "--verify", "--emulate"]) == 0
    assert "verify: passed (arm64 artifact on aarch64)" in capsys.readouterr().out


def qat_zoo_model(name, bits):
    """A spine CNN prepared with sliver.qat; one training-mode batch initialises the
    scales (batch norms kept in eval mode, so their statistics stay calibrated)."""
    import sliver.qat
    import zoo

    model, _ = zoo.resnet18(width=8, resolution=32) if name == "resnet18" else zoo.mobilenet_v2(
        width_mult=0.25, resolution=32)
    q = sliver.qat.prepare(model, *bits)
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(9))
    q.train()
    for m in q.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eval()
    with torch.no_grad():
        q(x)
    return q.eval(), x


def lowered_spine(name, bits):
    """qat_zoo_model(name, bits) lowered for x86_64 (a tests/precompile.py job): the path."""
    import precompile

    model, x = qat_zoo_model(name, tuple(bits))
    return sliver.lower(model, (x,), target="x86_64").save(precompile.out(f"spine-{name}.sliver"))


@pytest.mark.slow
@pytest.mark.precompiled.with_args(lambda params: [("call", "test_fold_fake_quant", "lowered_spine", params["name"],
                                                    params["bits"])] if params["compiled"] else [])
@pytest.mark.parametrize("name,bits,compiled", [("resnet18", (2, 2), True), ("mobilenet_v2", (4, 4), False)])
def test_spine_cnns_fold_completely_and_match_fake_quant_torch(name, bits, compiled):
    from sliver.api import DEFAULT_PIPELINE

    model, x = qat_zoo_model(name, bits)
    module = sliver.trace(model, (x,))
    record = fold(module, DEFAULT_PIPELINE)
    rows = record.notes["layers"]
    assert rows and all(r["folded"] for r in rows), record.notes["text"]
    assert not {op.kind for op in module.ops} & {"conv2d", "linear", "fake_quant", "batch_norm"}
    with torch.no_grad():
        want = model(x).numpy()
    outs = [run(module, [x.numpy()])[0]]
    if compiled:  # sliver.lower(model, (x,), target="x86_64"), compiled ahead
        import precompile

        outs.append(sliver.load(precompile.get(("call", "test_fold_fake_quant", "lowered_spine", name, bits)))(
            x.numpy()))
    for got in outs:
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_torch_ao_eager_qat_model_folds_and_matches():
    """torch.ao.quantization.prepare_qat (QuantStub, output fake-quant before the ReLU):
    relu(fake_quant) is narrowed into the next layer's input quantizer, both convs fold."""
    import warnings

    import torch.ao.quantization as Q

    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.q, self.dq = Q.QuantStub(), Q.DeQuantStub()
            self.c, self.relu, self.c2 = nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 3)

        def forward(self, x):
            return self.dq(self.c2(self.relu(self.c(self.q(x)))))

    torch.manual_seed(4)
    m = M().train()
    m.qconfig = Q.get_default_qat_qconfig("x86")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        Q.prepare_qat(m, inplace=True)
    for _ in range(3):
        m(torch.randn(4, 3, 8, 8))
    m.eval().apply(Q.disable_observer)  # the traced qparams are the current ones; torch must not re-observe
    x = torch.randn(2, 3, 8, 8)
    module = sliver.trace(m, (x,))
    record = fold(module)
    rows = record.notes["layers"]
    assert [(r["layer"], r["folded"], r["w_bits"]) for r in rows] == [("c", True, 8), ("c2", True, 8)]
    # 7-bit input (reduce_range); after the ReLU only the codes from the zero point up remain
    assert rows[0]["a_bits"] == 7 and rows[1]["a_bits"] <= 7
    assert rows[0]["out"].startswith("u") and not any(op.kind == "relu" for op in module.ops)
    with torch.no_grad():
        want = m(x).numpy()
    (got,) = run(module, [x.numpy()])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
