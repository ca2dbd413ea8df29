"""sliver.qat: preparing a plain torch model for quantization-aware training."""

import numpy as np
import pytest
import torch
import torch.nn as nn

import sliver
import sliver.qat
from sliver.common.errors import SliverError
from sliver.ir.interp import run


def small_cnn():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, stride=2), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 10),
    )


def train_steps(model, x, y, steps=4):
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    model.train()
    for _ in range(steps):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def test_prepare_swaps_layers_with_per_layer_widths_and_keeps_the_original():
    net = small_cnn()
    q = sliver.qat.prepare(net, w_bits=2, a_bits=2, layers={"0": (4, 8), "6": None})
    names = {n: (m.w_bits, m.a_bits) for n, m in sliver.qat.qat_layers(q)}
    assert names == {"0": (4, 8), "3": (2, 2)}
    assert type(net[0]) is nn.Conv2d and type(q[6]) is nn.Linear  # original untouched; "6" left in float
    assert torch.equal(q[0].weight, net[0].weight)


@pytest.mark.parametrize("kwargs,message", [
    (dict(w_bits=1), "w_bits must be an int in 2..8.*cannot express"),
    (dict(a_bits=9), "a_bits must be an int in 1..8"),
    (dict(layers={"7": 4}), "no Conv2d/Linear named 7; the layers are: 0, 3, 6"),
    (dict(layers={"3": (2, 0)}), "a_bits of 3 must be an int in 1..8"),
])
def test_prepare_rejects_bad_widths_and_names(kwargs, message):
    with pytest.raises(SliverError, match=message):
        sliver.qat.prepare(small_cnn(), **kwargs)


def test_training_learns_scales_and_the_model_traces_to_fake_quant_exactly():
    q = sliver.qat.prepare(small_cnn(), 2, 2)
    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(16, 1, 8, 8, generator=g) - 0.2, torch.randint(0, 10, (16,), generator=g)
    before = q[3].act_quant.scale.detach().clone()
    train_steps(q, x, y)
    assert q[0].act_quant.signed is True  # the input has negative pixels
    assert q[3].act_quant.signed is False and q[6].act_quant.signed is False  # after ReLU: unsigned
    assert not torch.equal(q[3].act_quant.scale.detach(), before)  # lazily initialised, then learned
    module = sliver.trace(q, (x[:3],))
    fqs = [op for op in module.ops if op.kind == "fake_quant"]
    assert [(op.attrs["qmin"], op.attrs["qmax"], op.attrs["axis"]) for op in fqs] == [
        (-2, 1, None), (-2, 1, 0), (0, 3, None), (-2, 1, 0), (0, 3, None), (-2, 1, 0)]
    with torch.no_grad():
        want = q(x[:3]).numpy()
    (got,) = run(module, [x[:3].numpy()])
    assert np.array_equal(got, want)
    text = sliver.qat.summary(q)
    assert text.splitlines()[1].split()[:5] == ["0", "Conv2d", "2", "2", "signed"]


def test_state_dict_round_trip_keeps_signs_and_scales():
    g = torch.Generator().manual_seed(2)
    x, y = torch.rand(8, 1, 8, 8, generator=g), torch.randint(0, 10, (8,), generator=g)
    q = train_steps(sliver.qat.prepare(small_cnn(), 3, 4), x, y, steps=2)
    fresh = sliver.qat.prepare(small_cnn(), 3, 4)
    fresh.load_state_dict(q.state_dict())
    fresh.eval()
    assert fresh[0].act_quant.signed is False and fresh[0].act_quant.initialised
    with torch.no_grad():
        assert torch.equal(fresh(x), q(x))
