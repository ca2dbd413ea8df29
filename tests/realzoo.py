"""A zoo of real architectures nobody here wrote, for coverage tests and the coverage table.

Where :mod:`zoo` holds models written for sliver's tests, this zoo builds the model
classes users bring: Hugging Face ``transformers`` models with random weights from tiny
configs (constructed from config objects, nothing downloaded) and torch's own modules
(``nn.MultiheadAttention``, ``nn.ConvTranspose2d``, ``F.interpolate``, ``einsum``, ...).

Every builder takes ``seed`` and returns ``(model.eval(), example_inputs)``; it seeds
torch inside a forked RNG, so it neither depends on nor disturbs the caller's RNG.
Models return one tensor (a transformers model's ``last_hidden_state`` or ``logits``), so
every entry compares the same way.  ``ENTRIES`` maps a name to an :class:`Entry`
(family: ``vision``, ``text`` (text and audio) or ``torch``).  ``python -m
sliver.benchmarks.coverage`` prints what sliver does with each of them.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

Built = tuple[nn.Module, tuple[torch.Tensor, ...]]


@dataclass(frozen=True)
class Entry:
    name: str
    family: str  # "vision", "text" (text and audio) or "torch"
    build: Callable[..., Built]


ENTRIES: dict[str, Entry] = {}


def _entry(name: str, family: str):
    def register(fn):
        ENTRIES[name] = Entry(name, family, fn)
        return fn
    return register


@contextlib.contextmanager
def _seeded(seed: int):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


class Output(nn.Module):
    """A transformers model returning one tensor: its output's ``field`` (or the first
    element of a tuple)."""

    def __init__(self, model: nn.Module, field: str = "last_hidden_state"):
        super().__init__()
        self.model = model
        self.field = field

    def forward(self, *args):
        out = self.model(*args)
        if isinstance(out, (tuple, list)):
            return out[0]
        return getattr(out, self.field)


def _image(seed: int, channels: int = 3, size: int = 32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed + 1000)
    return torch.randn(1, channels, size, size, generator=g)


def _tokens(seed: int, vocab: int = 96, length: int = 12) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed + 1000)
    return torch.randint(0, vocab, (1, length), generator=g)


def _hf(model_cls, config, inputs, field="last_hidden_state", seed=0) -> Built:
    import transformers

    transformers.logging.set_verbosity_error()  # tiny vocabularies: no warnings about special token ids
    with _seeded(seed):
        model = model_cls(config)
        _rescale(model)
    return Output(model, field).eval(), inputs


def _rescale(model: nn.Module) -> None:
    """torch's default initialization for convolutions, and random batch-norm affines and
    statistics: transformers initializes weights for training (normal, std 0.02), under
    which a deep CNN's activations vanish (a tiny EfficientNet's output is exactly zero),
    and a batch norm of mean 0, variance 1, weight 1, bias 0 would make folding it trivial."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            m.reset_parameters()
        elif isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0.0, 0.1)
                m.running_mean.normal_(0.0, 0.1)
                m.running_var.uniform_(0.5, 1.5)


# --------------------------------------------------------------------------- vision (transformers)

@_entry("resnet", "vision")
def resnet(seed: int = 0) -> Built:
    import transformers as t
    cfg = t.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic")
    return _hf(t.ResNetModel, cfg, (_image(seed),), seed=seed)


@_entry("convnext", "vision")
def convnext(seed: int = 0) -> Built:
    import transformers as t
    cfg = t.ConvNextConfig(hidden_sizes=[8, 16], depths=[1, 1], num_stages=2)
    return _hf(t.ConvNextModel, cfg, (_image(seed),), seed=seed)


@_entry("convnextv2", "vision")
def convnextv2(seed: int = 0) -> Built:
    import transformers as t
    cfg = t.ConvNextV2Config(hidden_sizes=[8, 16], depths=[1, 1], num_stages=2)
    return _hf(t.ConvNextV2Model, cfg, (_image(seed),), seed=seed)


@_entry("efficientnet", "vision")
def efficientnet(seed: int = 0) -> Built:
    import transformers as t
    cfg = t.EfficientNetConfig(image_size=32, width_coefficient=0.25, depth_coefficient=0.25, hidden_dim=320)
    return _hf(t.EfficientNetModel, cfg, (_image(seed),), seed=seed)


