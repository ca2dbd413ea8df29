"""Generating artifacts for causal LMs: one compiled step function with a KV cache.

    art = sliver.lower_llm(model, tokenizer, max_len=512, target="x86_64")
    art.save("smollm2.sliver")
    m = sliver.load("smollm2.sliver")
    print(m.generate("The capital of France is", max_new_tokens=32).text)

The artifact computes one *step*: ``(input_ids [1, T], position [1], k_cache, v_cache)
-> (logits [1, vocab], k_cache, v_cache)``.  The caches are static-size tensors
``[layers, kv_heads, max_len, head_dim]`` passed in and returned; the step writes the
``T`` new keys and values at ``position .. position+T-1`` and attends, through a mask, to
cache positions ``<= position + i`` only.  ``T`` is a symbolic dimension in
``[1, max_len]``: prefill is the step with the whole prompt (``T`` = its length,
``position`` 0), decode the step with one token (``T = 1``); both run the same compiled
code, over the same cache.  The logits are the last token's only.

Why a static maximum length with masking rather than a cache that grows: every
tensor but the tokens keeps one shape, so the compiled kernels (and low-bit ones such
as ``wq_linear``) see fixed sizes except the number of new tokens, and attention over
masked positions gives exactly the unmasked result (masked scores are -inf, weight 0).
The price is attention over ``max_len`` keys every step (small next to the weights'
product for ``max_len`` in the hundreds) and copying the caches once per step.

The new keys are written with a one-hot product, ``onehot[max_len, T] @ new [T, d]``
(exact: one term of each sum is the value, the others are 0) under ``where``: no
scatter op, no data-dependent shape.  A one-token step writes its row by broadcasting
it under the ``where`` (no product).
"""

from __future__ import annotations

import contextlib
import json

from sliver.common.errors import InputError, SliverError

#: how the prompt goes in: one step per token (a static one-token step), or one step
PREFILL = ("token", "dynamic")

#: the step's inputs and outputs, by name (the runtime checks an artifact has exactly these)
INPUTS = ("input_ids", "position", "k_cache", "v_cache")
OUTPUTS = ("logits", "k_cache_out", "v_cache_out")


class _StepCache:
    """A transformers ``Cache`` stand-in over static-size tensors: ``update`` writes the
    new keys and values at the step's positions (functionally) and returns the whole
    cache, which the 4-D mask limits to the positions written so far."""

    def __init__(self, k, v, positions, max_len):
        import torch

        self.k, self.v = list(k.unbind(0)), list(v.unbind(0))
        j = torch.arange(max_len)
        hit = j[:, None] == positions[None, :]  # [max_len, T]: cache row j gets new row i
        self.onehot = hit.to(k.dtype)
        self.written = self.onehot.sum(1)[:, None] > 0  # [max_len, 1]

    def update(self, key, value, layer_idx, *args, **kwargs):
        import torch

        out = []
        for store, new in ((self.k, key), (self.v, value)):
            old = store[layer_idx]  # [kv_heads, max_len, d]
            if new.shape[2] == 1:  # one token (a static step of one): its row broadcast to the written row
                placed = new[0]  # [kv_heads, 1, d]
            else:
                placed = torch.matmul(self.onehot, new[0])  # [kv_heads, max_len, d]
            store[layer_idx] = torch.where(self.written, placed, old)
            out.append(store[layer_idx][None])
        return out[0], out[1]

    def get_seq_length(self, layer_idx: int = 0) -> int:  # positions are always given
        return 0


def _torch_module():
    import torch

    class Step(torch.nn.Module):
        """One generation step of a transformers causal LM over a static KV cache."""

        def __init__(self, model, max_len: int):
            super().__init__()
            self.model = model
            self.max_len = max_len

        def forward(self, input_ids, position, k_cache, v_cache):
            n = input_ids.shape[1]
            positions = position + torch.arange(n)  # [T]
            cache = _StepCache(k_cache, v_cache, positions, self.max_len)
            mask = (torch.arange(self.max_len)[None, :] <= positions[:, None])[None, None]  # [1, 1, T, max_len]
            out = self.model(input_ids=input_ids, attention_mask=mask, position_ids=positions[None], cache=cache,
                             use_cache=True, logits_to_keep=1)
            return out.logits[:, -1], torch.stack(cache.k), torch.stack(cache.v)

    return Step


@contextlib.contextmanager
def _grouped_attention():
    """transformers' SDPA attention with grouped key/value heads passed as they are
    (``enable_gqa``, which sliver's attention op takes) instead of repeated to every
    query head in the traced graph.  The TVM lowering of ``attention`` stacks each kv
    head's group of queries as rows of one product with that head's keys and values,
    so the cache is not copied per query head either."""
    import os

    key = "TRANSFORMERS_SDPA_FORCE_GQA"
    old = os.environ.get(key)
    os.environ[key] = "1"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = old


def cache_shape(config, max_len: int) -> tuple[int, int, int, int]:
    """``(layers, kv_heads, max_len, head_dim)`` of a transformers config."""
    layers = getattr(config, "num_hidden_layers", None)
    heads = getattr(config, "num_attention_heads", None)
    if layers is None or heads is None:
        raise SliverError(f"{type(config).__name__} has no num_hidden_layers/num_attention_heads: lower_llm takes a "
                          "transformers causal LM (Llama, Qwen2, Mistral, Phi, GPT-2 families)")
    kv = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return int(layers), int(kv), int(max_len), int(head_dim)


