"""prune: constraint-free channel pruning, exact against the masked model."""

import numpy as np
import pytest
import torch
from torch import nn

import precompile
import sliver
from helpers import dedent, numpy_inputs
from sliver.common.errors import SliverError
from sliver.ir.interp import run
from sliver.ir.parser import parse_module
from sliver.passes.manager import PassManager, make_pass
from sliver.passes.prune import masked_copy
import zoo

BEFORE = dedent("""
    func @m(%x: f32[1,3,8,8]) {
      %a.weight = param : f32[6,3,3,3]
      %a.bias = param : f32[6]
      %b.weight = param : f32[4,6,1,1]
      %c.weight = param : f32[5,6,1,1]
      %a = conv2d(%x, %a.weight, %a.bias) {padding=[1, 1, 1, 1]} : f32[1,6,8,8]
      %r = relu(%a) : f32[1,6,8,8]
      %b = conv2d(%r, %b.weight) : f32[1,4,8,8]
      %c = conv2d(%r, %c.weight) : f32[1,5,8,8]
      %o = concat(%b, %c) {axis=1} : f32[1,9,8,8]
      return %o
    }
""")


def _prune_text(text, **options):
    m = parse_module(text)
    PassManager([make_pass("prune", **options)]).run(m)
    return str(m)


def test_golden_union_and_view():
    # a keeps the union {0, 2, 3}; b reads all of it, c a contiguous run (a view)
    assert _prune_text(BEFORE, masks={"b": [0, 2, 3], "c": [2, 3]}, reorder=False) == dedent("""
        func @m(%x: f32[1,3,8,8]) {
          %a.weight = param : f32[3,3,3,3]
          %a.bias = param : f32[3]
          %a = conv2d(%x, %a.weight, %a.bias) {padding=[1, 1, 1, 1]} : f32[1,3,8,8]
          %r = relu(%a) : f32[1,3,8,8]
          %b.weight = param : f32[4,3,1,1]
          %b = conv2d(%r, %b.weight) : f32[1,4,8,8]
          %r.view = slice(%r) {axis=1, start=1, end=3} : f32[1,2,8,8]
          %c.weight = param : f32[5,2,1,1]
          %c = conv2d(%r.view, %c.weight) : f32[1,5,8,8]
          %o = concat(%b, %c) {axis=1} : f32[1,9,8,8]
          return %o
        }
    """)


def test_golden_reorder_turns_a_gather_into_views():
    # natural order: b reads {0, 2, 4} (a gather), c reads {1..5} (a view); reordered
    # [1, 3, 5, 2, 4, 0] makes both contiguous: a's weight rows are permuted to match
    text = _prune_text(BEFORE, masks={"b": [0, 2, 4], "c": [1, 2, 3, 4, 5]})
    assert "take" not in text
    assert "%r.view = slice(%r) {axis=1, start=3, end=6} : f32[1,3,8,8]" in text
    assert "%r.view_1 = slice(%r) {axis=1, end=5} : f32[1,5,8,8]" in text
    natural = _prune_text(BEFORE, masks={"b": [0, 2, 4], "c": [1, 2, 3, 4, 5]}, reorder=False)
    assert "%r.gather = take(%r, %b.input_index) {axis=1} : f32[1,3,8,8]" in natural


def _random_params(text):
    rng = np.random.default_rng(0)
    return {k: rng.standard_normal(v.shape).astype(v.dtype) for k, v in parse_module(text).params.items()}


def _prune_random(text, **options):
    m = parse_module(text, _random_params(text))
    (record,) = PassManager([make_pass("prune", **options)]).run(m)
    return m, record.notes


def test_golden_output_side_masks_drop_the_zeroed_channels_everywhere():
    # a's rows 1, 4, 5 are zeroed; relu(0) = 0, so b and c stop reading them and a loses the rows
    m, notes = _prune_random(BEFORE, side="output", masks={"a": [0, 2, 3]})
    assert notes["masks"] == {"a": [0, 2, 3]} and notes["input_masks"] == {"b": [0, 2, 3], "c": [0, 2, 3]}
    assert str(m) == dedent("""
        func @m(%x: f32[1,3,8,8]) {
          %a.weight = param : f32[3,3,3,3]
          %a.bias = param : f32[3]
          %a = conv2d(%x, %a.weight, %a.bias) {padding=[1, 1, 1, 1]} : f32[1,3,8,8]
          %r = relu(%a) : f32[1,3,8,8]
          %b.weight = param : f32[4,3,1,1]
          %b = conv2d(%r, %b.weight) : f32[1,4,8,8]
          %c.weight = param : f32[5,3,1,1]
          %c = conv2d(%r, %c.weight) : f32[1,5,8,8]
          %o = concat(%b, %c) {axis=1} : f32[1,9,8,8]
          return %o
        }
    """)
    original = parse_module(BEFORE, _random_params(BEFORE))
    assert np.array_equal(m.params["a.weight"], original.params["a.weight"][[0, 2, 3]])