@_entry("mobilenet_v1", "vision")
def mobilenet_v1(seed: int = 0) -> Built:
    import transformers as t
    cfg = t.MobileNetV1Config(image_size=32, depth_multiplier=0.25, min_depth=8)
    return _hf(t.MobileNetV1Model, cfg, (_image(seed),), seed=seed)


@_entry("mobilenet_v2", "vision")
def mobilenet_v2(seed: int = 0) -> Built:
    import transformers as t
    cfg = t.MobileNetV2Config(image_size=32, depth_multiplier=0.25, min_depth=8)
    return _hf(t.MobileNetV2Model, cfg, (_image(seed),), seed=seed)


@_entry("mobilevit", "vision")
def mobilevit(seed: int = 0) -> Built:
    import transformers as t
    cfg = t.MobileViTConfig(image_size=32, patch_size=2, hidden_sizes=[16, 24, 32],
                            neck_hidden_sizes=[8, 8, 16, 16, 24, 32, 64], num_attention_heads=2)
    return _hf(t.MobileViTModel, cfg, (_image(seed),), seed=seed)


@_entry("regnet", "vision")
def regnet(seed: int = 0) -> Built:
    import transformers as t
    cfg = t.RegNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], groups_width=8)
    return _hf(t.RegNetModel, cfg, (_image(seed),), seed=seed)


def _vit_kwargs():
    return dict(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                intermediate_size=64)


@_entry("vit", "vision")
def vit(seed: int = 0) -> Built:
    import transformers as t
    return _hf(t.ViTModel, t.ViTConfig(**_vit_kwargs()), (_image(seed),), seed=seed)


@_entry("deit", "vision")
def deit(seed: int = 0) -> Built:
    import transformers as t
    return _hf(t.DeiTModel, t.DeiTConfig(**_vit_kwargs()), (_image(seed),), seed=seed)


@_entry("beit", "vision")
def beit(seed: int = 0) -> Built:
    import transformers as t
    cfg = t.BeitConfig(**_vit_kwargs(), use_relative_position_bias=True)
    return _hf(t.BeitModel, cfg, (_image(seed),), seed=seed)


@_entry("dinov2", "vision")
def dinov2(seed: int = 0) -> Built:
    import transformers as t
    cfg = t.Dinov2Config(**_vit_kwargs())
    return _hf(t.Dinov2Model, cfg, (_image(seed),), seed=seed)


@_entry("swin", "vision")
def swin(seed: int = 0) -> Built:
    import transformers as t
    cfg = t.SwinConfig(image_size=32, patch_size=2, embed_dim=16, depths=[2, 1], num_heads=[2, 2], window_size=4)
    return _hf(t.SwinModel, cfg, (_image(seed),), seed=seed)


@_entry("swinv2", "vision")
def swinv2(seed: int = 0) -> Built:
    import transformers as t
    cfg = t.Swinv2Config(image_size=32, patch_size=2, embed_dim=16, depths=[1, 1], num_heads=[2, 2], window_size=4)
    return _hf(t.Swinv2Model, cfg, (_image(seed),), seed=seed)


@_entry("segformer", "vision")
def segformer(seed: int = 0) -> Built:
    import transformers as t
    cfg = t.SegformerConfig(num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[16, 32],
                            num_attention_heads=[1, 2], patch_sizes=[7, 3], strides=[4, 2], mlp_ratios=[2, 2],
                            decoder_hidden_size=32, num_labels=4)
    return _hf(t.SegformerForSemanticSegmentation, cfg, (_image(seed),), field="logits", seed=seed)


@_entry("poolformer", "vision")
def poolformer(seed: int = 0) -> Built:
    import transformers as t
    cfg = t.PoolFormerConfig(num_encoder_blocks=2, depths=[1, 1], hidden_sizes=[16, 32], patch_sizes=[7, 3],
                             strides=[4, 2], padding=[2, 1])
    return _hf(t.PoolFormerModel, cfg, (_image(seed),), seed=seed)


