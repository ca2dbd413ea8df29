"""Model zoo for sliver's tests and benchmarks, written in plain ``torch.nn``.

Every builder returns ``(model.eval(), example_inputs)`` and is deterministic given
``seed``: it seeds torch inside a forked RNG, so it neither depends on nor disturbs
the caller's global RNG state.  The defaults are small (batch 1, 32x32 images, a few
layers) so that tracing and compiling with TVM stay quick, but every model keeps the
structure of the real architecture; keyword arguments give the full-size version:

    resnet18(resolution=224, num_classes=1000)            # torchvision resnet18, 11,689,512 params
    mobilenet_v2(resolution=224, num_classes=1000)        # torchvision mobilenet_v2, 3,504,872 params
    densenet(**DENSENET121)                               # torchvision densenet121, 7,978,856 params
    efficientnet(**EFFICIENTNET_B0)                       # torchvision efficientnet_b0, 5,288,548 params
    vit(**VIT_B16)                                        # ViT-B/16, 86,567,656 params
    bert_encoder(**BERT_BASE)                             # BERT-base-sized encoder
    llama_decoder(**LLAMA_SMALL)                          # a ~100M-parameter Llama-style decoder

BatchNorm layers get random affine parameters and calibrated-then-perturbed running
statistics (see :func:`init_batchnorm`), so folding batch-norm is really exercised and
activations stay in a sane range.  Norm layers of the transformers get random
weights too.

:func:`random_convnet` builds a random multi-branch CNN from a seed, for the
differential fuzzer; ``model.describe()`` lists its steps.
"""

from __future__ import annotations

import contextlib
import math
import random
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

Built = tuple[nn.Module, tuple[torch.Tensor, ...]]

# Full-size settings (pass as keyword arguments to the builders).
DENSENET121 = dict(
    resolution=224, num_classes=1000, growth_rate=32, block_config=(6, 12, 24, 16), num_init_features=64
)
EFFICIENTNET_B0 = dict(resolution=224, num_classes=1000, width_mult=1.0, depth_mult=1.0)
VIT_B16 = dict(resolution=224, num_classes=1000, patch_size=16, dim=768, depth=12, heads=12)
BERT_BASE = dict(vocab_size=30522, seq_len=128, dim=768, depth=12, heads=12, max_positions=512)
LLAMA_SMALL = dict(vocab_size=32000, seq_len=128, dim=768, depth=12, heads=12, kv_heads=4)


# --------------------------------------------------------------------------- helpers


@contextlib.contextmanager
def _seeded(seed: int):
    """Seed torch's CPU RNG for the duration of the block, restoring it afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _make_divisible(value: float, divisor: int = 8) -> int:
    """torchvision's channel rounding: nearest multiple of ``divisor``, never below 90%."""
    new_value = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if new_value < 0.9 * value:
        new_value += divisor
    return new_value


def conv_bn_act(
    cin: int,
    cout: int,
    kernel_size: int = 3,
    stride: int = 1,
    groups: int = 1,
    act: Callable[[], nn.Module] | None = nn.ReLU,
) -> nn.Sequential:
    """Conv2d (no bias, "same" padding) -> BatchNorm2d -> optional activation."""
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, kernel_size, stride, (kernel_size - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    ]
    if act is not None:
        layers.append(act())
    return nn.Sequential(*layers)


def classifier_head(cin: int, num_classes: int, dropout: float = 0.0) -> nn.Sequential:
    """Global average pool -> flatten -> (dropout) -> linear."""
    layers: list[nn.Module] = [nn.AdaptiveAvgPool2d(1), nn.Flatten(1)]
    if dropout:
        layers.append(nn.Dropout(dropout))
    layers.append(nn.Linear(cin, num_classes))
    return nn.Sequential(*layers)


