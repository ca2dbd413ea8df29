"""CancelTransposes (sliver.backends.tvm.schedules.layout): permutations that meet cancel,
and ones on both operands of an elementwise binary move past it, so a model that goes
channels last itself (ConvNeXt) keeps its residual stream NHWC between NHWC convolutions
instead of transposing it to NCHW and back in every block."""

from __future__ import annotations

import numpy as np
import pytest
import torch

tvm = pytest.importorskip("tvm")

from tvm import relax  # noqa: E402

import sliver  # noqa: E402
from helpers import relax_module  # noqa: E402
from sliver.backends.tvm.schedules import layout  # noqa: E402

P, BACK = [0, 2, 3, 1], [0, 3, 1, 2]


def _permutes(mod) -> list:
    found = []
    op = tvm.ir.Op.get("relax.permute_dims")

    def visit(e):
        if isinstance(e, relax.Call) and e.op.same_as(op):
            found.append([int(a) for a in e.attrs.axes])

    relax.analysis.post_order_visit(mod["main"], visit)
    return found


def _run(mod, arrays):
    ex = tvm.compile(mod, target="llvm")
    vm = relax.VirtualMachine(ex, tvm.cpu())
    return vm["main"](*[tvm.runtime.tensor(a) for a in arrays]).numpy()


def _cancel(mod):
    return tvm.transform.Sequential([layout.CancelTransposes(), relax.transform.DeadCodeElimination()])(mod)


def test_inverse_permutations_cancel_and_others_compose():
    def build(bb, x):
        there = bb.emit(relax.op.permute_dims(x, P))
        back = bb.emit(relax.op.permute_dims(there, BACK))  # = x
        swap = bb.emit(relax.op.permute_dims(there, [0, 2, 1, 3]))  # = permute(x, [0, 3, 2, 1])
        return bb.emit(relax.op.add(relax.op.permute_dims(back, [0, 3, 2, 1]), swap))

    mod = relax_module(build, [(1, 3, 5, 7)])
    new = _cancel(mod)
    assert _permutes(new) == [[0, 3, 2, 1]]  # the two permutations of x are one, moved past the add
    x = np.random.default_rng(0).standard_normal((1, 3, 5, 7)).astype("float32")
    np.testing.assert_array_equal(_run(new, [x]), _run(mod, [x]))


def test_a_binary_of_two_equal_permutations_is_permuted_once():
    def build(bb, a, b, c):
        s = bb.emit(relax.op.add(relax.op.permute_dims(a, BACK), relax.op.permute_dims(b, BACK)))
        m = bb.emit(relax.op.multiply(s, relax.op.permute_dims(c, BACK)))
        return bb.emit(relax.op.permute_dims(m, P))  # all NHWC again: no permutation is left

    shapes = [(1, 5, 6, 4)] * 3
    mod = relax_module(build, shapes)
    new = _cancel(mod)
    assert _permutes(new) == []
    rng = np.random.default_rng(1)
    xs = [rng.standard_normal(s).astype("float32") for s in shapes]
    np.testing.assert_allclose(_run(new, xs), _run(mod, xs), rtol=1e-6)


def test_broadcasting_operands_and_different_permutations_are_left_alone():
    def build(bb, a, b, c):
        s = bb.emit(relax.op.add(relax.op.permute_dims(a, BACK), relax.op.permute_dims(b, BACK)))  # b broadcasts
        return bb.emit(relax.op.subtract(s, relax.op.permute_dims(c, [0, 3, 2, 1])))  # another permutation

    mod = relax_module(build, [(1, 5, 6, 4), (1, 1, 1, 4), (1, 6, 5, 4)])
    assert len(_permutes(_cancel(mod))) == 3


def test_identity_permutations_are_dropped():
    def build(bb, x):
        return bb.emit(relax.op.exp(relax.op.permute_dims(x, [0, 1, 2])))

    assert _permutes(_cancel(relax_module(build, [(2, 3, 4)]))) == []


def test_convnext_keeps_its_residual_stream_channels_last():
    """transformers' ConvNeXt (two stages of two blocks): its blocks go channels last for
    LayerNorm and the MLP and back for the residual add, and its channels-first LayerNorms
    (stem, downsampling) permute twice more."""
    import transformers as t

    import realzoo

    cfg = t.ConvNextConfig(hidden_sizes=[8, 16], depths=[2, 2], num_stages=2)
    model, inputs = realzoo._hf(t.ConvNextModel, cfg, (realzoo._image(0),))
    art = sliver.lower(model, inputs, target="x86_64", tune=False)
    transposes = [f for f in art.manifest.primfuncs if "transpose" in f]
    # the input to NHWC and the output back to NCHW (without the pass: 11 functions)
    assert len(transposes) <= 2, transposes
    with torch.no_grad():
        want = model(*inputs).numpy()
    got = art.load().run(*[x.numpy() for x in inputs])[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * float(np.abs(want).max()))
