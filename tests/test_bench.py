"""The latency benchmark (benchmarks/latency.py) end to end, small: one model at 32x32,
a couple of runs per backend; `sliver bench ARTIFACT` (tools/bench.py); the timing loops
(tools/profile.py).  The end-to-end test compiles with TVM and exports
ONNX (when onnxruntime is installed: ``pip install -e '.[bench]'``), ~15-20 s."""

import json

import pytest

from sliver.benchmarks import latency as bench
from sliver.tools import profile
from sliver.tools.cli import main as sliver


@pytest.fixture(autouse=True)
def _no_pauses(monkeypatch):
    """The pauses between timed blocks and the minimum load-measuring window only
    steady real measurements; they just slow the tests down."""
    monkeypatch.setattr(bench, "PAUSE_S", 0.0)
    monkeypatch.setattr(bench.OtherLoad, "MIN_S", 0.0)


def test_stats_and_budget():
    s = profile.stats([3.0, 1.0, 2.0])
    assert (s["min_ms"], s["median_ms"], s["max_ms"]) == (1.0, 2.0, 3.0)
    assert 2.0 <= s["p90_ms"] <= 3.0
    calls = []
    warm, times, cut = profile.time_runs(lambda: calls.append(1), warmup=2, repeat=3, budget_s=60)
    assert (warm, len(times), cut, len(calls)) == (2, 3, False, 5)
    # a tiny budget still gives one timed run and says it was cut short
    import time

    warm, times, cut = profile.time_runs(lambda: time.sleep(0.02), warmup=5, repeat=50, budget_s=0.01)
    assert len(times) >= 1 and len(times) < 50 and cut


def test_compare_flags_shape_and_nan():
    import numpy as np

    a = np.array([1.0, -2.0], np.float32)
    assert bench.output_error(a, a) == (0.0, 0.0)
    assert bench.output_error(a[:1], a)[1] == float("inf")
    assert bench.output_error(np.array([np.nan, 0.0], np.float32), a)[1] == float("inf")


@pytest.mark.slow
def test_bench_main_small(tmp_path, capsys):
    backends = ["torch", "sliver"]
    argv = ["--models", "resnet18", "--resolution", "32", "--warmup", "1", "--repeat", "2",
            "--threads", "2", "--json", str(tmp_path / "out.json")]
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401

        backends.append("onnxruntime")
    except ImportError:
        argv.append("--skip-ort")
    assert bench.main(argv) == 0

    out = capsys.readouterr().out
    report = json.loads((tmp_path / "out.json").read_text())
    assert report["ok"]
    rows = {(r["model"], r["backend"]): r for r in report["results"]}
    assert set(rows) == {("resnet18", b) for b in backends + ["sliver-tuned"]}
    # the tests' tuning database is empty: the tuned column says how to fill it
    tuned = rows[("resnet18", "sliver-tuned")]
    assert tuned["status"] == "skipped" and "sliver tune" in tuned["note"]
    for b in backends:
        r = rows[("resnet18", b)]
        assert r["status"] == "ok", r
        assert r["runs"] == 2 and len(r["times_ms"]) == 2
        assert 0 < r["min_ms"] <= r["median_ms"] <= r["p90_ms"] <= r["max_ms"]
        assert r["vs_torch"] > 0
        assert bench.LABELS[b] in out
        if b != "torch":
            assert r["matches_torch"] is True
            assert r["max_rel_err"] < 1e-3
    assert rows[("resnet18", "torch")]["vs_torch"] == pytest.approx(1.0)
    assert rows[("resnet18", "sliver")]["prepare_s"] > 0
    assert rows[("resnet18", "sliver")]["threads"] == 2  # TVM_NUM_THREADS reached TVM's pool
    assert "MISMATCH" not in out and "FAILED" not in out
    assert "compile (sliver.lower" in out


def test_bench_reports_mismatch_loudly(tmp_path, capsys, monkeypatch):
    """A backend whose output differs from torch makes a MISMATCH row and exit status 1."""
    import numpy as np

    real = bench.prepare_torch

    def wrong_torch(model, threads, res):  # torch itself is the reference: break a copy of it
        p = real(model, threads, res)
        return bench.Prepared(lambda x: p.fn(x) + np.float32(1.0))

    monkeypatch.setattr(bench, "prepare_torch", wrong_torch)
    monkeypatch.setattr(bench, "BACKENDS", ("torch",))
    # the reference is computed from the model directly, so the broken "torch" backend mismatches
    code = bench.main(["--models", "resnet18", "--resolution", "32", "--warmup", "0", "--repeat", "1",
                       "--skip-sliver", "--skip-ort", "--json", str(tmp_path / "o.json")])
    captured = capsys.readouterr()
    assert code == 1
    assert "MISMATCH" in captured.out and "MISMATCH" in captured.err
    report = json.loads((tmp_path / "o.json").read_text())
    assert not report["ok"] and report["results"][0]["status"] == "mismatch"