@torch.no_grad()
def init_batchnorm(model: nn.Module, calibration_inputs: Sequence[torch.Tensor]) -> None:
    """Give every BatchNorm non-trivial parameters and statistics, using torch's global RNG.

    The affine weight/bias are random; the running statistics are measured by a
    train-mode pass over ``calibration_inputs`` (so eval-mode activations stay
    normalised) and then perturbed, so they are neither 0/1 nor exactly the batch
    statistics.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    for bn in bns:
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.normal_(0.0, 0.2)
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over the calibration pass
    model.train()
    model(*calibration_inputs)
    model.eval()
    for bn in bns:
        bn.momentum = 0.1
        bn.running_mean += 0.1 * bn.running_var.sqrt() * torch.randn_like(bn.running_mean)
        bn.running_var *= torch.empty_like(bn.running_var).uniform_(0.8, 1.25)


@torch.no_grad()
def _randomize_norms(model: nn.Module) -> None:
    """Random (but near-identity) weights for LayerNorm / RMSNorm layers."""
    for m in model.modules():
        if isinstance(m, (nn.LayerNorm, RMSNorm)):
            m.weight.uniform_(0.5, 1.5)
        if isinstance(m, nn.LayerNorm):
            m.bias.normal_(0.0, 0.1)


def _finish_cnn(model: nn.Module, in_channels: int, resolution: int) -> Built:
    """Calibrate the batch-norms and draw a 1 x C x R x R example input."""
    # Few pixels per channel in the last stages of a small input need a bigger batch
    # for stable statistics; at full size 4 images are plenty (and faster).
    batch = 16 if resolution <= 64 else 4
    init_batchnorm(model, (torch.randn(batch, in_channels, resolution, resolution),))
    return model.eval(), (torch.randn(1, in_channels, resolution, resolution),)


# --------------------------------------------------------------------------- ResNet-18


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = conv_bn_act(cin, cout, 3, stride)
        self.conv2 = conv_bn_act(cout, cout, 3, act=None)
        self.downsample = conv_bn_act(cin, cout, 1, stride, act=None) if stride != 1 or cin != cout else None
        self.relu = nn.ReLU()

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(self.conv2(self.conv1(x)) + identity)


class ResNet(nn.Module):
    def __init__(self, layers: Sequence[int], num_classes: int, width: int):
        super().__init__()
        self.stem = nn.Sequential(conv_bn_act(3, width, 7, 2), nn.MaxPool2d(3, 2, 1))
        stages, cin = [], width
        for i, blocks in enumerate(layers):
            cout = width * 2**i
            stage = [BasicBlock(cin, cout, 1 if i == 0 else 2)]
            stage += [BasicBlock(cout, cout, 1) for _ in range(blocks - 1)]
            stages.append(nn.Sequential(*stage))
            cin = cout
        self.stages = nn.Sequential(*stages)
        self.head = classifier_head(cin, num_classes)

    def forward(self, x):
        return self.head(self.stages(self.stem(x)))


def resnet18(num_classes: int = 10, resolution: int = 32, width: int = 64, seed: int = 0) -> Built:
    """torchvision's ResNet-18 (``width=64``, ``resolution=224, num_classes=1000`` is the real one)."""
    with _seeded(seed):
        return _finish_cnn(ResNet([2, 2, 2, 2], num_classes, width), 3, resolution)


# --------------------------------------------------------------------------- MobileNetV2


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand_ratio: int):
        super().__init__()
        hidden = int(round(cin * expand_ratio))
        layers = [conv_bn_act(cin, hidden, 1, act=nn.ReLU6)] if expand_ratio != 1 else []
        layers += [
            conv_bn_act(hidden, hidden, 3, stride, groups=hidden, act=nn.ReLU6),  # depthwise
            conv_bn_act(hidden, cout, 1, act=None),  # linear bottleneck
        ]
        self.conv = nn.Sequential(*layers)
        self.use_residual = stride == 1 and cin == cout

    def forward(self, x):
        return x + self.conv(x) if self.use_residual else self.conv(x)


class MobileNetV2(nn.Module):
    # expand ratio, channels, repeats, first stride
    SETTINGS = [
        (1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1),
    ]  # fmt: skip

    def __init__(self, num_classes: int, width_mult: float):
        super().__init__()
        cin = _make_divisible(32 * width_mult)
        last = _make_divisible(1280 * max(1.0, width_mult))
        features: list[nn.Module] = [conv_bn_act(3, cin, 3, 2, act=nn.ReLU6)]
        for t, c, n, s in self.SETTINGS:
            cout = _make_divisible(c * width_mult)
            for i in range(n):
                features.append(InvertedResidual(cin, cout, s if i == 0 else 1, t))
                cin = cout
        features.append(conv_bn_act(cin, last, 1, act=nn.ReLU6))
        self.features = nn.Sequential(*features)
        self.head = classifier_head(last, num_classes, dropout=0.2)

    def forward(self, x):
        return self.head(self.features(x))


def mobilenet_v2(num_classes: int = 10, resolution: int = 32, width_mult: float = 1.0, seed: int = 0) -> Built:
    """torchvision's MobileNetV2 (``resolution=224, num_classes=1000`` is the real one)."""
    with _seeded(seed):
        return _finish_cnn(MobileNetV2(num_classes, width_mult), 3, resolution)


