"""wq_linear (weight-only quantized linear): the op's type rule, and its TVM lowering
(the fused kernel, and dequantize-then-matmul where it does not apply) for x86_64, the
AVX2 and AVX-512 levels and the emulated arm64 Pi against the reference interpreter."""

import numpy as np
import pytest
import torch
from torch import nn

import precompile
import sliver
from helpers import dedent, emulated_first_output
from sliver.api import optimize, trace
from sliver.common.errors import SliverError
from sliver.ir.interp import run
from sliver.ir.parser import parse_module
from sliver.passes.manager import make_pass

pytest.importorskip("tvm")


class MLP(nn.Module):
    """Odd sizes on purpose: 3-bit codes straddle bytes, blocks of 96 straddle rows of 256."""

    def __init__(self):
        super().__init__()
        self.up = nn.Linear(256, 384)
        self.down = nn.Linear(384, 120)

    def forward(self, x):
        return self.down(torch.nn.functional.gelu(self.up(x)))


def _model():
    torch.manual_seed(0)
    m = MLP().eval()
    with torch.no_grad():
        m.down.weight[5, 7] = 30.0  # a super weight, kept as a float outlier
        m.up.weight[11, 3] = -4.0
    return m, torch.randn(2, 3, 256)


@pytest.fixture(scope="module")
def model():
    return _model()


KEEP = (("down.weight", 5, 7), ("up.weight", 11, 3))


def quantized(model, options):
    m, x = model
    module = trace(m, (x,))
    if options:
        optimize(module, [make_pass("quantize-weights", **options)])
    return module


PIPELINES = {
    3: dict(bits=3, granularity="block", block=96, clip=True, keep_super=True, super_weights=KEEP),
    4: dict(bits=4, symmetric=False, granularity="channel", keep_super=True, super_weights=KEEP),
    8: dict(bits=8, granularity="tensor"),
}


def lowered(bits, target):
    """The MLP quantized to ``bits`` (32: not at all), lowered for ``target`` (a
    precompile job): the saved artifact's path."""
    m, x = model = _model()
    module = quantized(model, PIPELINES.get(bits))
    return sliver.lower(module, (x.numpy(),), target=target).save(precompile.out(f"wq-{bits}-{target}.sliver"))


def _jobs(params):
    return [("call", "test_wq_linear", "lowered", bits, "x86_64") for bits in (32, *PIPELINES)]


@pytest.fixture(scope="module")
def artifacts(model):
    """{bits or 32: (module, saved x86_64 artifact path)}; compiled ahead (tests/precompile.py)."""
    return {bits: (quantized(model, PIPELINES.get(bits)), precompile.get(("call", "test_wq_linear", "lowered", bits,
                                                                           "x86_64")))
            for bits in (32, *PIPELINES)}


@pytest.mark.precompiled.with_args(_jobs)
@pytest.mark.parametrize("bits", [3, 4, 8])
def test_x86_matches_the_interpreter(model, artifacts, bits):
    _, x = model
    module, path = artifacts[bits]
    assert "wq_linear" in {op.kind for op in module.ops}
    if bits != 8:
        assert module.params["down.out_value"].tolist() == [30.0]
    want = run(module, [x.numpy()])[0]
    got = sliver.load(path).run(x.numpy())[0]
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()


@pytest.mark.precompiled.with_args(_jobs)
def test_artifact_carries_packed_weights(artifacts):
    """The library holds the codes, not float32 weights: its size falls with the bits
    (the fused kernel keeps 2..4-bit codes two to a byte, 5..8-bit ones one to a byte)."""
    size = {bits: sliver.load(path).manifest.library.bytes for bits, (_, path) in artifacts.items()}
    kernels = {bits: set(sliver.load(path).manifest.kernels.values()) for bits, (_, path) in artifacts.items()
               if bits != 32}
    assert kernels == {3: {"wq-fused"}, 4: {"wq-fused"}, 8: {"wq-fused"}}
    weights_f32 = (256 * 384 + 384 * 120) * 4
    for bits, stored in ((8, 8), (4, 4), (3, 4)):
        # the codes save (1 - stored/32) of the float32 weight bytes; scales and kernel code cost some back
        assert size[32] - size[bits] > (1 - stored / 32) * weights_f32 * 0.8, (bits, size)
    assert size[8] > size[4]


@pytest.mark.parametrize("level", ["x86-64-v3", "x86-64-v4"])
def test_fused_kernel_per_x86_level(model, level, tmp_path):
    """The AVX2 and AVX-512 builds of the fused kernel (each compiled whatever this CPU
    is; run where it has the instructions) match the interpreter."""
    from sliver.backends.tvm.targets import host_target

    _, x = model
    module = quantized(model, PIPELINES[4])
    art = sliver.lower(module, (x.numpy(),), target=level)
    assert set(art.manifest.kernels.values()) == {"wq-fused"}
    if level == "x86-64-v4" and host_target().lanes < 16:
        pytest.skip("built for AVX-512; this CPU cannot run it")
    want = run(module, [x.numpy()])[0]
    got = sliver.load(art.save(tmp_path / "m.sliver")).run(x.numpy())[0]
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()


def test_dequantize_path_where_the_fused_layout_does_not_apply(model, tmp_path):
    """Blocks of 48 on rows of 256 (gcd 16: no whole 32-code groups) and the forced
    generic kernel lower to dequantize-then-matmul, matching the interpreter too."""
    from sliver.backends.tvm.build import compile_module

    _, x = model
    module = quantized(model, dict(PIPELINES[3], block=48))
    assert set(compile_module(module, "x86_64").kernels.values()) == {"wq-dequantize"}
    module = quantized(model, PIPELINES[4])
    assert set(compile_module(module, "x86_64", lowbit_kernel="generic").kernels.values()) == {"wq-dequantize"}
    art = sliver.lower(quantized(model, dict(PIPELINES[3], block=48)), (x.numpy(),), target="x86_64")
    want = run(quantized(model, dict(PIPELINES[3], block=48)), [x.numpy()])[0]
    assert np.abs(sliver.load(art.save(tmp_path / "m.sliver")).run(x.numpy())[0] - want).max() <= 1e-5 * np.abs(want).max()


