"""The IR: types, printer ⇄ parser, verifier, interpreter."""

import numpy as np
import pytest

from helpers import dedent, roundtrip
from sliver.common.errors import IRParseError, SliverError, VerifyError
from sliver.ir.core import Module
from sliver.ir.interp import run
from sliver.ir.parser import parse_module
from sliver.ir.types import QuantParams, TensorType
from sliver.ir.verifier import verify

TEXT = dedent("""
    func @tiny(%x: f32[1,3,8,8], %ids: i64[2]) {
      %c.weight = param : f32[4,3,3,3]
      %conv = conv2d(%x, %c.weight) {stride=[2, 2], padding=[1, 1, 1, 1]} : f32[1,4,4,4]
      %act = gelu(%conv) {approximate="tanh"} : f32[1,4,4,4]
      %half = constant {value=0.5} : f32[]
      %scaled = mul(%act, %half) : f32[1,4,4,4]
      %rows = take(%scaled, %ids) {axis=1} : f32[1,2,4,4]
      %flat = reshape(%rows) {shape=[1, 32]} : f32[1,32]
      %clip = clamp(%flat) {min=-1.5, max=inf} : f32[1,32]
      return %clip, %conv
    }
""")


def test_print_parse_print_is_identity():
    module = parse_module(TEXT)
    assert str(module) == TEXT
    verify(module)


def test_parse_reports_line_and_column():
    bad = TEXT.replace("%act = gelu(%conv)", "%act = gelu(%nope)")
    with pytest.raises(IRParseError, match=r"line 4, column \d+: use of undefined value %nope"):
        parse_module(bad)


def test_parse_rejects_wrong_written_type():
    bad = TEXT.replace(": f32[1,4,4,4]\n  %act", ": f32[1,4,5,5]\n  %act")
    with pytest.raises(IRParseError, match=r"conv2d result type is written as f32\[1,4,5,5\] but its operands give f32\[1,4,4,4\]"):
        parse_module(bad)


def test_parse_rejects_unknown_op_and_attribute():
    with pytest.raises(IRParseError, match="unknown op 'frobnicate'"):
        parse_module(TEXT.replace("gelu(%conv)", "frobnicate(%conv)"))
    with pytest.raises(IRParseError, match="gelu has no attribute"):
        parse_module(TEXT.replace('approximate="tanh"', 'mode="tanh"'))


def test_quantized_and_subbyte_types_print_and_parse():
    t = TensorType((8, 16), "u4", QuantParams(scale=0.05, zero_point=3))
    assert str(t) == "u4[8,16]q(scale=0.05, zero_point=3)"
    pc = TensorType((4, 2), "i2", QuantParams(scale=(0.5, 0.25, 0.125, 1.0), zero_point=(0, 0, 0, 0), axis=0))
    text = f"func @q(%x: {t}, %y: {pc}) {{\n  %z = relu(%y) : i2[4,2]\n  return %z\n}}\n"
    module = parse_module(text)
    assert module.inputs[0].type == t and module.inputs[1].type == pc
    assert str(module) == text
    assert t.nbytes == 64  # 128 four-bit values


def test_verifier_blames_the_pass_and_shows_context():
    module = parse_module(TEXT)
    op = module.ops[2]  # gelu
    op.results[0].type = TensorType((1, 4, 9, 9), "f32")  # corrupt it behind the API's back
    with pytest.raises(VerifyError) as e:
        verify(module, after="my-pass")
    msg = str(e.value)
    assert "invalid IR after pass 'my-pass'" in msg
    assert ">> %act = gelu(%conv)" in msg and "%conv = conv2d" in msg


def test_erase_refuses_while_used_and_rauw_rewires():
    module = parse_module(TEXT)
    conv = module.ops[1]
    with pytest.raises(SliverError, match="still used by gelu"):
        module.erase(conv)
    act = module.ops[2]
    module.replace_all_uses_with(act.result, conv.result)
    module.erase(act)
    verify(module)
    assert "gelu" not in str(module)


def test_use_before_def_is_caught():
    module = parse_module(TEXT)
    module.ops.insert(0, module.ops.pop(2))  # move gelu above its operand
    with pytest.raises(VerifyError, match=r"operand 0 \(%conv\) of gelu is used before it is defined"):
        verify(module)


def test_interpreter_matches_numpy_on_small_module(rng):
    m = Module("lin")
    x = m.add_input(TensorType((2, 3), "f32"), name="x")
    w = rng.standard_normal((4, 3)).astype(np.float32)
    y = m.add_op("linear", [x, m.add_param("w", w)]).result
    z = m.add_op("softmax", [y], {"axis": -1}).result
    m.set_outputs([z])
    verify(m)
    xs = rng.standard_normal((2, 3)).astype(np.float32)
    logits = xs @ w.T
    want = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    (got,) = run(m, [xs])
    np.testing.assert_allclose(got, want, rtol=1e-5)
    (got64,) = run(m, [xs], dtype="f64")
    assert got64.dtype == np.float64
    np.testing.assert_allclose(got64, want, rtol=1e-6)


def test_interpreter_checks_inputs():
    module = parse_module(TEXT)
    with pytest.raises(SliverError, match=r"input %x must have shape \[1, 3, 8, 8\], got \[1, 3, 4, 4\]"):
        run(module, [np.zeros((1, 3, 4, 4), np.float32), np.zeros(2, np.int64)])
    with pytest.raises(SliverError, match="input %ids must be i64"):
        run(module, [np.zeros((1, 3, 8, 8), np.float32), np.zeros(2, np.float32)])


def test_clone_is_independent():
    module = parse_module(TEXT)
    copy = module.clone()
    roundtrip(copy)
    copy.rename(copy.outputs[1], "renamed")
    assert "%renamed" in str(copy)
    assert str(module) == TEXT
