"""Generating artifacts (sliver.lower_llm, CompiledModel.generate, `sliver generate`):
a tiny random-weight Llama with a byte-level BPE tokenizer trained here, lowered once
with a KV cache of MAX_LEN positions, against transformers' own greedy generate."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest
import torch

import precompile
import sliver
from sliver.common.errors import ArtifactError, InputError
from sliver.runtime.generate import ContextLengthError
from sliver.tools.emulator import emulate

MAX_LEN = 48
PROMPTS = ("The quick brown fox", "def f(x):\n    return", "Numbers: 1, 2, 3,")


def emulated(test):
    skip = pytest.mark.skipif(not emulate.is_ready(), reason="emulated Raspberry Pi not installed")
    return pytest.mark.slow(pytest.mark.emulated(skip(test)))


def tokenizer():
    """A byte-level BPE tokenizer of 320 tokens trained on a fixed text (Python's own
    documentation topics), deterministic."""
    from pydoc_data.topics import topics
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=["<eos>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    text = [topics[k] for k in sorted(topics)][:40]
    tok.train_from_iterator(text, trainer)
    return tok


def tiny():
    """(model, tokenizer): a 2-layer Llama (hidden 64, 4 heads, 2 kv heads) with random weights."""
    import transformers as t

    tok = tokenizer()
    level = t.logging.get_verbosity()
    t.logging.set_verbosity_error()
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            cfg = t.LlamaConfig(vocab_size=tok.get_vocab_size(), hidden_size=64, intermediate_size=128,
                                num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                max_position_embeddings=128, eos_token_id=tok.token_to_id("<eos>"),
                                bos_token_id=None, pad_token_id=None)
            model = t.LlamaForCausalLM(cfg).eval()
    finally:
        t.logging.set_verbosity(level)
    return model, tok


def lowered(target: str, prefill: str = "token") -> str:
    model, tok = tiny()
    path = precompile.out(f"generate-tiny-{target}-{prefill}.sliver")
    sliver.lower_llm(model, tok, max_len=MAX_LEN, target=target, prefill=prefill).save(path)
    return str(path)


def _job(*targets):
    return pytest.mark.precompiled.with_args(lambda params: [("call", "test_generate", "lowered", t) for t in targets])


def reference(model, ids, n):
    """transformers' greedy generate: the new token ids."""
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                             max_new_tokens=n, do_sample=False, pad_token_id=model.config.eos_token_id)
    return out[0, len(ids):].tolist()


@pytest.fixture(scope="module")
def tiny_model():
    return tiny()


@pytest.fixture(scope="module")
def loaded():
    return sliver.load(precompile.get(("call", "test_generate", "lowered", "x86_64")))


@pytest.mark.precompiled.with_args(lambda params: [("call", "test_generate", "lowered", "x86_64"),
                                                   ("call", "test_generate", "lowered", "x86_64", "dynamic")])
@pytest.mark.parametrize("prefill", ["token", "dynamic"])
def test_greedy_equals_transformers_token_for_token(prefill, loaded, tiny_model):
    """Prefill token by token (a one-token step) or in one step (a step of any length)."""
    model, tok = tiny_model
    if prefill == "dynamic":
        loaded = sliver.load(precompile.get(("call", "test_generate", "lowered", "x86_64", "dynamic")))
        assert loaded.inputs[0].shape == [1, "tokens"] and loaded.manifest.dims[0].max == MAX_LEN
    else:
        assert loaded.inputs[0].shape == [1, 1] and loaded.manifest.dims == []
    for prompt in PROMPTS:
        ids = tok.encode(prompt).ids
        n = MAX_LEN - len(ids) + 1  # fills the cache to its last position
        want = reference(model, ids, n)
        g = loaded.generate(prompt, max_new_tokens=n)
        assert g.prompt_tokens == ids
        assert g.tokens == want, prompt
        assert g.text == tok.decode(want)
        assert g.time_to_first_token > 0 and len(g.step_seconds) == len(g.tokens) - 1
        # streamed: the pieces make the same text, by iterator and by callback
        assert "".join(loaded.stream(prompt, max_new_tokens=n)) == g.text
        pieces = []
        assert loaded.generate(ids, max_new_tokens=n, callback=pieces.append).tokens == want
        assert "".join(pieces) == g.text


@_job("x86_64")
def test_the_artifact_carries_the_tokenizer_and_its_step_function(loaded, tiny_model):
    model, tok = tiny_model
    llm = loaded.manifest.llm
    assert (llm.max_len, llm.layers, llm.kv_heads, llm.head_dim, llm.vocab) == (MAX_LEN, 2, 2, 16, 320)
    assert llm.eos == [tok.token_to_id("<eos>")] and llm.tokenizer.bytes == len(loaded.artifact.tokenizer)
    assert json.loads(loaded.artifact.tokenizer) == json.loads(tok.to_str())
    assert [s.name for s in loaded.inputs] == ["input_ids", "position", "k_cache", "v_cache"]
    assert all(r["ok"] for r in loaded.verify())  # the golden step


