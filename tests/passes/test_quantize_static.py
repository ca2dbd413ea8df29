"""quantize-static: post-training int8 from calibration data (conv2d / linear →
qconv2d / qdense), its range choices, its report, its errors, and the compiled int8
artifacts against the interpreter's integer semantics (x86 here, the emulated Pi 4 and
Pi 5 in the emulated tests)."""

import numpy as np
import pytest
import torch
from torch import nn

import sliver
from helpers import dedent
from sliver.common.errors import SliverError
from sliver.ir.interp import run
from sliver.ir.parser import parse_module
from sliver.passes.manager import PassManager, make_pass
from sliver.passes.quantize_static import Observer, QuantizeError, choose_range, quant_params

TEXT = dedent("""
    func @m(%x: f32[2,4]) {
      %fc1.weight = param : f32[3,4]
      %fc1.bias = param : f32[3]
      %fc1 = linear(%x, %fc1.weight, %fc1.bias) : f32[2,3]
      %relu = relu(%fc1) : f32[2,3]
      %fc2.weight = param : f32[2,3]
      %fc2 = linear(%relu, %fc2.weight) : f32[2,2]
      return %fc2
    }
""")

# x in [-1, 1.55] (asymmetric u8: scale 2.55/255 = 0.01, zero point 100); relu(fc1) in
# [0, 2] (fc1 = [x0, x1 + 0.5, (x0+x1+x2+x3)/2]): scale 2/255, zero point 0, emitted by
# fc1 itself (requantize fusion); weights per channel: max |w| -> 127
QUANTIZED = dedent("""
    func @m(%x: f32[2,4]) {
      %fc1.input_q = quantize(%x) {scale=0.009999999776482582, zero_point=100, dtype="u8"} : u8[2,4]
      %fc1.qweight = param : i8[3,4]
      %fc1.qscale = param : f32[3]
      %fc1.qbias = param : f32[3]
      %fc1 = qdense(%fc1.input_q, %fc1.qweight, %fc1.qscale, %fc1.qbias) {x_zero_point=100, clamp_min=0.0, out_dtype="u8", out_scale=0.007843137718737125} : u8[2,3]
      %fc2.qweight = param : i8[2,3]
      %fc2.qscale = param : f32[2]
      %fc2 = qdense(%fc1, %fc2.qweight, %fc2.qscale) : f32[2,2]
      return %fc2
    }
""")

PARAMS = {
    "fc1.weight": np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0.5, 0.5, 0.5, 0.5]], np.float32),
    "fc1.bias": np.array([0, 0.5, 0], np.float32),
    "fc2.weight": np.array([[1, -1, 0.25], [0, 2, -2]], np.float32),
}
CALIBRATION = [np.array([[-1.0, 0.2, 0.1, 0.0], [1.55, 0.3, 0.2, 0.0]], np.float32),
               np.array([[0.5, 1.0, 0.1, 0.0], [1.0, 1.5, 1.0, 0.0]], np.float32)]


def _quantize(text=TEXT, params=PARAMS, calibration=CALIBRATION, **options):
    module = parse_module(text, params={k: v.copy() for k, v in params.items()})
    (record,) = PassManager([make_pass("quantize-static", calibration=calibration, **options)]).run(module)
    return module, record.notes


def test_golden_text():
    module, notes = _quantize()
    assert str(module) == QUANTIZED
    assert module.params["fc1.qweight"].tolist() == [[127, 0, 0, 0], [0, 127, 0, 0], [127, 127, 127, 127]]
    rows = {r["layer"]: r for r in notes["layers"]}
    assert rows["fc1"]["range"] == [-1.0, pytest.approx(1.55)] and rows["fc1"]["zero_point"] == 100
    assert rows["fc2"]["out"] == "f32" and rows["fc1"]["out"] == "u8"
    assert "2 of 2 layers int8" in notes["text"]


