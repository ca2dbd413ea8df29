"""Pruned models back to torch (``sliver.passes.prune.to_torch``, ``sliver prune --torch``):
an ``nn.Module`` with the pruned weights and the reordered layout, which computes what
the pruned IR computes, fine-tunes with torch, and lowers again to an artifact that
matches it."""

from __future__ import annotations

import collections
import copy
import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import precompile
import sliver
import zoo
from helpers import numpy_inputs
from sliver.ir.interp import run
from sliver.passes.manager import PassManager
from sliver.passes.prune import to_torch

ROOT = Path(__file__).resolve().parents[2]


def _pruned():
    """ResNet-18 (the test zoo's, 32x32 inputs), batch norms folded, 40% of its input
    channels pruned with reordering: ``(inputs, original module, pruned module)``."""
    model, inputs = zoo.resnet18()
    module = sliver.trace(model, inputs)
    sliver.api.optimize(module)
    original = module.clone()
    PassManager("prune{amount=0.4}").run(module)
    return inputs, original, module


def _fine_tuned():
    """``to_torch`` of the pruned model after one SGD step on a seeded batch:
    ``(module, loss before, inputs)``."""
    inputs, _, pruned = _pruned()
    torch.manual_seed(0)
    model = to_torch(pruned).train()
    batch = torch.randn(4, *inputs[0].shape[1:])
    labels = torch.randint(0, 10, (4,))
    # one step on a batch of 4: the module was traced at batch 1, its ops take any batch
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    loss = torch.nn.functional.cross_entropy(model(batch), labels)
    loss.backward()
    optimizer.step()
    return model.eval(), loss.detach().item(), inputs


def lowered(kind):
    """A tests/precompile.py job: ``"ir"``, the pruned IR lowered for x86_64; ``"torch"``,
    its ``to_torch`` module lowered; ``"tuned"``, that module after one fine-tuning step,
    lowered (its weights saved beside it): the saved artifact path."""
    if kind == "tuned":
        model, _, inputs = _fine_tuned()
        torch.save(model, precompile.out("pruned-resnet18-tuned.pt"))
        art = sliver.lower(model, inputs, target="x86_64")
    else:
        inputs, _, pruned = _pruned()
        model = pruned if kind == "ir" else to_torch(pruned)
        art = sliver.lower(model, inputs, target="x86_64", passes="" if kind == "ir" else sliver.api.DEFAULT_PIPELINE)
    return art.save(precompile.out(f"pruned-resnet18-{kind}.sliver"))


def test_the_module_computes_the_pruned_ir():
    inputs, original, pruned = _pruned()
    model = to_torch(pruned)
    # the pruned weights under the original model's names, trainable; the channel gathers as buffers
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert shapes == {k: list(v.shape) for k, v in pruned.params.items()}
    assert {k for k, _ in model.named_parameters()} <= set(original.params)  # gathers: *.input_index buffers
    assert sum(p.numel() for p in model.parameters()) < 0.8 * sum(
        v.size for v in original.params.values() if v.dtype.kind == "f")
    assert all(b.dtype in (torch.int64, torch.int32) for b in model.buffers())
    assert list(__import__("inspect").signature(model.forward).parameters) == [v.name for v in pruned.inputs]
    with torch.no_grad():
        got = model(*inputs).numpy()
    np.testing.assert_array_equal(got, run(pruned, numpy_inputs(inputs))[0])
    # the caller's module is not touched
    assert all(np.array_equal(v, pruned.params[k]) for k, v in to_torch(pruned).to_ir().params.items())


def test_it_traces_back_into_the_same_ops():
    inputs, _, pruned = _pruned()
    again = sliver.trace(to_torch(pruned), inputs)
    sliver.api.optimize(again)
    kinds = collections.Counter(op.kind for op in again.ops)
    assert kinds == collections.Counter(op.kind for op in pruned.ops)
    assert {k: v.shape for k, v in again.params.items()} == {k: v.shape for k, v in pruned.params.items()}


def test_torch_save_and_deepcopy_keep_the_weights():
    inputs, _, pruned = _pruned()
    model = to_torch(pruned)
    with torch.no_grad():
        next(model.parameters()).add_(0.5)  # weights changed after conversion are what is saved
        want = model(*inputs)
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    for back in (torch.load(buf, weights_only=False), copy.deepcopy(model)):
        assert type(back).__name__ == type(model).__name__
        with torch.no_grad():
            assert torch.equal(back(*inputs), want)


def test_one_fine_tuning_step_changes_every_layer():
    inputs, _, pruned = _pruned()
    before = to_torch(pruned).state_dict()
    model, loss, _ = _fine_tuned()
    assert np.isfinite(loss)
    changed = [k for k, v in model.named_parameters() if not torch.equal(v, before[k])]
    assert len(changed) == len(list(model.parameters()))


@pytest.mark.slow
@pytest.mark.precompiled.with_args(lambda params: [("call", "test_prune_torch", "lowered", k)
                                                   for k in ("ir", "torch", "tuned")])
def test_it_lowers_to_the_same_artifact_and_after_fine_tuning_matches_torch():
    inputs, _, pruned = _pruned()
    x = numpy_inputs(inputs)
    ir = sliver.load(precompile.get(("call", "test_prune_torch", "lowered", "ir")))
    back = sliver.load(precompile.get(("call", "test_prune_torch", "lowered", "torch")))
    # the same compiled ops and weights: the same outputs, bit for bit
    assert [o.kind for o in back.manifest.ops] == [o.kind for o in ir.manifest.ops]
    assert back.manifest.params == ir.manifest.params
    np.testing.assert_array_equal(back.run(*x)[0], ir.run(*x)[0])
    # fine-tuned one step, lowered again: the artifact computes the fine-tuned module
    tuned = sliver.load(precompile.get(("call", "test_prune_torch", "lowered", "tuned")))
    model = torch.load(precompile.out("pruned-resnet18-tuned.pt"), weights_only=False)
    probe = np.random.default_rng(3).standard_normal(x[0].shape).astype(np.float32)
    with torch.no_grad():
        want = model(torch.from_numpy(probe)).numpy()
    got = tuned(probe)
    assert np.abs(got - want).max() <= 1e-4 * max(1.0, np.abs(want).max())
    assert not np.allclose(got, ir(probe), rtol=1e-3, atol=1e-4)  # the fine-tuned weights, not the old ones
    assert tuned.manifest.params.bytes == ir.manifest.params.bytes


def test_cli_prune_writes_a_torch_module(tmp_path):
    pt, pt2, sir = tmp_path / "pruned.pt", tmp_path / "pruned.pt2", tmp_path / "pruned.sir"
    for out in (pt, pt2):
        proc = subprocess.run([sys.executable, "-m", "sliver.tools.cli", "prune", "tools/examples/tiny_cnn.py:build",
                               "--amount", "0.5", "-o", str(sir), "--torch", str(out)],
                              cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert f"wrote {out}" in proc.stderr
    from sliver.ir.io import load_module

    module = load_module(sir)
    x = np.random.default_rng(0).standard_normal([v.type.shape for v in module.inputs][0]).astype(np.float32)
    want = run(module, [x])[0]
    model = torch.load(pt, weights_only=False)
    program = torch.export.load(pt2)
    with torch.no_grad():
        np.testing.assert_allclose(model(torch.from_numpy(x)).numpy(), want, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(program.module()(torch.from_numpy(x)).numpy(), want, rtol=1e-5, atol=1e-6)
    assert sum(p.numel() for p in model.parameters()) == sum(
        v.size for v in module.params.values() if v.dtype.kind == "f")
