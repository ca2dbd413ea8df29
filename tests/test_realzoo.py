"""The real-architecture zoo (tests/realzoo.py): the entries sliver handles today keep
tracing, round-tripping through the IR text and matching torch, so the coverage table
(``python -m sliver.benchmarks.coverage``) cannot silently regress; the others fail with
a named sliver error."""

import numpy as np
import pytest
import torch

import precompile
import realzoo
from sliver.benchmarks.coverage import TOLERANCE, check, rel_error, round_trip
from sliver.common.errors import SliverError

#: the entries that trace, print → parse → print to the same text and match torch in the
#: interpreter.  Add an entry here when a change makes it pass.
PASSING = {
    "resnet", "convnext", "convnextv2", "efficientnet", "mobilenet_v1", "mobilenet_v2", "regnet", "vit", "deit",
    "dinov2", "swin", "swinv2", "poolformer", "clip_vision", "mobilevit", "segformer", "beit",
    "bert", "roberta", "clip_text", "electra", "albert", "distilbert", "gpt2", "llama", "qwen2", "mistral", "gemma", "phi",
    "t5_encoder", "t5_decoder", "whisper_encoder", "wav2vec2",
    "llama_lm", "qwen2_lm", "mistral_lm", "phi_lm", "gpt2_lm",
    "multihead_attention", "transformer_encoder_layer", "transformer_decoder_layer",
    "pad_constant", "pad_reflect", "pad_replicate", "pad_circular", "conv1d", "pixel_shuffle", "roll",
    "einsum_attention", "cumsum", "conv_transpose2d", "interpolate_nearest", "interpolate_bilinear",
    "interpolate_bilinear_ac", "topk", "sort", "lstm", "gru",
}
#: checked by the quick suite (one or more per fixed failure class); the rest of PASSING is `slow`
QUICK = {
    "resnet", "vit", "bert", "gpt2", "llama", "mobilenet_v1", "swin", "convnextv2", "poolformer", "whisper_encoder",
    "wav2vec2", "t5_encoder", "llama_lm", "gpt2_lm", "roberta", "clip_text", "segformer", "multihead_attention",
    "einsum_attention", "pixel_shuffle", "roll", "pad_reflect", "beit", "lstm",
}
#: compiled for x86_64 in the slow test (a few per family; each compile takes seconds)
COMPILED = ["mobilenet_v1", "segformer", "vit", "bert", "llama", "qwen2_lm", "clip_text", "whisper_encoder", "multihead_attention", "pad_reflect", "roll"]


def test_the_zoo_is_real_and_large_enough():
    families = [e.family for e in realzoo.ENTRIES.values()]
    assert len(realzoo.ENTRIES) >= 30
    assert families.count("vision") >= 12 and families.count("text") >= 12
    assert QUICK <= PASSING <= set(realzoo.ENTRIES) and set(COMPILED) <= PASSING


def test_builders_are_deterministic_and_leave_the_global_rng_alone():
    state = torch.get_rng_state()
    (m1, x1), (m2, x2), (m3, _) = (realzoo.ENTRIES["vit"].build(seed=s) for s in (0, 0, 1))
    assert torch.equal(torch.get_rng_state(), state)
    assert not m1.training
    with torch.no_grad():
        assert torch.equal(m1(*x1), m2(*x2))
        assert not torch.equal(m1(*x1), m3(*x1))


@pytest.mark.slow
def test_every_entry_computes_something():
    """No entry's output is constant (a degenerate model would match anything)."""
    for name, entry in realzoo.ENTRIES.items():
        model, inputs = entry.build()
        with torch.no_grad():
            out = model(*inputs)
        assert torch.isfinite(out).all() and out.std() > 1e-3, name


@pytest.mark.parametrize("name", [n if n in QUICK else pytest.param(n, marks=pytest.mark.slow) for n in sorted(PASSING)])
def test_passing_entry_traces_round_trips_and_matches_torch(name):
    row = check(realzoo.ENTRIES[name], compile=False)
    assert row.trace == "ok"
    assert row.round_trip == "ok"
    assert isinstance(row.interp, float) and row.interp <= TOLERANCE, row.interp


#: the entries sliver refuses, each with the named error it must raise before compiling
REFUSED = {"detection_filter": "DataDependentShapeError"}


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_refused_entries_say_why_before_compiling(name, monkeypatch):
    import sliver
    import sliver.backends.tvm.build as build

    def no_compile(*a, **k):
        raise AssertionError("nothing may be compiled")

    assert set(realzoo.ENTRIES) == PASSING | set(REFUSED)
    monkeypatch.setattr(build, "compile_module", no_compile)
    model, inputs = realzoo.ENTRIES[name].build()
    with pytest.raises(SliverError) as err:
        sliver.lower(model, inputs, target="x86_64", tune=False)
    assert type(err.value).__name__ == REFUSED[name]
    assert err.value.problems and all(op.startswith("aten.") for op, _, _ in err.value.problems)
    assert check(realzoo.ENTRIES[name], compile=False).trace.startswith(REFUSED[name])


def test_rel_error_and_round_trip_can_fail():
    ref = np.array([1.0, -2.0, 4.0])
    assert rel_error(ref, ref) == 0.0
    assert rel_error(ref + np.array([0, 0, 0.004]), ref) == pytest.approx(1e-3)
    assert rel_error(ref[:2], ref) == float("inf")

    import sliver
    from sliver.ir import printer

    model, inputs = realzoo.ENTRIES["resnet"].build()
    module = sliver.trace(model, inputs)
    assert round_trip(module) == "ok"
    real = printer.print_module
    try:  # a printer whose output differs each time is caught
        calls = iter(range(100))
        printer.print_module = lambda m: real(m) + "#" * next(calls)
        assert round_trip(module) == "differs"
    finally:
        printer.print_module = real


def compiled(name):
    """``name`` lowered for x86_64 and saved; its path (a tests/precompile.py job)."""
    import sliver

    model, inputs = realzoo.ENTRIES[name].build()
    return sliver.lower(model, inputs, target="x86_64", tune=False).save(precompile.out(f"realzoo-{name}.sliver"))


@pytest.mark.slow
@pytest.mark.parametrize("name", COMPILED)
@pytest.mark.precompiled.with_args(lambda params: [("call", "test_realzoo", "compiled", params["name"])])
def test_compiled_entry_matches_torch_on_x86(name):
    import sliver

    path = precompile.get(("call", "test_realzoo", "compiled", name))
    model, inputs = realzoo.ENTRIES[name].build()
    with torch.no_grad():
        ref = model(*inputs).numpy()
    out = sliver.load(path).run(*[x.numpy() for x in inputs])[0]
    assert rel_error(out, ref) <= TOLERANCE


class _Unflatten(torch.nn.Module):
    def forward(self, x):
        y = (x * 2).detach_()  # in place, as transformers' rotary embeddings do
        return y.unflatten(-1, (2, -1)).unflatten(0, (1, 1)) + 1


def test_unflatten_and_in_place_detach_trace_to_reshapes():
    import sliver
    from sliver.ir.interp import run

    x = torch.randn(1, 3, 8)
    module = sliver.trace(_Unflatten(), (x,))
    assert sorted(op.kind for op in module.ops if op.kind not in ("param", "constant")) == ["add", "mul", "reshape", "reshape"]
    shapes = [op.result.type.shape for op in module.ops if op.kind == "reshape"]
    assert shapes == [(1, 3, 2, 4), (1, 1, 3, 2, 4)]
    np.testing.assert_allclose(run(module, [x.numpy()])[0], _Unflatten()(x).numpy(), rtol=1e-6)