def test_output_side_keeps_zeroed_rows_whose_channel_is_not_zero_downstream():
    # sigmoid(0) = 0.5: the consumers still read a's masked channels, so a keeps them as zero rows;
    # b's masked rows reach the output through the concat and stay too
    text = BEFORE.replace("%r = relu(%a)", "%r = sigmoid(%a)")
    m, notes = _prune_random(text, side="output", masks={"a": [0, 2, 3], "b": [1, 2]})
    assert notes["input_masks"] == {}
    assert "f32[6,3,3,3]" in str(m) and "f32[4,6,1,1]" in str(m)
    assert not m.params["a.weight"][[1, 4, 5]].any() and not m.params["a.bias"][[1, 4, 5]].any()
    assert not m.params["b.weight"][[0, 3]].any() and m.params["b.weight"][[1, 2]].all()


def test_golden_gather():
    # c reads channels 0 and 3 of a's surviving {0, 2, 3}: positions 0 and 2, a gather
    assert _prune_text(BEFORE, masks={"b": [2, 3], "c": [0, 3]}, reorder=False) == dedent("""
        func @m(%x: f32[1,3,8,8]) {
          %a.weight = param : f32[3,3,3,3]
          %a.bias = param : f32[3]
          %a = conv2d(%x, %a.weight, %a.bias) {padding=[1, 1, 1, 1]} : f32[1,3,8,8]
          %r = relu(%a) : f32[1,3,8,8]
          %r.view = slice(%r) {axis=1, start=1, end=3} : f32[1,2,8,8]
          %b.weight = param : f32[4,2,1,1]
          %b = conv2d(%r.view, %b.weight) : f32[1,4,8,8]
          %c.input_index = param : i64[2]
          %r.gather = take(%r, %c.input_index) {axis=1} : f32[1,2,8,8]
          %c.weight = param : f32[5,2,1,1]
          %c = conv2d(%r.gather, %c.weight) : f32[1,5,8,8]
          %o = concat(%b, %c) {axis=1} : f32[1,9,8,8]
          return %o
        }
    """)


# -- exactness: exported == masked model -----------------------------------------------


def _prune_and_check(model, inputs, tol=1e-10, **options):
    module = sliver.trace(model, inputs)
    sliver.api.optimize(module)
    original = module.clone()
    (record,) = PassManager([make_pass("prune", **options)]).run(module)
    masked = masked_copy(original, record.notes["masks"], options.get("side", "input"))
    x = numpy_inputs(inputs)
    want = run(masked, x, dtype="f64")
    got = run(module, x, dtype="f64")
    for g, w in zip(got, want):
        assert np.abs(g - w).max() <= tol * max(1.0, np.abs(w).max())
    assert record.notes["report"]["params_after"] < record.notes["report"]["params_before"]
    return module, record.notes


MODES = {"naive": dict(reorder=False), "reordered": dict(reorder=True), "constrained": dict(constrained=True),
         "output-naive": dict(side="output", reorder=False), "output-reordered": dict(side="output")}


