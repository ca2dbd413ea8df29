"""nn.LSTM, nn.GRU and nn.RNN, unrolled by the tracer over the fixed sequence length into
linear, sigmoid, tanh and elementwise ops: layers, directions, batch_first, unbatched
inputs, given initial states and LSTM projections, against torch in the interpreter and
as x86_64 and emulated-Pi artifacts."""

import pytest
import torch
from torch import nn

import sliver
from helpers import artifact_tests, assert_close, numpy_inputs, roundtrip, torch_outputs
from sliver.ir.interp import run


class Rnn(nn.Module):
    """All of the layer's outputs, with the given initial state or none."""

    def __init__(self, rnn, with_state=False):
        super().__init__()
        self.rnn, self.with_state = rnn, with_state

    def forward(self, x, *state):
        out = self.rnn(x, (state if len(state) > 1 else state[0]) if state else None)
        out, h = out
        return (out,) + (tuple(h) if isinstance(h, tuple) else (h,))


CASES = {
    "lstm": lambda: nn.LSTM(6, 5, batch_first=True),
    "lstm-2-layers-bidirectional": lambda: nn.LSTM(6, 5, num_layers=2, bidirectional=True),
    "lstm-projection-no-bias": lambda: nn.LSTM(6, 5, proj_size=3, bias=False, batch_first=True),
    "gru-bidirectional": lambda: nn.GRU(6, 5, bidirectional=True, batch_first=True),
    "gru-2-layers": lambda: nn.GRU(6, 5, num_layers=2),
    "rnn-tanh": lambda: nn.RNN(6, 5, batch_first=True),
    "rnn-relu-bidirectional": lambda: nn.RNN(6, 5, nonlinearity="relu", bidirectional=True),
}


def _inputs(rnn, batch=2, steps=4, unbatched=False, with_state=False):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(*((steps,) if unbatched else (batch, steps) if rnn.batch_first else (steps, batch)), 6,
                    generator=g)
    if not with_state:
        return (x,)
    dirs = 2 if rnn.bidirectional else 1
    lead = (rnn.num_layers * dirs,) + (() if unbatched else (batch,))
    h = torch.randn(*lead, rnn.proj_size or rnn.hidden_size, generator=g)
    return (x, h, torch.randn(*lead, rnn.hidden_size, generator=g)) if isinstance(rnn, nn.LSTM) else (x, h)


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("unbatched, with_state", [(False, False), (False, True), (True, True)])
def test_matches_torch_in_the_interpreter(name, unbatched, with_state):
    torch.manual_seed(0)
    model = Rnn(CASES[name]()).eval()
    inputs = _inputs(model.rnn, unbatched=unbatched, with_state=with_state)
    module = sliver.trace(model, inputs)
    assert {op.kind for op in module.ops} <= {"param", "constant", "linear", "slice", "reshape", "concat",
                                              "permute", "sigmoid", "tanh", "relu", "add", "sub", "mul"}
    assert_close(run(module, numpy_inputs(inputs)), torch_outputs(model, inputs), rtol=1e-5)


def test_the_unrolled_ir_round_trips():
    torch.manual_seed(0)
    model = Rnn(CASES["lstm-2-layers-bidirectional"]()).eval()
    roundtrip(sliver.trace(model, _inputs(model.rnn)))


class Tagger(nn.Module):
    """A bidirectional LSTM tagger over a GRU encoder: the recurrent layers compiled."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.gru = nn.GRU(6, 8, batch_first=True)
        self.lstm = nn.LSTM(8, 4, bidirectional=True, batch_first=True)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        return self.head(self.lstm(self.gru(x)[0])[0])


def build():
    return Tagger().eval(), (torch.randn(2, 5, 6, generator=torch.Generator().manual_seed(4)),)


compiled, test_x86_artifact_matches_torch, test_arm64_artifact_matches_torch_on_the_emulated_pi = artifact_tests(
    __name__, build, "tagger", rtol=1e-4)
