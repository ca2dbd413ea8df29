"""Small models the device-side tests (bundles, the C++ runner) run, compiled ahead of
time by tests/precompile.py (``("call", "deploy_models", "lowered", name, target)``).

- ``cnn``: the bundled example (tools/examples/tiny_cnn.py).
- ``transformer``: the zoo's small ViT (attention, layer norm, GELU, softmax).
- ``lowbit``: a W2A2 quantization-aware CNN (fold-fake-quant → qconv2d/qdense on 2-bit
  codes, run by the bit-serial C kernels).
- ``two_outputs``: a model with two inputs and two outputs.
"""

from __future__ import annotations

import torch
from torch import nn

import precompile

NAMES = ("cnn", "transformer", "lowbit", "two_outputs")


class _TwoOutputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(12, 5)

    def forward(self, x, y):
        h = self.fc(x) + y
        return torch.relu(h), h * 2


def build(name: str):
    """(model, example inputs) of ``name``."""
    torch.manual_seed(0)
    if name == "cnn":
        from sliver.tools.demo import _example

        return _example()[1]
    if name == "transformer":
        import zoo

        return zoo.vit()
    if name == "lowbit":
        import sliver.qat

        net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1, stride=2),
                            nn.ReLU(), nn.Flatten(), nn.Linear(16 * 8 * 8, 10))
        q = sliver.qat.prepare(net, w_bits=2, a_bits=2).eval()
        x = torch.randn(1, 3, 16, 16)
        q(x)  # observers see one batch: their ranges become the quantization scales
        return q, (x,)
    if name == "two_outputs":
        return _TwoOutputs().eval(), (torch.randn(2, 12), torch.randn(2, 5))
    raise KeyError(name)


def lowered(name: str, target: str) -> str:
    """Lower ``name`` for ``target`` and save it; the artifact's path."""
    import sliver

    model, inputs = build(name)
    return str(sliver.lower(model, inputs, target=target).save(precompile.out(f"deploy-{name}-{target}.sliver")))


def key(name: str, target: str) -> tuple:
    """The tests/precompile.py job that compiles ``name`` for ``target`` (the CNN is the
    bundled example, which other tests compile too)."""
    if name == "cnn":
        return ("example", target)
    return ("call", "deploy_models", "lowered", name, target)
