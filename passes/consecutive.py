"""Consecutive-ones orders: arrange elements so that given sets are contiguous runs.

:func:`consecutive_order` decides exactly whether an order of a universe exists
in which every set of a family is a contiguous run (the *consecutive-ones
property*, C1P) and returns one.  It is the overlap-component method (the
structure a PQ-tree encodes, without the tree):

* two sets *overlap* when they intersect and neither contains the other; in an
  overlap-connected component the arrangement of its sets is forced up to
  reversal, and partition refinement finds it (each set, taken in BFS order of
  the overlap graph, overlaps one already placed, so it either extends the
  current arrangement at one end or cuts the run it covers);
* the unions of the components are laminar, and a set outside a component lies
  inside a single *atom* (elements with the same memberships) of it, contains the
  component's union or misses it — so each atom is ordered recursively with the
  sets inside it, independently of the rest.

Runs can also be pinned to an end: ``prefixes`` must start the order and
``suffixes`` end it (two sentinel elements, forced to opposite ends).

:func:`arrange` chooses the orders of several *blocks* (each ordered freely) for a
list of weighted *reads*, each asking for runs, prefixes or suffixes in one or
more blocks; a read is satisfied only if all of its parts are.  Where every read
can be satisfied together, the answer is exact.  Otherwise reads are added
greedily by weight while the blocks stay C1P, and on small groups a
branch-and-bound search finds the best possible subset, so the report can say
how far the greedy answer is from the optimum.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

_FIRST, _LAST = ("<first>",), ("<last>",)  # sentinels (tuples never equal a caller's element here)


def _overlap(a: frozenset, b: frozenset) -> bool:
    return bool(a & b) and not a <= b and not b <= a


def _components(sets: list) -> list[list]:
    """Overlap-connected components, each in BFS order from its largest set."""
    seen: set = set()
    out = []
    for start in sorted(range(len(sets)), key=lambda i: -len(sets[i])):
        if start in seen:
            continue
        seen.add(start)
        comp, queue = [], deque([start])
        while queue:
            i = queue.popleft()
            comp.append(sets[i])
            for j in range(len(sets)):
                if j not in seen and _overlap(sets[i], sets[j]):
                    seen.add(j)
                    queue.append(j)
        out.append(comp)
    return out


def _split(atom: set, x: set, x_first: bool) -> list:
    parts = [atom & x, atom - x] if x_first else [atom - x, atom & x]
    return [p for p in parts if p]


def _refine(component: list) -> list | None:
    """The ordered atoms of an overlap-connected family (forced up to reversal), or None."""
    atoms = [set(component[0])]
    union = set(component[0])
    for s in component[1:]:
        x, new = s & union, s - union
        touched = [i for i, a in enumerate(atoms) if a & x]
        lo, hi = touched[0], touched[-1]
        if any(not atoms[i] <= x for i in range(lo + 1, hi)):
            return None
        n = len(atoms)
        if new:  # x must reach an end of the arrangement; the new elements go past it
            if hi == n - 1 and (lo == hi or atoms[hi] <= x):
                atoms = atoms[:lo] + _split(atoms[lo], x, False) + atoms[lo + 1:] + [new]
            elif lo == 0 and (lo == hi or atoms[0] <= x):
                atoms = [new] + atoms[:hi] + _split(atoms[hi], x, True) + atoms[hi + 1:]
            else:
                return None
            union |= new
        else:
            # lo == hi is impossible: s overlaps a placed set, which is a union of atoms
            atoms = atoms[:lo] + _split(atoms[lo], x, False) + atoms[lo + 1:hi] + _split(atoms[hi], x, True) \
                + atoms[hi + 1:]
    where = {e: i for i, a in enumerate(atoms) for e in a}
    for s in component:  # cheap check of the invariant
        idx = sorted({where[e] for e in s})
        if idx != list(range(idx[0], idx[-1] + 1)) or sum(len(atoms[i]) for i in idx) != len(s):
            return None
    return atoms


def _order(elements: list, sets: list) -> list | None:
    size = len(elements)
    sets = list(dict.fromkeys(s for s in sets if 1 < len(s) < size))
    if not sets:
        return list(elements)
    rank = {e: i for i, e in enumerate(elements)}
    comps = _components(sets)
    # outermost components first: larger unions, and a lone set before a component with the same union
    comps.sort(key=lambda c: (-len(frozenset().union(*c)), len(c) > 1))
    placed: set = set()
    out = []
    for comp in comps:
        union = frozenset().union(*comp)
        if union & placed:
            continue  # laminar: inside a component already placed, handled by its recursion
        placed |= union
        atoms = [set(union)] if len(comp) == 1 else _refine(comp)
        if atoms is None:
            return None
        for atom in atoms:
            inner = _order(sorted(atom, key=rank.__getitem__), [s for s in sets if s <= atom])
            if inner is None:
                return None
            out += inner
    return out + [e for e in elements if e not in placed]


def consecutive_order(universe, sets, prefixes=(), suffixes=()) -> list | None:
    """An order of ``universe`` in which every set is a contiguous run, every
    prefix set starts the order and every suffix set ends it; None if none exists.

    Exact (not a heuristic).  Elements keep their given order wherever the sets
    leave it free.
    """
    elements = list(universe)
    fam = [frozenset(s) for s in sets]
    if prefixes or suffixes:
        body = frozenset(elements)
        elements = [_FIRST, *elements, _LAST]
        fam += [body, body | {_FIRST}, body | {_LAST}]
        fam += [frozenset(s) | {_FIRST} for s in prefixes] + [frozenset(s) | {_LAST} for s in suffixes]
    order = _order(elements, fam)
    if order is None:
        return None
    if prefixes or suffixes:
        if order[0] != _FIRST:
            order.reverse()
        order = order[1:-1]
    return order


def counts_up(idx) -> bool:
    """Whether the integers ``idx`` count up by one (``[3, 4, 5]``: a slice's indices)."""
    return all(b == a + 1 for a, b in zip(idx, idx[1:]))


def is_run(order: list, s) -> bool:
    """Whether the elements of ``s`` stand together in ``order``."""
    return counts_up(sorted(order.index(e) for e in s))


# ------------------------------------------------------------------------------------------
# several blocks, weighted reads


@dataclass
class Read:
    """What one reader needs to be a view: ``parts`` are (block, kind, set) with kind
    ``run`` (contiguous in the block), ``prefix`` or ``suffix``; ``weight`` is what
    it costs (bytes copied) when it cannot have them all."""

    weight: int
    parts: list


@dataclass
class GroupResult:
    """One connected group of blocks: what the arrangement achieved."""

    blocks: int
    reads: int
    exact: bool  # every read is satisfied (the family is C1P)
    cost: int  # weight of the reads left unsatisfied
    optimum: int | None = None  # least possible cost (branch and bound), None: too large to search
    satisfied: list = field(default_factory=list)

    @property
    def gap(self) -> int | None:
        return None if self.optimum is None else self.cost - self.optimum


def _block_orders(blocks: dict, reads: list, chosen, keys) -> dict | None:
    """Orders of ``keys``' blocks satisfying the reads ``chosen`` (indices), or None."""
    out = {}
    for key in keys:
        runs, pre, suf = [], [], []
        for i in chosen:
            for b, kind, s in reads[i].parts:
                if b == key:
                    (runs if kind == "run" else pre if kind == "prefix" else suf).append(s)
        order = consecutive_order(blocks[key], runs, pre, suf)
        if order is None:
            return None
        out[key] = order
    return out


def arrange(blocks: dict, reads: list, search_limit: int = 14) -> tuple[dict, list]:
    """Orders for ``blocks`` (key -> elements) serving ``reads``.

    Returns (key -> order, one :class:`GroupResult` per group of blocks linked by
    reads).  A group whose reads can all be satisfied is solved exactly; otherwise
    the reads are taken greedily, heaviest first, each kept if its blocks stay
    C1P, and groups of at most ``search_limit`` reads are also solved optimally by
    branch and bound (the lower bound the greedy cost is compared with; skipped,
    ``optimum`` None, past a few thousand consecutive-ones tests).
    """
    parent = {k: k for k in blocks}

    def find(k):
        while parent[k] != k:
            parent[k] = parent[parent[k]]
            k = parent[k]
        return k

    for r in reads:
        keys = [b for b, _, _ in r.parts]
        for k in keys[1:]:
            parent[find(k)] = find(keys[0])
    groups: dict = {}
    for k in blocks:
        groups.setdefault(find(k), ([], []))[0].append(k)
    for i, r in enumerate(reads):
        if r.parts:
            groups[find(r.parts[0][0])][1].append(i)
    orders, results = {}, []
    for keys, idx in groups.values():
        total = sum(reads[i].weight for i in idx)
        got = _block_orders(blocks, reads, idx, keys)
        if got is not None:
            orders.update(got)
            results.append(GroupResult(len(keys), len(idx), True, 0, 0, list(idx)))
            continue
        by_weight = sorted(idx, key=lambda i: (-reads[i].weight, i))
        chosen: list = []
        for i in by_weight:
            touched = {b for b, _, _ in reads[i].parts}
            if _block_orders(blocks, reads, chosen + [i], touched) is not None:
                chosen.append(i)
        orders.update(_block_orders(blocks, reads, chosen, keys))
        cost = total - sum(reads[i].weight for i in chosen)
        optimum = None
        if len(idx) <= search_limit:
            best = _best_weight(blocks, reads, by_weight, total - cost)
            optimum = None if best is None else total - best
        results.append(GroupResult(len(keys), len(idx), False, cost, optimum, sorted(chosen)))
    return orders, results


class _OutOfBudget(Exception):
    pass


def _best_weight(blocks, reads, order: list, incumbent: int, budget: int = 4000) -> int | None:
    """The heaviest set of reads that can be satisfied together (branch and bound;
    satisfiability is monotone: a subset of a satisfiable set is satisfiable).
    None when it would take more than ``budget`` consecutive-ones tests."""
    weights = [reads[i].weight for i in order]
    rest = [sum(weights[j:]) for j in range(len(order) + 1)]
    best = incumbent
    tests = 0

    def dfs(j: int, chosen: list, w: int) -> None:
        nonlocal best, tests
        if w + rest[j] <= best:
            return
        if j == len(order):
            best = w
            return
        tests += 1
        if tests > budget:
            raise _OutOfBudget
        i = order[j]
        touched = {b for b, _, _ in reads[i].parts}
        if _block_orders(blocks, reads, chosen + [i], touched) is not None:
            dfs(j + 1, chosen + [i], w + weights[j])
        dfs(j + 1, chosen, w)

    try:
        dfs(0, [], 0)
    except _OutOfBudget:
        return None
    return best
