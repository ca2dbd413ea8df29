"""prune's export-time reordering: exact consecutive-ones orders, the heuristic and its bound,
permutation inside concat blocks, and channels whose order must not move."""

import itertools
import random

import numpy as np
import pytest
import torch
from torch import nn

import sliver
from helpers import dedent
from sliver.common.errors import SliverError
from sliver.ir.interp import run
from sliver.ir.parser import parse_module
from sliver.passes.consecutive import Read, arrange, consecutive_order, is_run
from sliver.passes.manager import PassManager, make_pass
from sliver.passes.prune import masked_copy


def _valid(order, n, sets, prefixes=(), suffixes=()):
    return (sorted(order) == list(range(n)) and all(is_run(order, s) for s in sets)
            and all(set(order[:len(s)]) == set(s) for s in prefixes)
            and all(set(order[n - len(s):]) == set(s) for s in suffixes))


def _brute(n, sets, prefixes, suffixes):
    return any(_valid(list(p), n, sets, prefixes, suffixes) for p in itertools.permutations(range(n)))


def test_consecutive_order_agrees_with_exhaustive_search():
    rng = random.Random(0)
    found = {True: 0, False: 0}
    for _ in range(400):
        n = rng.randint(3, 6)
        sets = [set(rng.sample(range(n), rng.randint(2, n - 1))) for _ in range(rng.randint(2, 7))]
        pre = [set(rng.sample(range(n), rng.randint(1, n)))] if rng.random() < 0.3 else []
        suf = [set(rng.sample(range(n), rng.randint(1, n)))] if rng.random() < 0.3 else []
        got = consecutive_order(range(n), sets, pre, suf)
        exists = _brute(n, sets, pre, suf)
        assert (got is not None) == exists, (n, sets, pre, suf)
        if got is not None:
            assert _valid(got, n, sets, pre, suf)
        found[exists] += 1
    assert min(found.values()) > 50  # both answers were exercised


@pytest.mark.parametrize("seed", range(20))
def test_planted_consecutive_ones_family_comes_back_contiguous(seed):
    # random runs of a hidden order, handed over shuffled: an order must be found
    rng = random.Random(seed)
    n = rng.randint(20, 120)
    hidden = list(range(n))
    rng.shuffle(hidden)
    sets = []
    for _ in range(rng.randint(3, 40)):
        i = rng.randrange(n)
        j = rng.randint(i + 1, min(n, i + rng.randint(2, 40)))
        sets.append(set(hidden[i:j]))
    universe = list(range(n))
    rng.shuffle(universe)
    order = consecutive_order(universe, sets)
    assert order is not None and _valid(order, n, sets)


def test_prefix_and_suffix_runs():
    assert consecutive_order("abcd", [{"b", "c"}], prefixes=[{"a", "b"}]) == list("abcd")
    assert consecutive_order("abcd", [], prefixes=[{"a"}], suffixes=[{"a"}]) is None
    assert consecutive_order("abcd", [{"a", "c"}], prefixes=[{"a", "b"}], suffixes=[{"c"}]) is None
    assert consecutive_order("abcd", [{"a", "d"}], prefixes=[{"a", "b"}], suffixes=[{"c"}]) == list("bad") + ["c"]
    order = consecutive_order("abcd", [], prefixes=[{"c", "d"}], suffixes=[{"b"}])
    assert set(order[:2]) == {"c", "d"} and order[3] == "b"


def test_arrange_exact_when_every_read_fits():
    blocks = {"x": list(range(6)), "y": list(range(10, 14))}
    reads = [Read(5, [("x", "run", {0, 2, 4})]), Read(7, [("x", "suffix", {1, 2}), ("y", "prefix", {12})]),
             Read(1, [("y", "run", {11, 13})])]
    orders, groups = arrange(blocks, reads)
    assert len(groups) == 1 and groups[0].exact and groups[0].cost == 0 and groups[0].satisfied == [0, 1, 2]
    x, y = orders["x"], orders["y"]
    assert is_run(x, {0, 2, 4}) and set(x[-2:]) == {1, 2} and y[0] == 12 and is_run(y, {11, 13})


def test_arrange_heuristic_gap_against_the_optimum():
    # the heaviest read (prefix {a}) excludes two lighter ones that fit together: greedy pays 4, the optimum 3
    blocks = {"k": ["a", "b", "c"]}
    reads = [Read(3, [("k", "prefix", {"a"})]), Read(2, [("k", "prefix", {"b"})]),
             Read(2, [("k", "prefix", {"b", "c"})])]
    _, (group,) = arrange(blocks, reads)
    assert not group.exact and group.satisfied == [0]
    assert (group.cost, group.optimum, group.gap) == (4, 3, 1)