def test_symmetric_int8_activations_golden_text():
    module, _ = _quantize(activations="int8")
    text = str(module)
    # max |x| = 1.55 over 127 levels; relu(fc1) max 2 over 127
    scale = float(np.float32(float(np.float32(1.55)) / 127))
    assert f'quantize(%x) {{scale={scale!r}, dtype="i8"}}' in text
    assert f'out_dtype="i8", out_scale={float(np.float32(2 / 127))!r}' in text


def test_numeric_close_to_float_and_per_layer_error():
    module, notes = _quantize()
    float_module = parse_module(TEXT, params=PARAMS)
    for x in CALIBRATION:
        want = run(float_module, [x])[0]
        got = run(module, [x])[0]
        assert np.abs(got - want).max() <= 0.02 * np.abs(want).max()
    assert all(0 < r["error"] < 0.02 for r in notes["layers"])
    assert 0 < notes["model_error"] < 0.02


def test_range_choices():
    rng = np.random.default_rng(0)
    obs = Observer(100_000, rng)
    for _ in range(4):
        a = rng.standard_normal(50_000)
        obs.add(a)
    obs.add(np.array([40.0]))  # one outlier sets the min-max range
    lo, hi = choose_range(obs, "minmax", "uint8", 99.99)
    assert hi == 40.0
    plo, phi = choose_range(obs, "percentile", "uint8", 99.9)
    assert 2.5 < phi < 4.0 and -4.0 < plo < -2.5
    mlo, mhi = choose_range(obs, "mse", "uint8", 99.99)
    assert mhi < 40.0
    v = obs.values()

    def mse(lo, hi):
        s, z, qmin, qmax = quant_params(lo, hi, "uint8")
        return np.mean(((np.clip(np.rint(v / s) + z, qmin, qmax) - z) * s - v) ** 2)

    assert mse(mlo, mhi) < mse(lo, hi)
    # symmetric int8 codes: zero point 0, the larger magnitude sets the scale
    assert quant_params(-1.0, 0.5, "int8") == (pytest.approx(1 / 127), 0, -128, 127)
    # a range that does not hold 0 is widened to hold it (0 must be exact: padding)
    s, z, _, _ = quant_params(1.0, 2.0, "uint8")
    assert z == 0 and s == pytest.approx(2 / 255)


def test_observer_keeps_a_bounded_sample():
    obs = Observer(1000, np.random.default_rng(0))
    for _ in range(20):
        obs.add(np.arange(5000, dtype=np.float64))
    assert obs.values().size <= 2000 and obs.lo == 0 and obs.hi == 4999


RESIDUAL = dedent("""
    func @r(%x: f32[1,2,2,2]) {
      %c1.weight = param : f32[2,2,1,1]
      %c1 = conv2d(%x, %c1.weight) : f32[1,2,2,2]
      %r1 = relu(%c1) : f32[1,2,2,2]
      %c2.weight = param : f32[2,2,1,1]
      %c2 = conv2d(%r1, %c2.weight) : f32[1,2,2,2]
      %a = add(%c2, %r1) : f32[1,2,2,2]
      %y = relu(%a) : f32[1,2,2,2]
      return %y
    }
""")
RESIDUAL_PARAMS = {"c1.weight": np.array([[1, 0], [0.5, 1]], np.float32).reshape(2, 2, 1, 1),
                   "c2.weight": np.array([[1, -1], [0.25, 0.5]], np.float32).reshape(2, 2, 1, 1)}
RESIDUAL_CAL = [np.array([[[[0.0, 1.0], [2.0, -1.0]], [[1.0, 0.5], [0.0, 2.0]]]], np.float32)]


