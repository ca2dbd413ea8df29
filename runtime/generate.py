"""Text generation with a generating artifact (:mod:`sliver.llm` builds them).

    m = sliver.load("smollm2.sliver")
    g = m.generate("The capital of France is", max_new_tokens=32)          # greedy
    print(g.text, g.tokens, g.time_to_first_token, g.decode_tokens_per_s)
    for piece in m.stream("Once upon a time", temperature=0.8, seed=1):   # sampled, streamed
        print(piece, end="", flush=True)

The loop: the prefill (the prompt, in one step, or one step per token when the step
takes one token), then one decode step per generated token (position = tokens so far), each returning the next token's logits and
the updated KV cache, which stays a TVM tensor from one step to the next (never copied
through numpy).  Temperature 0 is greedy (the first largest logit, as torch's argmax);
otherwise the logits are divided by the temperature, cut to the ``top_k`` largest and to
the smallest set whose probability reaches ``top_p``, and sampled with numpy's PCG64
seeded by ``seed`` (the same seed gives the same tokens).  Generation stops after an
end-of-sequence token or ``max_new_tokens``.

The tokenizer (``tokenizers``, a Rust library with wheels for aarch64) is needed only to
turn text into tokens and back; token ids in and out work without it.  This module
imports neither torch nor TVM's compiler.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import numpy as np

from sliver.common.errors import DependencyError, InputError


class ContextLengthError(InputError):
    """The prompt plus the tokens asked for do not fit the artifact's KV cache."""


@dataclass
class Generation:
    """What :meth:`CompiledModel.generate` returns."""

    text: str | None  # the generated text (None without a tokenizer)
    tokens: list[int]  # the generated token ids (the end-of-sequence token included, if reached)
    prompt_tokens: list[int]
    time_to_first_token: float  # seconds: tokenizing, the prefill step and picking the first token
    decode_seconds: float  # the steps after the first token
    stopped: str = "length"  # "eos" or "length"
    #: per decode step, seconds (for benchmarks)
    step_seconds: list[float] = field(default_factory=list)

    @property
    def decode_tokens_per_s(self) -> float:
        """Tokens per second after the first (decode steps only)."""
        n = len(self.tokens) - 1
        return n / self.decode_seconds if n > 0 and self.decode_seconds > 0 else float("nan")

    def __str__(self) -> str:
        return self.text if self.text is not None else " ".join(map(str, self.tokens))


def _tokenizers():
    try:
        import tokenizers
    except ImportError:
        raise DependencyError("turning text into tokens needs the tokenizers library: pip install tokenizers (or "
                              "pass token ids instead of text: generate([1, 2, 3]), sliver generate "
                              "--prompt-ids 1,2,3)") from None
    return tokenizers


class Tokenizer:
    """The artifact's tokenizer (``tokenizers`` JSON), loaded on first use."""

    def __init__(self, data: bytes | None, source: str):
        self._data, self._source, self._tok = data, source, None

    @property
    def available(self) -> bool:
        """Whether text can be tokenized here: the artifact carries a tokenizer and the
        tokenizers library is installed (token ids work without either)."""
        import importlib.util

        return self._data is not None and importlib.util.find_spec("tokenizers") is not None

    def _get(self):
        if self._tok is None:
            if self._data is None:
                raise InputError(f"{self._source} carries no tokenizer: pass token ids (a list of ints), or lower it "
                                 "again with lower_llm(model, tokenizer, ...)")
            try:
                self._tok = _tokenizers().Tokenizer.from_str(self._data.decode("utf-8"))
            except DependencyError:
                raise
            except Exception as e:  # the library raises its own exception type for bad JSON
                from sliver.common.errors import ArtifactError

                raise ArtifactError(f"{self._source}: its tokenizer.json does not load ({e}); rebuild it") from None
        return self._tok

    def encode(self, text: str) -> list[int]:
        return list(self._get().encode(text).ids)

    def decode(self, ids: Sequence[int]) -> str:
        return self._get().decode(list(ids), skip_special_tokens=False)


def check_sampling(temperature, top_k, top_p, max_new_tokens, seed) -> None:
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise InputError(f"max_new_tokens={max_new_tokens!r}: give a whole number ≥ 1")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not 0 <= temperature < np.inf:
        raise InputError(f"temperature={temperature!r}: give a number ≥ 0 (0: greedy)")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise InputError(f"top_k={top_k!r}: give a whole number ≥ 1 (or None for no cut)")
    if top_p is not None and (isinstance(top_p, bool) or not isinstance(top_p, (int, float)) or not 0 < top_p <= 1):
        raise InputError(f"top_p={top_p!r}: give a probability in (0, 1] (or None for no cut)")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        raise InputError(f"seed={seed!r}: give a whole number ≥ 0 (or None for a fresh one)")


def pick(logits: np.ndarray, temperature: float, top_k: int | None, top_p: float | None, rng) -> int:
    """The next token from one row of logits (see the module docstring)."""
    if temperature == 0:
        return int(np.argmax(logits))
    z = logits.astype(np.float64) / temperature
    order = np.argsort(-z, kind="stable")
    if top_k is not None:
        order = order[:top_k]
    z = z[order]
    p = np.exp(z - z[0])
    p /= p.sum()
    if top_p is not None and top_p < 1:
        keep = int(np.searchsorted(np.cumsum(p), top_p)) + 1  # the smallest prefix reaching top_p
        order, p = order[:keep], p[:keep] / p[:keep].sum()
    return int(order[rng.choice(len(p), p=p)])