@_entry("clip_vision", "vision")
def clip_vision(seed: int = 0) -> Built:
    import transformers as t
    cfg = t.CLIPVisionConfig(**_vit_kwargs(), projection_dim=16)
    return _hf(t.CLIPVisionModel, cfg, (_image(seed),), seed=seed)


# --------------------------------------------------------------------------- text and audio (transformers)

def _encoder_kwargs():
    return dict(vocab_size=96, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                max_position_embeddings=64)


@_entry("bert", "text")
def bert(seed: int = 0) -> Built:
    import transformers as t
    return _hf(t.BertModel, t.BertConfig(**_encoder_kwargs()), (_tokens(seed),), seed=seed)


@_entry("roberta", "text")
def roberta(seed: int = 0) -> Built:
    import transformers as t
    return _hf(t.RobertaModel, t.RobertaConfig(**_encoder_kwargs()), (_tokens(seed),), seed=seed)


@_entry("electra", "text")
def electra(seed: int = 0) -> Built:
    import transformers as t
    cfg = t.ElectraConfig(**_encoder_kwargs(), embedding_size=16)
    return _hf(t.ElectraModel, cfg, (_tokens(seed),), seed=seed)


@_entry("albert", "text")
def albert(seed: int = 0) -> Built:
    import transformers as t
    cfg = t.AlbertConfig(**_encoder_kwargs(), embedding_size=16)
    return _hf(t.AlbertModel, cfg, (_tokens(seed),), seed=seed)


@_entry("distilbert", "text")
def distilbert(seed: int = 0) -> Built:
    import transformers as t
    cfg = t.DistilBertConfig(vocab_size=96, dim=32, n_layers=2, n_heads=2, hidden_dim=64,
                             max_position_embeddings=64)
    return _hf(t.DistilBertModel, cfg, (_tokens(seed),), seed=seed)


def _decoder_kwargs():
    return dict(vocab_size=96, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                intermediate_size=64, max_position_embeddings=64)


@_entry("gpt2", "text")
def gpt2(seed: int = 0) -> Built:
    import transformers as t
    cfg = t.GPT2Config(vocab_size=96, n_embd=32, n_layer=2, n_head=2, n_positions=64)
    return _hf(t.GPT2Model, cfg, (_tokens(seed),), seed=seed)


@_entry("llama", "text")
def llama(seed: int = 0) -> Built:
    import transformers as t
    return _hf(t.LlamaModel, t.LlamaConfig(**_decoder_kwargs()), (_tokens(seed),), seed=seed)


@_entry("qwen2", "text")
def qwen2(seed: int = 0) -> Built:
    import transformers as t
    return _hf(t.Qwen2Model, t.Qwen2Config(**_decoder_kwargs()), (_tokens(seed),), seed=seed)


@_entry("mistral", "text")
def mistral(seed: int = 0) -> Built:
    import transformers as t
    return _hf(t.MistralModel, t.MistralConfig(**_decoder_kwargs()), (_tokens(seed),), seed=seed)


@_entry("gemma", "text")
def gemma(seed: int = 0) -> Built:
    import transformers as t
    cfg = t.GemmaConfig(**_decoder_kwargs(), head_dim=8)
    return _hf(t.GemmaModel, cfg, (_tokens(seed),), seed=seed)


@_entry("phi", "text")
def phi(seed: int = 0) -> Built:
    import transformers as t
    return _hf(t.PhiModel, t.PhiConfig(**_decoder_kwargs()), (_tokens(seed),), seed=seed)