# --------------------------------------------------------------------------- DenseNet


class DenseLayer(nn.Module):
    """BN-ReLU-Conv1x1-BN-ReLU-Conv3x3 bottleneck; its output is concatenated to its input."""

    def __init__(self, cin: int, growth_rate: int, bn_size: int):
        super().__init__()
        mid = bn_size * growth_rate
        self.layers = nn.Sequential(
            nn.BatchNorm2d(cin), nn.ReLU(), nn.Conv2d(cin, mid, 1, bias=False),
            nn.BatchNorm2d(mid), nn.ReLU(), nn.Conv2d(mid, growth_rate, 3, padding=1, bias=False),
        )  # fmt: skip

    def forward(self, x):
        return torch.cat([x, self.layers(x)], dim=1)


def _transition(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.BatchNorm2d(cin), nn.ReLU(), nn.Conv2d(cin, cout, 1, bias=False), nn.AvgPool2d(2, 2))


class DenseNet(nn.Module):
    def __init__(self, growth_rate, block_config, num_init_features, bn_size, num_classes):
        super().__init__()
        features: list[nn.Module] = [conv_bn_act(3, num_init_features, 7, 2), nn.MaxPool2d(3, 2, 1)]
        c = num_init_features
        for i, n in enumerate(block_config):
            for _ in range(n):
                features.append(DenseLayer(c, growth_rate, bn_size))
                c += growth_rate
            if i != len(block_config) - 1:
                features.append(_transition(c, c // 2))
                c //= 2
        features += [nn.BatchNorm2d(c), nn.ReLU()]
        self.features = nn.Sequential(*features)
        self.head = classifier_head(c, num_classes)

    def forward(self, x):
        return self.head(self.features(x))


def densenet(
    num_classes: int = 10,
    resolution: int = 32,
    growth_rate: int = 12,
    block_config: Sequence[int] = (2, 2, 2),
    num_init_features: int = 24,
    bn_size: int = 4,
    seed: int = 0,
) -> Built:
    """A small DenseNet; ``**DENSENET121`` gives torchvision's densenet121."""
    with _seeded(seed):
        model = DenseNet(growth_rate, tuple(block_config), num_init_features, bn_size, num_classes)
        return _finish_cnn(model, 3, resolution)


# --------------------------------------------------------------------------- EfficientNet


class SqueezeExcitation(nn.Module):
    """avgpool -> 1x1 conv -> SiLU -> 1x1 conv -> sigmoid -> multiply."""

    def __init__(self, channels: int, squeeze: int):
        super().__init__()
        self.gate = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(channels, squeeze, 1),
            nn.SiLU(),
            nn.Conv2d(squeeze, channels, 1),
            nn.Sigmoid(),
        )

    def forward(self, x):
        return x * self.gate(x)


class MBConv(nn.Module):
    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand_ratio: int):
        super().__init__()
        hidden = _make_divisible(cin * expand_ratio)
        layers = [conv_bn_act(cin, hidden, 1, act=nn.SiLU)] if hidden != cin else []
        layers += [
            conv_bn_act(hidden, hidden, kernel, stride, groups=hidden, act=nn.SiLU),  # depthwise
            SqueezeExcitation(hidden, max(1, cin // 4)),
            conv_bn_act(hidden, cout, 1, act=None),
        ]
        self.block = nn.Sequential(*layers)
        self.use_residual = stride == 1 and cin == cout

    def forward(self, x):
        return x + self.block(x) if self.use_residual else self.block(x)


class EfficientNet(nn.Module):
    # expand ratio, kernel, first stride, channels, repeats  (EfficientNet-B0)
    SETTINGS = [
        (1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3),
        (6, 5, 1, 112, 3), (6, 5, 2, 192, 4), (6, 3, 1, 320, 1),
    ]  # fmt: skip

    def __init__(self, num_classes: int, width_mult: float, depth_mult: float):
        super().__init__()
        cin = _make_divisible(32 * width_mult)
        layers: list[nn.Module] = [conv_bn_act(3, cin, 3, 2, act=nn.SiLU)]
        for t, k, s, c, n in self.SETTINGS:
            cout = _make_divisible(c * width_mult)
            for i in range(int(math.ceil(n * depth_mult))):
                layers.append(MBConv(cin, cout, k, s if i == 0 else 1, t))
                cin = cout
        layers.append(conv_bn_act(cin, 4 * cin, 1, act=nn.SiLU))
        self.features = nn.Sequential(*layers)
        self.head = classifier_head(4 * cin, num_classes, dropout=0.2)

    def forward(self, x):
        return self.head(self.features(x))


def efficientnet(
    num_classes: int = 10, resolution: int = 32, width_mult: float = 0.5, depth_mult: float = 0.5, seed: int = 0
) -> Built:
    """A slimmed EfficientNet-B0 (10 MBConv blocks); ``**EFFICIENTNET_B0`` gives torchvision's efficientnet_b0."""
    with _seeded(seed):
        return _finish_cnn(EfficientNet(num_classes, width_mult, depth_mult), 3, resolution)


# --------------------------------------------------------------------------- ViT / BERT


class SelfAttention(nn.Module):
    """Multi-head self-attention, with a fused or separate q/k/v projection, and the
    attention written either with explicit matmul/softmax or with F.scaled_dot_product_attention."""

    def __init__(self, dim: int, heads: int, fused_qkv: bool, use_sdpa: bool):
        super().__init__()
        self.heads, self.head_dim, self.use_sdpa = heads, dim // heads, use_sdpa
        if fused_qkv:
            self.qkv = nn.Linear(dim, 3 * dim)
        else:
            self.query, self.key, self.value = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)

    def _split_heads(self, x):  # [b, n, dim] -> [b, heads, n, head_dim]
        b, n, _ = x.shape
        return x.reshape(b, n, self.heads, self.head_dim).transpose(1, 2)

    def forward(self, x):
        b, n, dim = x.shape
        if hasattr(self, "qkv"):
            q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        else:
            q, k, v = (self._split_heads(proj(x)) for proj in (self.query, self.key, self.value))
        if self.use_sdpa:
            out = F.scaled_dot_product_attention(q, k, v)
        else:
            scores = torch.matmul(q, k.transpose(-2, -1)) / math.sqrt(self.head_dim)
            out = torch.matmul(torch.softmax(scores, dim=-1), v)
        return self.out(out.transpose(1, 2).reshape(b, n, dim))


class EncoderBlock(nn.Module):
    """Transformer encoder layer: attention + GELU MLP, each with a residual; pre- or post-LayerNorm."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int, eps: float, pre_norm: bool, **attn_kwargs):
        super().__init__()
        self.pre_norm = pre_norm
        self.norm1, self.norm2 = nn.LayerNorm(dim, eps=eps), nn.LayerNorm(dim, eps=eps)
        self.attn = SelfAttention(dim, heads, **attn_kwargs)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim), nn.GELU(), nn.Linear(mlp_ratio * dim, dim))

    def forward(self, x):
        if self.pre_norm:  # ViT
            x = x + self.attn(self.norm1(x))
            return x + self.mlp(self.norm2(x))
        x = self.norm1(x + self.attn(x))  # BERT
        return self.norm2(x + self.mlp(x))


class ViT(nn.Module):
    def __init__(self, resolution, patch_size, in_channels, dim, depth, heads, mlp_ratio, num_classes):
        super().__init__()
        num_patches = (resolution // patch_size) ** 2
        self.patch_embed = nn.Conv2d(in_channels, dim, patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(0.02 * torch.randn(1, 1, dim))
        self.pos_embed = nn.Parameter(0.02 * torch.randn(1, num_patches + 1, dim))
        block = dict(eps=1e-6, pre_norm=True, fused_qkv=True, use_sdpa=False)
        self.blocks = nn.Sequential(*[EncoderBlock(dim, heads, mlp_ratio, **block) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x):
        x = self.patch_embed(x).flatten(2).transpose(1, 2)  # [b, patches, dim]
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        x = self.norm(self.blocks(x))
        return self.head(x[:, 0])


def vit(
    num_classes: int = 10,
    resolution: int = 32,
    patch_size: int = 8,
    in_channels: int = 3,
    dim: int = 64,
    depth: int = 2,
    heads: int = 4,
    mlp_ratio: int = 4,
    seed: int = 0,
) -> Built:
    """A pre-norm Vision Transformer (conv patch embedding, CLS token, explicit matmul/softmax attention)."""
    with _seeded(seed):
        model = ViT(resolution, patch_size, in_channels, dim, depth, heads, mlp_ratio, num_classes)
        _randomize_norms(model)
        return model.eval(), (torch.randn(1, in_channels, resolution, resolution),)


class BertEncoder(nn.Module):
    def __init__(self, vocab_size, max_positions, dim, depth, heads, mlp_ratio, num_classes):
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab_size, dim)
        self.position_embeddings = nn.Embedding(max_positions, dim)
        self.register_buffer("position_ids", torch.arange(max_positions).unsqueeze(0), persistent=False)
        self.embed_norm = nn.LayerNorm(dim, eps=1e-12)
        block = dict(eps=1e-12, pre_norm=False, fused_qkv=False, use_sdpa=True)
        self.layers = nn.Sequential(*[EncoderBlock(dim, heads, mlp_ratio, **block) for _ in range(depth)])
        self.pooler = nn.Sequential(nn.Linear(dim, dim), nn.Tanh())
        self.classifier = nn.Linear(dim, num_classes)

    def forward(self, input_ids):
        positions = self.position_ids[:, : input_ids.shape[1]]
        x = self.embed_norm(self.word_embeddings(input_ids) + self.position_embeddings(positions))
        x = self.layers(x)  # post-norm: every layer ends with a LayerNorm
        return self.classifier(self.pooler(x[:, 0]))


def bert_encoder(
    vocab_size: int = 1000,
    seq_len: int = 16,
    dim: int = 64,
    depth: int = 2,
    heads: int = 4,
    mlp_ratio: int = 4,
    max_positions: int = 64,
    num_classes: int = 2,
    seed: int = 0,
) -> Built:
    """A post-norm BERT-style encoder on int64 token ids ``[1, seq_len]`` (SDPA attention, pooled CLS head)."""
    with _seeded(seed):
        model = BertEncoder(vocab_size, max_positions, dim, depth, heads, mlp_ratio, num_classes)
        _randomize_norms(model)
        return model.eval(), (torch.randint(0, vocab_size, (1, seq_len)),)


# --------------------------------------------------------------------------- Llama


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def _rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


class LlamaAttention(nn.Module):
    """Causal grouped-query attention with rotary position embeddings."""

    def __init__(self, dim: int, heads: int, kv_heads: int):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, dim // heads
        self.q_proj = nn.Linear(dim, heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(dim, kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(dim, kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(heads * self.head_dim, dim, bias=False)

    def _repeat_kv(self, x):  # [b, kv_heads, n, d] -> [b, heads, n, d]
        rep = self.heads // self.kv_heads
        if rep == 1:
            return x
        b, h, n, d = x.shape
        return x[:, :, None].expand(b, h, rep, n, d).reshape(b, h * rep, n, d)

    def forward(self, x, cos, sin):
        b, n, _ = x.shape
        q = self.q_proj(x).view(b, n, self.heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, n, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, n, self.kv_heads, self.head_dim).transpose(1, 2)
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        out = F.scaled_dot_product_attention(q, self._repeat_kv(k), self._repeat_kv(v), is_causal=True)
        return self.o_proj(out.transpose(1, 2).reshape(b, n, -1))


class LlamaBlock(nn.Module):
    def __init__(self, dim: int, heads: int, kv_heads: int, hidden_dim: int, eps: float):
        super().__init__()
        self.attn_norm = RMSNorm(dim, eps)
        self.attn = LlamaAttention(dim, heads, kv_heads)
        self.mlp_norm = RMSNorm(dim, eps)
        self.gate_proj = nn.Linear(dim, hidden_dim, bias=False)
        self.up_proj = nn.Linear(dim, hidden_dim, bias=False)
        self.down_proj = nn.Linear(hidden_dim, dim, bias=False)

    def forward(self, x, cos, sin):
        x = x + self.attn(self.attn_norm(x), cos, sin)
        h = self.mlp_norm(x)
        return x + self.down_proj(F.silu(self.gate_proj(h)) * self.up_proj(h))  # SwiGLU


class LlamaDecoder(nn.Module):
    def __init__(self, vocab_size, dim, depth, heads, kv_heads, hidden_dim, max_seq_len, eps, rope_theta):
        super().__init__()
        head_dim = dim // heads
        self.embed = nn.Embedding(vocab_size, dim)
        self.layers = nn.ModuleList(LlamaBlock(dim, heads, kv_heads, hidden_dim, eps) for _ in range(depth))
        self.norm = RMSNorm(dim, eps)
        self.lm_head = nn.Linear(dim, vocab_size, bias=False)
        inv_freq = 1.0 / rope_theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
        angles = torch.outer(torch.arange(max_seq_len, dtype=torch.float32), inv_freq)
        angles = torch.cat([angles, angles], dim=-1)  # [max_seq_len, head_dim]
        self.register_buffer("rope_cos", angles.cos(), persistent=False)
        self.register_buffer("rope_sin", angles.sin(), persistent=False)

    def forward(self, input_ids):
        n = input_ids.shape[1]
        cos, sin = self.rope_cos[:n], self.rope_sin[:n]
        x = self.embed(input_ids)
        for layer in self.layers:
            x = layer(x, cos, sin)
        return self.lm_head(self.norm(x))


def llama_decoder(
    vocab_size: int = 256,
    seq_len: int = 16,
    dim: int = 64,
    depth: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    hidden_dim: int | None = None,
    max_seq_len: int = 64,
    eps: float = 1e-5,
    rope_theta: float = 10000.0,
    seed: int = 0,
) -> Built:
    """A tiny Llama-style decoder on int64 token ids ``[1, seq_len]``, returning logits
    ``[1, seq_len, vocab_size]``.  ``hidden_dim`` defaults to Llama's 8/3*dim rounded up to 32.
    """
    if hidden_dim is None:
        hidden_dim = 32 * math.ceil(int(8 * dim / 3) / 32)
    with _seeded(seed):
        max_seq_len = max(max_seq_len, seq_len)
        model = LlamaDecoder(vocab_size, dim, depth, heads, kv_heads, hidden_dim, max_seq_len, eps, rope_theta)
        _randomize_norms(model)
        return model.eval(), (torch.randint(0, vocab_size, (1, seq_len)),)


MODELS: dict[str, Callable[..., Built]] = {
    "resnet18": resnet18,
    "mobilenet_v2": mobilenet_v2,
    "densenet": densenet,
    "efficientnet": efficientnet,
    "vit": vit,
    "bert": bert_encoder,
    "llama": llama_decoder,
}


# --------------------------------------------------------------------------- random conv nets

ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "relu": F.relu,
    "relu6": F.relu6,
    "silu": F.silu,
    "gelu": F.gelu,
    "sigmoid": torch.sigmoid,
    "hardswish": F.hardswish,
    "tanh": torch.tanh,
}


@dataclass(frozen=True)
class Step:
    """One node of a :class:`RandomConvNet`: ``values[out] = op(*values[inputs])``."""

    op: str  # conv | bn | pool | linear (run ``module``); act | add | mul | cat | gap | flatten
    inputs: tuple[int, ...]
    shape: tuple[int, ...]  # output shape without the batch dimension
    module: str | None = None  # key into RandomConvNet.layers
    arg: str | None = None  # activation name, or gap flavour ("adaptive" / "mean")


class RandomConvNet(nn.Module):
    """A DAG of steps over a list of values; ``values[0]`` is the input, the last value the output."""

    def __init__(self, seed: int, input_shape: tuple[int, ...], steps: Sequence[Step], layers: dict[str, nn.Module]):
        super().__init__()
        self.seed, self.input_shape, self.steps = seed, tuple(input_shape), tuple(steps)
        self.layers = nn.ModuleDict(layers)

    def forward(self, x):
        values = [x]
        for step in self.steps:
            values.append(self._run(step, [values[i] for i in step.inputs]))
        return values[-1]

    def _run(self, step: Step, args: list[torch.Tensor]) -> torch.Tensor:
        if step.module is not None:
            return self.layers[step.module](*args)
        if step.op == "act":
            return ACTIVATIONS[step.arg](args[0])
        if step.op == "add":
            return args[0] + args[1]
        if step.op == "mul":
            return args[0] * args[1]
        if step.op == "cat":
            return torch.cat(args, dim=1)
        if step.op == "gap":
            return F.adaptive_avg_pool2d(args[0], 1) if step.arg == "adaptive" else args[0].mean((2, 3), keepdim=True)
        if step.op == "flatten":
            return torch.flatten(args[0], 1)
        raise ValueError(f"unknown step {step}")

    def describe(self) -> str:
        lines = [f"random_convnet(seed={self.seed}): input v0 [1, {', '.join(map(str, self.input_shape))}]"]
        for i, step in enumerate(self.steps, start=1):
            call = f"v{i} = {step.op}({', '.join(f'v{j}' for j in step.inputs)})"
            shape = f"[{', '.join(map(str, step.shape))}]"
            lines.append(f"  {call:<26} -> {shape:<14} {self._detail(step)}".rstrip())
        return "\n".join(lines)

    def _detail(self, step: Step) -> str:
        if step.module is None:
            return step.arg or ""
        module = self.layers[step.module]
        if isinstance(module, nn.BatchNorm2d):
            return f"BatchNorm2d({module.num_features})"
        return repr(module)

    def __str__(self) -> str:
        return self.describe()


class _RandomNetBuilder:
    """Grows a random DAG block by block; shapes are tracked statically (C, H, W)."""

    MAX_CHANNELS = 64

    def __init__(self, rng: random.Random, input_shape: tuple[int, int, int]):
        self.rng = rng
        self.shapes: list[tuple[int, ...]] = [input_shape]
        self.pickable = [True]  # internals of compound blocks (SE gates) are not reused
        self.used = [False]
        self.steps: list[Step] = []
        self.layers: dict[str, nn.Module] = {}

    # -- bookkeeping
    def emit(self, op, inputs, shape, module=None, arg=None, pickable=True) -> int:
        idx = len(self.shapes)
        name = None
        if module is not None:
            name = f"v{idx}"
            self.layers[name] = module
        self.steps.append(Step(op, tuple(inputs), tuple(shape), name, arg))
        self.shapes.append(tuple(shape))
        self.pickable.append(pickable)
        self.used.append(False)
        for i in inputs:
            self.used[i] = True
        return idx

    def candidates(self, pred=lambda i: True) -> list[int]:
        return [i for i in range(len(self.shapes)) if self.pickable[i] and pred(i)]

    def pick(self, pred=lambda i: True) -> int:
        """A random earlier value satisfying ``pred`` (which must hold for at least one),
        biased towards the latest one."""
        cands = self.candidates(pred)
        return cands[-1] if self.rng.random() < 0.5 else self.rng.choice(cands)

    # -- primitive steps
    def conv(self, src, cout, kernel=1, stride=1, padding=0, dilation=1, groups=1, bias=True, pickable=True) -> int:
        c, h, w = self.shapes[src]
        conv = nn.Conv2d(c, cout, kernel, stride, padding, dilation, groups, bias)
        with torch.no_grad():  # variance-preserving for a linear layer
            conv.weight.normal_(0.0, 1.0 / math.sqrt(conv.weight[0].numel()))
            if bias:
                conv.bias.normal_(0.0, 0.1)
        reach = dilation * (kernel - 1)
        out = ((h + 2 * padding - reach - 1) // stride + 1, (w + 2 * padding - reach - 1) // stride + 1)
        return self.emit("conv", [src], (cout, *out), conv, pickable=pickable)

    def act(self, src, name=None, pickable=True) -> int:
        name = name or self.rng.choice(list(ACTIVATIONS))
        return self.emit("act", [src], self.shapes[src], arg=name, pickable=pickable)

    # -- random blocks
    def block_conv(self):
        rng = self.rng
        src = self.pick()
        c, h, w = self.shapes[src]
        kernel = rng.choice([1, 3, 3, 5])
        stride = rng.choice([1, 1, 2])
        dilation = 2 if kernel > 1 and rng.random() < 0.2 else 1
        reach = dilation * (kernel - 1)
        padding = rng.choice([reach // 2, reach // 2, 0, rng.randint(0, reach // 2 + 1)])
        if min(h, w) + 2 * padding - reach < 1:
            padding = reach // 2  # "same" padding always leaves at least one output pixel
        r = rng.random()
        divisors = [g for g in (2, 3, 4) if c % g == 0]
        if r < 0.2:  # depthwise (channel multiplier 1 or 2)
            groups, cout = c, c * (rng.choice([1, 2]) if 2 * c <= self.MAX_CHANNELS else 1)
        elif r < 0.35 and divisors:
            groups = rng.choice(divisors)
            cout = groups * rng.randint(1, 24 // groups)
        else:
            groups, cout = 1, rng.randint(2, 24)
        v = self.conv(src, cout, kernel, stride, padding, dilation, groups, bias=rng.random() < 0.5)
        if rng.random() < 0.5:
            v = self.emit("bn", [v], self.shapes[v], nn.BatchNorm2d(cout))
        if rng.random() < 0.6:
            v = self.act(v)

    def block_bn(self):
        src = self.pick()
        self.emit("bn", [src], self.shapes[src], nn.BatchNorm2d(self.shapes[src][0]))

    def block_act(self):
        self.act(self.pick())

    def block_add(self):
        """Residual add; a 1x1 conv projects the second operand when the channels differ."""
        a = self.pick()
        c, h, w = self.shapes[a]
        same = self.candidates(lambda i: i != a and self.shapes[i] == self.shapes[a])
        if same:
            b = self.rng.choice(same)
        else:
            same_spatial = self.candidates(lambda i: i != a and self.shapes[i][1:] == (h, w))
            src = self.rng.choice(same_spatial) if same_spatial else a
            b = self.conv(src, c, bias=self.rng.random() < 0.5)
        a, b = (a, b) if self.rng.random() < 0.5 else (b, a)
        self.emit("add", [a, b], (c, h, w))

    def block_mul(self):
        rng = self.rng
        x = self.pick()
        c, h, w = self.shapes[x]
        if rng.random() < 0.6:  # squeeze-and-excitation gate, broadcast over H, W
            g = self.emit("gap", [x], (c, 1, 1), arg=rng.choice(["adaptive", "mean"]), pickable=False)
            g = self.conv(g, max(1, c // 4), pickable=False)
            g = self.act(g, rng.choice(["relu", "silu"]), pickable=False)
            g = self.conv(g, c, pickable=False)
        else:  # elementwise gating by another tensor of the same shape (or x itself)
            same = self.candidates(lambda i: i != x and self.shapes[i] == self.shapes[x])
            g = rng.choice(same) if same else x
        gate = self.act(g, rng.choice(["sigmoid", "sigmoid", "tanh"]), pickable=False)
        args = [x, gate] if rng.random() < 0.5 else [gate, x]
        self.emit("mul", args, (c, h, w))

    def block_cat(self):
        rng = self.rng
        first = self.pick(lambda i: self.shapes[i][0] <= self.MAX_CHANNELS // 2)  # v0 always qualifies
        c, h, w = self.shapes[first]
        inputs, total = [first], c
        for _ in range(rng.randint(1, 2)):
            fits = lambda i: self.shapes[i][1:] == (h, w) and total + self.shapes[i][0] <= self.MAX_CHANNELS  # noqa: E731
            room = self.candidates(fits)
            if not room:
                break
            inputs.append(rng.choice(room))
            total += self.shapes[inputs[-1]][0]
        if len(inputs) == 1:
            inputs.append(first)
            total *= 2
        rng.shuffle(inputs)
        self.emit("cat", inputs, (total, h, w))

    def block_pool(self):
        rng = self.rng
        src = self.pick()
        c, h, w = self.shapes[src]
        kernel, stride = rng.choice([2, 3]), rng.choice([1, 2])
        padding = rng.randint(0, kernel // 2)
        if min(h, w) + 2 * padding - kernel < 0:
            padding = kernel // 2
        pool = (nn.MaxPool2d if rng.random() < 0.5 else nn.AvgPool2d)(kernel, stride, padding)
        out = ((h + 2 * padding - kernel) // stride + 1, (w + 2 * padding - kernel) // stride + 1)
        self.emit("pool", [src], (c, *out), pool)

    BLOCKS = {"conv": 4, "bn": 1, "act": 1, "add": 2, "mul": 1, "cat": 1, "pool": 1}

    def build(self, num_blocks: int, num_classes: int):
        names, weights = zip(*self.BLOCKS.items())
        for _ in range(num_blocks):
            getattr(self, "block_" + self.rng.choices(names, weights)[0])()
        # Head: global-average-pool every unused value (no dead branches), concat, linear.
        leaves = [i for i in range(1, len(self.shapes)) if not self.used[i]] or [0]
        pooled = [
            self.emit("gap", [i], (self.shapes[i][0], 1, 1), arg=self.rng.choice(["adaptive", "mean"])) for i in leaves
        ]
        features = sum(self.shapes[i][0] for i in leaves)
        v = pooled[0] if len(pooled) == 1 else self.emit("cat", pooled, (features, 1, 1))
        v = self.emit("flatten", [v], (features,))
        self.emit("linear", [v], (num_classes,), nn.Linear(features, num_classes))


def random_convnet(seed: int) -> Built:
    """A random multi-branch CNN (3-10 blocks) on a 1 x {3..8} x {8..16} x {8..16} input,
    fully determined by ``seed``.  ``model.describe()`` lists its steps."""
    rng = random.Random(seed)
    input_shape = (rng.randint(3, 8), rng.randint(8, 16), rng.randint(8, 16))
    with _seeded(seed):
        builder = _RandomNetBuilder(rng, input_shape)
        builder.build(num_blocks=rng.randint(3, 10), num_classes=rng.randint(2, 10))
        model = RandomConvNet(seed, input_shape, builder.steps, builder.layers)
        init_batchnorm(model, (torch.randn(4, *input_shape),))
        return model.eval(), (torch.randn(1, *input_shape),)