@_job("x86_64")
def test_sampling_is_reproducible_with_a_seed(loaded):
    kw = dict(max_new_tokens=12, temperature=1.5, stop_at_eos=False)
    a = loaded.generate(PROMPTS[0], seed=7, **kw).tokens
    assert loaded.generate(PROMPTS[0], seed=7, **kw).tokens == a
    others = {tuple(loaded.generate(PROMPTS[0], seed=s, **kw).tokens) for s in range(1, 6)}
    assert len(others | {tuple(a)}) > 1  # other seeds, other samples
    greedy = loaded.generate(PROMPTS[0], max_new_tokens=12, stop_at_eos=False).tokens
    assert greedy != a
    # top_k=1 and a tiny top_p keep only the most likely token: greedy, whatever the seed
    assert loaded.generate(PROMPTS[0], seed=3, top_k=1, **kw).tokens == greedy
    assert loaded.generate(PROMPTS[0], seed=3, top_p=1e-9, **kw).tokens == greedy


@_job("x86_64")
def test_a_prompt_longer_than_the_cache_is_a_named_error(loaded):
    with pytest.raises(ContextLengthError, match=f"more than the artifact's KV cache of {MAX_LEN}"):
        loaded.generate(list(range(MAX_LEN + 1)), max_new_tokens=1)
    with pytest.raises(ContextLengthError, match=r"at most 9\)"):
        loaded.generate(list(range(40)), max_new_tokens=10)
    assert len(loaded.generate(list(range(40)), max_new_tokens=9, stop_at_eos=False).tokens) == 9
    for bad, match in (([], "empty"), ([1, 320], "outside the vocabulary"), (3.5, "text .* or token ids")):
        with pytest.raises(InputError, match=match):
            loaded.generate(bad, max_new_tokens=2)
    for kw, match in ((dict(temperature=-1), "temperature"), (dict(top_p=0), "top_p"),
                      (dict(max_new_tokens=0), "max_new_tokens"), (dict(top_k=0), "top_k")):
        with pytest.raises(InputError, match=match):
            loaded.generate("x", **kw)


def _rewrite(src, dst, change) -> None:
    with zipfile.ZipFile(src) as z:
        entries = {n: z.read(n) for n in z.namelist()}
    change(entries)
    with zipfile.ZipFile(dst, "w") as z:
        for n, d in entries.items():
            z.writestr(n, d)


@_job("x86_64")
def test_bad_generating_artifacts_are_refused_before_use(tmp_path, example_x86):
    path = precompile.get(("call", "test_generate", "lowered", "x86_64"))

    def tokenizer_edit(e):
        e["tokenizer.json"] = e["tokenizer.json"].replace(b"<eos>", b"<eoz>")

    def tokenizer_gone(e):
        del e["tokenizer.json"]

    def manifest(change):
        def edit(e):
            m = json.loads(e["manifest.json"])
            change(m)
            e["manifest.json"] = json.dumps(m).encode()
        return edit

    cases = [
        (tokenizer_edit, "tokenizer.json does not match the manifest's sha256"),
        (tokenizer_gone, "declares tokenizer.json but the archive has none"),
        (manifest(lambda m: m["llm"].update(max_len=64)), "llm: a generating artifact's inputs"),
        (manifest(lambda m: m["inputs"][0].update(shape=[1, 2])), r"inputs\[0\].shape: a generating artifact's"),
        (manifest(lambda m: m["llm"].update(eos=[999])), r"llm.eos\[0\]: expected a token id"),
        (manifest(lambda m: m["llm"].pop("vocab")), "llm.vocab: missing"),
        (manifest(lambda m: m.update(format_version=3)), "llm: not a field of format version 3"),
    ]
    for i, (change, match) in enumerate(cases):
        bad = tmp_path / f"bad{i}.sliver"
        _rewrite(path, bad, change)
        with pytest.raises(ArtifactError, match=match):
            sliver.load(bad)
    # a tokenizer an ordinary artifact does not declare
    bad = tmp_path / "extra.sliver"
    _rewrite(example_x86, bad, lambda e: e.update({"tokenizer.json": b"{}"}))
    with pytest.raises(ArtifactError, match="not declared by the manifest"):
        sliver.load(bad)
    # generating with an ordinary artifact
    with pytest.raises(InputError, match="not a generating artifact.*lower_llm"):
        sliver.load(example_x86).generate("hi")


