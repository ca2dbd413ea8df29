"""Upsampling as decoders do it: F.interpolate in every mode (traced into gathers with
constant indices and weights) and transposed convolutions (the conv_transpose2d op).
Checked against torch in the interpreter, as x86_64 artifacts and on the emulated Pi."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import sliver
from helpers import artifact_tests, assert_close, dedent, numpy_inputs, roundtrip, torch_outputs
from sliver.common.errors import SliverError, UnsupportedOpError
from sliver.ir.interp import run
from sliver.ir.parser import parse_module

RESIZES = [
    dict(scale_factor=2, mode="nearest"), dict(scale_factor=1.5, mode="nearest"), dict(size=(3, 9), mode="nearest"),
    dict(size=(3, 3), mode="nearest-exact"), dict(size=(13, 11), mode="bilinear"),
    dict(size=(13, 11), mode="bilinear", align_corners=True), dict(scale_factor=0.6, mode="bilinear"),
    dict(scale_factor=2.3, mode="bilinear", recompute_scale_factor=False), dict(scale_factor=2, mode="bicubic"),
    dict(size=(3, 7), mode="bicubic", align_corners=True),
]


class Resize(nn.Module):
    def __init__(self, **kw):
        super().__init__()
        self.kw = kw

    def forward(self, x):
        return F.interpolate(x, **self.kw)


@pytest.mark.parametrize("kw", RESIZES, ids=lambda kw: "-".join(f"{v}" for v in kw.values()))
def test_interpolate_matches_torch(kw):
    x = torch.randn(2, 3, 6, 5, generator=torch.Generator().manual_seed(0))
    module = sliver.trace(Resize(**kw), (x,))
    assert {op.kind for op in module.ops} <= {"param", "take", "mul", "add"}
    assert_close(run(module, [x.numpy()]), [Resize(**kw)(x).numpy()], rtol=1e-5)


@pytest.mark.parametrize("kw, shape", [(dict(size=7, mode="linear"), (1, 3, 5)),
                                       (dict(size=7, mode="linear", align_corners=True), (1, 3, 5)),
                                       (dict(scale_factor=2, mode="trilinear"), (1, 2, 3, 4, 5)),
                                       (dict(size=(4, 6, 7), mode="nearest"), (1, 2, 3, 4, 5))])
def test_1d_and_3d_interpolate_match_torch(kw, shape):
    x = torch.randn(*shape)
    assert_close(run(sliver.trace(Resize(**kw), (x,)), [x.numpy()]), [Resize(**kw)(x).numpy()], rtol=1e-5)


def test_antialiased_resizing_is_named_as_unsupported():
    with pytest.raises(UnsupportedOpError, match="_upsample_bilinear2d_aa"):
        sliver.trace(Resize(size=(3, 3), mode="bilinear", antialias=True), (torch.randn(1, 1, 8, 8),))


CONVS = [dict(kernel_size=4, stride=2, padding=1), dict(kernel_size=3, stride=2, padding=1, output_padding=1),
         dict(kernel_size=3, groups=2, bias=False), dict(kernel_size=(3, 2), stride=(2, 3), padding=(1, 0),
                                                         dilation=(2, 1), output_padding=(1, 2))]


@pytest.mark.parametrize("kw", CONVS, ids=str)
def test_conv_transpose2d_matches_torch(kw):
    torch.manual_seed(0)
    model, x = nn.ConvTranspose2d(4, 6, **kw).eval(), torch.randn(1, 4, 5, 6)
    module = sliver.trace(model, (x,))
    assert [op.kind for op in module.ops if op.kind != "param"] == ["conv_transpose2d"]
    roundtrip(module)
    assert_close(run(module, [x.numpy()]), torch_outputs(model, (x,)), rtol=1e-5)


def test_conv_transpose1d_matches_torch():
    torch.manual_seed(0)
    model, x = nn.ConvTranspose1d(4, 3, 3, stride=2, padding=1, output_padding=1).eval(), torch.randn(1, 4, 7)
    assert_close(run(sliver.trace(model, (x,)), [x.numpy()]), torch_outputs(model, (x,)), rtol=1e-5)


def test_conv_transpose2d_ir_text_and_type_rules():
    m = parse_module(dedent("""
        func @m(%x: f32[1,2,3,3], %w: f32[2,1,2,2]) {
          %y = conv_transpose2d(%x, %w) {stride=[2, 2], padding=[0, 0, 1, 1]} : f32[1,1,5,5]
          return %y
        }
    """))
    roundtrip(m)
    x, w = np.ones((1, 2, 3, 3), np.float32), np.ones((2, 1, 2, 2), np.float32)
    np.testing.assert_array_equal(run(m, [x, w])[0], np.full((1, 1, 5, 5), 2.0))
    with pytest.raises(SliverError, match="output_padding"):
        parse_module("func @m(%x: f32[1,2,3,3], %w: f32[2,1,2,2]) {\n"
                     "  %y = conv_transpose2d(%x, %w) {output_padding=[1, 1]} : f32[1,1,5,5]\n  return %y\n}\n")


class Decoder(nn.Module):
    """A UNet-style decoder step: upsample (transposed conv and interpolate), join, conv."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.down = nn.Conv2d(3, 5, 3, stride=2, padding=1)  # 5 channels: the backend pads them to a vector
        self.up = nn.ConvTranspose2d(5, 4, 4, stride=2, padding=1)
        self.mix = nn.Conv2d(4 + 5 + 3, 6, 3, padding=1)

    def forward(self, x):
        d = torch.relu(self.down(x))
        u = self.up(d)
        b = F.interpolate(d, scale_factor=2, mode="bilinear", align_corners=False)
        n = F.interpolate(x, size=u.shape[-2:], mode="nearest")
        return F.interpolate(self.mix(torch.cat([u, b, n], 1)), size=(11, 9), mode="bicubic", align_corners=True)


def build():
    return Decoder().eval(), (torch.randn(1, 3, 8, 10, generator=torch.Generator().manual_seed(1)),)


def test_decoder_matches_torch_in_the_interpreter():
    model, inputs = build()
    assert_close(run(sliver.trace(model, inputs), numpy_inputs(inputs)), torch_outputs(model, inputs), rtol=1e-5)


compiled, test_x86_artifact_matches_torch, test_arm64_artifact_matches_torch_on_the_emulated_pi = artifact_tests(
    __name__, build, "decoder", rtol=1e-4)
