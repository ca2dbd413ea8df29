"""Symbolic dimensions in the IR: arithmetic, types, printer ⇄ parser, verifier, interpreter."""

import numpy as np
import pytest

from helpers import dedent
from sliver.common.errors import InputError, IRParseError, SliverError, VerifyError
from sliver.ir.core import Module
from sliver.ir.dims import DimVar, Sym, SymbolicDimError, bounds, evaluate, static_shape
from sliver.ir.interp import run
from sliver.ir.parser import parse_module
from sliver.ir.types import TensorType
from sliver.ir.verifier import verify

B = Sym.var(DimVar("batch", 1, 16))
S = Sym.var(DimVar("seq", 1, 512))


def test_arithmetic_is_canonical():
    assert B * S * 12 == 12 * S * B
    assert hash(B * S * 12) == hash(S * 12 * B)
    assert S - S + 3 == 3 and isinstance(S - S + 3, int)
    assert (2 * S + 2) // 2 == S + 1
    assert (B * S * 12) // (S * 4) == 3 * B
    assert str((S + 1) // 2) == "(seq + 1)//2"
    assert str(B * S * 12) == "12*batch*seq"
    assert evaluate((S + 1) // 2 + B * 3, {"seq": 7, "batch": 2}) == 10
    assert bounds(S * B) == (1, 8192)
    assert (S % 4) != 0 and evaluate(S % 4, {"seq": 10}) == 2


def test_comparisons_decide_from_ranges_or_say_why():
    assert S >= 1 and S > 0 and S <= 512 and not S > 512
    assert B != 1  # structural: broadcasting treats a symbolic dim as not 1
    with pytest.raises(SymbolicDimError, match=r"whether seq < 8 depends on the size \(seq in \[1, 512\]\)"):
        _ = S < 8
    with pytest.raises(SymbolicDimError, match="dimension batch is symbolic"):
        int(B)
    with pytest.raises(SymbolicDimError, match="symbolic"):
        np.zeros((B, 3))
    with pytest.raises(SymbolicDimError, match="divides exactly"):
        _ = S // B
    with pytest.raises(SymbolicDimError, match="pruning needs a static shape"):
        static_shape((B, 3), "pruning")


def test_dim_var_names_and_ranges_are_checked():
    for bad in ("1x", "in", "true", "a-b", ""):
        with pytest.raises(SymbolicDimError, match="invalid dimension name"):
            DimVar(bad, 1, 4)
    with pytest.raises(SymbolicDimError, match="range"):
        DimVar("n", 5, 4)


def test_types_with_symbolic_dims():
    t = TensorType((B, S, 32), "f32")
    assert str(t) == "f32[batch,seq,32]"
    assert t.numel == 32 * B * S and not t.static
    assert TensorType((B, 3), "f32") == TensorType((Sym.var(DimVar("batch", 1, 16)), 3), "f32")
    with pytest.raises(SliverError, match="negative dimension"):
        TensorType((S - 2,), "f32")


def _module() -> Module:
    m = Module("dyn")
    x = m.add_input(TensorType((B, S, 32), "f32"), name="x")
    w = m.add_param("w", np.random.default_rng(0).standard_normal((64, 32)).astype(np.float32))
    y = m.add_op("linear", [x, w]).result
    flat = m.add_op("reshape", [y], {"shape": (B * S, 64)}).result
    back = m.add_op("reshape", [flat], {"shape": (B, S, 2, 32)}).result
    head = m.add_op("slice", [back], {"axis": 3, "end": 16}).result
    first = m.add_op("slice", [head], {"axis": 1, "start": 0, "end": S}).result
    one = m.add_op("constant", [], {"value": 1.0, "shape": (B, 1, 1, 1)}).result
    out = m.add_op("add", [first, one]).result
    m.set_outputs([out])
    return m


TEXT = dedent("""
    func @dyn(%x: f32[batch,seq,32]) where batch in [1, 16], seq in [1, 512] {
      %w = param : f32[64,32]
      %0 = linear(%x, %w) : f32[batch,seq,64]
      %1 = reshape(%0) {shape=[batch*seq, 64]} : f32[batch*seq,64]
      %2 = reshape(%1) {shape=[batch, seq, 2, 32]} : f32[batch,seq,2,32]
      %3 = slice(%2) {axis=3, end=16} : f32[batch,seq,2,16]
      %4 = slice(%3) {axis=1, end=seq} : f32[batch,seq,2,16]
      %5 = constant {value=1.0, shape=[batch, 1, 1, 1]} : f32[batch,1,1,1]
      %6 = add(%4, %5) : f32[batch,seq,2,16]
      return %6
    }
""")


def test_print_parse_print_with_symbolic_dims():
    m = _module()
    verify(m)
    assert str(m) == TEXT
    again = parse_module(TEXT, params=m.params)
    assert str(again) == TEXT
    verify(again)
    # expressions in types and attributes, written by hand, parse to their canonical form
    hand = TEXT.replace("shape=[batch*seq, 64]} : f32[batch*seq,64]",
                        "shape=[seq * (batch + 0), 64]} : f32[(2*batch*seq)//2,64]")
    assert str(parse_module(hand, params=m.params)) == TEXT


def test_interpreter_binds_sizes_and_rejects_out_of_range():
    m = _module()
    w = m.params["w"]
    for batch, seq in ((1, 1), (3, 5), (16, 7), (2, 512)):
        x = np.random.default_rng(batch).standard_normal((batch, seq, 32)).astype(np.float32)
        (y,) = run(m, [x])
        want = (x @ w.T).reshape(batch, seq, 2, 32)[..., :16] + 1
        np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)
    with pytest.raises(InputError, match=r"dimension 0 \(batch\) must be in \[1, 16\], got 17"):
        run(m, [np.zeros((17, 4, 32), np.float32)])
    with pytest.raises(InputError, match=r"dimension 1 \(seq\) must be in \[1, 512\], got 0"):
        run(m, [np.zeros((1, 0, 32), np.float32)])
    with pytest.raises(InputError, match=r"must have shape \[batch, seq, 32\]"):
        run(m, [np.zeros((1, 4, 31), np.float32)])


def test_inputs_must_agree_on_a_variable():
    m = Module("two")
    a = m.add_input(TensorType((B, 4), "f32"), name="a")
    b = m.add_input(TensorType((B, 4), "f32"), name="b")
    m.set_outputs([m.add_op("add", [a, b]).result])
    verify(m)
    (y,) = run(m, [np.ones((3, 4), np.float32), np.ones((3, 4), np.float32)])
    assert y.shape == (3, 4)
    with pytest.raises(InputError, match="another input has batch = 3"):
        run(m, [np.ones((3, 4), np.float32), np.ones((2, 4), np.float32)])


def test_verifier_faults():
    m = Module("bad")
    x = m.add_input(TensorType((B + 1, 4), "f32"), name="x")
    m.set_outputs([m.add_op("relu", [x]).result])
    with pytest.raises(VerifyError, match="is an expression"):
        verify(m)
    m = Module("bad")
    x = m.add_input(TensorType((4,), "f32"), name="x")
    m.set_outputs([m.add_op("reshape", [m.add_op("constant", [], {"value": 0.0, "shape": (S,)}).result],
                            {"shape": (S,)}).result])
    with pytest.raises(VerifyError, match="dimension seq is used but no input has it"):
        verify(m)
    m = Module("bad")
    x = m.add_input(TensorType((B, 4), "f32"), name="x")
    y = m.add_input(TensorType((Sym.var(DimVar("batch", 1, 8)), 4), "f32"), name="y")
    m.set_outputs([x, y])
    with pytest.raises(VerifyError, match="dimension batch has two ranges"):
        verify(m)


@pytest.mark.parametrize("old, new, match", [
    ("where batch in [1, 16]", "where batch in [16, 1]", "range"),
    ("where batch in [1, 16]", "where in in [1, 16]", "keyword"),
    ("where batch in [1, 16], seq", "where batch in [1, 16], batch", "declared twice"),
    ("batch in [1, 16]", "batch in [1, 99999999999]", "bound larger than"),
    ("batch in [1, 16]", "batch in [-1, 16]", "dimension bound"),
    ("f32[batch,seq,32]", "f32[batch,sequence,32]", "declared in the func's `where` clause"),
    ("f32[batch,seq,32]", "f32[batch,seq + -600,32]", "non-negative"),
    ("f32[batch*seq,64]", "f32[batch*seq*seq*seq*seq,64]", "larger than"),
    ("f32[batch*seq,64]", "f32[batch*seq//0,64]", "positive integer"),
    ("f32[batch*seq,64]", "f32[" + "(" * 20 + "seq" + ")" * 20 + ",64]", "nest"),
    ("f32[batch*seq,64]", "f32[" + "*".join(["(batch + seq + 1)"] * 12) + ",64]", "too large"),
    ("shape=[batch*seq, 64]", "shape=[batch*seq*99999999999999999, 64]", "shape must be a list"),
    ("shape=[batch*seq, 64]", "shape=[batch - 17, 64]", "shape must be a list"),
    ("shape=[batch*seq, 64]", "shape=[batch // seq, 64]", "divides exactly"),
    ("end=seq", "end=seq // 3", "slice"),
])
def test_parse_rejects_hostile_symbolic_text(old, new, match):
    assert old in TEXT
    params = _module().params
    with pytest.raises((IRParseError, VerifyError), match=match):
        module = parse_module(TEXT.replace(old, new), params=params)
        verify(module)


def test_params_have_static_shapes():
    text = dedent("""
        func @p(%x: f32[n]) where n in [1, 4] {
          %w = param : f32[n]
          %y = add(%x, %w) : f32[n]
          return %y
        }
    """)
    with pytest.raises(IRParseError, match="a param has a static shape"):
        parse_module(text)


def test_const_fold_leaves_ops_with_symbolic_dims_to_run_time():
    """Golden text: the position ids ``arange(seq)`` are a slice of a constant to the
    symbolic length; const-fold folds the static cast and leaves the slice."""
    from helpers import run_pass

    text = dedent("""
        func @pos(%x: f32[seq,4]) where seq in [1, 8] {
          %table = param : i64[8]
          %two = constant {value=2, dtype="i64"} : i64[]
          %scaled = mul(%table, %two) : i64[8]
          %ids = slice(%scaled) {axis=0, end=seq} : i64[seq]
          %f = cast(%ids) {dtype="f32"} : f32[seq]
          %y = reshape(%f) {shape=[seq, 1]} : f32[seq,1]
          %z = add(%x, %y) : f32[seq,4]
          return %z
        }
    """)
    out = run_pass(text, "const-fold,dce")
    assert out == dedent("""
        func @pos(%x: f32[seq,4]) where seq in [1, 8] {
          %scaled_folded = param : i64[8]
          %ids = slice(%scaled_folded) {axis=0, end=seq} : i64[seq]
          %f = cast(%ids) {dtype="f32"} : f32[seq]
          %y = reshape(%f) {shape=[seq, 1]} : f32[seq,1]
          %z = add(%x, %y) : f32[seq,4]
          return %z
        }
    """)
    module = parse_module(text, params={"table": np.arange(8, dtype=np.int64)})
    x = np.zeros((5, 4), np.float32)
    (y,) = run(module, [x])
    np.testing.assert_array_equal(y, np.repeat((2 * np.arange(5.0))[:, None], 4, axis=1))
