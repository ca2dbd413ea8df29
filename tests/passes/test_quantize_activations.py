"""quantize-activations: per-tensor RTN of linear inputs with fake_quant, calibrated
or dynamic, with super activations kept in float."""

import numpy as np
import pytest
import torch
from torch import nn

import sliver
from helpers import MLPBlock, dedent, run_pass
from sliver.api import optimize, trace
from sliver.common.errors import SliverError
from sliver.ir.interp import run
from sliver.ir.parser import parse_module
from sliver.passes.manager import PassManager, make_pass
from sliver.passes.outliers import find_outliers

TEXT = dedent("""
    func @m(%x: f32[2,16]) {
      %fc.weight = param : f32[8,16]
      %fc = linear(%x, %fc.weight) : f32[2,8]
      return %fc
    }
""")

CALIBRATED = dedent("""
    func @m(%x: f32[2,16]) {
      %fc.weight = param : f32[8,16]
      %x.act_zero_point = param : i32[]
      %x.act_scale = param : f32[]
      %x.fq = fake_quant(%x, %x.act_scale, %x.act_zero_point) {qmin=-32, qmax=31} : f32[2,16]
      %fc = linear(%x.fq, %fc.weight) : f32[2,8]
      return %fc
    }
""")

DYNAMIC_KEEP = dedent("""
    func @m(%x: f32[2,16]) {
      %fc.weight = param : f32[8,16]
      %x.act_keep = param : f32[16]
      %x.act_quant = param : f32[16]
      %x.act_zero_point = param : i32[]
      %x.abs = abs(%x) : f32[2,16]
      %x.abs_quantized = mul(%x.abs, %x.act_quant) : f32[2,16]
      %x.absmax = amax(%x.abs_quantized) {axes=[0, 1]} : f32[]
      %x.act_floor = param : f32[]
      %x.absmax_floored = maximum(%x.absmax, %x.act_floor) : f32[]
      %x.act_qmax = param : f32[]
      %x.scale = div(%x.absmax_floored, %x.act_qmax) : f32[]
      %x.fq = fake_quant(%x, %x.scale, %x.act_zero_point) {qmin=-128, qmax=127} : f32[2,16]
      %x.fq_rest = mul(%x.fq, %x.act_quant) : f32[2,16]
      %x.kept = mul(%x, %x.act_keep) : f32[2,16]
      %x.fq_kept = add(%x.fq_rest, %x.kept) : f32[2,16]
      %fc = linear(%x.fq_kept, %fc.weight) : f32[2,8]
      return %fc
    }
""")

REPORT = {"super_activations": [{"value": "x", "consumers": ["fc.weight"], "channel": 3}]}


def test_golden_text_calibrated():
    assert run_pass(TEXT, "quantize-activations{bits=6}") == CALIBRATED


def test_golden_text_dynamic_with_a_kept_super_activation():
    module = parse_module(TEXT)
    PassManager([make_pass("quantize-activations", mode="dynamic", keep_super=True,
                           super_activations=REPORT)]).run(module)
    assert str(module) == DYNAMIC_KEEP
    assert module.params["x.act_keep"].tolist() == [0, 0, 0, 1] + [0] * 12


@pytest.fixture(scope="module")
def block():
    """The block with hidden channel 40 made to spike on token 0 (only)."""
    torch.manual_seed(0)
    model = MLPBlock().eval()
    x = torch.randn(1, 8, 16)
    x[0, 0, 0] = 4.0  # token 0 is the odd one out (like a BOS token)
    with torch.no_grad():
        model.up.weight[40] = 0
        model.up.weight[40, 0] = 40.0
        model.up.bias[40] = -30.0  # only token 0 lights channel 40 up
    return model, x


def _linear_inputs(model, x):
    """The float inputs of up and down, from torch."""
    seen = []
    hooks = [layer.register_forward_pre_hook(lambda mod, args: seen.append(args[0].clone()))
             for layer in (model.up, model.down)]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return seen


def _rtn(x, scale, bits):
    q = (1 << (bits - 1))
    return torch.fake_quantize_per_tensor_affine(x, float(scale), 0, -q, q - 1)


