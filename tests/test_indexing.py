"""Selecting by computed positions: gather, argmax/argmin, indexing with computed index
tensors (CLIP's pooler), sort/argsort and topk.  Traced from torch, checked against torch
in the interpreter, as x86_64 artifacts and on the emulated Pi, and the IR text."""

import numpy as np
import pytest
import torch
from torch import nn

import sliver
from helpers import artifact_tests, assert_close, dedent, numpy_inputs, roundtrip, torch_outputs
from sliver.common.errors import SliverError
from sliver.ir.interp import run
from sliver.ir.parser import parse_module


class Select(nn.Module):
    """x f32[2,5,8], ids i64[2,5] → f32[2,3+3+8+1+2] (as one tensor), i64 indices."""

    def __init__(self):
        super().__init__()
        self.register_buffer("table", torch.arange(40.0).reshape(5, 8))

    def forward(self, x, ids):
        last = ids.argmax(-1)  # CLIP: the end token's position
        pooled = x[torch.arange(2), last]  # [2, 8]
        picked = self.table[ids]  # a constant table, computed indices: [2, 5, 8]
        order = torch.gather(x, 2, torch.argsort(x, dim=-1, descending=True))  # [2, 5, 8]
        top, where = torch.topk(x.sum(1), 3)  # [2, 3] each
        low = torch.topk(x[:, 0], 2, largest=False).values  # [2, 2]
        ranked, _ = torch.sort(x[:, :, 0], dim=1)  # [2, 5]
        first = x.argmin(dim=1).float().mean(-1, keepdim=True)  # [2, 1]
        flat = x.argmax().float().reshape(1, 1).expand(2, 1)
        out = torch.cat([top, where.float(), pooled, order[:, 0], picked[:, -1], low, ranked, first, flat], -1)
        return out, where


def build(seed=0):
    g = torch.Generator().manual_seed(seed)
    return Select().eval(), (torch.randn(2, 5, 8, generator=g), torch.randint(0, 5, (2, 5), generator=g))


def test_traced_into_run_time_ops_and_round_trips():
    model, inputs = build()
    module = sliver.trace(model, inputs)
    kinds = {op.kind for op in module.ops}
    assert {"gather", "argmax", "argmin", "sort", "argsort", "take"} <= kinds
    roundtrip(module)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_interpreter_matches_torch(seed):
    model, inputs = build(seed)
    got, want = run(sliver.trace(model, inputs), numpy_inputs(inputs)), torch_outputs(model, inputs)
    assert_close(got[:1], want[:1], rtol=1e-6)
    np.testing.assert_array_equal(got[1], want[1])


def test_negative_computed_indices_wrap_as_in_torch():
    class Neg(nn.Module):
        def forward(self, x, i):
            return x[:, i - 4]

    x, i = torch.randn(3, 4), torch.tensor([0, 1, 3])
    got = run(sliver.trace(Neg(), (x, i)), [x.numpy(), i.numpy()])[0]
    np.testing.assert_array_equal(got, Neg()(x, i).numpy())


@pytest.mark.parametrize("fn, op", [(lambda x: x[x > 0], "aten.index.Tensor"),
                                     (lambda x: torch.nonzero(x).float(), "aten.nonzero"),
                                     (lambda x: x.masked_select(x > 0), "aten.masked_select")])
def test_a_data_dependent_size_is_refused_before_anything_compiles(fn, op):
    from sliver.common.errors import DataDependentShapeError

    class Masked(nn.Module):
        def forward(self, x):
            return fn(x) * 2

    with pytest.raises(DataDependentShapeError, match="size depends on the input values") as err:
        sliver.trace(Masked(), (torch.randn(6),))
    assert [p[0] for p in err.value.problems] == [next(o for o in [op] if o)] or err.value.problems[0][0].startswith(op)
    assert "test_indexing.py" in err.value.problems[0][1]


def test_ir_text_and_type_rules():
    m = parse_module(dedent("""
        func @m(%x: f32[2,4], %i: i64[2,3]) {
          %g = gather(%x, %i) {axis=1} : f32[2,3]
          %a = argmax(%x) {axis=1, keepdim=true} : i64[2,1]
          %s = sort(%x) {axis=1, descending=true} : f32[2,4]
          %o = argsort(%x) {axis=0} : i64[2,4]
          return %g, %a, %s, %o
        }
    """))
    roundtrip(m)
    x = np.array([[3, 1, 4, 1], [5, 9, 2, 6]], np.float32)
    i = np.array([[0, 3, 3], [1, 1, 0]])
    g, a, s, o = run(m, [x, i])
    np.testing.assert_array_equal(g, [[3, 1, 1], [9, 9, 5]])
    np.testing.assert_array_equal(a, [[2], [1]])
    np.testing.assert_array_equal(s, [[4, 3, 1, 1], [9, 6, 5, 2]])
    np.testing.assert_array_equal(o, [[0, 0, 1, 0], [1, 1, 0, 1]])
    with pytest.raises(SliverError, match="indices must be i64 or i32"):
        parse_module("func @m(%x: f32[4], %i: f32[2]) {\n  %y = gather(%x, %i) {axis=0} : f32[2]\n  return %y\n}\n")
    with pytest.raises(SliverError, match="axis 2 is out of range"):
        parse_module("func @m(%x: f32[4,2]) {\n  %y = argmax(%x) {axis=2} : i64[4]\n  return %y\n}\n")


def test_sorting_is_stable_for_equal_elements():
    from sliver.ir.ops import get_op

    x = torch.tensor([[1.0, 3.0, 3.0, 2.0, 1.0]])
    for descending, want in ((False, [0, 4, 3, 1, 2]), (True, [1, 2, 3, 0, 4])):
        got = get_op("argsort").ref(x, axis=1, descending=descending)
        assert got.tolist() == [want]


compiled, test_x86_artifact_matches_torch, test_arm64_artifact_matches_torch_on_the_emulated_pi = artifact_tests(
    __name__, build, "indexing", rtol=1e-5, exact_after=1)