def tokenizer_json(tokenizer) -> str | None:
    """The ``tokenizers`` library's JSON of ``tokenizer``: a ``tokenizers.Tokenizer``, a
    transformers fast tokenizer, the JSON text itself, or None (no tokenizer stored)."""
    if tokenizer is None:
        return None
    if isinstance(tokenizer, str):
        text = tokenizer
    else:
        backend = getattr(tokenizer, "backend_tokenizer", None) or getattr(tokenizer, "_tokenizer", None)
        target = backend if backend is not None else tokenizer
        if not hasattr(target, "to_str"):
            raise InputError(f"tokenizer: a {type(tokenizer).__name__} has no tokenizers-library form; pass a "
                             "tokenizers.Tokenizer, a transformers fast tokenizer, or its tokenizer.json text")
        text = target.to_str()
    try:
        json.loads(text)
    except ValueError as e:
        raise InputError(f"tokenizer: not the tokenizers library's JSON ({e})") from None
    return text


def _eos_ids(model, eos) -> list[int]:
    if eos is None:
        eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        if eos is None:
            eos = getattr(model.config, "eos_token_id", None)
    if eos is None:
        return []
    return [int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])]


def lower_llm(model, tokenizer=None, *, max_len: int = 512, target="x86_64", passes=None, eos=None,
              prefill: str = "token", progress=None, **lower_kwargs):
    """Compile a transformers causal LM into a *generating* artifact for ``target``: the
    step function (module docstring) with a KV cache of ``max_len`` positions (prompt
    plus generated tokens), ``tokenizer`` stored inside (``tokenizers`` JSON), and the
    end-of-sequence ids (``eos``; by default the model's generation config's).

    ``prefill``: ``"token"`` (the default) compiles the step for one token, and the
    prompt goes in one step per token; ``"dynamic"`` compiles it for any number of
    tokens (a symbolic dimension), and the prompt goes in one step.  sliver's matmul
    schedules tile static row counts only, so today the one-token step is the faster
    for both decode and prefill (docs/deploy.md).

    ``passes`` is ``lower``'s pipeline (e.g. ``"quantize-weights{bits=4,block=32},dce"``
    after the default one); other keyword arguments go to :func:`sliver.lower`.
    ``sliver.load(path).generate(prompt, ...)`` runs it."""
    import torch
    from torch.export import Dim

    from sliver.api import DEFAULT_PIPELINE, lower
    from sliver.runtime.manifest import LLM, TokenizerFile

    if prefill not in PREFILL:
        raise InputError(f"prefill={prefill!r}: give one of {', '.join(map(repr, PREFILL))}")
    if isinstance(max_len, bool) or not isinstance(max_len, int) or max_len < 2:
        raise InputError(f"max_len={max_len!r}: give the longest prompt plus generated tokens, a whole number ≥ 2")
    if not isinstance(model, torch.nn.Module) or not hasattr(model, "config"):
        raise SliverError("lower_llm compiles a transformers causal LM (e.g. AutoModelForCausalLM...); got a "
                          f"{type(model).__name__}")
    limit = getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", None)
    if limit is not None and max_len > limit:
        raise InputError(f"max_len={max_len} is more than the model's {limit} positions; give at most {limit}")
    text = tokenizer_json(tokenizer)
    shape = cache_shape(model.config, max_len)
    step = _torch_module()(model, max_len).eval()
    vocab = int(model.config.vocab_size)
    prompt = min(4, max_len - 1) if prefill == "dynamic" else 1
    ids = (torch.arange(prompt, dtype=torch.int64)[None] + 1) % vocab
    # golden data: a step at position 1 over a cache holding one token's (random) keys and values
    gen = torch.Generator().manual_seed(0)
    k, v = torch.zeros(shape), torch.zeros(shape)
    k[:, :, 0].normal_(generator=gen)
    v[:, :, 0].normal_(generator=gen)
    example = (ids, torch.tensor([1], dtype=torch.int64), k, v)
    dynamic = ({1: Dim("tokens", min=1, max=max_len)}, None, None, None) if prefill == "dynamic" else None
    with _grouped_attention():
        art = lower(step, example, target, passes=DEFAULT_PIPELINE if passes is None else passes,
                    dynamic_shapes=dynamic, output_names=list(OUTPUTS), progress=progress, **lower_kwargs)
    import dataclasses
    import hashlib

    tok = None
    if text is not None:
        data = text.encode()
        tok = TokenizerFile(file="tokenizer.json", sha256=hashlib.sha256(data).hexdigest(), bytes=len(data))
        art.tokenizer = data
    llm = LLM(max_len=max_len, layers=shape[0], kv_heads=shape[1], head_dim=shape[3], vocab=vocab,
              eos=_eos_ids(model, eos), tokenizer=tok)
    art.manifest = dataclasses.replace(art.manifest, llm=llm)
    art.manifest.check("manifest")
    return art
