"""benchmarks/digits_prune: constrained vs unconstrained pruning at matched parameter counts."""

import pytest

pytest.importorskip("sklearn")


@pytest.mark.slow
def test_digits_prune_matches_parameter_counts():
    from sliver.benchmarks import digits_prune

    rows = digits_prune.evaluate("resnet", [0.3], epochs=2, seed=0, scores=("l2", "act"))
    assert [(r["score"], r["sparsity"]) for r in rows] == [("l2", 0.0), ("l2", 0.3), ("act", 0.0), ("act", 0.3)]
    for base, pruned in (rows[:2], rows[2:]):
        assert base["unconstrained"] == base["constrained"] > 0.5  # it learned
        assert pruned["params"] < base["params"]
        # the constrained model was searched to the same size, up to a channel group: within 5%
        assert abs(pruned["constrained_params"] - pruned["params"]) <= 0.05 * pruned["params"]
        assert 0.0 < pruned["constrained_amount"] < 0.99
    assert rows[1]["unconstrained"] != rows[3]["unconstrained"] or rows[1]["params"] != rows[3]["params"]
    text = digits_prune.format_rows(rows)
    assert text.splitlines()[0].split("  ")[0] == "model" and "30%" in text


def test_digits_prune_table_is_mean_and_std_over_seeds():
    from sliver.benchmarks import digits_prune

    rows = [dict(model="resnet", score="l2", seed=seed, sparsity=0.1, params=p, constrained_params=p + 10,
                 unconstrained=u, constrained=c, constrained_amount=0.1)
            for seed, p, u, c in [(0, 100, 0.5, 0.9), (1, 200, 0.7, 0.9)]]
    (row,) = digits_prune.summarize(rows)
    assert (row["seeds"], row["params"], row["constrained_params"]) == (2, 150, 160)
    assert row["unconstrained"] == pytest.approx(0.6) and row["unconstrained_std"] == pytest.approx(0.1)
    assert row["constrained"] == pytest.approx(0.9) and row["constrained_std"] == pytest.approx(0.0)
    line = digits_prune.format_rows(rows).splitlines()[1].split()
    assert line[:4] == ["resnet", "l2", "10%", "150"] and line[-6:] == ["60.0%", "±", "10.0%", "90.0%", "±", "0.0%"]


def test_densenet_digits_prunes_exactly():
    """The DenseNet-style digits net (concats) prunes to a module equal to its masked model."""
    import numpy as np
    import torch

    import sliver
    from sliver.ir.interp import run
    from sliver.passes.manager import PassManager, make_pass
    from sliver.passes.prune import masked_copy
    from sliver.benchmarks import digits_prune

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
