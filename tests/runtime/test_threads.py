"""One loaded model called from many threads gives the single-thread results (TVM's
VM alone crashes: 8 threads x 200 calls segfaulted 5 runs of 5), and the thread-count
option sets TVM's worker threads.  Runs in subprocesses: a crash must fail the test,
not kill pytest."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from test_emulate import emulated

HAMMER = textwrap.dedent(
    """
    import hashlib, json, sys, threading
    import numpy as np
    from sliver.runtime.artifact import load

    path, nthreads, calls = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    model = load(path)
    rng = np.random.default_rng(0)
    spec = model.inputs[0]
    # different inputs per thread, so that a call seeing another call's data shows
    xs = [rng.standard_normal(spec.shape).astype(spec.numpy_dtype) for _ in range(nthreads)]
    single = [model.run(x)[0].copy() for x in xs]
    results = [[] for _ in range(nthreads)]
    errors = []
    start = threading.Barrier(nthreads)

    def worker(i):
        start.wait()
        try:
            for _ in range(calls):
                results[i].append(model(xs[i]))
        except Exception as e:
            errors.append(f"{type(e).__name__}: {e}")

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(nthreads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    equal = sum(np.array_equal(y, single[i]) for i in range(nthreads) for y in results[i])
    print("RESULT", json.dumps({"calls": sum(map(len, results)), "equal": int(equal), "errors": errors[:3]}))
    """
)


def _check(proc, nthreads, calls):
    assert proc.returncode == 0, f"the process died (exit {proc.returncode}):\n{proc.stderr[-3000:]}"
    line = next(l for l in proc.stdout.splitlines() if l.startswith("RESULT "))
    r = json.loads(line[len("RESULT "):])
    assert r["errors"] == []
    assert r["calls"] == r["equal"] == nthreads * calls


def test_eight_threads_give_the_single_thread_results(example_x86):
    proc = subprocess.run([sys.executable, "-c", HAMMER, str(example_x86), "8", "200"], capture_output=True,
                          text=True, timeout=300, env={**os.environ, "TVM_USE_RUNTIME_LIB": "1"})
    _check(proc, 8, 200)


@emulated
def test_four_threads_on_the_emulated_pi(example_arm64, tmp_path):
    from sliver.tools.emulator import emulate

    script = tmp_path / "hammer.py"
    script.write_text(HAMMER)
    # 50 calls a thread: each is slow under qemu, and the 8 x 200 run above is the stress test
    proc = emulate.run_python([str(script), str(example_arm64), "4", "50"], timeout=900)
    _check(proc, 4, 50)


THREADS = textwrap.dedent(
    """
    import sys, threading
    import tvm
    from sliver.runtime.artifact import load

    plain = load(sys.argv[1])
    model = load(sys.argv[1], threads=int(sys.argv[2]))
    seen = []

    def call(m):
        m.run(*m.golden_inputs())
        seen.append(tvm.get_global_func("runtime.NumThreads")())

    call(plain)
    call(model)
    t = threading.Thread(target=call, args=(model,))
    t.start()
    t.join()
    call(plain)  # a model without the option gets TVM's default back
    print("THREADS", *seen)
    """
)


@pytest.mark.parametrize("n", [1, 3])
def test_the_thread_count_option_sets_tvms_worker_threads(example_x86, n):
    env = {k: v for k, v in os.environ.items() if k != "TVM_NUM_THREADS"}
    proc = subprocess.run([sys.executable, "-c", THREADS, str(example_x86), str(n)], capture_output=True, text=True,
                          timeout=120, env={**env, "TVM_USE_RUNTIME_LIB": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    default = proc.stdout.split("THREADS ")[1].split()[0]
    # in the loading thread and in another one; then the default again
    assert f"THREADS {default} {n} {n} {default}" in proc.stdout


def test_bad_thread_counts_are_input_errors(example_x86):
    import sliver
    from sliver.common.errors import InputError

    for bad in (0, -1, 1.5, "2", True):
        with pytest.raises(InputError, match="threads="):
            sliver.load(example_x86, threads=bad)


def test_cli_run_threads(example_x86):
    proc = subprocess.run([sys.executable, "-m", "sliver.runtime", "run", str(example_x86), "--verify", "--threads",
                           "1"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "verify: passed" in proc.stdout, proc.stderr[-2000:]


def test_a_threads_input_tensors_are_refilled_not_reallocated(example_x86):
    """Calls of one shape refill the thread's input tensors (no allocation per call); each
    call still sees its own input, and a result stays what it was after the next call."""
    import threading

    import numpy as np

    from sliver.runtime.artifact import load

    model = load(example_x86)
    spec = model.inputs[0]
    rng = np.random.default_rng(1)
    xs = [rng.standard_normal(spec.shape).astype(spec.numpy_dtype) for _ in range(3)]
    fresh = [load(example_x86).run(x)[0] for x in xs]  # each on a model of its own
    first = model.run(xs[0])[0]
    kept = model._inputs[threading.current_thread()]
    later = [model.run(x)[0] for x in xs[1:]]
    assert model._inputs[threading.current_thread()] is kept
    for got, want in zip([first, *later], fresh):
        np.testing.assert_array_equal(got, want)
    assert not np.array_equal(first, later[0])
