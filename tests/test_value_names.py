"""Value names are module paths, whatever characters they hold (``nn.ModuleDict`` keys
such as ``conv-1`` or ``stage 2/proj``): the printer quotes the ones that are not plain
(``%"blocks.conv-1.weight"``), the parser reads them back, and print → parse → print
stays the identity, through the params file too."""

import numpy as np
import pytest
import torch
from torch import nn

import sliver
from helpers import dedent, roundtrip
from sliver.common.errors import IRParseError, SliverError
from sliver.ir import io
from sliver.ir.core import Module
from sliver.ir.names import format_name, parse_name
from sliver.ir.interp import run
from sliver.ir.parser import parse_module
from sliver.ir.types import TensorType

ODD = ["conv-1", 'stage 2/"proj"\\x', "ünï", "a:b"]


class Blocks(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.blocks = nn.ModuleDict({k: nn.Linear(4, 4) for k in ODD})

    def forward(self, x):
        for k in ODD:
            x = self.blocks[k](x)
        return x


@pytest.mark.parametrize("name", ["x", "conv.weight", "conv-1", 'say "hi"', "back\\slash", "a b", "ünï", "%", '"'])
def test_format_and_parse_are_inverse(name):
    text = format_name(name)
    assert parse_name(text) == name
    assert text.startswith('%"') == (name not in ("x", "conv.weight"))


def test_a_model_with_odd_module_paths_traces_and_round_trips(tmp_path):
    model, x = Blocks().eval(), torch.randn(2, 4)
    module = sliver.trace(model, (x,))
    text = str(module)
    assert '%"blocks.conv-1.weight" = param : f32[4,4]' in text
    assert '%"blocks.stage 2/\\"proj\\"\\\\x.bias"' in text
    again = roundtrip(module)
    with torch.no_grad():
        want = model(x).numpy()
    np.testing.assert_allclose(run(again, [x.numpy()])[0], want, rtol=1e-6)
    io.save_module(again, tmp_path / "m.sir")
    back = io.load_module(tmp_path / "m.sir")
    assert str(back) == text
    np.testing.assert_allclose(run(back, [x.numpy()])[0], want, rtol=1e-6)


def test_quoted_names_in_hand_written_text():
    m = parse_module(dedent('''
        func @m(%"in put": f32[3]) {
          %"x-1" = relu(%"in put") : f32[3]
          %y = neg(%"x-1") : f32[3]
          return %y, %"x-1"
        }
    '''))
    assert [v.name for v in m.inputs] == ["in put"] and m.outputs[1].name == "x-1"
    np.testing.assert_array_equal(run(m, [np.array([-1.0, 0.0, 2.0], np.float32)])[0], [0, 0, -2])


@pytest.mark.parametrize("text, match", [
    ('func @m(%"x: f32[3]) {\n  return %"x\n}\n', "unexpected character"),
    ('func @m(%"": f32[3]) {\n  return %""\n}\n', "unexpected character"),
    ('func @m(%"a\nb": f32[3]) {\n  return %"a\nb"\n}\n', "unexpected character"),
    ('func @m(%"x": f32[3]) {\n  return %"y"\n}\n', 'undefined value %"y"'),
])
def test_bad_quoted_names_are_parse_errors(text, match):
    with pytest.raises(IRParseError, match=match):
        parse_module(text)


@pytest.mark.parametrize("name", ["a\nb", "tab\there", "nul\x00"])
def test_a_name_with_control_characters_is_refused(name):
    with pytest.raises(SliverError, match="invalid value name"):
        Module("m").add_input(TensorType((1,), "f32"), name=name)