@pytest.mark.slow
@pytest.mark.emulated
@pytest.mark.precompiled.with_args(lambda params: [("call", "test_wq_linear", "lowered", 3, "arm64")])
def test_arm64_on_the_emulated_pi(model, tmp_path):
    _, x = model
    module = quantized(model, PIPELINES[3])
    path = precompile.get(("call", "test_wq_linear", "lowered", 3, "arm64"))  # lowered(): compiled ahead
    want = run(module, [x.numpy()])[0]
    assert np.abs(emulated_first_output(path, tmp_path) - want).max() <= 1e-5 * np.abs(want).max()


def test_type_rule_names_the_wrong_operand():
    text = dedent("""
        func @m(%x: f32[2,64]) {
          %codes = param : u8[100]
          %scale = param : f32[16]
          %zero = param : u8[16]
          %index = param : i32[0]
          %value = param : f32[0]
          %y = wq_linear(%x, %codes, %scale, %zero, %index, %value) {bits=3, block=32, out_features=8} : f32[2,8]
          return %y
        }
    """)
    with pytest.raises(SliverError, match=r"codes must be u8\[192\] for a \[8,64\] weight"):
        parse_module(text)
    with pytest.raises(SliverError, match="bits must lie in 2..8"):
        parse_module(text.replace("u8[100]", "u8[64]").replace("bits=3", "bits=1"))
    assert "wq_linear" in str(parse_module(text.replace("u8[100]", "u8[192]")))


def test_cli_lower_with_quantize_weights_verifies_against_the_quantized_module(tmp_path, capsys):
    """`sliver lower --passes quantize-weights...` then `sliver run --verify`: the golden
    outputs are the quantized module's (the passes are lossy on purpose)."""
    from sliver.tools.cli import main

    spec = tmp_path / "mlp.py"
    spec.write_text(
        "import torch\n"
        "def build():\n"
        "    torch.manual_seed(0)\n"
        "    m = torch.nn.Sequential(torch.nn.Linear(64, 96), torch.nn.GELU(), torch.nn.Linear(96, 10)).eval()\n"
        "    return m, (torch.randn(2, 64),)\n"
    )
    art = tmp_path / "m.sliver"
    passes = "quantize-weights{bits=3,granularity=block,block=64,clip=true},quantize-activations{bits=8},dce"
    assert main(["lower", f"{spec}:build", "--target", "x86_64", "--passes", passes, "-o", str(art)]) == 0
    assert main(["run", str(art), "--verify"]) == 0
    assert "verify: passed" in capsys.readouterr().out
    assert sliver.load(art).manifest.pipeline.startswith("quantize-weights{bits=3")


def test_quantized_tied_embedding_and_head(tmp_path):
    """embedding=true, head=true on a tied table: wq_take (with a kept outlier in the
    table) and the fused head read the same codes; x86_64 matches the interpreter."""
    rng = np.random.default_rng(3)
    table = rng.standard_normal((64, 96)).astype(np.float32)
    table[9, 40] = 12.0
    text = dedent("""
        func @lm(%ids: i64[1,5]) {
          %head.weight = param : f32[64,96]
          %take = take(%head.weight, %ids) {axis=0} : f32[1,5,96]
          %fc.weight = param : f32[96,96]
          %fc = linear(%take, %fc.weight) : f32[1,5,96]
          %head = linear(%fc, %head.weight) : f32[1,5,64]
          return %head
        }
    """)
    module = parse_module(text, params={"head.weight": table, "fc.weight": rng.standard_normal((96, 96)).astype(
        np.float32)})
    optimize(module, [make_pass("quantize-weights", bits=4, symmetric=False, granularity="block", block=64,
                                head=True, embedding=True, keep_super=True, super_weights=(("head.weight", 9, 40),))])
    assert {op.kind for op in module.ops} >= {"wq_take", "wq_linear"}
    ids = np.array([[9, 0, 63, 9, 17]], np.int64)
    art = sliver.lower(module, (ids,), target="x86_64")
    assert set(art.manifest.kernels.values()) == {"wq-fused"}
    want = run(module, [ids])[0]
    got = sliver.load(art.save(tmp_path / "lm.sliver")).run(ids)[0]
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()


def test_int8_activations_fused_and_generic_match_the_interpreter(model, tmp_path):
    """activations=int8 on 4-bit codes: the fused kernel's integer dot products (blocks of
    128 on rows of 256 and 384: groups of 128) and, where the fused layout does not apply
    (blocks of 48: runs of 16 and 48), the activations rounded in TE before the
    dequantized product: both compute the interpreter's result."""
    _, x = model
    for block, kernel in ((128, "wq-fused"), (48, "wq-dequantize")):
        opts = dict(bits=4, symmetric=False, granularity="block", block=block, keep_super=True, super_weights=KEEP,
                    activations="int8")
        want = run(quantized(model, opts), [x.numpy()])[0]
        art = sliver.lower(quantized(model, opts), (x.numpy(),), target="x86_64")
        assert set(art.manifest.kernels.values()) == {kernel}
        got = sliver.load(art.save(tmp_path / f"{block}.sliver")).run(x.numpy())[0]
        assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max(), kernel