@pytest.mark.parametrize("mode", ["calibrated", "dynamic"])
def test_numerics_match_torch_fake_quant(block, mode):
    """Per-tensor symmetric RTN of each linear input, written with torch's fake-quant
    and forward hooks, against the interpreter on the rewritten module."""
    model, x = block
    bits = 6
    calib = torch.randn(1, 8, 16)
    module = trace(model, (x,))
    (record,) = optimize(module, [make_pass("quantize-activations", bits=bits, mode=mode, inputs=(calib.numpy(),))])
    source = calib if mode == "calibrated" else x
    scales = [float(np.float32(t.abs().max().item() / (2 ** (bits - 1) - 1))) for t in _linear_inputs(model, source)]
    if mode == "calibrated":
        assert [s["scale"] for s in record.notes["sites"]] == pytest.approx(scales, rel=1e-6)
    hooks = [layer.register_forward_pre_hook(lambda mod, args, s=s: (_rtn(args[0], s, bits),))
             for layer, s in zip((model.up, model.down), scales)]
    try:
        with torch.no_grad():
            want = model(x).numpy()
    finally:
        for h in hooks:
            h.remove()
    got = run(module, [x.numpy()])[0]
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()


@pytest.mark.parametrize("mode", ["calibrated", "dynamic"])
def test_kept_super_activations_come_back_exactly_and_help(block, mode):
    model, x = block
    module = trace(model, (x,))
    report = find_outliers(module)
    assert {a["channel"] for a in report["super_activations"] if a["consumers"] == ["down.weight"]} == {40}
    want = run(module, [x.numpy()])[0]
    errors = {}
    for keep in (False, True):
        m = module.clone()
        (record,) = optimize(m, [make_pass("quantize-activations", bits=6, mode=mode, keep_super=keep,
                                           inputs=(x.numpy(),))])
        sites = {s["value"]: s for s in record.notes["sites"]}
        assert sites["gelu"]["kept_channels"] == ([40] if keep else [])
        errors[keep] = np.abs(run(m, [x.numpy()])[0] - want).max()
        if keep:
            seen = {}
            run(m, [x.numpy()], observe=lambda op, res: seen.update({r.name: t.numpy() for r, t in zip(op.results, res)}))
            assert np.array_equal(seen["gelu.fq_kept"][..., 40], seen["gelu"][..., 40])  # bit for bit
            rest = np.delete(seen["gelu.fq_kept"], 40, -1)
            assert not np.array_equal(rest, np.delete(seen["gelu"], 40, -1))  # the rest is quantized
    assert errors[True] < errors[False] / 3


def test_x86_matches_the_interpreter(block, tmp_path):
    model, x = block
    module = trace(model, (x,))
    optimize(module, [make_pass("quantize-activations", bits=8, mode="dynamic", keep_super=True)])
    path = sliver.lower(module, (x.numpy(),), target="x86_64").save(tmp_path / "m.sliver")
    want = run(module, [x.numpy()])[0]
    got = sliver.load(path).run(x.numpy())[0]
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()


def test_asymmetric_calibrated_uses_a_zero_point():
    module = parse_module(TEXT, params={"fc.weight": np.ones((8, 16), np.float32)})
    x = np.abs(np.random.default_rng(0).standard_normal((2, 16))).astype(np.float32) + 1.0  # all positive
    (record,) = PassManager([make_pass("quantize-activations", bits=4, symmetric=False, inputs=(x,))]).run(module)
    (site,) = record.notes["sites"]
    assert site["zero_point"] == 0 and site["range"][0] == 0.0  # the range includes 0
    assert site["scale"] == pytest.approx(x.max() / 15, rel=1e-6)
    y = run(module, [x])[0]
    assert np.abs(y - x.sum(1, keepdims=True)).max() <= 16 * site["scale"] / 2 + 1e-5


@pytest.mark.parametrize("bits", [1, 9])
def test_bits_outside_2_to_8_are_clear_errors(bits):
    with pytest.raises(SliverError, match=r"bits must be an integer in 2\.\.8"):
        run_pass(TEXT, f"quantize-activations{{bits={bits}}}")


def test_bad_options_and_models_are_clear_errors():
    with pytest.raises(SliverError, match="mode=dynamic is symmetric only"):
        run_pass(TEXT, "quantize-activations{mode=dynamic,symmetric=false}")
    with pytest.raises(SliverError, match="mode must be one of calibrated, dynamic"):
        run_pass(TEXT, "quantize-activations{mode=static}")
    module = trace(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()).eval(), (torch.randn(1, 3, 8, 8),))
    with pytest.raises(SliverError, match="has no linear layers"):
        optimize(module, "quantize-activations")
    with pytest.raises(SliverError, match="no such file"):
        run_pass(TEXT, "quantize-activations{keep_super=true,index=/nonexistent.json}")
    with pytest.raises(SliverError, match="run quantize-activations before quantize-weights"):
        run_pass(TEXT, "quantize-weights,quantize-activations{keep_super=true}")


def test_the_pass_is_listed(capsys):
    from sliver.tools.cli import main

    assert main(["passes"]) == 0
    assert "quantize-activations" in capsys.readouterr().out