def test_residual_add_reads_codes_golden_text():
    """Both operands of the residual add become codes: c2's own output range (c2 in
    [-1.5, 1.0]: scale 2.5/255, zero point 153) and r1's codes, which c2 reads already;
    both layers emit bytes.  residual_codes=false keeps the add on f32 outputs."""
    module, notes = _quantize(RESIDUAL, RESIDUAL_PARAMS, RESIDUAL_CAL)
    text = str(module)
    assert 'out_dtype="u8", out_scale=0.009803921915590763, out_zero_point=153} : u8[1,2,2,2]' in text
    assert text.endswith(dedent("""
          %c2.dq = dequantize(%c2) {scale=0.009803921915590763, zero_point=153} : f32[1,2,2,2]
          %c1.dq = dequantize(%c1) {scale=0.007843137718737125} : f32[1,2,2,2]
          %a = add(%c2.dq, %c1.dq) : f32[1,2,2,2]
          %y = relu(%a) : f32[1,2,2,2]
          return %y
        }
    """))
    assert notes["residual_adds"] == 1 and {r["out"] for r in notes["layers"]} == {"u8"}
    assert "; 1 residual add(s) on codes\n" in notes["text"]
    got = run(module, RESIDUAL_CAL)[0]
    want = run(parse_module(RESIDUAL, params=RESIDUAL_PARAMS), RESIDUAL_CAL)[0]
    assert np.abs(got - want).max() <= 0.02 * np.abs(want).max()
    off, notes = _quantize(RESIDUAL, RESIDUAL_PARAMS, RESIDUAL_CAL, residual_codes=False)
    assert notes["residual_adds"] == 0 and "add(%c2, %c1)" in str(off) and "dequantize" not in str(off)