@pytest.mark.parametrize("seed", range(10))
def test_arrange_random_families_without_consecutive_ones(seed):
    rng = random.Random(seed)
    n = 7
    blocks = {"b": list(range(n))}
    reads = [Read(rng.randint(1, 9), [("b", "run", set(rng.sample(range(n), rng.randint(2, n - 1))))])
             for _ in range(9)]
    orders, (group,) = arrange(blocks, reads)
    satisfied = [i for i, r in enumerate(reads) if is_run(orders["b"], r.parts[0][2])]
    assert set(group.satisfied) <= set(satisfied)
    assert group.cost == sum(r.weight for r in reads) - sum(reads[i].weight for i in group.satisfied)
    # the optimum from branch and bound is the true one (every order of 7 elements)
    best = max(sum(r.weight for r in reads if is_run(list(p), r.parts[0][2]))
               for p in itertools.permutations(range(n)))
    assert group.optimum == sum(r.weight for r in reads) - best
    assert group.gap >= 0 and group.exact == (group.cost == 0)


CONCAT = dedent("""
    func @m(%x: f32[1,3,4,4]) {
      %a.weight = param : f32[4,3,1,1]
      %b.weight = param : f32[4,3,1,1]
      %c.weight = param : f32[2,8,1,1]
      %d.weight = param : f32[2,4,1,1]
      %a = conv2d(%x, %a.weight) : f32[1,4,4,4]
      %b = conv2d(%x, %b.weight) : f32[1,4,4,4]
      %cat = concat(%a, %b) {axis=1} : f32[1,8,4,4]
      %c = conv2d(%cat, %c.weight) : f32[1,2,4,4]
      %d = conv2d(%b, %d.weight) : f32[1,2,4,4]
      %o = add(%c, %d) : f32[1,2,4,4]
      return %o
    }
""")
CONCAT_MASKS = {"c": [1, 3, 6, 7], "d": [0, 2, 3]}  # c: a's {1, 3} and b's {2, 3}; d: b's {0, 2, 3}


def _prune(text, **options):
    rng = np.random.default_rng(0)
    params = {k: rng.standard_normal(v.shape).astype(v.dtype) for k, v in parse_module(text).params.items()}
    original = parse_module(text, params)
    m = original.clone()
    (record,) = PassManager([make_pass("prune", **options)]).run(m)
    return original, m, record.notes


def test_golden_concat_block_permuted_within_its_producer():
    # natural layout [a1 a3 | b0 b2 b3]: c reads positions 0, 1, 3, 4 (a gather); b's block
    # permuted to [b2 b3 b0] puts what c reads first in it: c reads one run, d all of b
    original, m, notes = _prune(CONCAT, masks=CONCAT_MASKS)
    assert str(m) == dedent("""
        func @m(%x: f32[1,3,4,4]) {
          %a.weight = param : f32[2,3,1,1]
          %a = conv2d(%x, %a.weight) : f32[1,2,4,4]
          %b.weight = param : f32[3,3,1,1]
          %b = conv2d(%x, %b.weight) : f32[1,3,4,4]
          %cat = concat(%a, %b) {axis=1} : f32[1,5,4,4]
          %cat.view = slice(%cat) {axis=1, end=4} : f32[1,4,4,4]
          %c.weight = param : f32[2,4,1,1]
          %c = conv2d(%cat.view, %c.weight) : f32[1,2,4,4]
          %d.weight = param : f32[2,3,1,1]
          %d = conv2d(%b, %d.weight) : f32[1,2,4,4]
          %o = add(%c, %d) : f32[1,2,4,4]
          return %o
        }
    """)
    assert set(m.params["b.weight"][2].ravel()) == set(original.params["b.weight"][0].ravel())  # b0 moved last
    assert notes["report"]["reorder"]["exact"] == 1 and notes["report"]["bytes_copied"] == 0
    _, natural, natural_notes = _prune(CONCAT, masks=CONCAT_MASKS, reorder=False)
    assert "take(%cat, %c.input_index)" in str(natural) and natural_notes["report"]["gathers"] == 1
    x = np.random.default_rng(1).standard_normal((1, 3, 4, 4)).astype(np.float32)
    want = run(masked_copy(original, CONCAT_MASKS), [x], dtype="f64")[0]
    for pruned in (m, natural):
        assert np.abs(run(pruned, [x], dtype="f64")[0] - want).max() <= 1e-12


