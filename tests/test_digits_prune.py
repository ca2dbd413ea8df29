"""tools/digits_prune: constrained vs unconstrained pruning at matched parameter counts."""

import pytest

pytest.importorskip("sklearn")


@pytest.mark.slow
def test_digits_prune_matches_parameter_counts():
    from sliver.tools import digits_prune

    rows = digits_prune.evaluate("resnet", [0.3], epochs=2, seed=0)
    base, pruned = rows
    assert base["sparsity"] == 0.0 and base["unconstrained"] == base["constrained"] > 0.5  # it learned
    assert pruned["params"] < base["params"]
    # the constrained model was searched to the same size: within 3% of the unconstrained one
    assert abs(pruned["constrained_params"] - pruned["params"]) <= 0.03 * pruned["params"]
    assert 0.0 < pruned["constrained_amount"] < 0.99
    text = digits_prune.format_rows(rows)
    assert text.splitlines()[0].split("  ")[0] == "model" and "30%" in text


def test_densenet_digits_prunes_exactly():
    """The DenseNet-style digits net (concats) prunes to a module equal to its masked model."""
    import numpy as np
    import torch

    import sliver
    from sliver.ir.interp import run
    from sliver.passes.manager import PassManager, make_pass
    from sliver.passes.prune import masked_copy
    from sliver.tools import digits_prune

    torch.manual_seed(0)
    x = torch.rand(2, 1, 8, 8)
    module = sliver.trace(digits_prune.densenet_digits().eval(), (x,))
    sliver.api.optimize(module)
    original = module.clone()
    (record,) = PassManager([make_pass("prune", amount=0.4)]).run(module)
    want = run(masked_copy(original, record.notes["masks"]), [x.numpy()], dtype="f64")[0]
    got = run(module, [x.numpy()], dtype="f64")[0]
    assert np.abs(got - want).max() <= 1e-10 * max(1.0, np.abs(want).max())
    assert record.notes["report"]["gathers"] > 0  # concat consumers read subsets
