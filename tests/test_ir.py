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


# -- hostile text: every problem is an IRParseError, found before anything is allocated


@pytest.mark.parametrize("old,new,match", [
    ("%c.weight = param : f32[4,3,3,3]", "%c.weight = param : f32[99999999999]",
     "dimension larger than 2147483647"),
    ("%c.weight = param : f32[4,3,3,3]", "%c.weight = param : f32[65536,65536,4]", "at most 2147483647 per tensor"),
    ("f32[1,3,8,8]", "f32[1,3,8,1.5]", "expected a dimension"),
    ("f32[1,3,8,8]", "f32[1,3,8,-8]", "expected a dimension"),
    ("f32[1,3,8,8]", "f32[" + ",".join(["1"] * 17) + "]", "at most 16 dimensions"),
    ("f32[1,3,8,8]", "f32[1,3,8," + "9" * 5000 + "]", "dimension larger than"),
    ("stride=[2, 2]", "stride=[0, 0]",
     r"conv2d: attribute stride must be a list of 2 integers in \[1, 2147483647\], got \[0, 0\]"),
    ("padding=[1, 1, 1, 1]", "padding=[1.5, 1, 1, 1]",
     r"attribute padding must be a list of 4 integers in \[0, 2147483647\]"),
    ("padding=[1, 1, 1, 1]", "padding=[1, 1, 1]", "attribute padding must be a list of 4 integers"),
    ("stride=[2, 2]", "stride=2", "attribute stride must be a list of 2 integers"),
    ("stride=[2, 2]", "stride=[2147483648, 1]", r"stride must be a list of 2 integers in \[1, 2147483647\]"),
    ("{axis=1}", "{axis=1.0}", "take: attribute axis must be an integer, got 1.0"),
    ("{axis=1}", '{axis="1"}', "take: attribute axis must be an integer"),
    ("{shape=[1, 32]}", "{shape=[1, 32.0]}", "reshape: attribute shape must be a list of integers in"),
    ('approximate="tanh"', 'approximate="fast"', 'attribute approximate must be one of "none", "tanh"'),
    ("{axis=1}", "{axis=9223372036854775808}", "integer out of the 64-bit range"),
    ("{shape=[1, 32]}", "{shape=" + "[" * 9 + "1" + "]" * 9 + "}", "attribute lists nest at most 8 deep"),
    ("{shape=[1, 32]}", "{shape=" + "[" * 100000 + "1" + "]" * 100000 + "}", "nest at most 8 deep"),
    ("{value=0.5}", "{value=1e308}", r"constant: value 1e\+308 must be a f32 value \(a number of magnitude at most"),
    ("{min=-1.5, max=inf}", "{min=-1e300, max=inf}", "clamp: attribute min must be none or a f32 value"),
    ("{min=-1.5, max=inf}", "{min=nan, max=inf}", "clamp: attribute min must be none or a f32 value, not nan"),
    ("{axis=1}", "{axis=1, axis=1}", "attribute axis is given twice"),
    ("%x: f32[1,3,8,8]", "%x: f32[1,3,8,8]q(scale=-1.0)", "scale must be positive finite floats"),
    ("%x: f32[1,3,8,8]", "%x: f32[1,3,8,8]q(scale=0.5, axis=7)", "axis 7 is not an axis"),
    ("%x: f32[1,3,8,8]", "%x: f32[1,3,8,8]q(scale=0.5, bogus=1)", "q\\(...\\) takes scale, zero_point and axis"),
    ("%x: f32", "%x: f32\u200b", "unexpected character"),
    ("%flat = reshape(%rows) {shape=[1, 32]} : f32[1,32]",
     "%flat = reshape(%rows) {shape=[1, 32]} : f32[1,32]\n  %m = mean(%flat) {axes=[1, -1]} : f32[1]",
     r"mean: axes \[1, -1\] name an axis twice"),
    ("%flat = reshape(%rows) {shape=[1, 32]} : f32[1,32]",
     "%flat = reshape(%rows) {shape=[1, 32]} : f32[1,32]\n  %m = sum(%flat) {axes=[]} : f32[1,32]",
     "sum: name the axes to reduce"),
])
def test_parse_rejects_hostile_numbers_shapes_and_attributes(old, new, match):
    assert old in TEXT
    with pytest.raises(IRParseError, match=match):
        parse_module(TEXT.replace(old, new, 1))


