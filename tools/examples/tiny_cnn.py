"""The bundled example: a small residual CNN for 32x32 RGB images (10 classes).

Deterministic weights (seeded), non-trivial batch-norm statistics, and the
usual building blocks: conv + batch norm + ReLU, a strided residual block with a
1x1 projection, max pooling, global average pooling and a linear head.

    sliver lower tools/examples/tiny_cnn.py:build --target arm64 -o tiny.sliver
"""

import torch
from torch import nn


class Block(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.project = None
        if stride != 1 or cin != cout:
            self.project = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        skip = x if self.project is None else self.project(x)
        return torch.relu(y + skip)


class TinyCNN(nn.Module):
    def __init__(self, classes=10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU(inplace=True))
        self.pool = nn.MaxPool2d(2)
        self.block1 = Block(16, 16, 1)
        self.block2 = Block(16, 32, 2)
        self.head = nn.Linear(32, classes)

    def forward(self, x):
        x = self.pool(self.stem(x))
        x = self.block2(self.block1(x))
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def build(seed: int = 0):
    """(model, example_inputs) for sliver's CLI and API."""
    torch.manual_seed(seed)
    model = TinyCNN()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    return model.eval(), (torch.randn(1, 3, 32, 32),)