THREE_BLOCKS = dedent("""
    func @m(%x: f32[1,3,4,4]) {
      %a.weight = param : f32[4,3,1,1]
      %b.weight = param : f32[4,3,1,1]
      %e.weight = param : f32[4,3,1,1]
      %c.weight = param : f32[2,12,1,1]
      %d.weight = param : f32[2,4,1,1]
      %a = conv2d(%x, %a.weight) : f32[1,4,4,4]
      %b = conv2d(%x, %b.weight) : f32[1,4,4,4]
      %e = conv2d(%x, %e.weight) : f32[1,4,4,4]
      %cat = concat(%a, %b, %e) {axis=1} : f32[1,12,4,4]
      %c = conv2d(%cat, %c.weight) : f32[1,2,4,4]
      %d = conv2d(%b, %d.weight) : f32[1,2,4,4]
      %o = add(%c, %d) : f32[1,2,4,4]
      return %o
    }
""")
THREE_MASKS = {"c": [0, 5, 6, 11]}  # c reads a0, b1, b2, e3; d reads all of b


def test_inner_concat_block_read_in_part_is_counted_unavoidable():
    # b sits between a and e and keeps b0, b3 for d, so no order of b helps
    _, m, notes = _prune(THREE_BLOCKS, masks=THREE_MASKS)
    r = notes["report"]
    assert r["gathers"] == 1 and r["bytes_copied"] == 4 * 16 * 4
    assert r["reorder"]["unavoidable_bytes"] == r["bytes_copied"] and r["reorder"]["heuristic"] == 0


def test_golden_holes_zero_reads_the_run_around_the_channels():
    # holes=zero: c reads the whole run [a0 | b0 b1 b2 b3 | e3] (no copy) with zero weights for b0, b3
    original, m, notes = _prune(THREE_BLOCKS, masks=THREE_MASKS, holes="zero")
    assert str(m) == dedent("""
        func @m(%x: f32[1,3,4,4]) {
          %a.weight = param : f32[1,3,1,1]
          %a = conv2d(%x, %a.weight) : f32[1,1,4,4]
          %b.weight = param : f32[4,3,1,1]
          %b = conv2d(%x, %b.weight) : f32[1,4,4,4]
          %e.weight = param : f32[1,3,1,1]
          %e = conv2d(%x, %e.weight) : f32[1,1,4,4]
          %cat = concat(%a, %b, %e) {axis=1} : f32[1,6,4,4]
          %c.weight = param : f32[2,6,1,1]
          %c = conv2d(%cat, %c.weight) : f32[1,2,4,4]
          %d.weight = param : f32[2,4,1,1]
          %d = conv2d(%b, %d.weight) : f32[1,2,4,4]
          %o = add(%c, %d) : f32[1,2,4,4]
          return %o
        }
    """)
    w = m.params["c.weight"][:, :, 0, 0]
    assert not w[:, [1, 4]].any() and w[:, [0, 2, 3, 5]].all()
    assert notes["report"]["zero_filled"] == 2 and notes["report"]["bytes_copied"] == 0
    assert "holes=zero: 2 channels read through views only to meet zero weights" in notes["text"]
    x = np.random.default_rng(1).standard_normal((1, 3, 4, 4)).astype(np.float32)
    want = run(masked_copy(original, THREE_MASKS), [x], dtype="f64")[0]
    assert np.abs(run(m, [x], dtype="f64")[0] - want).max() <= 1e-12


def test_holes_zero_on_densenet_copies_nothing_and_reorder_shrinks_the_holes():
    import zoo

    model, inputs = zoo.densenet(resolution=16)
    base = sliver.trace(model, inputs)
    sliver.api.optimize(base)
    x = [i.numpy() for i in inputs]
    reports = {}
    for reorder in (False, True):
        m = base.clone()
        (record,) = PassManager([make_pass("prune", amount=0.3, holes="zero", reorder=reorder)]).run(m)
        want = run(masked_copy(base, record.notes["masks"]), x, dtype="f64")[0]
        assert np.abs(run(m, x, dtype="f64")[0] - want).max() <= 1e-10 * max(1.0, np.abs(want).max())
        reports[reorder] = record.notes["report"]
    assert reports[False]["bytes_copied"] == reports[True]["bytes_copied"] == 0
    assert 0 < reports[True]["zero_filled"] < reports[False]["zero_filled"]
    assert reports[True]["macs_after"] < reports[False]["macs_after"] < reports[True]["macs_before"]
    with pytest.raises(SliverError, match="pruning holes must be 'gather'"):
        PassManager("prune{holes=pad}").run(base.clone())


