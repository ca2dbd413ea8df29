"""The HAWQ digits experiment runs end to end (tiny settings: the numbers in
docs/results/hawq.md come from the full run)."""

import json

import pytest

pytest.importorskip("sklearn")

from sliver.benchmarks import hawq_digits  # noqa: E402


def test_hawq_digits_runs_and_reports_every_comparison(tmp_path, capsys):
    out = tmp_path / "r.json"
    assert hawq_digits.main(["--seeds", "0", "--random", "2", "--epochs", "1", "--qat-epochs", "1", "--max-iters", "4",
                             "--no-cycles", "--no-compile", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "uniform W3A3" in text and "2 random" in text
    r = json.loads(out.read_text())
    run = r["runs"][0]
    # HAWQ's allocation fits the uniform W3A3 size budget, and every allocation was scored
    sizes = {"0": 144, "3": 4608, "6": 288, "10": 1280}
    ws = list(map(int, run["hawq_size"].split("/")))
    assert sum(-(-n * b // 8) for n, b in zip(sizes.values(), ws)) <= r["size_budget"] == 2370
    assert {run["hawq_size"], "3/3/3/3"} <= set(run["acc"]) and all(0 <= a <= 1 for a in run["acc"].values())
    assert 0 <= r["summary"]["size"]["hawq"] <= 1