class Mixed(nn.Module):
    """Every case the int8 lowering must get exactly right: an odd channel count, a
    stride, padding of an input with a nonzero zero point (the residual add's output is
    signed), depthwise and grouped convs, a residual add, a concat, max pooling between
    quantized layers, a linear head; plus an attention-style matmul of two activations
    (kept in float)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 13, 3, stride=2, padding=1)
        self.bn = nn.BatchNorm2d(13)
        self.dw = nn.Conv2d(13, 13, 3, padding=1, groups=13)
        self.grouped = nn.Conv2d(13, 26, 3, padding=(1, 2), dilation=(1, 2), groups=13)
        self.pw = nn.Conv2d(26, 7, 1)
        self.side = nn.Conv2d(13, 5, 3, padding=1, stride=1)
        self.mix = nn.Conv2d(12, 9, 3, stride=(2, 1), padding=1)
        # wide layers for the int8 kernel's register tiles (blocks of 16 channels, tiles of
        # up to 4 blocks and 6 pixels): 70 channels (4 blocks + 6), two groups of 18
        self.wide = nn.Conv2d(9, 70, 3, padding=1)
        self.wide_groups = nn.Conv2d(70, 36, 1, groups=2)
        self.head = nn.Linear(36, 40)
        self.out = nn.Linear(40, 5)

    def forward(self, x):
        y = torch.relu(self.bn(self.stem(x)))
        y = self.dw(y) + y  # residual: signed, so the next conv pads with a nonzero zero point
        z = torch.cat([self.pw(torch.relu(self.grouped(y))), self.side(y)], dim=1)
        z = torch.relu(self.wide(torch.relu(self.mix(z))))
        z = torch.max_pool2d(self.wide_groups(z), 2)
        t = z.flatten(2).transpose(1, 2)  # [1, HW, 36]
        att = torch.softmax(t @ t.transpose(1, 2), dim=-1) @ t
        return self.out(torch.relu(self.head(att.mean(1))))


def _mixed():
    torch.manual_seed(0)
    model = Mixed().eval()
    with torch.no_grad():
        model.bn.running_mean.uniform_(-0.5, 0.5)
        model.bn.running_var.uniform_(0.5, 2.0)
    g = torch.Generator().manual_seed(1)
    cal = [torch.randn(1, 3, 18, 17, generator=g) * 1.5 + 0.3 for _ in range(6)]
    return model, cal


@pytest.fixture(scope="module")
def mixed():
    model, cal = _mixed()
    module, report = sliver.quantize(model, cal, target="x86_64")
    return model, cal, module, report


def test_mixed_model_report(mixed):
    model, cal, module, report = mixed
    rows = {r["layer"]: r for r in report["layers"]}
    quantized = {k for k, r in rows.items() if r["quantized"]}
    assert quantized == {"stem", "dw", "grouped", "pw", "side", "mix", "wide", "wide_groups", "head", "out"}
    kinds = [op.kind for op in module.ops]
    assert kinds.count("qconv2d") == 8 and kinds.count("qdense") == 2
    assert "conv2d" not in kinds and "linear" not in kinds and "batch_norm" not in kinds
    matmuls = [r for r in report["layers"] if r["op"] == "matmul"]
    assert len(matmuls) == 2 and all("two activations" in r["reason"] for r in matmuls)
    # the residual add's output is signed: the grouped conv pads with a nonzero zero point
    g = next(op for op in module.ops if op.kind == "qconv2d" and op.result.name == "grouped")
    # dw(y) + y reads codes: dw emits them, y's are the ones dw reads
    add = next(op for op in module.ops if op.kind == "add")
    assert [v.producer.kind for v in add.operands] == ["dequantize", "dequantize"]
    assert next(op for op in module.ops if op.result.name == "dw").attrs["out_dtype"] == "u8"
    assert g.attrs["x_zero_point"] not in (0, 128) and g.attrs["groups"] == 13
    with torch.no_grad():
        want = model(cal[0]).numpy()
    got = run(module, [cal[0].numpy()])[0]
    assert np.abs(got - want).max() < 0.05 * np.abs(want).max()


def test_skip_and_sensitive_layers_stay_float():
    model, cal = _mixed()
    _, first = sliver.quantize(model, cal)
    errors = sorted(r["error"] for r in first["layers"] if "error" in r and r["layer"] != "side")
    limit = (errors[-2] + errors[-3]) / 2  # the two worst layers are too sensitive
    module, report = sliver.quantize(model, cal, skip=["side"], max_error=limit)
    rows = {r["layer"]: r for r in report["layers"]}
    assert not rows["side"]["quantized"] and "skip" in rows["side"]["reason"]
    sensitive = [r for r in report["layers"] if "sensitive" in r.get("reason", "")]
    assert len(sensitive) == 2 and all(r["error"] > limit for r in sensitive)
    assert all(r["error"] <= limit for r in report["layers"] if r["quantized"])
    assert any(op.kind == "conv2d" for op in module.ops)


def test_super_activations_keep_their_layer_float():
    model, cal = _mixed()
    report = {"super_activations": [{"value": "relu", "channel": 2, "consumers": ["pw.weight"]}]}
    module, notes = sliver.quantize(model, cal, keep_super=True, super_activations=report)
    row = next(r for r in notes["layers"] if r["layer"] == "pw")
    assert not row["quantized"] and "super activation" in row["reason"] and "[2]" in row["reason"]


def test_model_is_not_changed():
    model, cal = _mixed()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    sliver.quantize(model, cal)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


# -- bad input ------------------------------------------------------------------------------------


def test_bad_calibration_data():
    module = parse_module(TEXT, params=PARAMS)
    with pytest.raises(QuantizeError, match=r"must have shape \[2, 4\].*got \[2, 5\]"):
        _quantize(calibration=[np.zeros((2, 5), np.float32)])
    with pytest.raises(QuantizeError, match=r"must be f32 \(float32\), got float64.*astype"):
        _quantize(calibration=[np.zeros((2, 4))])
    with pytest.raises(QuantizeError, match="calibration set is empty"):
        _quantize(calibration=[])
    with pytest.raises(QuantizeError, match="not one array"):
        _quantize(calibration=np.zeros((2, 4), np.float32))
    with pytest.raises(QuantizeError, match="needs calibration data"):
        _quantize(calibration=None)
    with pytest.raises(QuantizeError, match="has 2 array"):
        _quantize(calibration=[(np.zeros((2, 4), np.float32), np.zeros((2, 4), np.float32))])
    with pytest.raises(SliverError, match="method must be one of"):
        _quantize(method="entropyy")
    assert str(module) == str(parse_module(TEXT, params=PARAMS))


def test_nothing_quantizable():
    text = dedent("""
        func @m(%x: f32[2,4]) {
          %r = relu(%x) : f32[2,4]
          return %r
        }
    """)
    with pytest.raises(QuantizeError, match="no layer to quantize"):
        _quantize(text=text, params={})


def test_calibration_files(tmp_path):
    stack = np.stack(CALIBRATION)
    np.savez(tmp_path / "cal.npz", x=stack)
    module, notes = _quantize(calibration=str(tmp_path / "cal.npz"))
    assert str(module) == QUANTIZED and notes["samples"] == 2
    folder = tmp_path / "samples"
    folder.mkdir()
    for i, a in enumerate(CALIBRATION):
        np.save(folder / f"{i:03d}.npy", a)
    module, _ = _quantize(calibration=folder)
    assert str(module) == QUANTIZED
    np.savez(tmp_path / "bad.npz", x=stack[:, :, :3])
    with pytest.raises(QuantizeError, match=r"neither input %x's shape"):
        _quantize(calibration=tmp_path / "bad.npz")
    np.savez(tmp_path / "empty.npz")
    with pytest.raises(QuantizeError, match="empty calibration set"):
        _quantize(calibration=tmp_path / "empty.npz")
    (tmp_path / "none").mkdir()
    with pytest.raises(QuantizeError, match="no .npy files"):
        _quantize(calibration=tmp_path / "none")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(QuantizeError, match="not a readable numpy file"):
        _quantize(calibration=tmp_path / "junk.npz")


def test_cli_bad_calibration_writes_nothing(tmp_path):
    from sliver.tools.cli import main

    np.savez(tmp_path / "bad.npz", x=np.zeros((4, 1, 3, 31, 32), np.float32))
    out = tmp_path / "q.sliver"
    rc = main(["lower", "tools/examples/tiny_cnn.py:build", "--quantize", "int8", "--calibration",
               str(tmp_path / "bad.npz"), "-o", str(out)])
    assert rc != 0 and not out.exists()
    rc = main(["lower", "tools/examples/tiny_cnn.py:build", "--quantize", "int8", "-o", str(out)])
    assert rc != 0 and not out.exists()


def test_pass_is_listed():
    from sliver.passes.manager import all_passes

    assert "quantize-static" in all_passes()


# -- compiled int8 equals the interpreter ----------------------------------------------------------


def _host_flags() -> set[str]:
    with open("/proc/cpuinfo") as f:
        return set(next((line for line in f if line.startswith("flags")), "").split())


def _rel(got, want):
    return float(np.abs(np.asarray(got, np.float64) - want).max() / max(np.abs(want).max(), 1e-12))


@pytest.mark.slow
@pytest.mark.parametrize("activations,target", [("uint8", "x86_64"), ("int8", "x86_64"), ("uint8", "x86-64-v3")])
def test_x86_int8_matches_interpreter(activations, target):
    """On this CPU's own target (the AVX-512 VNNI lane and tile kernels where it has them)
    and on x86-64-v3 (AVX2: bytes widened to int16), whichever CPU runs the test."""
    from sliver.backends.tvm.targets import host_target, resolve

    t = resolve(target)
    if host_target().arch != "x86_64" or (t.portable and "avx2" not in _host_flags()):
        pytest.skip(f"this machine cannot run {target} code")
    model, cal = _mixed()
    module, _ = sliver.quantize(model, cal, activations=activations)
    x = cal[1].numpy()
    art = sliver.lower(module, (x,), target)
    assert art.manifest.target.int8_dot == t.int8_dot
    assert target == "x86_64" or t.int8_dot == "avx2"
    assert set(art.manifest.kernels.values()) == {"int8"}
    m = art.load()
    for sample in cal[:3]:
        want = run(module, [sample.numpy()])[0]
        assert _rel(m(sample.numpy()), want) <= 1e-5


@pytest.mark.slow
def test_cli_lower_quantize_int8(tmp_path):
    from sliver.tools.cli import main

    g = np.random.default_rng(0)
    np.savez(tmp_path / "cal.npz", x=g.standard_normal((8, 1, 3, 32, 32)).astype(np.float32))
    out = tmp_path / "q.sliver"
    assert main(["lower", "tools/examples/tiny_cnn.py:build", "--quantize", "int8", "--calibration",
                 str(tmp_path / "cal.npz"), "-o", str(out)]) == 0
    art = sliver.load(out)
    assert art.manifest.pipeline.startswith("fold-fake-quant,fold-batchnorm,quantize-static")
    assert art.verify()


@pytest.mark.slow
@pytest.mark.emulated
@pytest.mark.parametrize("target,cpu", [("rpi4", "cortex-a72"), ("rpi5", "cortex-a76")])
def test_emulated_pi_int8_matches_interpreter(target, cpu, tmp_path):
    from sliver.tools.emulator import emulate

    model, cal = _mixed()
    module, _ = sliver.quantize(model, cal, target=target)
    x = cal[1].numpy()
    art = sliver.lower(module, (x,), target)
    assert art.manifest.target.int8_dot == ("sdot" if target == "rpi5" else "neon")
    path = art.save(tmp_path / "q.sliver")
    script = tmp_path / "first.py"
    script.write_text("import sys, numpy as np\nfrom sliver.runtime.artifact import load\n"
                      "m = load(sys.argv[1])\nnp.save(sys.argv[2], m.run(*m.golden_inputs())[0])\n")
    out = tmp_path / "out.npy"
    proc = emulate.run_python([str(script), str(path), str(out)], cpu=cpu, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    want = run(module, [x])[0]
    assert _rel(np.load(out), want) <= 1e-5


def test_tiled_int8_weight_layout():
    from sliver.backends.tvm.lowbit import pack_weights_int8, pack_weights_int8_tiled

    g = np.random.default_rng(0)
    w = g.integers(-127, 128, size=(2 * 18, 5, 3, 3)).astype(np.int8)  # two groups of 18: blocks of 16 + 2
    rows, rb = pack_weights_int8(w)
    tiled, rb2 = pack_weights_int8_tiled(w, groups=2)
    assert rb2 == rb and tiled.shape == (2 * 32, rb)
    t = tiled.reshape(2, 2, rb // 4, 16, 4)  # [group][block][4-byte step][channel][byte]
    for grp in range(2):
        for o in range(18):
            b, c = divmod(o, 16)
            assert np.array_equal(t[grp, b, :, c, :].reshape(-1), rows[grp * 18 + o])
    assert not t[:, 1, :, 2:, :].any()  # the last block's missing channels are zero


def test_lane_int8_weight_layout_and_choice():
    from sliver.backends.tvm.lowbit import LANES_NO, lanes_layout, pack_weights_int8_lanes

    g = np.random.default_rng(0)
    w = g.integers(-127, 128, size=(2 * 10, 5, 3, 3)).astype(np.int8)  # two groups of 10: blocks of 8 + 2
    lanes, rb = pack_weights_int8_lanes(w, groups=2)
    q = 2  # quads of 4 channels per tap: 5 channels -> 2
    assert rb == 9 * q * 4 and lanes.shape == (2 * 2 * LANES_NO, rb)
    t = lanes.reshape(2, 2, 9 * q, LANES_NO, 4)  # [group][block][step (tap, quad)][channel][byte]
    for grp in range(2):
        for o in range(10):
            b, c = divmod(o, LANES_NO)
            got = t[grp, b, :, c, :].reshape(3, 3, q * 4)
            assert np.array_equal(got[..., :5], np.transpose(w[grp * 10 + o], (1, 2, 0)))
            assert not got[..., 5:].any()
    assert not t[:, 1, :, 2:, :].any()  # the last block's missing channels are zero
    dw = g.integers(-127, 128, size=(6, 1, 3, 3)).astype(np.int8)  # depthwise: quads of 4 channels
    packed, rb = pack_weights_int8_lanes(dw, groups=6)
    assert rb == 9 * 16 and packed.shape == (2, rb)
    d = packed.reshape(2, 9, 4, 4)  # [quad][tap][channel j][byte]
    for o in range(6):
        quad, j = divmod(o, 4)
        assert np.array_equal(d[quad, :, j, j], dw[o].reshape(-1))
        assert not np.delete(d[quad, :, j, :], j, axis=1).any()
    assert not d[1, :, 2:, :].any()
    # the lane kernel only on AVX-512 VNNI, symmetric weights, no dilation, a vector of
    # output pixels, groups of at least 8 output channels or depthwise
    assert lanes_layout("avx512-vnni", 0, (1, 1), 1, 3, 13, 81)
    assert lanes_layout("avx512-vnni", 0, (1, 1), 13, 1, 1, 81)
    for args in [("avx2", 0, (1, 1), 1, 3, 13, 81), ("avx-vnni", 0, (1, 1), 1, 3, 13, 81),
                 ("sdot", 0, (1, 1), 1, 3, 13, 81), ("avx512-vnni", 3, (1, 1), 1, 3, 13, 81),
                 ("avx512-vnni", 0, (1, 2), 1, 3, 13, 81), ("avx512-vnni", 0, (1, 1), 1, 3, 7, 81),
                 ("avx512-vnni", 0, (1, 1), 1, 3, 13, 9), ("avx512-vnni", 0, (1, 1), 13, 1, 2, 81)]:
        assert not lanes_layout(*args), args


PADDED = dedent("""
    func @padded(%x: f32[1,2,4,4]) {
      %w = param : f32[3,2,3,3]
      %z3 = constant {value=0, shape=[1, 2, 4, 1]} : f32[1,2,4,1]
      %p3 = concat(%x, %z3) {axis=3} : f32[1,2,4,5]
      %z2a = constant {value=0, shape=[1, 2, 1, 5]} : f32[1,2,1,5]
      %z2b = constant {value=0, shape=[1, 2, 2, 5]} : f32[1,2,2,5]
      %p2 = concat(%z2a, %p3, %z2b) {axis=2} : f32[1,2,7,5]
      %y = conv2d(%p2, %w) {stride=[2, 2], padding=[0, 1, 0, 0]} : f32[1,3,3,2]
      return %y
    }
