"""Two tiny models for the tuning tests that share their first kernel (conv 3->8,
3x3, bias, ReLU on 8x8): `sliver tune tests/tuning_models.py:first` etc."""

import torch
from torch import nn


def _built(model, seed):
    torch.manual_seed(seed)
    for p in model.parameters():
        nn.init.normal_(p, std=0.3)
    return model.eval(), (torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(seed)),)


def first():
    """conv 3x3 + ReLU, then a 1x1 conv."""
    return _built(nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 1)), 0)


def second():
    """The same first layer (other weights), then a different tail."""
    return _built(nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),
                                nn.ReLU(), nn.Conv2d(8, 2, 1)), 1)