class OutputsAndBarriers(nn.Module):
    """A layer whose output is also a model output and a softmax's input: its channel order must stay."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Conv2d(3, 6, 1), nn.Conv2d(6, 4, 1), nn.Conv2d(6, 4, 1)

    def forward(self, x):
        y = self.a(x)
        return y, self.b(y) + self.c(y), torch.softmax(y, 1)


def test_reorder_keeps_the_order_outputs_and_barriers_see():
    torch.manual_seed(0)
    x = torch.randn(1, 3, 4, 4)
    module = sliver.trace(OutputsAndBarriers().eval(), (x,))
    original = module.clone()
    masks = {"b": [0, 2, 4], "c": [1, 2, 3, 4, 5]}  # reordering a would make both views
    (record,) = PassManager([make_pass("prune", masks=masks)]).run(module)
    want = run(masked_copy(original, masks), [x.numpy()], dtype="f64")
    got = run(module, [x.numpy()], dtype="f64")
    for g, w in zip(got, want):
        assert np.abs(g - w).max() <= 1e-12
    assert record.notes["report"]["gathers"] == 1  # b gathers: a's order is pinned


class Joins(nn.Module):
    """A concat added to a plain producer (two block structures joined: their order is
    kept), a channel slice, and concat blocks read by several consumers."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Conv2d(3, 4, 1), nn.Conv2d(3, 4, 1), nn.Conv2d(3, 8, 1)
        self.d, self.e, self.f = nn.Conv2d(3, 6, 1), nn.Conv2d(3, 6, 1), nn.Conv2d(8, 5, 1)
        self.g, self.h, self.k = nn.Conv2d(8, 5, 1), nn.Conv2d(12, 5, 1), nn.Conv2d(3, 5, 1)
        self.m, self.n = nn.Conv2d(4, 5, 1), nn.Conv2d(6, 5, 1)

    def forward(self, x):
        s = torch.relu(torch.cat([self.a(x), self.b(x)], 1) + self.c(x))
        d, e = self.d(x), self.e(x)
        cat = torch.cat([d, e], 1)
        return self.f(s) + self.g(s) + self.h(cat) + self.k(e[:, 1:4]) + self.m(self.a(x)) + self.n(d)


@pytest.mark.parametrize("seed", range(3))
def test_joins_and_slices_stay_exact(seed):
    torch.manual_seed(seed)
    x = torch.randn(1, 3, 4, 4)
    module = sliver.trace(Joins().eval(), (x,))
    original = module.clone()
    rng = random.Random(seed)
    sizes = {"f": 8, "g": 8, "h": 12, "k": 3, "m": 4, "n": 6}
    masks = {k: sorted(rng.sample(range(n), rng.randint(1, n - 1))) for k, n in sizes.items()}
    for reorder in (False, True):
        m = original.clone()
        (record,) = PassManager([make_pass("prune", masks=masks, reorder=reorder)]).run(m)
        want = run(masked_copy(original, masks), [x.numpy()], dtype="f64")[0]
        assert np.abs(run(m, [x.numpy()], dtype="f64")[0] - want).max() <= 1e-10 * max(1.0, np.abs(want).max())
        if reorder:
            r = record.notes["report"]
            assert r["reorder"]["heuristic_bytes"] + r["reorder"]["unavoidable_bytes"] <= r["bytes_copied"]


def test_flattened_channels_read_in_part_are_counted_unavoidable():
    from test_prune import _topologies

    model, inputs = _topologies()
    module = sliver.trace(model, inputs)
    masks = {"fc": list(range(0, 176, 3))}  # every third feature: part of every flattened channel
    (record,) = PassManager([make_pass("prune", masks=masks)]).run(module)
    r = record.notes["report"]
    assert r["gathers"] == 1 and r["reorder"]["unavoidable_bytes"] == r["bytes_copied"] == 59 * 4


def test_branch_and_bound_gives_up_past_its_budget():
    from sliver.passes.consecutive import _best_weight

    rng = random.Random(5)
    blocks = {"b": list(range(8))}
    reads = [Read(1, [("b", "run", set(rng.sample(range(8), 4)))]) for _ in range(12)]
    order = list(range(12))
    assert _best_weight(blocks, reads, order, 0, budget=5) is None
    assert _best_weight(blocks, reads, order, 0) is not None