@pytest.fixture(scope="module")
def zoo_pruned():
    """name -> mode -> notes, every export checked against the masked model."""
    out = {}
    for name in ["resnet18", "mobilenet_v2", "densenet", "efficientnet"]:
        model, inputs = zoo.MODELS[name]()
        out[name] = {mode: _prune_and_check(model, inputs, method="l2", amount=0.3, **opts)[1]
                     for mode, opts in MODES.items()}
    return out


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2", "densenet", "efficientnet"])
def test_zoo_exact_in_float64_and_reorder_changes_only_the_layout(name, zoo_pruned):
    notes = zoo_pruned[name]
    assert notes["constrained"]["report"]["gathers"] == 0  # constrained pruning never copies
    for naive, reordered in [(notes["naive"], notes["reordered"]), (notes["output-naive"], notes["output-reordered"])]:
        assert naive["masks"] == reordered["masks"]
        for key in ("params_after", "macs_after"):
            assert naive["report"][key] == reordered["report"][key]
        assert reordered["report"]["bytes_copied"] <= naive["report"]["bytes_copied"]
        # the reorder summary predicts what the export copies: what the heuristic left + what no order avoids
        r = reordered["report"]["reorder"]
        assert r["heuristic_bytes"] + r["unavoidable_bytes"] == reordered["report"]["bytes_copied"]
        assert r["searched_bytes"] >= r["optimum_bytes"]
    # output-side masks remove the masked rows wherever the zeros reach only consumers
    assert notes["output-naive"]["report"]["params_after"] < 0.9 * notes["output-naive"]["report"]["params_before"]


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2", "efficientnet"])
def test_reorder_copies_at_most_half_of_naive(name, zoo_pruned):
    naive = zoo_pruned[name]["naive"]["report"]["bytes_copied"]
    reordered = zoo_pruned[name]["reordered"]["report"]["bytes_copied"]
    assert naive > 0 and reordered <= naive / 2


@pytest.mark.parametrize("method", ["l1", "l2", "fpgm"])
@pytest.mark.parametrize("scope", ["layer", "global"])
def test_methods_and_scopes_are_exact(method, scope):
    model, inputs = zoo.resnet18(width=16)
    _prune_and_check(model, inputs, method=method, amount=0.4, scope=scope)