""")


def test_zero_padding_by_concat_folds_into_the_conv():
    """TensorFlow-style "same" padding traced as concats of zeros (MobileNetV2 in
    transformers): the conv takes the padding itself, the concats go, so the conv's input
    is quantized unpadded and its codes padded with the zero point in the kernel."""
    g = np.random.default_rng(0)
    params = {"w": g.standard_normal((3, 2, 3, 3)).astype(np.float32)}
    cal = [g.standard_normal((1, 2, 4, 4)).astype(np.float32) for _ in range(3)]
    module, notes = _quantize(PADDED, params, cal)
    text = str(module)
    assert "concat" not in text and "constant" not in text, text
    assert "padding=[1, 1, 2, 1]" in text and "qconv2d(" in text, text
    assert notes["padding_folded"] == 1
    float_module = parse_module(PADDED, params=params)
    for x in cal:
        want = run(float_module, [x])[0]
        assert np.abs(run(module, [x])[0] - want).max() <= 0.05 * np.abs(want).max()
    # padding that is not zeros stays a concat
    ones = PADDED.replace("{value=0, shape=[1, 2, 4, 1]}", "{value=1, shape=[1, 2, 4, 1]}")
    module, notes = _quantize(ones, params, cal)
    assert notes["padding_folded"] == 1 and "concat(%x, %z3)" in str(module)


@pytest.mark.slow
def test_max_pool_of_codes_lowers_exactly():
    """Max pooling between int8 layers runs on their codes (ResNet's stem -> pool -> two
    convs): the pooling te with a plain max, edge reads instead of padding, and with
    dilation padding by the type's least value; the same codes as the interpreter."""
    from sliver.ir.core import Module
    from sliver.ir.types import TensorType

    m = Module("codes_pool")
    x = m.add_input(TensorType((1, 5, 11, 10), "f32"), "x")
    outs = []
    for dtype, zp in (("u8", 3), ("i8", 0)):
        q = m.add_op("quantize", [x], {"scale": 0.05, "zero_point": zp, "dtype": dtype}).result
        a = m.add_op("max_pool2d", [q], {"kernel": [3, 3], "stride": [2, 2], "padding": [1, 1, 1, 1]}).result
        b = m.add_op("max_pool2d", [q], {"kernel": [2, 2], "stride": [1, 2], "padding": [1, 1, 1, 1],
                                         "dilation": [2, 1]}).result
        outs += [m.add_op("dequantize", [v], {"scale": 0.05, "zero_point": zp}).result for v in (a, b)]
    m.set_outputs(outs)
    xs = np.random.default_rng(0).standard_normal((1, 5, 11, 10)).astype(np.float32) * 3
    got = sliver.lower(m, [xs], "x86_64", tune=False).load()(xs)
    for g, w in zip(got if isinstance(got, (list, tuple)) else [got], run(m, [xs])):
        assert np.array_equal(np.asarray(g), w)