def token_steps(model, prompt_ids: Sequence[int], *, max_new_tokens: int, temperature: float = 0.0,
                top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
                stop_at_eos: bool = True, timings: list | None = None) -> Iterator[int]:
    """The generated token ids of ``model`` (a loaded generating artifact), one at a
    time; ``timings`` (a list) gets each step's end time (``time.perf_counter``)."""
    llm = model.manifest.llm
    ids = [int(t) for t in prompt_ids]
    if not ids:
        raise InputError("the prompt is empty: give at least one token")
    bad = [t for t in ids if not 0 <= t < llm.vocab]
    if bad:
        raise InputError(f"token id {bad[0]} is outside the vocabulary [0, {llm.vocab})")
    if len(ids) + max_new_tokens - 1 > llm.max_len:
        raise ContextLengthError(
            f"the prompt has {len(ids)} tokens and {max_new_tokens} new ones were asked for: {len(ids) + max_new_tokens - 1}"
            f" positions, more than the artifact's KV cache of {llm.max_len}; shorten the prompt, ask for fewer "
            f"tokens (at most {max(llm.max_len - len(ids) + 1, 0)}), or lower it again with a larger max_len")
    tvm = model._tvm
    rng = np.random.default_rng(seed)
    cache = [llm.layers, llm.kv_heads, llm.max_len, llm.head_dim]
    k = tvm.runtime.tensor(np.zeros(cache, np.float32))
    v = tvm.runtime.tensor(np.zeros(cache, np.float32))
    model._use_threads()
    step = model._vm["main"]
    position = 0
    eos = set(llm.eos)

    def run(tokens):
        nonlocal position, k, v
        out = step(tvm.runtime.tensor(np.asarray([tokens], np.int64)),
                   tvm.runtime.tensor(np.asarray([position], np.int64)), k, v)
        position += len(tokens)
        k, v = out[1], out[2]
        return out[0]

    if llm.prefill_tokens(model.manifest) == 1:  # a one-token step: the prompt goes in token by token
        for t in ids[:-1]:
            run([t])
        tokens = ids[-1:]
    else:
        tokens = ids
    for n in range(max_new_tokens):
        logits = run(tokens)
        token = pick(logits.numpy()[0], temperature, top_k, top_p, rng)
        if timings is not None:
            timings.append(time.perf_counter())
        yield token
        if stop_at_eos and token in eos:
            return
        tokens = [token]


def prompt_ids(model, prompt) -> list[int]:
    if isinstance(prompt, str):
        return model.tokenizer.encode(prompt)
    if isinstance(prompt, np.ndarray):
        prompt = prompt.reshape(-1).tolist()
    if not isinstance(prompt, (list, tuple)) or not all(isinstance(t, (int, np.integer)) and not isinstance(t, bool)
                                                        for t in prompt):
        raise InputError(f"the prompt is text (a str) or token ids (a list of ints), not a {type(prompt).__name__}")
    return [int(t) for t in prompt]


def generate(model, prompt, *, max_new_tokens: int = 64, temperature: float = 0.0, top_k: int | None = None,
             top_p: float | None = None, seed: int | None = None, stop_at_eos: bool = True,
             callback: Callable[[str], None] | None = None) -> Generation:
    """:meth:`CompiledModel.generate`."""
    check_sampling(temperature, top_k, top_p, max_new_tokens, seed)
    start = time.perf_counter()
    ids = prompt_ids(model, prompt)
    timings: list[float] = []
    pieces = Detokenizer(model.tokenizer) if (callback is not None or model.tokenizer.available) else None
    tokens = []
    for token in token_steps(model, ids, max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
                             top_p=top_p, seed=seed, stop_at_eos=stop_at_eos, timings=timings):
        tokens.append(token)
        if callback is not None:
            callback(pieces.add(token) if model.tokenizer.available else f"{token} ")
    if callback is not None and model.tokenizer.available:
        rest = pieces.flush()
        if rest:
            callback(rest)
    text = model.tokenizer.decode(tokens) if model.tokenizer.available else None
    steps = [b - a for a, b in zip(timings, timings[1:])]
    stopped = "eos" if tokens and stop_at_eos and tokens[-1] in set(model.manifest.llm.eos) else "length"
    return Generation(text=text, tokens=tokens, prompt_tokens=ids, time_to_first_token=timings[0] - start,
                      decode_seconds=timings[-1] - timings[0], stopped=stopped, step_seconds=steps)


class Detokenizer:
    """Text pieces from tokens as they come: the decoded text's new suffix, held back
    while it ends in an incomplete UTF-8 character."""

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer, self.ids, self.shown = tokenizer, [], 0

    def add(self, token: int) -> str:
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids)
        if text.endswith("\ufffd"):
            return ""
        piece, self.shown = text[self.shown:], len(text)
        return piece

    def flush(self) -> str:
        text = self.tokenizer.decode(self.ids)
        piece, self.shown = text[self.shown:], len(text)
        return piece


def stream(model, prompt, **kw) -> Iterator[str]:
    """:meth:`CompiledModel.stream`: the generated text, piece by piece."""
    max_new_tokens = kw.pop("max_new_tokens", 64)
    check_sampling(kw.get("temperature", 0.0), kw.get("top_k"), kw.get("top_p"), max_new_tokens, kw.get("seed"))
    ids = prompt_ids(model, prompt)
    pieces = Detokenizer(model.tokenizer)
    for token in token_steps(model, ids, max_new_tokens=max_new_tokens, **kw):
        piece = pieces.add(token)
        if piece:
            yield piece
    rest = pieces.flush()
    if rest:
        yield rest