class Topologies(nn.Module):
    """A residual joined by three producers and read by three consumers, a concat
    feeding a consumer, two inputs, a depthwise conv, and conv → flatten → linear."""

    def __init__(self):
        super().__init__()
        self.p1 = nn.Conv2d(3, 8, 3, padding=1)
        self.p2 = nn.Conv2d(3, 8, 1)
        self.p3 = nn.Conv2d(4, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.c1 = nn.Conv2d(8, 6, 1)
        self.c2 = nn.Conv2d(8, 6, 3, padding=1)
        self.c3 = nn.Conv2d(16, 5, 1)
        self.fc = nn.Linear(11 * 4 * 4, 7)

    def forward(self, x, y):
        s = self.p1(x) + self.p2(x) + self.p3(y)
        s = torch.relu(self.bn(s))
        d = torch.relu(self.dw(s))
        a = self.c1(d)
        b = self.c2(s)
        cat = torch.cat([s, d], 1)
        c = self.c3(cat)
        z = torch.cat([a + b, c], 1)
        z = nn.functional.max_pool2d(z, 2)
        return self.fc(torch.flatten(z, 1))


def _topologies():
    torch.manual_seed(3)
    model = Topologies().eval()
    with torch.no_grad():
        model.bn.running_mean.uniform_(-1, 1)
        model.bn.running_var.uniform_(0.5, 2)
    return model, (torch.randn(1, 3, 8, 8), torch.randn(1, 4, 8, 8))


@pytest.mark.parametrize("amount", [0.25, 0.5, 0.75])
def test_hand_built_topologies_exact(amount):
    model, inputs = _topologies()
    module, notes = _prune_and_check(model, inputs, method="l2", amount=amount)
    assert "fc" in notes["masks"]  # the linear after flatten is pruned per feature


@pytest.mark.parametrize("amount", [0.25, 0.5, 0.75])
@pytest.mark.parametrize("scope", ["layer", "global"])
def test_output_side_hand_built_topologies_exact(amount, scope):
    model, inputs = _topologies()
    _prune_and_check(model, inputs, method="l1", amount=amount, scope=scope, side="output")


def test_output_side_user_masks_on_every_kind_of_producer():
    # p1..p3 join a residual followed by a batch norm (bn(0) != 0: their zeroed rows stay),
    # c1/c2 feed an add (a channel both zero is dropped), c3 a concat
    model, inputs = _topologies()
    masks = {"p1": [0, 1, 2], "p2": [0, 1, 2, 5], "p3": [0, 1, 2, 7], "c1": [0, 1], "c2": [0, 1, 4],
             "c3": [0, 4]}
    module, notes = _prune_and_check(model, inputs, masks=masks, side="output")
    out = {r["name"]: r["out_after"] for r in notes["report"]["layers"]}
    assert (out["p1"], out["p2"], out["p3"]) == (8, 8, 8)
    assert (out["c1"], out["c2"], out["c3"]) == (3, 3, 2)


def test_user_masks_on_hand_built_topologies():
    model, inputs = _topologies()
    masks = {"c1": [0, 1, 7], "c2": [1, 2, 3, 4], "c3": [0, 5, 6, 9, 15], "fc": list(range(0, 176, 3))}
    reads = {}
    for reorder in (False, True):
        module, notes = _prune_and_check(model, inputs, masks=masks, reorder=reorder)
        reads[reorder] = {r["name"]: r["read"] for r in notes["report"]["layers"]}
    # c3 reads cat(s, d), where d = relu(dw(s)) has s's channels: {0, 5, 6} of the first block and
    # {1, 7} of the second; permuting the block to [1, 7, ..., 0, 5, 6] makes that one run
    assert reads[False]["c3"] == "gather" and reads[True]["c3"] == "view"


# -- bad input -----------------------------------------------------------------------------


def test_bad_input_errors():
    m = parse_module(BEFORE)
    with pytest.raises(SliverError, match=r"masks name unknown layer\(s\) \['nope'\]; prunable layers: a, b, c"):
        PassManager([make_pass("prune", masks={"nope": [0]})]).run(m)
    with pytest.raises(SliverError, match=r"amount must be in \[0, 1\), got 1.0"):
        PassManager([make_pass("prune", amount=1.0)]).run(parse_module(BEFORE))
    with pytest.raises(SliverError, match="the mask of b keeps no channel: a layer needs at least one input"):
        PassManager([make_pass("prune", masks={"b": []})]).run(parse_module(BEFORE))
    with pytest.raises(SliverError, match="the mask of a keeps no channel: a layer needs at least one output"):
        PassManager([make_pass("prune", side="output", masks={"a": []})]).run(parse_module(BEFORE))
    with pytest.raises(SliverError, match="names channel 6, but the layer has 6 output channels"):
        PassManager([make_pass("prune", side="output", masks={"a": [6]})]).run(parse_module(BEFORE))
    with pytest.raises(SliverError, match=r"side must be 'input' or 'output', got 'both'"):
        PassManager([make_pass("prune", side="both")]).run(parse_module(BEFORE))
    with pytest.raises(SliverError, match=r"amount must be in \[0, 1\), got -0.1"):
        PassManager([make_pass("prune", side="output", amount=-0.1)]).run(parse_module(BEFORE))
    with pytest.raises(SliverError, match="constrained pruning chooses whole coupled channel groups"):
        PassManager([make_pass("prune", constrained=True, side="output")]).run(parse_module(BEFORE))
    with pytest.raises(SliverError, match="names channel 9, but the layer has 6 input channels"):
        PassManager([make_pass("prune", masks={"b": [0, 9]})]).run(parse_module(BEFORE))
    no_layers = dedent("""
        func @m(%x: f32[1,3,8,8]) {
          %r = relu(%x) : f32[1,3,8,8]
          return %r
        }
    """)
    with pytest.raises(SliverError, match="no conv2d/linear layer"):
        PassManager("prune").run(parse_module(no_layers))


def test_matched_constrained_reaches_the_unconstrained_size():
    # at the same amount constrained pruning removes more (whole coupled groups); the
    # bisection finds the amount whose parameter count matches the unconstrained export's
    from sliver.passes.prune import matched_constrained, pruned

    model, inputs = zoo.resnet18(width=16)
    base = sliver.trace(model, inputs)
    sliver.api.optimize(base)
    free, free_report = pruned(base, method="l2", amount=0.3)
    same_amount = pruned(base, method="l2", amount=0.3, constrained=True)[1]["params_after"]
    target = free_report["params_after"]
    assert same_amount < target
    module, report, amount = matched_constrained(base, target, method="l2")
    assert abs(report["params_after"] - target) <= 0.03 * target
    assert 0.0 < amount < 0.3 and report["gathers"] == 0
    assert sliver.passes.prune.count_params_and_macs(module)[0] == report["params_after"]


def test_pipeline_option_syntax():
    (p,) = PassManager("prune{method=fpgm,amount=0.5,constrained=true}").passes
    assert (p.method, p.amount, p.constrained) == ("fpgm", 0.5, True)


def _pruned_for_compile(name, side):
    model, inputs = {"topologies": _topologies, "resnet18": lambda: zoo.resnet18(width=16),
                     "mobilenet_v2": lambda: zoo.mobilenet_v2(width_mult=0.25),
                     "densenet": lambda: zoo.densenet(resolution=16),
                     "efficientnet": lambda: zoo.efficientnet(resolution=16)}[name]()
    module = sliver.trace(model, inputs)
    sliver.api.optimize(module)
    original = module.clone()
    (record,) = PassManager(f"prune{{amount=0.4,side={side}}}").run(module)
    return inputs, original, module, record


def lowered_pruned(name, side):
    """The pruned module lowered for x86_64 (a tests/precompile.py job): the saved path."""
    inputs, _, module, _ = _pruned_for_compile(name, side)
    return sliver.lower(module, inputs, target="x86_64", passes="").save(precompile.out(f"pruned-{name}-{side}.sliver"))


@pytest.mark.slow
@pytest.mark.precompiled.with_args(lambda params: [("call", "test_prune", "lowered_pruned", params["name"], params["side"])])
@pytest.mark.parametrize("side", ["input", "output"])
@pytest.mark.parametrize("name", ["topologies", "resnet18", "mobilenet_v2", "densenet", "efficientnet"])
def test_compiled_x86_equals_masked_model(name, side):
    # the EfficientNet-style net: odd channel counts whose padding channels the lowering
    # carries through silu, depthwise convs, squeeze-and-excite (sigmoid(0) = 0.5) and adds
    inputs, original, module, record = _pruned_for_compile(name, side)
    want = run(masked_copy(original, record.notes["masks"], side), numpy_inputs(inputs))
    # lowered_pruned(name, side): compiled ahead on the precompile worker (tests/precompile.py)
    got = sliver.load(precompile.get(("call", "test_prune", "lowered_pruned", name, side))).run(*numpy_inputs(inputs))
    for g, w in zip(got, want):
        assert np.abs(g - w).max() <= 1e-5 * max(1.0, np.abs(w).max())


# -- activation-aware scores ---------------------------------------------------------------


def test_activation_aware_scores_drop_the_channel_that_is_silent():
    # b's column 0 is its largest, but a's channel 0 is always 0 after the relu (bias -100):
    # l2 drops b's smallest column (5), act (column norm x input RMS) drops column 0
    params = _random_params(BEFORE)
    params["a.bias"][0] = -100.0
    params["a.weight"][0] = 0.01
    params["b.weight"][:, 0] *= 50
    params["b.weight"][:, 5] *= 0.01
    params["c.weight"][:] = 1.0
    x = np.random.default_rng(1).uniform(-1, 1, (1, 3, 8, 8)).astype(np.float32)
    kept = {}
    for method, extra in [("l2", {}), ("act", {"calibration": (x,)})]:
        m = parse_module(BEFORE, {k: v.copy() for k, v in params.items()})
        (record,) = PassManager([make_pass("prune", method=method, amount=0.2, **extra)]).run(m)
        kept[method] = record.notes["masks"]["b"]
    assert kept == {"l2": [0, 1, 2, 3, 4], "act": [1, 2, 3, 4, 5]}
    # measured once, reused: the same masks from input_rms's result
    from sliver.passes.prune import input_rms

    m = parse_module(BEFORE, {k: v.copy() for k, v in params.items()})
    rms = input_rms(m, (x,))
    assert rms["r"][0] == 0.0 and (rms["r"][1:] > 0).all() and set(rms) == {"x", "r"}  # every layer input
    (record,) = PassManager([make_pass("prune", method="act", amount=0.2, activations=rms)]).run(m)
    assert record.notes["masks"]["b"] == kept["act"]


def test_activation_aware_scores_need_calibration_inputs():
    with pytest.raises(SliverError, match="method act needs calibration inputs"):
        PassManager("prune{method=act}").run(parse_module(BEFORE, _random_params(BEFORE)))
    with pytest.raises(SliverError, match="method act scores input channels"):
        PassManager([make_pass("prune", method="act", side="output",
                               calibration=(np.zeros((1, 3, 8, 8), np.float32),))]).run(
            parse_module(BEFORE, _random_params(BEFORE)))
