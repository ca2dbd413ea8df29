"""Every declared op is complete: the torch frontend traces into it, the TVM backend
lowers it for every target, it has reference semantics — or its declaration says why
not (``OpDecl.opt_out``) — and each of its attributes has a kind check."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from sliver.backends.tvm import lowbit, lower, targets
from sliver.frontend import rules
from sliver.ir.ops import ATTR_KINDS, all_ops

FRONTEND = Path(rules.__file__).parent


def traced_ops(decls: dict, rule_table: dict) -> set[str]:
    """The sliver ops the frontend can emit: those whose declared aten ops have a rule in
    ``rule_table``, and those its rules name in the source (``b.emit("clamp", …)``,
    ``_reduce_rule("mean")``, a loop over ``("maximum", "maximum")`` pairs; a call of
    ``add_param`` emits ``param``)."""
    out = {name for name, d in decls.items()
           if any(rule_table.get(f"aten.{a}.default") is not None for a in d.aten)}
    for path in FRONTEND.glob("*.py"):
        tree = ast.parse(path.read_text())
        docstrings = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Expr)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr == "add_param":
                out.add("param")
            elif isinstance(node, ast.Constant) and node.value in decls and id(node) not in docstrings:
                out.add(node.value)
    return out


def lowered_for(kind: str, arch: str, lowering: dict, policy: dict, kernels: tuple) -> bool:
    """Whether the TVM backend lowers ``kind`` for ``arch``: one rule table serves every
    target; the low-bit layers dispatch per architecture to a kernel, which must exist."""
    if kind not in lowering:
        return False
    if kind in ("qconv2d", "qdense"):
        return policy.get(arch, "generic") in kernels
    return True


def coverage_problems(decls: dict, rule_table: dict, lowering: dict, policy: dict, kernels: tuple,
                      archs: dict, attr_kinds: dict) -> list[str]:
    """What is missing, op by op, unless the declaration opts out with a reason."""
    problems = []
    traced = traced_ops(decls, rule_table)
    for name, d in sorted(decls.items()):
        unchecked = sorted(set(d.attrs) - set(attr_kinds.get(name, {})))
        if unchecked:
            problems.append(f"{name}: no kind check (ATTR_KINDS) for the attribute(s) {', '.join(unchecked)}")
        for what, why in d.opt_out.items():
            if not why or len(why.split()) < 3:
                problems.append(f"{name}: the opt-out of {what} needs a reason, got {why!r}")
        if "trace" not in d.opt_out and name not in traced:
            problems.append(f"{name}: no trace rule (add aten=... to its declaration or a rule in the frontend)")
        if "ref" not in d.opt_out and d.ref is None:
            problems.append(f"{name}: no reference semantics")
        if "lower" not in d.opt_out:
            for target, arch in sorted(archs.items()):
                if not lowered_for(name, arch, lowering, policy, kernels):
                    problems.append(f"{name}: no TVM lowering for target {target} ({arch})")
        for what in d.opt_out:
            done = {"trace": name in traced, "ref": d.ref is not None,
                    "lower": all(lowered_for(name, a, lowering, policy, kernels) for a in archs.values())}[what]
            if done:
                problems.append(f"{name}: opts out of {what} but has one; remove the opt-out")
    return problems


def _archs() -> dict:
    # every named target's architecture, without TVM (the x86 target asks TVM for the host CPU)
    return dict(targets.ARCH)


def _check(**changes) -> list[str]:
    kw = dict(decls=all_ops(), rule_table=rules.RULES, lowering=lower.LOWERING, policy=targets.LOWBIT_KERNEL,
              kernels=lowbit.KERNELS, archs=_archs(), attr_kinds=ATTR_KINDS)
    kw.update(changes)
    return coverage_problems(**kw)


def test_the_targets_are_the_two_architectures():
    assert set(_archs().values()) == {"x86_64", "aarch64"}
    assert targets.NAMES["arm64"]().arch == "aarch64"


def test_every_declared_op_is_traced_lowered_and_has_reference_semantics():
    problems = _check()
    assert not problems, "\n".join(problems)


def test_a_removed_lowering_is_named():
    lowering = dict(lower.LOWERING)
    del lowering["hardswish"]
    problems = _check(lowering=lowering)
    assert problems == [f"hardswish: no TVM lowering for target {t} ({a})" for t, a in sorted(_archs().items())]


def test_a_removed_lowering_is_named_when_patched_in_place(monkeypatch):
    monkeypatch.delitem(lower.LOWERING, "max_pool2d")
    assert any(p.startswith("max_pool2d: no TVM lowering for target arm64") for p in _check())


def test_a_dispatch_to_a_missing_kernel_is_named():
    problems = _check(policy={**targets.LOWBIT_KERNEL, "aarch64": "vanished"})
    assert "qconv2d: no TVM lowering for target rpi5 (aarch64)" in problems
    assert "qdense: no TVM lowering for target arm64 (aarch64)" in problems
    assert not [p for p in problems if "x86_64" in p]


def test_a_missing_trace_rule_or_reference_is_named():
    decls = dict(all_ops())
    import dataclasses

    decls["sigmoid"] = dataclasses.replace(decls["sigmoid"], ref=None)
    table = {k: v for k, v in rules.RULES.items() if "relu" not in k}
    problems = _check(decls=decls, rule_table=table)
    assert "sigmoid: no reference semantics" in problems
    assert any(p.startswith("relu: no trace rule") for p in problems)


@pytest.mark.parametrize("what", ["trace", "ref", "lower"])
def test_an_opt_out_needs_a_reason_and_a_reason_to_exist(what):
    import dataclasses

    decls = dict(all_ops())
    decls["tanh"] = dataclasses.replace(decls["tanh"], opt_out={what: "no"})
    problems = _check(decls=decls)
    assert f"tanh: the opt-out of {what} needs a reason, got 'no'" in problems
    assert f"tanh: opts out of {what} but has one; remove the opt-out" in problems


def test_an_attribute_without_a_kind_check_is_named():
    kinds = {**ATTR_KINDS, "slice": {k: v for k, v in ATTR_KINDS["slice"].items() if k != "step"}}
    assert _check(attr_kinds=kinds) == ["slice: no kind check (ATTR_KINDS) for the attribute(s) step"]
