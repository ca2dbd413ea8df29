"""The channel-padding pass (backends/tvm/padding.py) keeps its contract: padding
channels travel through channel-wise ops, are sliced off before an op that mixes
channels and at the module's outputs, per-channel params are zero-extended, and
results equal the interpreter's."""

from __future__ import annotations

import numpy as np
import pytest

tvm = pytest.importorskip("tvm")

from helpers import dedent  # noqa: E402
from sliver.backends.tvm import provenance  # noqa: E402
from sliver.backends.tvm.build import build_relax  # noqa: E402
from sliver.backends.tvm.lower import to_relax  # noqa: E402
from sliver.backends.tvm.padding import channel_padding  # noqa: E402
from sliver.backends.tvm.targets import resolve  # noqa: E402
from sliver.ir.interp import run  # noqa: E402
from sliver.ir.parser import parse_module  # noqa: E402

# a 47-channel conv (padded to 48), a channel-wise chain on it (relu, a per-channel
# scale, a residual add of itself), a softmax over channels (mixes them: sliced), a
# depthwise conv (reads the padding through zero filters) and two outputs
TEXT = dedent("""
    func @m(%x: f32[1,8,6,6]) {
      %w = param : f32[47,8,3,3]
      %s = param : f32[1,47,1,1]
      %dw = param : f32[47,1,3,3]
      %c = conv2d(%x, %w) {padding=[1, 1, 1, 1]} : f32[1,47,6,6]
      %r = relu(%c) : f32[1,47,6,6]
      %m = mul(%r, %s) : f32[1,47,6,6]
      %a = add(%m, %r) : f32[1,47,6,6]
      %d = conv2d(%a, %dw) {padding=[1, 1, 1, 1], groups=47} : f32[1,47,6,6]
      %p = softmax(%a) {axis=1} : f32[1,47,6,6]
      return %d, %p
    }
""")


def _module():
    shapes = parse_module(TEXT).params
    rng = np.random.default_rng(0)
    return parse_module(TEXT, {k: rng.standard_normal(v.shape).astype(np.float32) for k, v in shapes.items()})


def _channels_by_op(mod, module):
    """{sliver result name: channel counts of the Relax vars its lowering emitted, in order}."""
    out = {}
    for block in mod["main"].body.blocks:
        for b in block.bindings:
            i = provenance.op_index(b.var.name)
            shape = getattr(b.var.ty, "shape", None)
            if i is not None and shape is not None and len(shape) == 4:
                out.setdefault(module.ops[i].results[0].name, []).append(int(shape[1]))
    return out


def test_padding_travels_through_channelwise_ops_and_is_sliced_where_channels_mix():
    module = _module()
    assert channel_padding(47) == 1
    mod = to_relax(module)
    seen = _channels_by_op(mod, module)
    assert seen["c"][-1] == 48  # the conv's own zero filter
    assert seen["r"] == [48] and seen["a"][-1] == 48  # channel-wise: computed on the padded value
    assert 48 in seen["m"]  # the per-channel param, zero-extended to 48
    assert seen["d"][-1] == 48  # depthwise: reads the padding through zero filters
    assert seen["p"][0] == 47 and seen["p"][-1] == 47  # softmax over channels: its input sliced first
    outs = mod["main"].body.ty.fields
    assert [int(t.shape[1]) for t in outs] == [47, 47]  # outputs have their IR shapes


def test_padded_lowering_matches_the_interpreter():
    module = _module()
    x = np.random.default_rng(1).standard_normal((1, 8, 6, 6)).astype(np.float32)
    want = run(module, [x])
    ex = build_relax(to_relax(module), resolve("x86_64")).executable
    got = tvm.relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(x))
    for i, w in enumerate(want):
        g = got[i].numpy()
        assert g.shape == w.shape
        assert np.abs(g - w).max() <= 1e-5 * np.abs(w).max()
