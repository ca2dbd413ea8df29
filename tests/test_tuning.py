"""Autotuning (backends/tvm/tuning/, `sliver tune`, `sliver device serve`).

One expensive session fixture tunes tests/tuning_models.py:first for x86_64 the way a
user would: `sliver tune` in a subprocess, killed (with its worker processes) once
it has saved some search trials, then the same command again, which must finish
the budget without measuring anything twice.  The other tests read the database
that leaves behind.  Budgets are a handful of trials in batches of 2: what is
tested is the plumbing, not the speed of the result.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

import tuning_models
from helpers import assert_close, numpy_inputs, torch_outputs

from sliver.backends.tvm import tuning
from sliver.backends.tvm.build import tvm_version
from sliver.backends.tvm.targets import tvm_target
from sliver.backends.tvm.tuning import RECORDS, WORKLOADS, Budget, TuningDatabase, TuningError, workload_hash
from sliver.backends.tvm.tuning.database import _normalize
from sliver.runtime.manifest import Tuning

# a small evolutionary search: these tests check plumbing, not the quality of schedules
os.environ.setdefault("SLIVER_TUNE_POPULATION", "32")

REPO = Path(__file__).resolve().parent.parent
MODELS = Path(tuning_models.__file__)
TRIALS = 6  # first: 3 tasks with FLOPs -> 5 trials for the 3x3 conv (batches 2+2+1), 1 for the 1x1 conv


def _module(builder):
    from sliver.api import optimize, trace

    model, inputs = builder()
    module = trace(model, inputs)
    optimize(module)
    return module


def _lines(path: Path) -> list[str]:
    return [ln for ln in path.read_text().splitlines() if ln.strip()]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def tuned(tmp_path_factory):
    """`sliver tune first --trials 6`, killed after its first search batch, then rerun."""
    root = tmp_path_factory.mktemp("tuning-db")
    env = dict(os.environ, SLIVER_TUNING_DIR=str(root), SLIVER_TUNE_BATCH="2")
    cmd = [sys.executable, "-m", "sliver.tools.cli", "tune", f"{MODELS}:first", "--trials", str(TRIALS)]
    db = TuningDatabase("x86_64", root)
    records = db.dir / RECORDS
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    n_tasks = 4
    try:
        deadline = time.time() + 600
        while time.time() < deadline and proc.poll() is None:
            if records.is_file() and len(_lines(records)) > n_tasks:  # defaults + at least one search batch
                break
            time.sleep(0.2)
        assert proc.poll() is None, "tuning finished before it could be killed:\n" + proc.stdout.read().decode()
        os.killpg(proc.pid, signal.SIGKILL)  # like closing the terminal: the runner worker dies too
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    before = _lines(records)
    assert n_tasks < len(before) < n_tasks + TRIALS, "the kill should land mid-tuning"
    # resume: the same command, in-process this time (its report is what we check)
    old = {k: os.environ.get(k) for k in ("SLIVER_TUNING_DIR", "SLIVER_TUNE_BATCH")}
    os.environ.update(SLIVER_TUNING_DIR=str(root))
    try:
        report = tuning.tune(_module(tuning_models.first), "x86_64", Budget(trials=TRIALS))
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return {"root": root, "before": before, "after": _lines(records), "report": report}


@pytest.mark.slow
def test_resume_after_kill_does_not_redo_trials(tuned):
    before, after, report = tuned["before"], tuned["after"], tuned["report"]
    assert after[: len(before)] == before, "records of the killed run were rewritten"
    search_before = len(before) - 4
    assert report.defaults_measured == 0, "the defaults measured before the kill were measured again"
    assert report.trials_run == TRIALS - search_before
    assert report.trials_total == TRIALS
    assert len(after) == 4 + TRIALS
    by_name = {t["name"]: t for t in report.per_task}
    assert sum(t["trials"] for t in report.per_task) == TRIALS
    assert by_name["fused_conv2d_add_relu"]["trials"] > by_name["fused_conv2d1_add1"]["trials"]  # FLOPs split
    assert all(t["default_ms"] is not None and t["best_ms"] <= t["default_ms"] for t in report.per_task)


@pytest.mark.slow
def test_tuned_artifact_is_correct_and_uses_the_records(tuned, monkeypatch):
    import sliver

    monkeypatch.setenv("SLIVER_TUNING_DIR", str(tuned["root"]))
    model, inputs = tuning_models.first()
    art = sliver.lower(model, inputs, target="x86_64")
    info = art.manifest.tuning
    assert info.database == tuning.target_key("x86_64")
    assert "fused_conv2d_add_relu" in info.tuned and len(info.tuned) == info.kernels == 4
    assert_close(art.load().run(*numpy_inputs(inputs)), torch_outputs(model, inputs))
    untuned = sliver.lower(model, inputs, target="x86_64", tune=False)
    assert untuned.manifest.tuning == Tuning(database=None, tuned=[], kernels=4)


@pytest.mark.slow
def test_lower_with_a_budget_lowers_the_model_once(tmp_path, monkeypatch):
    """lower(tune=N) tunes the Relax module it lowered and compiles that same module."""
    import sliver
    from sliver.backends.tvm import lower as lowering

    monkeypatch.setenv("SLIVER_TUNING_DIR", str(tmp_path))
    monkeypatch.setattr(tuning.search, "TRIALS_PER_BATCH", 2)
    calls = []
    real = lowering.to_relax
    monkeypatch.setattr(lowering, "to_relax", lambda *a, **k: calls.append(1) or real(*a, **k))
    model, inputs = tuning_models.first()
    art = sliver.lower(model, inputs, target="x86_64", tune=2)
    assert len(calls) == 1
    assert len(art.manifest.tuning.tuned) == art.manifest.tuning.kernels == 4
    assert_close(art.load().run(*numpy_inputs(inputs)), torch_outputs(model, inputs))


@pytest.mark.slow
def test_records_are_keyed_by_target(tuned, monkeypatch):
    """An x86 record is never applied to arm64 (TVM's database alone would: #15549)."""
    import sliver

    root = tuned["root"]
    monkeypatch.setenv("SLIVER_TUNING_DIR", str(root))
    x86, arm = TuningDatabase("x86_64", root), TuningDatabase("arm64", root, create=False)
    assert x86.exists() and not arm.exists() and x86.dir != arm.dir
    assert x86.dir.parent.name == f"tvm-{tvm_version()}"
    other_cpu = dict(x86.target.spec, mcpu="skylake-avx512")
    assert tuning.target_key(other_cpu) != x86.key  # another CPU model, another database
    # TVM's own database answers for any target: the folder is what keeps them apart
    wl = next(r.workload.mod for r in x86.db.get_all_tuning_records())
    assert x86.db.query_schedule(wl, tvm_target(arm.target), "main") is not None
    model, inputs = tuning_models.first()
    art = sliver.lower(model, inputs, target="arm64")
    assert art.manifest.tuning.tuned == [] and art.manifest.tuning.database is None


@pytest.mark.slow
def test_records_are_reused_across_models(tuned, tmp_path):
    """`second` shares its first kernel with `first`: no trial or default is redone."""
    import shutil

    root = tmp_path / "db"
    shutil.copytree(tuned["root"], root)
    db = TuningDatabase("x86_64", root)
    shared = next(t for t in tuning.extract_tasks(_module(tuning_models.first), "x86_64")
                  if t.name == "fused_conv2d_add_relu")
    had = db.stats()[shared.hash]["records"]
    second = _module(tuning_models.second)
    report = tuning.tune(second, "x86_64", Budget(trials=3), root=root)
    tasks = tuning.extract_tasks(second, "x86_64")
    assert shared.hash in {t.hash for t in tasks}
    assert report.defaults_measured == 3  # the 3 kernels `first` does not have
    after = TuningDatabase("x86_64", root).stats()
    assert after[shared.hash]["records"] == had  # nothing measured again for the shared kernel
    share = dict(zip((t.hash for t in tasks), tuning.allocate(tasks, 3)))
    assert 0 < share[shared.hash] <= had - 1  # its share of the budget is already in the database
    assert report.trials_run == 3 - share[shared.hash]


@pytest.mark.slow
def test_untuned_modules_do_not_open_the_database(tuned, tmp_path):
    """apply() asks the workload index in sliver.json first: opening TVM's JSON
    database parses every workload (tens of seconds for a real one), which a module
    with no tuned function should not pay.  The index is rebuilt when the files change."""
    import shutil

    root = tmp_path / "db"
    shutil.copytree(tuned["root"], root)
    db = TuningDatabase("x86_64", root)
    assert db.workload_hashes() == set(db.stats())
    meta = json.loads((db.dir / "sliver.json").read_text())
    assert sorted(meta["workload_index"]["hashes"]) == sorted(db.stats())

    import tvm

    from sliver.backends.tvm.schedules import unscheduled_primfuncs

    fresh = TuningDatabase("x86_64", root)
    funcs = unscheduled_primfuncs(tuning.fused_module(_module(tuning_models.second), "x86_64"))
    untuned = {gv: f for gv, f in funcs if tuning.workload_hash(_normalize(f)) not in fresh.workload_hashes()}
    assert 0 < len(untuned) < len(funcs), "second shares one kernel with first and has others"
    mod = tvm.IRModule(untuned)
    report = {}
    fresh.apply(mod, report)
    assert report == {} and fresh._db is None, "the database was opened for a module with no tuned function"

    records = db.dir / RECORDS
    st = records.stat()
    os.utime(records, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    again = TuningDatabase("x86_64", root)
    assert again.workload_hashes() == set(db.stats()) and again._db is not None  # stale stamp: rebuilt


@pytest.mark.slow
def test_export_import_roundtrip(tuned, tmp_path):
    src = TuningDatabase("x86_64", tuned["root"])
    path = src.export(tmp_path / "x86.tuning")
    fresh = tmp_path / "fresh"
    db, added = tuning.import_file(path, root=fresh)
    assert added == len(src) and db.key == src.key and len(TuningDatabase("x86_64", fresh)) == len(src)
    assert tuning.import_file(path, root=fresh)[1] == 0  # importing twice adds nothing
    assert TuningDatabase("x86_64", fresh).meta["defaults"] == src.meta["defaults"]
    # a file from another TVM is refused, naming both versions
    with zipfile.ZipFile(path) as z:
        parts = {n: z.read(n) for n in z.namelist()}
    meta = json.loads(parts["sliver.json"])
    meta["tvm_version"] = "0.19.0"
    parts["sliver.json"] = json.dumps(meta).encode()
    bad = tmp_path / "old.tuning"
    with zipfile.ZipFile(bad, "w") as z:
        for n, data in parts.items():
            z.writestr(n, data)
    with pytest.raises(TuningError, match="TVM 0.19.0"):
        tuning.import_file(bad, root=fresh)
    with pytest.raises(TuningError, match="not a sliver tuning export"):
        tuning.import_file(MODELS, root=fresh)


@pytest.mark.slow
def test_a_torn_last_line_is_dropped(tuned, tmp_path):
    """A run killed while appending leaves half a line: the database still opens."""
    import shutil

    root = tmp_path / "db"
    shutil.copytree(tuned["root"], root)
    records = TuningDatabase("x86_64", root).dir / RECORDS
    n = len(_lines(records))
    with open(records, "a") as f:
        f.write('[0, [[["SampleCategorical", [], {}, [0.1, 0.2')
    assert len(TuningDatabase("x86_64", root)) == n
    assert len(_lines(records)) == n


def test_budgets_are_checked_before_any_work():
    assert Budget.parse(trials="12").trials == 12
    assert Budget.parse(time_budget="1h30m").seconds == 5400
    assert Budget.parse(time_budget="90s").seconds == 90 and Budget.parse(time_budget="2.5m").seconds == 150
    assert Budget.of(200) == Budget(trials=200) and Budget.of("10m") == Budget(seconds=600)
    for kwargs, match in [({}, "not both and not neither"), ({"trials": 3, "time_budget": "1m"}, "not both"),
                          ({"trials": "0"}, "whole number >= 1"), ({"trials": "many"}, "whole number"),
                          ({"time_budget": "10x"}, "not a duration"), ({"time_budget": "0s"}, "positive")]:
        with pytest.raises(TuningError, match=match):
            Budget.parse(**kwargs)
    with pytest.raises(TuningError, match="names no budget"):
        Budget.of(True)
    assert tuning.allocate([], 5) == []


def test_cli_rejects_bad_budgets_and_addresses(capsys):
    from sliver.tools.cli import main

    model = f"{MODELS}:first"
    for argv, match in [([model, "--trials", "0"], "whole number >= 1"),
                        ([model, "--time-budget", "soon"], "not a duration"),
                        ([model], "not both and not neither"),
                        ([model, "--trials", "2", "--rpc", "nohost", "--key", "pi"], "HOST:PORT"),
                        ([model, "--trials", "2", "--key", "pi"], "give --rpc"),
                        ([model, "--trials", "2", "--target", "arm64"], "sliver device serve"),
                        ([], "needs a MODEL")]:
        assert main(["tune", *argv]) == 2
        assert match in capsys.readouterr().err


def _wait_for(rpc, proc, seconds=180):
    t0 = time.time()
    while time.time() - t0 < seconds:
        if tuning.device_present(rpc):
            return
        if proc.poll() is not None:
            break
        time.sleep(0.5)
    log = Path(proc.log_path).read_text() if hasattr(proc, "log_path") else ""
    raise AssertionError(f"the RPC server did not register with the tracker\n{log}")


RPC_SECRET = "tuning-test-secret-0123456789"


@pytest.fixture
def tracker(monkeypatch):
    """A tracker, and the shared RPC secret in the environment (servers started here inherit it)."""
    from sliver.common.rpcauth import ENV

    monkeypatch.setenv(ENV, RPC_SECRET)
    port = _free_port()
    tr = tuning.start_tracker("127.0.0.1", port, port + 10)
    yield tr
    tr.terminate()


def _serve(tracker, key):
    return subprocess.Popen([sys.executable, "-m", "sliver.runtime", "serve", "--tracker",
                             f"127.0.0.1:{tracker.port}", "--key", key, "--host", "127.0.0.1",
                             "--port", str(_free_port())], start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@pytest.mark.slow
def test_device_that_drops_mid_tuning_resumes(tracker, tmp_path, monkeypatch):
    """Kill the RPC server after the first search batch: tuning retries, gives up
    with everything saved, and the same call finishes once the device is back."""
    monkeypatch.setattr(tuning.search, "TRIALS_PER_BATCH", 2)
    rpc = tuning.RPC(f"127.0.0.1:{tracker.port}", "host", session_timeout_s=15, retries=2, backoff_s=0.5)
    module = _module(tuning_models.first)
    server = _serve(tracker, "host")
    try:
        _wait_for(rpc, server)

        def kill_server(n):
            if n >= 2 and server.poll() is None:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()

        with pytest.raises(tuning.DeviceLost, match="rerun the same command to resume"):
            tuning.tune(module, "x86_64", Budget(trials=4), rpc=rpc, root=tmp_path, on_trial=kill_server)
        saved = len(_lines(TuningDatabase("x86_64", tmp_path).dir / RECORDS))
        assert saved == 4 + 2  # every default, the first batch; nothing from the failed batch
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)
        server.wait()
    server = _serve(tracker, "host")
    try:
        _wait_for(rpc, server)
        report = tuning.tune(module, "x86_64", Budget(trials=4), rpc=rpc, root=tmp_path)
    finally:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()
    assert report.defaults_measured == 0 and report.trials_run == 2 and report.trials_total == 4


@pytest.mark.slow
@pytest.mark.emulated
def test_rpc_tuning_on_the_emulated_pi(tracker, tmp_path, monkeypatch):
    """`sliver device serve` on the emulated Pi (qemu, runtime only), `sliver tune
    --rpc` against it, then the tuned arm64 artifact checked on the Pi."""
    from sliver.tools.emulator import emulate
    from sliver.tools.cli import main

    monkeypatch.setenv("SLIVER_TUNING_DIR", str(tmp_path / "db"))
    monkeypatch.setattr(tuning.search, "TRIALS_PER_BATCH", 2)
    rpc = tuning.RPC(f"127.0.0.1:{tracker.port}", "pi")
    out = tmp_path / "tuned.sliver"
    with emulate.background(["-m", "sliver.runtime", "serve", "--tracker", f"127.0.0.1:{tracker.port}",
                             "--key", "pi", "--host", "127.0.0.1", "--port", str(_free_port())]) as server:
        _wait_for(rpc, server)
        assert main(["tune", f"{MODELS}:first", "--target", "arm64", "--trials", "2", "--rpc",
                     f"127.0.0.1:{tracker.port}", "--key", "pi", "-o", str(out)]) == 0
    db = TuningDatabase("arm64", tmp_path / "db")
    stats = db.stats()
    assert sum(s["records"] for s in stats.values()) == 4 + 2
    assert all(s["best"] is not None for s in stats.values())  # every kernel measured on the device
    from sliver.runtime.artifact import read

    assert read(out).manifest.tuning.database == db.key
    assert len(read(out).manifest.tuning.tuned) == 4
    proc = emulate.run_module(["run", str(out), "--verify"])
    assert proc.returncode == 0 and "verify: passed" in proc.stdout, proc.stdout + proc.stderr


def _tasks_of(*builders):
    return [t for b in builders for t in tuning.extract_tasks(_module(b), "x86_64")]


@pytest.mark.slow
def test_interleaved_writers_keep_the_database_readable(tmp_path):
    """Two writers with their own view of one folder (as two processes have), each
    adding workloads the other does not know: TVM's own JSON database numbers
    workloads by its in-memory count, so run B's records would name run A's lines."""
    import tvm
    from tvm.s_tir.meta_schedule.arg_info import ArgInfo

    from sliver.backends.tvm.schedules import default_schedule

    first, second = _tasks_of(tuning_models.first), _tasks_of(tuning_models.second)
    target = tvm_target(tuning.check_measurable("x86_64", None))
    a, b = TuningDatabase("x86_64", tmp_path), TuningDatabase("x86_64", tmp_path)
    len(a), len(b)  # both open their view before either writes
    for i in range(max(len(first), len(second))):
        for db, tasks, secs in ((a, first, 1e-3), (b, second, 2e-3)):
            if i < len(tasks):
                t = tasks[i]
                sch = default_schedule(t.mod["main"], target, name=t.name)[0] or tvm.s_tir.Schedule(t.mod)
                db.commit(t.mod, sch.trace, [secs], ArgInfo.from_prim_func(t.mod["main"]), target)
    fresh = TuningDatabase("x86_64", tmp_path)
    assert len(fresh) == len(first) + len(second)
    stats = fresh.stats()
    assert {t.hash for t in first + second} == set(stats)
    # every record is filed under its own workload: the times say which writer made it
    for rec in fresh.db.get_all_tuning_records():
        h = workload_hash(rec.workload.mod)
        assert float(rec.run_secs[0]) in ({1e-3} if h in {t.hash for t in first} else set()) | (
            {2e-3} if h in {t.hash for t in second} else set())


@pytest.mark.slow
def test_two_concurrent_tune_runs_leave_a_database_lower_uses(tmp_path, monkeypatch):
    """`sliver tune first` and `sliver tune second` at once on one database."""
    import sliver

    env = dict(os.environ, SLIVER_TUNING_DIR=str(tmp_path), SLIVER_TUNE_BATCH="2")
    procs = [subprocess.Popen([sys.executable, "-m", "sliver.tools.cli", "tune", f"{MODELS}:{name}", "--trials", "3"],
                              env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
             for name in ("first", "second")]
    outs = [p.communicate(timeout=900)[0].decode() for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(outs)
    db = TuningDatabase("x86_64", tmp_path)
    tasks = _tasks_of(tuning_models.first) + _tasks_of(tuning_models.second)
    stats = db.stats()
    assert {t.hash for t in tasks} <= set(stats)
    monkeypatch.setenv("SLIVER_TUNING_DIR", str(tmp_path))
    for builder in (tuning_models.first, tuning_models.second):
        model, inputs = builder()
        art = sliver.lower(model, inputs, target="x86_64")
        assert len(art.manifest.tuning.tuned) == art.manifest.tuning.kernels > 0
        assert_close(art.load().run(*numpy_inputs(inputs)), torch_outputs(model, inputs))


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["workload line", "record of another workload", "not a folder"])
def test_an_unreadable_database_is_a_warning_in_lower(tuned, tmp_path, monkeypatch, damage):
    import shutil

    import sliver

    root = tmp_path / "db"
    shutil.copytree(tuned["root"], root)
    db = TuningDatabase("x86_64", root)
    if damage == "workload line":
        lines = (db.dir / WORKLOADS).read_bytes().split(b"\n")
        lines[1] = lines[1][: len(lines[1]) // 2]
        (db.dir / WORKLOADS).write_bytes(b"\n".join(lines))
    elif damage == "record of another workload":
        lines = _lines(db.dir / RECORDS)
        index, record = json.loads(lines[0])
        lines[0] = json.dumps([(index + 1) % 4, record])  # the old concurrent writers' corruption
        (db.dir / RECORDS).write_text("\n".join(lines) + "\n")
    else:
        (db.dir / RECORDS).unlink()
        (db.dir / RECORDS).mkdir()
    monkeypatch.setenv("SLIVER_TUNING_DIR", str(root))
    model, inputs = tuning_models.first()
    with pytest.warns(tuning.TuningDatabaseWarning, match="cannot be read.*default schedules"):
        art = sliver.lower(model, inputs, target="x86_64")
    assert art.manifest.tuning.tuned == []
    assert_close(art.load().run(*numpy_inputs(inputs)), torch_outputs(model, inputs))


@pytest.mark.slow
def test_tuning_against_a_device_with_another_secret_fails_before_any_work(tracker, tmp_path, monkeypatch):
    from sliver.common.rpcauth import ENV, RPCAuthError

    server = _serve(tracker, "host")  # holds RPC_SECRET
    try:
        rpc = tuning.RPC(f"127.0.0.1:{tracker.port}", "host")
        _wait_for(rpc, server)
        monkeypatch.setenv(ENV, "not-the-device-secret-0123")
        with pytest.raises(RPCAuthError, match="does not share this secret"):
            tuning.tune(_module(tuning_models.first), "x86_64", Budget(trials=2),
                        rpc=tuning.RPC(f"127.0.0.1:{tracker.port}", "host"), root=tmp_path)
        assert not TuningDatabase("x86_64", tmp_path, create=False).exists()
        monkeypatch.delenv(ENV)
        with pytest.raises(RPCAuthError, match="SLIVER_RPC_SECRET"):
            tuning.RPC(f"127.0.0.1:{tracker.port}", "host")
    finally:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()
