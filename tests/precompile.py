"""Expensive compiles with fixed inputs, done ahead of time on the second core.

The suite runs in one process and a TVM compile keeps one core busy (measured:
``sliver.lower`` of a zoo model uses ~1 core-second per wall second), so on a 2-core
machine one core idles through most of the suite.  Compiles whose inputs do not
depend on the test that checks them (a zoo model, a fuzz seed) are named by a job
key; conftest's ``pytest_collection_finish`` submits the keys the collected tests
need to one worker process, which compiles them in the order the tests reach
them while the tests before them run.  A test asks for its result with
:func:`get`, which waits for the worker when it is compiling that job, and
otherwise compiles in-process (a job still queued, or never submitted: a test run
on its own).  The worker runs the same code the test
would (``sliver.lower``, ``build_relax``), on models rebuilt from their seeds; the
test then loads the saved library and makes every check itself.

A job key is a tuple: ``("zoo", name, target)`` → saved artifact path;
``("fuzz", seed)`` → saved x86_64 artifact path of ``random_convnet(seed)``;
``("example", target)`` → saved artifact path of the bundled example;
``("relax", builder, schedules)`` → (exported library path, schedule report);
``("call", module, function, *args)`` → ``module.function(*args)``, for a builder
defined in a test module (the worker imports it: it is spawned after collection,
with the test folders on ``sys.path``).  Jobs save their files under :func:`out`.

Tests name the jobs they read with ``@pytest.mark.precompiled.with_args(keys)``
(``keys(params)`` → list of keys; ``params`` are the test's parameters), or by
using a fixture listed in :data:`FIXTURES`.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import os
import shutil
import tempfile
import time
from pathlib import Path

_pool: cf.ProcessPoolExecutor | None = None
_futures: dict[tuple, cf.Future] = {}
_dir: str | None = None


def _workdir() -> Path:
    global _dir
    if _dir is None:
        _dir = tempfile.mkdtemp(prefix="sliver-precompile-")
    return Path(_dir)


def _file(key: tuple, suffix: str) -> Path:
    return out("-".join(str(k) for k in key) + suffix)


def out(name: str) -> Path:
    """Where a job saves its file ``name`` (removed at the end of the session)."""
    return _workdir() / name


def _zoo(name, target):
    import sliver
    import zoo

    model, inputs = zoo.MODELS[name]()
    return sliver.lower(model, inputs, target=target).save(_file(("zoo", name, target), ".sliver"))


def _fuzz(seed):
    import sliver
    from zoo import random_convnet

    model, inputs = random_convnet(seed)
    return sliver.lower(model, inputs, target="x86_64").save(_file(("fuzz", seed), ".sliver"))


def _example(target):
    import sliver
    from sliver.tools.demo import _example as example

    model, inputs = example()[1]
    return sliver.lower(model, inputs, target=target).save(_file(("example", target), ".sliver"))


def _call(module, function, *args):
    import importlib

    return getattr(importlib.import_module(module), function)(*args)


def _relax(builder, schedules):
    """A zoo CNN traced, optimized with the default pipeline and built for x86_64
    by ``build_relax`` with or without sliver's schedules."""
    from sliver.api import DEFAULT_PIPELINE, optimize, trace
    from sliver.backends.tvm.build import build_relax
    from sliver.backends.tvm.lower import to_relax
    from sliver.backends.tvm.targets import resolve, tvm_target
    from sliver.passes.manager import parse_pipeline
    import zoo

    model, inputs = getattr(zoo, builder)()
    m = trace(model, inputs)
    optimize(m, parse_pipeline(DEFAULT_PIPELINE))
    built = build_relax(to_relax(m), tvm_target(resolve("x86_64")), schedules=schedules)
    ex, report = built.executable, built.schedules
    path = _file(("relax", builder, schedules), ".so")
    ex.export_library(str(path))
    return path, report


JOBS = {"zoo": _zoo, "fuzz": _fuzz, "example": _example, "relax": _relax, "call": _call}

#: session fixtures (tests/conftest.py) → the jobs they read
FIXTURES = {"example_x86": [("example", "x86_64")], "example_arm64": [("example", "arm64")]}


def run(key: tuple):
    return JOBS[key[0]](*key[1:])


def _timed(key: tuple):
    t0 = time.perf_counter()
    result = run(key)
    return result, time.perf_counter() - t0


#: what each job cost: key → (where it ran: "worker" or "here", seconds it took, seconds a test waited)
stats: dict[tuple, tuple[str, float, float]] = {}


def summary() -> str | None:
    """One line for the terminal summary: where the jobs ran and how long tests waited."""
    if not stats:
        return None
    worker = [s for s in stats.values() if s[0] == "worker"]
    here = [s for s in stats.values() if s[0] == "here"]
    return (f"precompile: {len(worker)} jobs on the worker ({sum(s[1] for s in worker):.0f} s), "
            f"{len(here)} in-process ({sum(s[1] for s in here):.0f} s); tests waited "
            f"{sum(s[2] for s in stats.values()):.0f} s for the worker")


def _init(workdir: str, tuning_dir: str):
    global _dir
    _dir = workdir
    # like the tests' private tuning database: empty, so lower() applies no records
    os.environ["SLIVER_TUNING_DIR"] = tuning_dir
    import torch

    torch.set_num_threads(1)  # as conftest.py: small tensors, a shared machine


def start(keys) -> None:
    """Submit the jobs ``keys`` (in order; repeated and already submitted ones once)."""
    global _pool
    keys = [k for k in dict.fromkeys(keys) if k not in _futures]
    if not keys:
        return
    if _pool is None:
        tuning = tempfile.mkdtemp(prefix="tuning-", dir=_workdir())
        _pool = cf.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"), initializer=_init,
                                       initargs=(str(_workdir()), tuning))
    for k in keys:
        _futures[k] = _pool.submit(_timed, k)


def get(key: tuple):
    """The job's result: from the worker (waiting for it if it is under way), or
    computed here (never submitted, or still queued: the test does not wait behind
    jobs the worker has not reached)."""
    fut = _futures.get(key)
    if fut is None or fut.cancel():
        result, seconds = _timed(key)
        stats[key] = ("here", seconds, 0.0)
        return result
    t0 = time.perf_counter()
    result, seconds = fut.result()
    stats[key] = ("worker", seconds, time.perf_counter() - t0)
    return result


def stop() -> None:
    global _pool, _dir
    if _pool is not None:
        _pool.shutdown(wait=True, cancel_futures=True)
        _pool = None
    _futures.clear()
    stats.clear()
    if _dir is not None:
        shutil.rmtree(_dir, ignore_errors=True)
        _dir = None
