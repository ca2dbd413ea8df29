"""find-outliers: an analysis that finds super weights (and the super activations
they create) by one forward pass, attribution by contribution, and ablation."""

import json

import numpy as np
import pytest
import torch
from torch import nn

from helpers import MLPBlock as Block
from helpers import dedent, run_pass
from sliver.api import trace
from sliver.common.errors import SliverError
from sliver.ir.parser import parse_module
from sliver.passes.manager import PassManager, make_pass, parse_pipeline
from sliver.passes.outliers import default_inputs, find_outliers, format_report
import zoo

TEXT = dedent("""
    func @m(%x: f32[1,8,16]) {
      %up.weight = param : f32[64,16]
      %up.bias = param : f32[64]
      %down.weight = param : f32[16,64]
      %up = linear(%x, %up.weight, %up.bias) : f32[1,8,64]
      %gelu = gelu(%up) : f32[1,8,64]
      %down = linear(%gelu, %down.weight) : f32[1,8,16]
      %add = add(%x, %down) : f32[1,8,16]
      return %add
    }
""")


def planted_block(weights):
    """A random block with ``weights`` = {(row, col): value} planted in down.weight."""
    torch.manual_seed(0)
    model = Block().eval()
    with torch.no_grad():
        for (r, c), v in weights.items():
            model.down.weight[r, c] = v
    return trace(model, (torch.randn(1, 8, 16),))


def test_golden_text_is_unchanged():
    # an analysis: the IR comes out as it went in (zero params: nothing to report)
    assert run_pass(TEXT, "find-outliers") == TEXT


def test_golden_text_unchanged_while_reporting():
    rng = np.random.default_rng(0)
    params = {"up.weight": rng.standard_normal((64, 16)).astype(np.float32) * 0.25,
              "up.bias": np.zeros(64, np.float32),
              "down.weight": rng.standard_normal((16, 64)).astype(np.float32) * 0.1}
    params["down.weight"][5, 7] = 80.0
    module = parse_module(TEXT, params=params)
    before = {k: v.copy() for k, v in module.params.items()}
    (record,) = PassManager("find-outliers").run(module)
    assert str(module) == TEXT
    assert not record.changed
    assert all(np.array_equal(module.params[k], before[k]) for k in before)
    assert [(w["layer"], w["row"], w["column"]) for w in record.notes["super_weights"]] == [("down.weight", 5, 7)]


def test_planted_super_weight_is_found_with_ablation_numbers():
    module = planted_block({(3, 40): 100.0})
    report = find_outliers(module)
    json.dumps(report)  # JSON-serializable as is
    (w,) = report["super_weights"]
    assert (w["layer"], w["row"], w["column"]) == ("down.weight", 3, 40)
    assert w["weight"] == pytest.approx(100.0)
    assert abs(w["spike_before"]) > 100 * report["super_activations"][0]["median"] / 2
    assert abs(w["spike_after"]) < 0.05 * abs(w["spike_before"])  # ablation removes the spike
    assert w["contribution"] == pytest.approx(w["weight"] * w["input_activation"], rel=1e-5)
    assert w["massive_removed"] == w["massive_total"] > 0
    outputs = [a for a in report["super_activations"] if a["site"] == "output"]
    assert outputs and all(a["channel"] == 3 and a["ratio"] > 100 for a in outputs)
    assert all(a["removed_by"] == ["down.weight[3,40]"] for a in outputs)
    assert not report["unexplained_spikes"]
    text = format_report(report)
    assert "super weights: 1" in text and "down.weight" in text


def test_split_spike_needs_both_weights():
    # up rows 40 and 41 made identical: hidden channels 40 and 41 are equal, and two
    # planted weights share one spike; neither alone explains it
    torch.manual_seed(0)
    model = Block().eval()
    with torch.no_grad():
        model.up.weight[41] = model.up.weight[40]
        model.up.bias[41] = model.up.bias[40]
        model.down.weight[3, 40] = 70.0
        model.down.weight[3, 41] = 50.0
    report = find_outliers(trace(model, (torch.randn(1, 8, 16),)))
    found = {(w["row"], w["column"]): w for w in report["super_weights"]}
    assert set(found) == {(3, 40), (3, 41)}
    big = found[(3, 40)]
    spike = max(big["spikes"], key=lambda s: abs(s["before"]))
    assert sorted(c for _, _, c in spike["group"]) == [40, 41]
    assert abs(spike["after_group"]) < 0.05 * abs(spike["before"])  # zeroing both removes it
    assert 0.3 < big["spike_shrink"] < 0.6  # zeroing the 70 leaves the 50's share (50/120)
    assert any("+" in label for a in report["super_activations"] for label in a["removed_by"])