@_job("x86_64")
def test_sliver_generate_streams_and_reports_speed(capsys, tiny_model):
    from sliver.runtime.cli import main

    model, tok = tiny_model
    path = precompile.get(("call", "test_generate", "lowered", "x86_64"))
    ids = tok.encode(PROMPTS[1]).ids
    want = reference(model, ids, 10)
    assert main(["generate", path, "--prompt", PROMPTS[1], "--max-new-tokens", "10"]) == 0
    out, err = capsys.readouterr()
    assert out == tok.decode(want) + "\n"
    assert f"{len(ids)} prompt tokens, {len(want)} generated" in err
    assert "time to first token" in err and "tokens/s" in err
    assert main(["generate", path, "--prompt-ids", ",".join(map(str, ids)), "--max-new-tokens", "10", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["tokens"] == want
    assert main(["generate", path, "--prompt-ids", "1,x"]) == 2
    assert "--prompt-ids" in capsys.readouterr().err
    assert main(["generate", path, "--prompt", "a" * 200, "--max-new-tokens", "5"]) == 2
    assert "KV cache of 48" in capsys.readouterr().err


@_job("arm64", "x86_64")
@emulated
def test_emulated_pi_generates_what_transformers_does(tiny_model):
    model, tok = tiny_model
    path = precompile.get(("call", "test_generate", "lowered", "arm64"))
    ids = tok.encode(PROMPTS[0]).ids
    want = reference(model, ids, 12)

    def on_pi(*args):  # the Pi has no tokenizers library: token ids in, token ids out
        proc = emulate.run_module(["generate", path, "--prompt-ids", ",".join(map(str, ids)), "--json", *args])
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout.strip().splitlines()[-1])

    got = on_pi("--max-new-tokens", "12")
    assert got["tokens"] == want and got["text"] is None
    # sampling with a seed picks the same tokens on the Pi as here
    sampled = on_pi("--max-new-tokens", "6", "--temperature", "0.9", "--seed", "5", "--no-stop")["tokens"]
    here = sliver.load(precompile.get(("call", "test_generate", "lowered", "x86_64")))
    assert sampled == here.generate(ids, max_new_tokens=6, temperature=0.9, seed=5, stop_at_eos=False).tokens


#: a weight of the tiny model held out of its block and kept exact (quantize-weights{keep_super=true})
SUPER = {"layer": "model.model.layers.1.mlp.down_proj.weight", "row": 3, "column": 5}
#: the W4 pipelines: blocks of 32 (LM head float), blocks of 128 with a kept weight and the LM head quantized
W4 = {"b32": "quantize-weights{bits=4,granularity=block,block=32,symmetric=false,clip=true}",
      "b128": "quantize-weights{bits=4,granularity=block,block=128,symmetric=false,clip=true,keep_super=true,"
              "index=INDEX,head=true}",
      "b32-int8": "quantize-weights{bits=4,granularity=block,block=32,symmetric=false,clip=true,activations=int8}"}


def w4_pipeline(which: str) -> str:
    from sliver.api import DEFAULT_PIPELINE

    index = precompile.out("generate-tiny-super.json")
    index.write_text(json.dumps([SUPER]))
    return f"{DEFAULT_PIPELINE},{W4[which].replace('INDEX', str(index))},dce"


def quantized(which: str = "b32") -> str:
    """The tiny model with 4-bit weights (the quantize-weights pass, :data:`W4`)."""
    model, tok = tiny()
    path = precompile.out(f"generate-tiny-w4-{which}.sliver")
    sliver.lower_llm(model, tok, max_len=MAX_LEN, target="x86_64", passes=w4_pipeline(which)).save(path)
    return str(path)


def interpreted(model, passes: str, ids, n: int) -> list[int]:
    """Greedy tokens of the generating step traced, run through ``passes`` and executed by
    sliver's interpreter (the ops' reference semantics), one token per step."""
    from sliver.api import trace
    from sliver.ir.interp import run
    from sliver.llm import _grouped_attention, _torch_module, cache_shape
    from sliver.passes.manager import PassManager, parse_pipeline

    shape = cache_shape(model.config, MAX_LEN)
    k, v = np.zeros(shape, np.float32), np.zeros(shape, np.float32)
    step = _torch_module()(model, MAX_LEN).eval()
    example = (torch.tensor([[1]]), torch.tensor([0]), torch.from_numpy(k), torch.from_numpy(v))
    with _grouped_attention():
        module = trace(step, example)
    PassManager(parse_pipeline(passes)).run(module)
    out, token = [], None
    for pos in range(len(ids) + n - 1):
        t = ids[pos] if pos < len(ids) else token
        logits, k, v = run(module, [np.array([[t]], np.int64), np.array([pos], np.int64), k, v])
        if pos >= len(ids) - 1:
            token = int(np.argmax(logits[0]))
            out.append(token)
            if token == model.config.eos_token_id:
                break
    return out


@pytest.mark.precompiled.with_args(lambda params: [("call", "test_generate", "quantized", params["which"])])
@pytest.mark.parametrize("which", sorted(W4))
def test_w4_generation_equals_torch_on_the_dequantized_weights(which):
    """A generating artifact takes lower's pass pipeline: quantize-weights turns its linear
    layers into wq_linear, lowered to the fused 4-bit kernel, and its greedy tokens are
    transformers' greedy tokens on the model whose weights are the pass's dequantized
    ones (the op's reference semantics), token for token."""
    from sliver.benchmarks.bench_generate import fake_quantized
    from sliver.benchmarks.bench_llm import Weights

    m = sliver.load(precompile.get(("call", "test_generate", "quantized", which)))
    assert "quantize-weights" in m.manifest.pipeline
    kinds = [op.kind for op in m.manifest.ops]
    head_float = which != "b128"  # the LM head stays float unless head=true
    assert kinds.count("linear") == (1 if head_float else 0) and kinds.count("wq_linear") == 14 + (not head_float)
    assert set(m.manifest.kernels.values()) >= {"wq-fused"} and "wq-dequantize" not in m.manifest.kernels.values()
    assert all(r["ok"] for r in m.verify())  # golden outputs: the quantized IR's, from the interpreter
    model, tok = tiny()
    if which.endswith("int8"):  # int8 activations: the interpreter's reference semantics, and torch's
        from sliver.benchmarks.bench_generate import fake_quantized, int8_activations
        from sliver.benchmarks.bench_llm import Weights

        weights = fake_quantized(model, w4_pipeline(which))
        Weights(model).put(weights)
        hooks = int8_activations(model, weights, w4_pipeline(which))
        assert len(hooks) == 14
        for prompt in PROMPTS:
            ids = tok.encode(prompt).ids
            got = m.generate(ids, max_new_tokens=12).tokens
            assert got == reference(model, ids, 12), prompt
            assert got == interpreted(tiny()[0], w4_pipeline(which), ids, 12), prompt
        return
    weights = fake_quantized(model, w4_pipeline(which))
    assert ("lm_head" in weights) != head_float
    if which == "b128":  # the kept weight comes back exactly
        assert float(weights["model.layers.1.mlp.down_proj"][3, 5]) == float(model.model.layers[1].mlp.down_proj.weight[3, 5].detach())
    Weights(model).put(weights)
    for prompt in PROMPTS:
        ids = tok.encode(prompt).ids
        assert m.generate(ids, max_new_tokens=12).tokens == reference(model, ids, 12), prompt


def test_sliver_lower_generate_builds_a_generating_artifact(tmp_path, tiny_model, capsys):
    """`sliver lower file.py:function --generate`: the function returns (model, tokenizer)."""
    from pathlib import Path

    from sliver.tools.cli import main

    model, tok = tiny_model
    here = Path(__file__)
    out = tmp_path / "tiny.sliver"
    assert main(["lower", f"{here}:tiny", "--generate", "--max-len", "24", "-o", str(out)]) == 0
    m = sliver.load(out)
    assert m.manifest.llm.max_len == 24 and m.tokenizer.available
    ids = tok.encode(PROMPTS[0]).ids
    assert m.generate(PROMPTS[0], max_new_tokens=6).tokens == reference(model, ids, 6)
    capsys.readouterr()
    assert main(["lower", f"{here}:tiny", "--max-len", "24", "-o", str(tmp_path / "x.sliver")]) == 2
    assert "--max-len applies to generating artifacts" in capsys.readouterr().err
    assert main(["lower", f"{here}:tokenizer", "--generate", "-o", str(tmp_path / "y.sliver")]) == 2
    assert "must return (model, tokenizer)" in capsys.readouterr().err


@_job("x86_64", "arm64")
@emulated
def test_the_sliver_command_generates_here_and_on_the_emulated_pi(capsys, tiny_model):
    """`sliver generate` streams here; with --emulate the Pi runs the steps and the text is
    tokenized and detokenized on this machine (the Pi has no tokenizers library)."""
    from sliver.tools.cli import main

    model, tok = tiny_model
    ids = tok.encode(PROMPTS[2]).ids
    want = reference(model, ids, 8)
    path = precompile.get(("call", "test_generate", "lowered", "x86_64"))
    assert main(["generate", path, "--prompt", PROMPTS[2], "--max-new-tokens", "8"]) == 0
    out, err = capsys.readouterr()
    assert out == tok.decode(want) + "\n" and "time to first token" in err
    arm = precompile.get(("call", "test_generate", "lowered", "arm64"))
    assert main(["generate", arm, "--prompt", PROMPTS[2], "--max-new-tokens", "8", "--emulate"]) == 0
    out, err = capsys.readouterr()
    assert out == tok.decode(want) + "\n" and "under qemu" in err
    assert main(["generate", path, "--prompt", "x", "--emulate"]) == 2  # an x86 artifact is refused on the Pi