# -- real architectures: the zoo's CNNs ------------------------------------------------------------


def _zoo_int8(name: str, target: str):
    """A realzoo CNN (transformers class, random weights) through quantize-static for
    ``target``: the quantized module and one input outside the calibration set."""
    import realzoo

    model, (x,) = realzoo.ENTRIES[name].build()
    g = torch.Generator().manual_seed(7)
    cal = [torch.randn(x.shape, generator=g) for _ in range(4)]
    module, report = sliver.quantize(model, cal, target=target)
    return module, torch.randn(x.shape, generator=g).numpy()


@pytest.mark.slow
@pytest.mark.parametrize("name,target", [("resnet", "x86_64"), ("mobilenet_v2", "x86_64"), ("resnet", "x86-64-v3")])
def test_zoo_cnn_int8_on_x86_matches_interpreter(name, target):
    from sliver.backends.tvm.targets import host_target, resolve

    if host_target().arch != "x86_64" or (resolve(target).portable and "avx2" not in _host_flags()):
        pytest.skip(f"this machine cannot run {target} code")
    module, x = _zoo_int8(name, target)
    art = sliver.lower(module, (x,), target)
    assert list(art.manifest.kernels.values()).count("int8") >= 3  # the convs run on integer kernels
    assert _rel(art.load()(x), run(module, [x])[0]) <= 1e-5


@pytest.mark.slow
@pytest.mark.emulated
@pytest.mark.parametrize("name,target,cpu", [("resnet", "rpi4", "cortex-a72"), ("mobilenet_v2", "rpi5", "cortex-a76")])
def test_zoo_cnn_int8_on_the_emulated_pi_matches_interpreter(name, target, cpu, tmp_path):
    from helpers import emulated_first_output

    module, x = _zoo_int8(name, target)
    art = sliver.lower(module, (x,), target)
    assert list(art.manifest.kernels.values()).count("int8") >= 3
    got = emulated_first_output(art.save(tmp_path / "q.sliver"), tmp_path, cpu=cpu)
    assert _rel(got, run(module, [x])[0]) <= 1e-5