@pytest.mark.parametrize("stride,padding", [(1, 0), (2, 1)])
def test_planted_in_a_1x1_conv(stride, padding):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(),
                          nn.Conv2d(16, 8, 1, stride=stride, padding=padding)).eval()
    with torch.no_grad():
        model[2].weight[2, 5, 0, 0] = 200.0
    report = find_outliers(trace(model, (torch.randn(1, 3, 8, 8),)))
    assert report["projections"] == 1  # the 3x3 conv is not a projection
    (w,) = report["super_weights"]
    assert (w["layer"], w["row"], w["column"]) == ("2.weight", 2, 5)
    assert abs(w["spike_after"]) < 0.05 * abs(w["spike_before"])
    assert w["contribution"] == pytest.approx(w["weight"] * w["input_activation"], rel=1e-5)
    assert len(w["spikes"][0]["position"]) == 3  # (batch, row, column) of the pixel


def pointwise_cnn():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 1), nn.ReLU(),
                          nn.Conv2d(32, 16, 1, stride=2), nn.ReLU(), nn.Conv2d(16, 8, 1))
    return model.eval(), (torch.randn(1, 3, 16, 16),)


@pytest.mark.parametrize("name", ["bert", "llama", "vit", "pointwise_cnn"])
def test_random_weights_have_no_outliers(name):
    model, inputs = pointwise_cnn() if name == "pointwise_cnn" else zoo.MODELS[name]()
    report = find_outliers(trace(model, inputs))
    assert report["projections"] > 0
    assert report["super_weights"] == []
    assert report["super_activations"] == []


def test_a_model_without_linear_layers_is_a_clear_error():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 3)).eval()
    module = trace(model, (torch.randn(1, 3, 8, 8),))
    with pytest.raises(SliverError, match="no projection layers"):
        find_outliers(module)
    with pytest.raises(SliverError, match="find-outliers"):
        PassManager("find-outliers").run(module)


def test_bad_options_are_clear_errors():
    module = planted_block({})
    with pytest.raises(SliverError, match="ratio > 1"):
        find_outliers(module, ratio=0.5)
    with pytest.raises(SliverError, match="shrink"):
        find_outliers(module, shrink=1.5)


def test_pass_options_and_given_inputs():
    module = planted_block({(3, 40): 100.0})
    p = parse_pipeline("find-outliers{ratio=50,max_weights=2}")[0]
    assert (p.ratio, p.max_weights) == (50.0, 2)
    assert p.spec() == "find-outliers{ratio=50.0,max_weights=2}"
    x = np.random.default_rng(3).standard_normal((1, 8, 16)).astype(np.float32)
    given = make_pass("find-outliers", inputs=(x,))
    assert given.spec() == "find-outliers"
    (record,) = PassManager([given]).run(module)
    assert record.notes["inputs"] == {"x": "given (1x8x16 f32)"}
    assert [(w["row"], w["column"]) for w in record.notes["super_weights"]] == [(3, 40)]


def test_default_inputs_for_token_models():
    model, _ = zoo.MODELS["bert"]()
    module = trace(model, (torch.zeros(1, 16, dtype=torch.int64),))
    (ids,), described = default_inputs(module)
    assert ids.dtype == np.int64 and ids.shape == (1, 16) and 0 <= ids.min() and ids.max() < 1000
    assert "pseudo-random tokens in [0, 1000)" in described["input_ids"]
    (again,), _ = default_inputs(module)
    assert np.array_equal(ids, again)  # fixed
    (ids,), described = default_inputs(module, tokens="5,6,7")
    assert ids.reshape(-1).tolist() == [5, 6, 7] * 5 + [5]
    with pytest.raises(SliverError, match=r"\[0, 1000\)"):
        default_inputs(module, tokens="5,1000")


# ---------------------------------------------------------------------------- confirmation on a causal LM


def planted_decoder():
    """zoo's tiny Llama decoder with two planted weights in the FFN output projections,
    and 16 tokens it predicts itself (its greedy continuation: a low perplexity)."""
    model, (ids,) = zoo.MODELS["llama"](seed=1)
    with torch.no_grad():
        model.lm_head.weight *= 30  # confident predictions: a low perplexity that a lost spike raises
        model.layers[0].down_proj.weight[5, 17] = 60.0
        model.layers[1].down_proj.weight[9, 3] = -40.0
        for i in range(1, ids.shape[1]):
            ids[0, i] = model(ids)[0, i - 1].argmax()
    return trace(model, (ids,)), ids.numpy()