class _CausalLM(nn.Module):
    """A transformers causal LM as users call it: token ids and a 2-D attention mask
    (1 for tokens, 0 for padding) in, logits out; the model builds its 4-D mask itself."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits


def _padded_batch(seed: int, vocab: int = 96, length: int = 12):
    """Two sequences, the first left-padded by 3 tokens and the second right-padded by 2."""
    g = torch.Generator().manual_seed(seed + 1000)
    ids = torch.randint(0, vocab, (2, length), generator=g)
    mask = torch.ones(2, length, dtype=torch.long)
    mask[0, :3] = 0
    mask[1, -2:] = 0
    return ids, mask


def _causal_lm(model_cls, config, seed: int) -> Built:
    import transformers

    transformers.logging.set_verbosity_error()
    with _seeded(seed):
        model = model_cls(config)
    return _CausalLM(model).eval(), _padded_batch(seed)


@_entry("llama_lm", "text")
def llama_lm(seed: int = 0) -> Built:
    import transformers as t
    return _causal_lm(t.LlamaForCausalLM, t.LlamaConfig(**_decoder_kwargs()), seed)


@_entry("qwen2_lm", "text")
def qwen2_lm(seed: int = 0) -> Built:
    import transformers as t
    return _causal_lm(t.Qwen2ForCausalLM, t.Qwen2Config(**_decoder_kwargs()), seed)


@_entry("mistral_lm", "text")
def mistral_lm(seed: int = 0) -> Built:
    import transformers as t
    return _causal_lm(t.MistralForCausalLM, t.MistralConfig(**_decoder_kwargs()), seed)


@_entry("phi_lm", "text")
def phi_lm(seed: int = 0) -> Built:
    import transformers as t
    return _causal_lm(t.PhiForCausalLM, t.PhiConfig(**_decoder_kwargs()), seed)


@_entry("gpt2_lm", "text")
def gpt2_lm(seed: int = 0) -> Built:
    import transformers as t
    cfg = t.GPT2Config(vocab_size=96, n_embd=32, n_layer=2, n_head=2, n_positions=64)
    return _causal_lm(t.GPT2LMHeadModel, cfg, seed)


def _t5_config():
    import transformers as t
    return t.T5Config(vocab_size=96, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4)


@_entry("t5_encoder", "text")
def t5_encoder(seed: int = 0) -> Built:
    import transformers as t
    return _hf(t.T5EncoderModel, _t5_config(), (_tokens(seed),), seed=seed)


class _T5Decode(nn.Module):
    """T5 run as encoder-decoder: one decoder pass over given decoder tokens."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, decoder_input_ids):
        return self.model(input_ids=input_ids, decoder_input_ids=decoder_input_ids).last_hidden_state


@_entry("t5_decoder", "text")
def t5_decoder(seed: int = 0) -> Built:
    import transformers as t
    with _seeded(seed):
        model = t.T5Model(_t5_config())
    return _T5Decode(model).eval(), (_tokens(seed), _tokens(seed + 1, length=6))


@_entry("whisper_encoder", "text")
def whisper_encoder(seed: int = 0) -> Built:
    import transformers as t
    cfg = t.WhisperConfig(num_mel_bins=16, d_model=32, encoder_layers=2, encoder_attention_heads=2,
                          encoder_ffn_dim=64, decoder_layers=1, decoder_attention_heads=2, decoder_ffn_dim=64,
                          max_source_positions=16, vocab_size=96)
    g = torch.Generator().manual_seed(seed + 1000)
    return _hf(t.WhisperEncoder if hasattr(t, "WhisperEncoder") else _whisper_encoder_cls(), cfg,
               (torch.randn(1, 16, 32, generator=g),), seed=seed)


def _whisper_encoder_cls():
    from transformers.models.whisper.modeling_whisper import WhisperEncoder
    return WhisperEncoder


@_entry("clip_text", "text")
def clip_text(seed: int = 0) -> Built:
    import transformers as t
    cfg = t.CLIPTextConfig(**_encoder_kwargs(), projection_dim=16)
    return _hf(t.CLIPTextModel, cfg, (_tokens(seed),), seed=seed)


@_entry("wav2vec2", "text")
def wav2vec2(seed: int = 0) -> Built:
    import transformers as t
    cfg = t.Wav2Vec2Config(vocab_size=32, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=64, conv_dim=(16, 16), conv_stride=(5, 2), conv_kernel=(10, 3),
                           num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4)
    g = torch.Generator().manual_seed(seed + 1000)
    return _hf(t.Wav2Vec2Model, cfg, (torch.randn(1, 400, generator=g),), seed=seed)


# --------------------------------------------------------------------------- torch's own modules

