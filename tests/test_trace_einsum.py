"""torch.einsum traces onto sums, permutes, reshapes and batched matmuls, and matches torch."""

import numpy as np
import pytest
import torch

import sliver
from sliver.common.errors import SliverError
from sliver.ir.interp import run


class Einsum(torch.nn.Module):
    def __init__(self, equation):
        super().__init__()
        self.equation = equation

    def forward(self, *xs):
        return torch.einsum(self.equation, *[x * 2 for x in xs])


CASES = [
    ("bqd,bkd->bqk", [(2, 3, 4), (2, 5, 4)]),  # attention scores
    ("bqk,bkd->bqd", [(2, 3, 5), (2, 5, 4)]),
    ("bhqk,bkhd->bqhd", [(2, 3, 4, 5), (2, 5, 3, 6)]),
    ("ij,jk->ik", [(3, 4), (4, 5)]),
    ("ij->ji", [(3, 4)]),
    ("ij->", [(3, 4)]),
    ("ij->j", [(3, 4)]),
    ("i,i->", [(5,), (5,)]),
    ("i,j->ij", [(3,), (4,)]),
    ("abc,cd,de->abe", [(2, 3, 4), (4, 5), (5, 6)]),
    ("bij,bjk", [(2, 3, 4), (2, 4, 5)]),  # implicit output: the labels used once, sorted
    ("ijk,ik->j", [(2, 3, 4), (2, 4)]),
    ("nchw,oc->nohw", [(1, 3, 4, 5), (6, 3)]),
]


@pytest.mark.parametrize("equation, shapes", CASES)
def test_einsum_matches_torch(equation, shapes):
    torch.manual_seed(0)
    xs = [torch.randn(*s) for s in shapes]
    module = sliver.trace(Einsum(equation), tuple(xs))
    assert {op.kind for op in module.ops} <= {"param", "constant", "mul", "sum", "permute", "reshape", "matmul"}
    out = run(module, [x.numpy() for x in xs])[0]
    ref = Einsum(equation)(*xs).numpy()
    assert out.shape == ref.shape
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("equation, shapes", [("ii->i", [(3, 3)]), ("...ij,...jk->...ik", [(2, 3, 4), (2, 4, 5)]),
                                              ("bij,bjk->bik", [(1, 3, 4), (2, 4, 5)])])
def test_diagonals_ellipses_and_broadcasting_are_named_errors(equation, shapes):
    xs = tuple(torch.randn(*s) for s in shapes)
    with pytest.raises(SliverError, match="einsum"):
        sliver.trace(Einsum(equation), xs)