def perplexity_zeroed(module, ids, layer, row, col):
    """The confirmation's number, computed independently: the whole interpreter run."""
    from sliver.ir.interp import run
    from sliver.passes.outliers import next_token_loss

    work = module.clone()
    work.params = dict(module.params)
    if layer is not None:
        work.params[layer] = module.params[layer].copy()
        work.params[layer][row, col] = 0
    return float(np.exp(next_token_loss(run(work, [ids])[0], ids)))


def test_confirmation_splits_candidates_by_their_perplexity():
    module, ids = planted_decoder()
    plain = find_outliers(module)
    found = {(w["layer"], w["row"], w["column"]) for w in plain["super_weights"]}
    assert {("layers.0.down_proj.weight", 5, 17), ("layers.1.down_proj.weight", 9, 3)} <= found
    assert plain["confirmation"] is None and plain["candidates"] == []

    base = perplexity_zeroed(module, ids, None, 0, 0)
    effect = {k: perplexity_zeroed(module, ids, *k) for k in found}
    ranked = sorted(effect, key=lambda k: -effect[k])
    assert effect[ranked[0]] > 2 * effect[ranked[1]]  # one dominates: confirm between the two
    factor = (effect[ranked[0]] * effect[ranked[1]]) ** 0.5 / base
    report = find_outliers(module, confirm=[ids], confirm_factor=factor)
    json.dumps(report)
    conf = report["confirmation"]
    assert conf["perplexity"] == pytest.approx(base, rel=1e-5)
    assert conf["candidates"] == len(found) and conf["tokens"] == ids.size
    (sw,) = report["super_weights"]
    assert (sw["layer"], sw["row"], sw["column"]) == ranked[0]
    assert sw["perplexity"] == pytest.approx(effect[ranked[0]], rel=1e-4)  # the replay recomputes exactly
    assert sw["perplexity_ratio"] >= factor and "output_change" in sw
    cands = report["candidates"]
    assert [(c["layer"], c["row"], c["column"]) for c in cands] == ranked[1:]  # ranked by effect
    for c in cands:
        assert c["perplexity"] == pytest.approx(effect[(c["layer"], c["row"], c["column"])], rel=1e-4)
        assert c["perplexity_ratio"] < factor and not any(k.startswith("_") for k in c)
    text = format_report(report)
    assert "super weights: 1, ranked by the perplexity" in text
    assert f"candidates not confirmed (zeroed alone, perplexity below" in text


def test_confirmation_needs_a_causal_lm_and_matching_tokens():
    module = planted_block({(3, 40): 100.0})
    with pytest.raises(SliverError, match="causal language model"):
        find_outliers(module, confirm=[np.zeros((1, 8), np.int64)])
    module, ids = planted_decoder()
    with pytest.raises(SliverError, match="shape"):
        find_outliers(module, confirm=[ids[:, :8]])
    with pytest.raises(SliverError, match="confirm_factor"):
        find_outliers(module, confirm=[ids], confirm_factor=1.0)


def test_cli_searches_data_free_and_confirms_on_the_example_tokens(tmp_path, capsys):
    from sliver.tools.outliers import main

    spec = tmp_path / "decoder.py"
    spec.write_text(
        "import torch, zoo\n"
        "def model():\n"
        "    model, (ids,) = zoo.MODELS['llama'](seed=1)\n"
        "    with torch.no_grad():\n"
        "        model.lm_head.weight *= 30\n"
        "        model.layers[0].down_proj.weight[5, 17] = 60.0\n"
        "        model.layers[1].down_proj.weight[9, 3] = -40.0\n"
        "        for i in range(1, ids.shape[1]):\n"
        "            ids[0, i] = model(ids)[0, i - 1].argmax()\n"
        "    return model, (ids,)\n"
    )
    out_json = tmp_path / "outliers.json"
    assert main([f"{spec}:model", "--json", str(out_json), "--confirm-factor", "1.5"]) == 0
    text = capsys.readouterr().out
    report = json.loads(out_json.read_text())
    assert "pseudo-random tokens" in report["inputs"]["input_ids"]  # the search is data-free
    module, ids = planted_decoder()
    assert report["confirmation"]["perplexity"] == pytest.approx(perplexity_zeroed(module, ids, None, 0, 0),
                                                                 rel=1e-5)  # the example tokens confirm
    assert report["super_weights"] and "confirmation: perplexity of 16 given tokens" in text
    assert main([f"{spec}:model", "--json", str(out_json), "--no-confirm"]) == 0
    assert json.loads(out_json.read_text())["confirmation"] is None
