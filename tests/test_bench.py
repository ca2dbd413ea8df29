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
    argv = ["--models", "resnet18", "--resolution", "32", "--warmup", "1", "--repeat", "2", "--calls", "2",
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
        assert r["runs"] == 2 and len(r["times_ms"]) == 2 and len(r["first_times_ms"]) == 2
        assert 0 < r["first_min_ms"] <= r["first_median_ms"]
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
    assert report["flops"]["resnet18"] > 0 and "% peak" in out and "fp32 lanes" in out


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


# -- the fair harness: pauses, shuffled rounds, first and warm calls ------------------------


def test_time_fair_pauses_before_every_turn_and_shuffles_rounds():
    import time

    calls = []  # (backend, start, end)

    def fn(k, ms):
        def run():
            t0 = time.perf_counter()
            time.sleep(ms / 1e3)
            calls.append((k, t0, time.perf_counter()))
        return run

    fns = {"a": fn("a", 1), "b": fn("b", 2), "c": fn("c", 3)}
    orders = []
    got = bench.time_fair(fns, warmup=1, repeat=12, budget_s=60, calls=3, pause_s=0.02, seed=1, orders=orders)
    # every round gives every backend exactly one turn, in an order that changes
    assert len(orders) == 12 and all(sorted(o) == ["a", "b", "c"] for o in orders)
    assert len(set(orders)) > 1
    # the calls ran turn by turn in those orders (after one warm-up turn each)
    turns = [k for i, (k, _, _) in enumerate(calls) if i % 3 == 0]
    assert [k for o in orders for k in o] == turns[3:]
    assert all(calls[i][0] == calls[i + 1][0] == calls[i + 2][0] for i in range(0, len(calls), 3))
    # a pause before every turn, none between the calls of one turn
    for i in range(1, len(calls)):
        gap = calls[i][1] - calls[i - 1][2]
        if i % 3 == 0:
            assert gap >= 0.02, (i, gap)
        else:
            assert gap < 0.02, (i, gap)
    for k, ms in (("a", 1), ("b", 2), ("c", 3)):
        t = got[k]
        assert (t.warmup, len(t.first), len(t.warm), t.cut) == (1, 12, 24, False)
        assert t.times is t.warm and min(t.first + t.warm) >= ms
    # with one call per turn, the first calls are the times
    one = bench.time_fair({"a": fns["a"]}, warmup=0, repeat=2, budget_s=60, pause_s=0.0)
    assert one["a"].warm == [] and one["a"].times == one["a"].first and len(one["a"].first) == 2


def test_cpu_time_leaves_out_time_off_the_core(capsys):
    """--cpu-time counts the calling thread's CPU time: a call that sleeps costs ~0."""
    import time

    got = bench.time_fair({"sleepy": lambda: time.sleep(0.02)}, warmup=0, repeat=2, budget_s=60, pause_s=0.0,
                          clock=time.thread_time_ns)
    assert max(got["sleepy"].first) < 5.0
    with pytest.raises(SystemExit):
        bench.parse_args(["--cpu-time", "--threads", "2"])
    assert "--cpu-time needs --threads 1" in capsys.readouterr().err
    assert bench.parse_args(["--cpu-time", "--threads", "1"]).cpu_time


def test_time_fair_drops_a_backend_over_budget():
    import time

    got = bench.time_fair({"slow": lambda: time.sleep(0.02), "fast": lambda: None}, warmup=0, repeat=10,
                          budget_s=0.03, pause_s=0.0)
    assert got["slow"].cut and 1 <= len(got["slow"].first) < 10
    assert not got["fast"].cut and len(got["fast"].first) == 10


def test_peak_formula_and_percent(monkeypatch):
    from sliver.backends.tvm import targets

    monkeypatch.setattr(bench, "_clock_ghz", lambda: (3.0, "a test clock"))
    t = targets.resolve("x86-64-v3")
    peak = bench.fp32_peak(1, "x86-64-v3")
    assert peak.gflops == pytest.approx(1 * 2 * t.lanes * 2 * 3.0) and t.lanes == 8
    assert "1 cores × 2 FMA/cycle × 8 fp32 lanes × 2 × 3.00 GHz" in peak.how
    # 9.6 GFLOP in 100 ms on a 96 GFLOP/s peak: everything
    assert bench.percent_of_peak(int(9.6e9), 100.0, bench.Peak(96.0, "")) == "100%"
    assert bench.percent_of_peak(None, 100.0, peak) == "-"
    monkeypatch.setattr(bench, "_clock_ghz", lambda: (None, "no clock found"))
    assert bench.fp32_peak(2).gflops is None


def test_speed_table_from_a_report():
    from sliver.benchmarks import speed

    def row(b, med, mn, load=0.1):
        return {"model": "bert_base", "backend": b, "status": "ok", "median_ms": med, "min_ms": mn, "other_load": load}

    report = {"config": {"threads": 2}, "flops": {"bert_base": int(22.4e9)},
              "results": [row("torch", 80.0, 70.0), row("onnxruntime", 40.0, 35.0), row("sliver", 50.0, 35.0, 0.4),
                          {"model": "bert_base", "backend": "sliver-tuned", "status": "skipped", "median_ms": None}]}
    table = speed.ratio_table(report)
    line = [ln for ln in table.splitlines() if ln.startswith("| BERT-base")][0]
    assert "| 22.40 |" in line and "50.0 (35.0)" in line and "| skipped |" in line
    assert "1.25×, 1.00×" in line and "| 0.62× |" in line and line.endswith("| 0.40 |")
    assert set(speed.SPEED_SET) == set(speed.BUILDERS) == set(speed.TITLES) and len(speed.SPEED_SET) == 10



def test_speed_table_from_saved_reports(tmp_path, capsys):
    from sliver.benchmarks import speed
    from sliver.common.errors import SliverError

    def report(model, threads, ms):
        return {"config": {"threads": threads}, "machine": {}, "ok": True, "flops": {model: 10**9},
                "results": [{"model": model, "backend": b, "status": "ok", "median_ms": ms, "min_ms": ms,
                             "other_load": 0.0} for b in ("torch", "onnxruntime", "sliver")]}

    paths = []
    for model, threads in (("gpt2", 2), ("resnet18", 2), ("resnet50", 1)):
        paths.append(tmp_path / f"{model}.json")
        paths[-1].write_text(json.dumps(report(model, threads, 10.0)))
    assert speed.main(["--table-from", str(paths[0]), str(paths[1]), "--markdown", str(tmp_path / "t.md")]) == 0
    table = (tmp_path / "t.md").read_text()
    assert table.index("| ResNet-18 |") < table.index("| GPT-2 small")  # the speed set's order
    assert "1.00×, 1.00×" in capsys.readouterr().out
    with pytest.raises(SliverError, match="thread counts"):
        speed.main(["--table-from", str(paths[0]), str(paths[2])])