def test_missing_onnxruntime_says_how_to_install(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(bench, "ort_missing", lambda: "onnxruntime is not installed (No module named 'onnxruntime')")
    code = bench.main(["--models", "mobilenet_v2", "--resolution", "32", "--warmup", "0", "--repeat", "1",
                       "--skip-sliver", "--json", str(tmp_path / "o.json")])
    out = capsys.readouterr().out
    assert code == 0  # a missing optional backend is not a failure
    assert "SKIPPED" in out and "pip install -e '.[bench]'" in out
    rows = {r["backend"]: r for r in json.loads((tmp_path / "o.json").read_text())["results"]}
    assert rows["onnxruntime"]["status"] == "skipped" and rows["torch"]["status"] == "ok"


# -- `sliver bench ARTIFACT`: one artifact's latency and per-layer profile -------------------


def _conv_layers(manifest):
    return {o.layer for o in manifest.ops if o.kind == "conv2d"}


def test_bench_artifact_per_layer(example_x86, tmp_path, capsys):
    from sliver.runtime.artifact import read

    manifest = read(example_x86).manifest
    code = sliver(["bench", str(example_x86), "--per-layer", "--repeat", "3", "--warmup", "1",
                   "--json", str(tmp_path / "a.json")])
    assert code == 0
    out = capsys.readouterr().out
    report = json.loads((tmp_path / "a.json").read_text())
    assert report["runs"] == 3 and len(report["times_ms"]) == 3
    assert 0 < report["min_ms"] <= report["median_ms"] <= report["max_ms"]
    rows = report["functions"]
    assert sum(r["share"] for r in rows) == pytest.approx(1.0)
    assert all(r["calls"] >= 1 and r["min_ms"] <= r["median_ms"] <= r["max_ms"] for r in rows)
    # every conv layer of the model is named by exactly one compiled function
    named = [layer for r in rows for layer in r["layers"]]
    conv_layers = _conv_layers(manifest)
    assert conv_layers and conv_layers <= set(named)
    assert all(named.count(layer) == 1 for layer in conv_layers)
    for layer in conv_layers:
        assert layer in out
    # the functions are the ones the manifest maps
    assert {r["function"] for r in rows} <= set(manifest.primfuncs)


def test_bench_artifact_flags_need_an_artifact(capsys):
    with pytest.raises(SystemExit) as e:
        sliver(["bench", "--per-layer"])
    assert e.value.code == 2
    assert "artifact" in capsys.readouterr().err


def test_bench_arm64_artifact_without_emulate_says_how(example_arm64, capsys):
    assert sliver(["bench", str(example_arm64)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sliver: error:") and "--emulate" in err


def test_bench_prune_prints_copies_for_each_export(capsys):
    from sliver.benchmarks import bench_prune

    assert bench_prune.main(["--models", "densenet", "--resolution", "16", "--side", "output"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("output-side l2 masks, amount 0.3")
    rows = {line.split()[1]: line.split()[2:] for line in lines[2:6]}
    assert list(rows) == ["unpruned", "naive", "reordered", "constrained"]
    # constrained pruning of the unconstrained exports' size, with the amount that got there
    matched = lines[6].split()
    assert matched[1] == "constrained=params" and matched[-2] == "amount" and 0 < float(matched[-1]) < 0.99
    assert matched[2:5] == ["0", "0", "0"]
    assert lines[7].split()[0] == "reorder:" and "ordered exactly (consecutive-ones)" in lines[7]
    assert rows["constrained"][:3] == ["0", "0", "0"]  # constrained never gathers
    params = {k: int(v[-2].replace(",", "")) for k, v in rows.items()}
    assert params["naive"] == params["reordered"] < params["unpruned"]
    assert abs(int(matched[-4].replace(",", "")) - params["naive"]) <= 0.05 * params["naive"]
    macs = {k: float(v[-1].rstrip("x")) for k, v in rows.items()}  # as a fraction of the unpruned model's
    assert macs["unpruned"] == 1.0 and macs["naive"] == macs["reordered"] < 1.0


def test_bench_prune_views_twin_keeps_shapes_and_macs_without_gathers():
    import sliver
    from sliver.passes.manager import PassManager, make_pass
    from sliver.passes.prune import count_params_and_macs
    import zoo

    from sliver.benchmarks import bench_prune

    model, inputs = zoo.MODELS["densenet"](resolution=16)
    module = sliver.trace(model, inputs)
    sliver.api.optimize(module)
    PassManager([make_pass("prune", method="l2", amount=0.3, reorder=False)]).run(module)
    takes = [op for op in module.ops if op.kind == "take"]
    assert takes  # naive export of unconstrained masks gathers
    twin = bench_prune.views_twin(module)
    assert not [op for op in twin.ops if op.kind == "take"]
    assert len([op for op in twin.ops if op.kind == "slice"]) == \
        len([op for op in module.ops if op.kind == "slice"]) + len(takes)
    assert [v.type for v in twin.outputs] == [v.type for v in module.outputs]
    assert count_params_and_macs(twin)[1] == count_params_and_macs(module)[1]