def test_attribute_kinds_hold_for_modules_built_in_python_too():
    """The parser and the verifier share the checks: a module built (or edited) in Python
    with a float padding or a zero stride is refused too."""
    from sliver.ir.ops import TypeRuleError

    m = Module("m")
    x = m.add_input(TensorType((1, 3, 8, 8), "f32"), name="x")
    w = m.add_param("w", np.zeros((4, 3, 3, 3), np.float32))
    with pytest.raises(TypeRuleError, match="stride must be a list of 2 integers in"):
        m.add_op("conv2d", [x, w], {"stride": (0, 0)})
    conv = m.add_op("conv2d", [x, w], {"padding": (1, 1, 1, 1)})
    m.set_outputs([conv.result])
    verify(m)
    conv.attrs["padding"] = (1.5, 1, 1, 1)
    with pytest.raises(VerifyError, match=r"attribute padding must be a list of 4 integers in \[0, 2147483647\]"):
        verify(m)


def test_every_attribute_of_every_op_has_a_kind():
    from sliver.ir.ops import ATTR_KINDS, all_ops

    missing = [f"{name}.{attr}" for name, decl in all_ops().items() for attr in decl.attrs
               if attr not in ATTR_KINDS.get(name, {})]
    assert not missing, f"give these attributes a kind in sliver.ir.ops.ATTR_KINDS: {missing}"


def test_placeholder_params_are_capped_and_given_params_are_checked():
    big = TEXT.replace("param : f32[4,3,3,3]\n", "param : f32[4,3,3,3]\n  %big = param : f32[300000000]\n")
    with pytest.raises(IRParseError, match="placeholders are capped .* parse it with its params"):
        parse_module(big)
    with pytest.raises(IRParseError, match=r"line 2, column \d+: param %c.weight is f32\[4,3,3,3\] in the text "
                                           r"but float64\[4, 3, 3, 3\]"):
        parse_module(TEXT, params={"c.weight": np.zeros((4, 3, 3, 3))})
    with pytest.raises(IRParseError, match="param %c.weight has no data"):
        parse_module(TEXT, params={})
    with pytest.raises(IRParseError, match="its data is a list, not a numpy array"):
        parse_module(TEXT, params={"c.weight": [[0.0]]})


def test_load_module_checks_the_params_file_against_the_text_before_reading_it(tmp_path):
    from sliver.ir.io import load_module, save_module

    module = parse_module(TEXT, params={"c.weight": np.arange(108, dtype=np.float32).reshape(4, 3, 3, 3)})
    path = save_module(module, tmp_path / "m.sir")
    again = load_module(path)
    assert str(again) == TEXT and np.array_equal(again.params["c.weight"], module.params["c.weight"])
    npz = tmp_path / "m.npz"
    for params, match in [
        ({"c.weight": np.zeros((3,), np.float32)},
         r"param %c.weight is f32\[4,3,3,3\] in the IR text but float32\[3\]"),
        ({"c.weight": np.zeros((4, 3, 3, 3), np.int64)}, "but int64"),
        ({"c.weight": np.array([None] * 108, dtype=object).reshape(4, 3, 3, 3)}, "but object"),
        ({"c.weight": module.params["c.weight"], "extra": np.zeros(2)}, "entry 'extra.npy' is no param of the IR text"),
        ({}, "param %c.weight has no data"),
    ]:
        np.savez(npz, **params)
        with pytest.raises(IRParseError, match=match):
            load_module(path)
    with open(path, "ab") as f:  # a text too large to be IR: refused before it is read
        f.truncate(65 << 20)
    with pytest.raises(IRParseError, match="is no IR text"):
        load_module(path)
    path.write_text(TEXT)
    npz.write_bytes(b"PK\x03\x04 not a zip")
    with pytest.raises(IRParseError, match="not a readable .npz file"):
        load_module(path)
    # a zip bomb: the entry claims to be far larger than the f32[4,3,3,3] it should hold
    import zipfile

    with zipfile.ZipFile(npz, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("c.weight.npy", b"\0" * (50 << 20))
    with pytest.raises(IRParseError, match="holds 52428800 bytes, more than a f32\\[4,3,3,3\\] needs"):
        load_module(path)


def test_zero_dim_inputs_params_and_outputs_keep_their_shape():
    """np.ascontiguousarray turns a 0-d array into a 1-d one; the interpreter and the
    golden data must not."""
    from sliver.common.numerics import as_numpy

    text = dedent("""
        func @s(%x: f32[]) {
          %p = param : i32[]
          %y = neg(%x) : f32[]
          return %y, %p
        }
    """)
    module = parse_module(text, params={"p": np.array(7, np.int32)})
    y, p = run(module, [np.array(2.0, np.float32)])
    assert y.shape == () and p.shape == () and y == -2.0 and p == 7
    assert as_numpy(np.float32(3)).shape == () and as_numpy(np.zeros((2, 3)).T).flags.c_contiguous