class _Call(nn.Module):
    """``fn(self, *inputs)`` as a module, with the given submodules."""

    def __init__(self, fn, **modules):
        super().__init__()
        self.fn = fn
        for k, v in modules.items():
            setattr(self, k, v)

    def forward(self, *args):
        return self.fn(self, *args)


def _torch(name, fn, inputs_fn, **modules):
    def build(seed: int = 0) -> Built:
        with _seeded(seed):
            mods = {k: v() for k, v in modules.items()}
        g = torch.Generator().manual_seed(seed + 1000)
        return _Call(fn, **mods).eval(), inputs_fn(g)
    ENTRIES[name] = Entry(name, "torch", build)


def _img(c=4, s=8):
    return lambda g: (torch.randn(1, c, s, s, generator=g),)


def _seq(n=6, d=16):
    return lambda g: (torch.randn(1, n, d, generator=g),)


_torch("multihead_attention", lambda m, x: m.attn(x, x, x, need_weights=False)[0], _seq(),
       attn=lambda: nn.MultiheadAttention(16, 2, batch_first=True))
_torch("conv_transpose2d", lambda m, x: m.up(x), _img(),
       up=lambda: nn.ConvTranspose2d(4, 6, 4, stride=2, padding=1))
_torch("conv1d", lambda m, x: m.conv(x), lambda g: (torch.randn(1, 4, 20, generator=g),),
       conv=lambda: nn.Conv1d(4, 8, 3, stride=2, padding=1))
_torch("pixel_shuffle", lambda m, x: F.pixel_shuffle(m.conv(x), 2), _img(),
       conv=lambda: nn.Conv2d(4, 16, 1))
_torch("transformer_encoder_layer", lambda m, x: m.layer(x), _seq(),
       layer=lambda: nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True))
_torch("transformer_decoder_layer", lambda m, x, mem: m.layer(x, mem),
       lambda g: (torch.randn(1, 5, 16, generator=g), torch.randn(1, 7, 16, generator=g)),
       layer=lambda: nn.TransformerDecoderLayer(16, 2, 32, dropout=0.0, batch_first=True))
_torch("interpolate_nearest", lambda m, x: F.interpolate(x, scale_factor=2, mode="nearest"), _img())
_torch("interpolate_bilinear", lambda m, x: F.interpolate(x, size=(13, 11), mode="bilinear", align_corners=False),
       _img())
_torch("interpolate_bilinear_ac", lambda m, x: F.interpolate(x, size=(13, 11), mode="bilinear", align_corners=True),
       _img())
_torch("einsum_attention",
       lambda m, x: torch.einsum("bqk,bkd->bqd", torch.einsum("bqd,bkd->bqk", x, x).softmax(-1), x), _seq())
_torch("pad_constant", lambda m, x: F.pad(x, (1, 2, 0, 3), mode="constant", value=0.5), _img())
_torch("pad_reflect", lambda m, x: F.pad(x, (1, 2, 2, 1), mode="reflect"), _img())
_torch("pad_replicate", lambda m, x: F.pad(x, (1, 2, 2, 1), mode="replicate"), _img())
_torch("pad_circular", lambda m, x: F.pad(x, (1, 2, 2, 1), mode="circular"), _img())
_torch("roll", lambda m, x: torch.roll(x, shifts=(2, -1), dims=(2, 3)), _img())
_torch("cumsum", lambda m, x: torch.cumsum(x, dim=1), _seq())
_torch("topk", lambda m, x: torch.topk(x, 3, dim=-1).values, _seq())
_torch("sort", lambda m, x: torch.sort(x, dim=-1).values, _seq())
_torch("lstm", lambda m, x: m.rnn(x)[0], _seq(), rnn=lambda: nn.LSTM(16, 8, batch_first=True))
_torch("gru", lambda m, x: m.rnn(x)[0], _seq(), rnn=lambda: nn.GRU(16, 8, batch_first=True))

# a detection head's post-processing: the boxes whose score passes a threshold, a number
# known only from the data (sliver refuses it, naming the op, before compiling)
_torch("detection_filter", lambda m, x: m.box(x)[m.score(x).squeeze(-1).sigmoid() > 0.5], _seq(),
       score=lambda: nn.Linear(16, 1), box=lambda: nn.Linear(16, 4))
