"""Latency benchmark: torch eager vs a sliver artifact vs onnxruntime, in one process.

    python -m sliver.benchmarks.latency                           # ResNet-18 + MobileNetV2, 224x224, 2 threads
    python -m sliver.benchmarks.latency --models resnet18 --threads 4 --repeat 50 --json out.json
    python -m sliver.benchmarks.latency --skip-ort --budget 60 --calls 5 --pause 0.3
    python -m sliver.benchmarks.latency --tune-budget 10m         # tune each model first (resumable), then time it

One artifact's latency and per-layer profile is ``sliver bench ARTIFACT``
(:mod:`sliver.tools.bench`).

For every model (batch 1, built by the test model zoo, ``tests/zoo.py``, with torchvision's
architecture) and every backend it

1. prepares the backend: sliver lowers the model for ``x86_64`` with the default
   pipeline (the compile time is reported on its own line), once with the default
   schedules only ("sliver untuned") and once with the schedules the x86_64 tuning
   database holds for it ("sliver tuned", see ``sliver tune``; the note states how
   many trials it holds; skipped when it holds none; ``--tune-budget`` tunes first);
   onnxruntime gets an fp32
   ONNX export (``torch.onnx.export``) and a session with ``ORT_ENABLE_ALL``;
2. runs it once on the same input as torch and reports the largest error relative to
   the largest torch output magnitude; above ``--tol`` it prints ``MISMATCH`` and the
   script exits with status 1;
3. times them all together, fairly (:func:`time_fair`): ``--repeat`` rounds, each
   giving every backend one turn in a new random order; every turn starts with a
   ``--pause`` sleep (0.2 s: after a call returns, onnxruntime's worker threads spin
   for ~45 ms and TVM's for ~75 ms, and on a 2-core machine they would steal a core
   from whichever backend runs next), then makes ``--calls`` calls.  The first call of
   a turn (threads just woken, caches cold) and the later ones ("warm") are reported
   separately: median and min of each, p90, the ratio to torch eager, and the share of
   the machine's fp32 peak (:func:`fp32_peak`: cores × FMA units × float32 lanes × 2
   × clock) that the model's FLOPs (:func:`model_flops`) in the median time reach.

The ``others`` column says how many CPUs other processes kept busy meanwhile
(:class:`OtherLoad`), and the JSON report records the load average: on a shared 2-core
machine a 2-thread run next to one busy process loses a core, and torch eager (OpenMP
barriers) suffers most.  The table warns when that happened.  The speed set (ten real
architectures at real sizes) runs through this harness: ``python -m
sliver.benchmarks.speed``.

Threads: ``torch.set_num_threads(N)``; TVM's pool reads ``TVM_NUM_THREADS`` when it
starts (lazily, at the first parallel kernel), so :func:`main` sets it before any
artifact runs, and the table shows the count the TVM runtime really uses;
onnxruntime gets ``intra_op_num_threads=N``.

onnxruntime is optional: without it the table says how to install it
(``pip install -e '.[bench]'``) and the other backends still run.
"""

from __future__ import annotations

import argparse
import functools
import contextlib
import gc
import inspect
import io
import json
import logging
import os
import platform
import re
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np

from sliver.common.numerics import output_error
from sliver.tools.shared import say
from sliver.tools.profile import set_tvm_threads, stats, tvm_threads

DEFAULT_MODELS = ("resnet18", "mobilenet_v2")
BACKENDS = ("torch", "sliver", "sliver-tuned", "onnxruntime")
LABELS = {"torch": "torch eager", "sliver": "sliver untuned", "sliver-tuned": "sliver tuned", "onnxruntime": "onnxruntime"}
INSTALL_HINT = "pip install -e '.[bench]'   (or: pip install onnxruntime onnx onnxscript)"
BUSY = 0.25  # other processes' CPU use (in CPUs) above which the table warns
PAUSE_S = 0.2  # before every turn: let the previous runtime's worker threads go to sleep (they spin ~45-75 ms)


@dataclass
class Result:
    """One (model, backend) row.  Times in milliseconds."""

    model: str
    backend: str
    status: str = "ok"  # ok | mismatch | failed | skipped
    note: str = ""
    warmup_runs: int = 0
    runs: int = 0
    budget_hit: bool = False
    median_ms: float | None = None
    min_ms: float | None = None
    p90_ms: float | None = None
    max_ms: float | None = None
    mean_ms: float | None = None
    first_run_ms: float | None = None  # the very first call after loading (the output check)
    first_median_ms: float | None = None  # the first call of each turn, right after the pause
    first_min_ms: float | None = None
    first_times_ms: list = field(default_factory=list)
    times_ms: list = field(default_factory=list)
    max_rel_err: float | None = None
    max_abs_err: float | None = None
    matches_torch: bool | None = None
    vs_torch: float | None = None  # median latency / torch eager median latency (>1: slower)
    speedup: float | None = None  # torch eager median / this median (>1: faster)
    vs_torch_min: float | None = None  # the same ratio on the fastest runs (steadier on a busy machine)
    prepare_s: float | None = None  # sliver: lower (trace + passes + TVM compile); ort: export + session
    load_s: float | None = None
    threads: int | None = None  # what the runtime really uses, where it can be read
    other_load: float | None = None  # CPUs other processes kept busy while this row was timed
    loadavg: str | None = None  # the 1/5/15-minute load average when the model's timing ended


# --------------------------------------------------------------------------- helpers


@dataclass
class Timing:
    """One function's calls in :func:`time_fair`.  Times in milliseconds."""

    warmup: int  # warm-up calls done
    first: list  # per turn: the first call after the pause (the runtime's threads asleep)
    warm: list  # per turn: the calls after the first, back to back
    cut: bool  # the budget cut the timing short

    @property
    def times(self) -> list:
        """The warm calls, or the first calls when every turn made just one."""
        return self.warm or self.first


def time_fair(fns: dict, warmup: int, repeat: int, budget_s: float, *, calls: int = 1,
              pause_s: float | None = None, seed: int = 0, orders: list | None = None,
              clock: Callable[[], int] = time.perf_counter_ns) -> dict:
    """Time every function of ``fns`` (``{key: fn()}``) fairly on a shared machine:
    ``repeat`` rounds, each giving every function one turn in a new random order; each
    turn sleeps ``pause_s`` first (default :data:`PAUSE_S`: the previous runtime's
    worker threads spin for tens of ms after a call returns and would steal cores from
    the next one), then makes ``calls`` calls, the first one timed as a "first call"
    and the others as "warm calls".  Warm-up: ``warmup`` untimed turns each, in a
    random order, with the same pauses.  A function whose timed calls have used
    ``budget_s`` drops out (always at least one turn).  ``orders`` (a list), if given,
    receives every round's order.  Returns ``{key: Timing}``."""
    import random

    pause = PAUSE_S if pause_s is None else pause_s
    rng = random.Random(seed)
    keys = list(fns)
    out = {k: Timing(0, [], [], False) for k in keys}
    spent = dict.fromkeys(keys, 0.0)
    for _ in range(warmup):
        for k in rng.sample(keys, len(keys)):
            time.sleep(pause)
            for _ in range(max(calls, 1)):
                fns[k]()
            out[k].warmup += 1
    for _ in range(max(repeat, 1)):
        order = rng.sample(keys, len(keys))
        if orders is not None:
            orders.append(tuple(order))
        for k in order:
            t = out[k]
            if t.first and spent[k] >= budget_s:
                t.cut = True
                continue
            time.sleep(pause)
            for i in range(max(calls, 1)):
                t0 = clock()
                fns[k]()
                dt = (clock() - t0) / 1e6
                (t.warm if i else t.first).append(dt)
                spent[k] += dt / 1e3
    return out


class OtherLoad:
    """How many CPUs other processes kept busy during a ``with`` block, on average:
    all CPUs' busy time (/proc/stat) minus this process's CPU time, over the wall
    time.  ``value`` stays None where /proc/stat does not exist.  The benchmark runs
    on shared machines, where 2 threads on 2 cores next to a busy process time badly."""

    value: float | None = None
    MIN_S = 0.5

    @staticmethod
    def _snap():
        try:
            with open("/proc/stat") as f:
                v = [int(t) for t in f.readline().split()[1:]]
            busy = (sum(v[:8]) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError, IndexError):
            busy = None
        return busy, time.process_time(), time.perf_counter()

    def __enter__(self):
        self._start = self._snap()
        return self

    def __exit__(self, *exc):
        # /proc/stat counts in clock ticks (10 ms): measure over MIN_S at least, idling
        # for the rest (then only the others run, which is what is being measured)
        short = self.MIN_S - (time.perf_counter() - self._start[2])
        if short > 0 and exc[0] is None:
            time.sleep(short)
        (b0, p0, w0), (b1, p1, w1) = self._start, self._snap()
        if b0 is not None and b1 is not None and w1 > w0:
            others = ((b1 - b0) - (p1 - p0)) / (w1 - w0)
            self.value = round(min(max(0.0, others), float(os.cpu_count() or 1)), 2)
        return False


def build_model(name: str, resolution: int, num_classes: int):
    """``(model, x_numpy)`` from the zoo; resolution/num_classes go to builders that take them."""
    from sliver.benchmarks import zoo as _zoo

    zoo = _zoo()

    builder = getattr(zoo, name, None) or zoo.MODELS.get(name)
    if builder is None or not callable(builder):
        raise SystemExit(f"bench: unknown model {name!r}; the zoo has {', '.join(sorted(zoo.MODELS))}")
    params = inspect.signature(builder).parameters
    kwargs = {}
    if "resolution" in params:
        kwargs["resolution"] = resolution
    if "num_classes" in params:
        kwargs["num_classes"] = num_classes
    model, inputs = builder(**kwargs)
    if len(inputs) != 1:
        raise SystemExit(f"bench: {name} takes {len(inputs)} inputs; the benchmark handles one")
    return model.eval(), np.ascontiguousarray(inputs[0].detach().cpu().numpy())


def _first(out):
    if isinstance(out, (tuple, list)):
        return out[0]
    return out


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _loadavg() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "?"


# --------------------------------------------------------------------------- FLOPs and the peak


def model_flops(model, x: np.ndarray) -> int:
    """FLOPs of one forward pass on ``x``: 2 per multiply-add of the convolutions and
    matrix products (``torch.utils.flop_counter``; elementwise work, norms and softmax
    are not counted)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(torch.from_numpy(x))
    return int(counter.get_total_flops())


#: fused multiply-add instructions a core starts per cycle at its full vector width, by
#: LLVM CPU name; CPUs not listed count as 2 (every x86 core since Haswell with AVX2,
#: Skylake-SP/Ice Lake/Sapphire Rapids servers with their two AVX-512 ports).  Zen 4
#: splits a 512-bit FMA in two 256-bit halves (1 per cycle at 16 lanes); Zen 5 servers
#: have two full 512-bit FMA pipes.  Cortex-A72: 2 × 128-bit NEON FMA.
FMA_UNITS = {"znver4": 1, "znver5": 2, "cortex-a72": 2}


def _clock_ghz() -> tuple[float | None, str]:
    """The core clock and where it came from: cpufreq's maximum, else /proc/cpuinfo's
    ``cpu MHz`` (virtual machines have no cpufreq; their ``cpu MHz`` is the nominal clock)."""
    try:
        with open("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq") as f:
            return int(f.read()) / 1e6, "cpufreq's cpuinfo_max_freq"
    except (OSError, ValueError):
        pass
    try:
        with open("/proc/cpuinfo") as f:
            m = re.search(r"^cpu MHz\s*:\s*([\d.]+)", f.read(), re.M)
        if m:
            return float(m.group(1)) / 1e3, "/proc/cpuinfo's cpu MHz"
    except OSError:
        pass
    return None, "no clock found"


def percent_of_peak(flops: int | None, median_ms: float | None, peak: "Peak") -> str:
    """``flops`` in ``median_ms`` as a share of ``peak`` ("-" when a number is missing)."""
    if not flops or not median_ms or not peak.gflops:
        return "-"
    return f"{100 * flops / (median_ms * 1e-3) / (peak.gflops * 1e9):.0f}%"


@dataclass
class Peak:
    gflops: float | None  # fp32 GFLOP/s of the cores in use
    how: str  # the formula with this machine's numbers


def fp32_peak(threads: int, target: str = "x86_64") -> Peak:
    """This machine's fp32 peak for ``threads`` cores: cores × FMA units × float32
    lanes × 2 (a multiply and an add) × clock, with the lanes and the CPU name from
    the target's CPU facts (``backends/tvm/targets.py``)."""
    from sliver.backends.tvm import targets

    t = targets.resolve(target)
    cores = min(threads, os.cpu_count() or 1)
    fma = FMA_UNITS.get(t.cpu, 2)
    ghz, where = _clock_ghz()
    if ghz is None:
        return Peak(None, f"unknown: {where}")
    g = cores * fma * t.lanes * 2 * ghz
    return Peak(g, f"{cores} cores × {fma} FMA/cycle × {t.lanes} fp32 lanes × 2 × {ghz:.2f} GHz "
                   f"({t.cpu}, clock from {where}) = {g:.0f} GFLOP/s")


_say = functools.partial(say, who="bench")


# --------------------------------------------------------------------------- backends


class Prepared:
    """A backend ready to run: ``fn(x) -> first output as numpy``."""

    def __init__(self, fn: Callable[[np.ndarray], np.ndarray], cleanup: Callable[[], None] | None = None):
        self.fn = fn
        self.cleanup = cleanup or (lambda: None)


def prepare_torch(model, threads: int, res: Result) -> Prepared:
    import torch

    torch.set_num_threads(threads)
    res.threads = torch.get_num_threads()

    def run(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return _first(model(torch.from_numpy(x))).numpy()

    return Prepared(run)


class NoRecords(Exception):
    """The tuned column has nothing to apply."""


def prepare_sliver(model, x: np.ndarray, res: Result, verbose: bool, tuned: bool = False,
                   tune_budget: str | None = None) -> Prepared:
    """The x86_64 artifact with default schedules only (``tuned=False``: the tuning
    database is ignored), or with the records the tuning database holds for this
    model (after tuning for ``tune_budget`` first, if given: resumable)."""
    import torch

    import sliver

    t0 = time.perf_counter()
    say = (lambda m: _say(f"  sliver: {m}")) if verbose or tune_budget else None
    if tuned:
        from sliver.api import optimize, trace
        from sliver.backends.tvm import tuning

        db = tuning.TuningDatabase("x86_64", create=False)
        if not tune_budget and not (db.exists() and len(db)):  # no records at all: skip without tracing
            raise NoRecords(f"the tuning database {db.dir} is empty: run `sliver tune MODEL "
                            "--time-budget 10m` or bench --tune-budget 10m")
        module = trace(model, (torch.from_numpy(x),))
        optimize(module)
        if tune_budget:
            tuning.tune(module, "x86_64", tuning.Budget.parse(time_budget=tune_budget),
                        progress=tuning.Progress(say=say))
        cov = tuning.coverage(module, "x86_64")
        if not cov["trials"]:
            raise NoRecords(f"no tuning records for this model in {cov['database']}: run `sliver tune MODEL "
                            "--time-budget 10m` or bench --tune-budget 10m")
    art = sliver.lower(model, (torch.from_numpy(x),), target="x86_64", progress=say, tune=None if tuned else False)
    res.prepare_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    compiled = art.load()
    res.load_s = time.perf_counter() - t0
    res.note = f"pipeline {art.manifest.pipeline}"
    if tuned:
        info = art.manifest.tuning
        res.note += (f"; tuning database: {cov['trials']} MetaSchedule trials over {cov['searched']} of the "
                     f"{cov['tasks']} kernels (+ each kernel's default schedule measured); {len(info.tuned)} of "
                     f"{info.kernels} kernels use database schedules (the fastest measured, default included)")

    def run(x: np.ndarray) -> np.ndarray:
        return compiled.run(x)[0]

    return Prepared(run)


def _export_onnx(model, x: np.ndarray, path: str, exporter: str, verbose: bool) -> str:
    """Export with the requested exporter; ``auto`` tries dynamo (needs onnxscript)
    then the TorchScript one.  Returns the exporter used."""
    import torch

    tries = {"auto": ["dynamo", "torchscript"], "dynamo": ["dynamo"], "torchscript": ["torchscript"]}[exporter]
    errors = []
    for kind in tries:
        if kind == "dynamo":
            try:
                import onnxscript  # noqa: F401
            except ImportError:
                errors.append("dynamo: onnxscript is not installed")
                continue
        buf = io.StringIO()
        onnx_logger = logging.getLogger("torch.onnx")
        old_level = onnx_logger.level
        onnx_logger.setLevel(logging.ERROR)  # "torchvision is not installed" and the like
        try:
            with warnings.catch_warnings(), contextlib.redirect_stdout(buf), torch.no_grad():
                warnings.simplefilter("ignore")
                if kind == "dynamo":
                    torch.onnx.export(model, (torch.from_numpy(x),), path, dynamo=True, verbose=False,
                                      input_names=["x"], output_names=["y"], external_data=False)
                else:
                    torch.onnx.export(model, (torch.from_numpy(x),), path, dynamo=False,
                                      input_names=["x"], output_names=["y"], opset_version=17)
        except Exception as e:  # fall through to the next exporter
            errors.append(f"{kind}: {type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}")
            if verbose and buf.getvalue().strip():
                _say(buf.getvalue().strip())
            continue
        finally:
            onnx_logger.setLevel(old_level)
        if verbose and buf.getvalue().strip():
            _say(buf.getvalue().strip())
        return kind
    raise RuntimeError("ONNX export failed (" + "; ".join(errors) + ")")


def prepare_ort(model, x: np.ndarray, threads: int, exporter: str, res: Result, verbose: bool) -> Prepared:
    import onnxruntime as ort

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="sliver-bench-") as tmp:
        path = os.path.join(tmp, "model.onnx")
        used = _export_onnx(model, x, path, exporter, verbose)
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    res.prepare_s = time.perf_counter() - t0
    res.threads = threads
    res.note = f"{used} exporter, onnxruntime {ort.__version__}"
    name = sess.get_inputs()[0].name

    def run(x: np.ndarray) -> np.ndarray:
        return sess.run(None, {name: x})[0]

    def cleanup():
        nonlocal sess
        sess = None

    return Prepared(run, cleanup)


def ort_missing() -> str | None:
    """None if onnxruntime and onnx import, else why not."""
    for mod in ("onnxruntime", "onnx"):
        try:
            __import__(mod)
        except ImportError as e:
            return f"{mod} is not installed ({e})"
    return None


# --------------------------------------------------------------------------- the run


def _fail(res: Result, p, e: Exception, when: str) -> None:
    res.status = "failed"
    res.note = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
    _say(f"{res.model}: {LABELS[res.backend]} FAILED {when}: {res.note}")
    if p is not None:
        p.cleanup()


def _record(res: Result, t: Timing) -> None:
    res.warmup_runs, res.times_ms, res.budget_hit = t.warmup, t.times, t.cut
    res.runs = len(t.times)
    for k, v in stats(t.times).items():
        setattr(res, k, v)
    res.first_times_ms = t.first
    first = stats(t.first)
    res.first_median_ms, res.first_min_ms = first["median_ms"], first["min_ms"]


def run_benchmark(args, build=None) -> dict:
    """Benchmark every model on every backend; returns the JSON-able report.  ``build(name)
    -> (model, inputs)`` builds the models (default: the test zoo at ``--resolution``)."""
    import torch

    set_tvm_threads(args.threads)  # before any artifact runs: TVM's pool starts lazily
    torch.set_num_threads(args.threads)
    backends = [b for b in BACKENDS
                if not (b == "sliver" and args.skip_sliver) and not (b == "onnxruntime" and args.skip_ort)
                and not (b == "sliver-tuned" and args.skip_tuned)]
    missing_ort = ort_missing() if "onnxruntime" in backends else None
    report = {
        "config": {
            "models": args.models, "resolution": args.resolution, "batch": 1, "num_classes": args.num_classes,
            "threads": args.threads, "warmup": args.warmup, "repeat": args.repeat, "budget_s": args.budget,
            "tol": args.tol, "onnx_exporter": args.onnx_exporter, "backends": backends,
            "calls": args.calls, "pause_s": args.pause, "seed": args.seed,
            "clock": "thread CPU time" if args.cpu_time else "wall time",
        },
        "machine": {
            "cpu": _cpu_name(), "cpu_count": os.cpu_count(), "python": platform.python_version(),
            "torch": torch.__version__, "loadavg_start": _loadavg(),
        },
        "results": [],
        "flops": {},
        "ok": True,
    }
    try:
        import tvm

        report["machine"]["tvm"] = tvm.__version__
    except Exception:
        pass
    if missing_ort is None and "onnxruntime" in backends:
        import onnxruntime

        report["machine"]["onnxruntime"] = onnxruntime.__version__

    for name in args.models:
        if build is None:
            _say(f"{name}: building the model ({args.resolution}x{args.resolution}, batch 1)")
            model, x = build_model(name, args.resolution, args.num_classes)
        else:
            _say(f"{name}: building the model (batch 1)")
            model, inputs = build(name)
            if len(inputs) != 1:
                raise SystemExit(f"bench: {name} takes {len(inputs)} inputs; the benchmark handles one")
            model, x = model.eval(), np.ascontiguousarray(inputs[0].detach().cpu().numpy())
        report["flops"][name] = model_flops(model, x)
        with torch.inference_mode():
            ref = _first(model(torch.from_numpy(x))).numpy().copy()

        # 1. prepare every backend (compiles and exports first, so the timed blocks run back to back)
        rows: dict[str, Result] = {}
        prepared: dict[str, Prepared] = {}
        for b in backends:
            res = rows[b] = Result(model=name, backend=b)
            if b == "onnxruntime" and missing_ort:
                res.status, res.note = "skipped", f"{missing_ort}: {INSTALL_HINT}"
                continue
            _say(f"{name}: preparing {LABELS[b]}")
            try:
                if b == "torch":
                    prepared[b] = prepare_torch(model, args.threads, res)
                elif b in ("sliver", "sliver-tuned"):
                    prepared[b] = prepare_sliver(model, x, res, args.verbose, tuned=b == "sliver-tuned",
                                                 tune_budget=args.tune_budget)
                else:
                    prepared[b] = prepare_ort(model, x, args.threads, args.onnx_exporter, res, args.verbose)
            except NoRecords as e:
                res.status, res.note = "skipped", str(e)
            except Exception as e:
                _fail(res, None, e, "while preparing")
                if args.verbose:
                    import traceback

                    traceback.print_exc()

        # 2. check every backend once against torch, on the same input
        for b in list(prepared):
            res = rows[b]
            try:
                t0 = time.perf_counter_ns()
                out = prepared[b].fn(x)
                res.first_run_ms = (time.perf_counter_ns() - t0) / 1e6
            except Exception as e:
                _fail(res, prepared.pop(b), e, "while running")
                continue
            res.max_abs_err, res.max_rel_err = output_error(out, ref)
            res.matches_torch = bool(res.max_rel_err <= args.tol)
            if not res.matches_torch:
                res.status = "mismatch"
                print(f"!!! MISMATCH: {name} on {LABELS[b]}: max relative error {res.max_rel_err:.3g} "
                      f"> tol {args.tol:g} (output shape {np.shape(out)}, torch {ref.shape})",
                      file=sys.stderr, flush=True)
            if b.startswith("sliver"):
                res.threads = tvm_threads()
                if res.threads is not None and res.threads != args.threads:
                    res.note += f"; TVM uses {res.threads} threads, not {args.threads} (pool started earlier?)"

        # 3. time them: rounds in a new random order, a pause before every turn
        timed = {b: rows[b] for b in prepared}
        _say(f"{name}: timing {', '.join(LABELS[b] for b in prepared)} ({args.repeat} rounds, "
             f"{args.calls} call(s) per turn, {args.pause:g} s pause before each)")
        try:
            with OtherLoad() as load:
                got = time_fair({b: (lambda p=p: p.fn(x)) for b, p in prepared.items()}, args.warmup,
                                args.repeat, args.budget, calls=args.calls, pause_s=args.pause, seed=args.seed,
                                clock=time.thread_time_ns if args.cpu_time else time.perf_counter_ns)
            for b, t in got.items():
                _record(timed[b], t)
                timed[b].other_load = load.value
                timed[b].loadavg = _loadavg()
        except Exception as e:
            for b, p in prepared.items():
                _fail(timed[b], None, e, "while timing")
        for p in prepared.values():
            p.cleanup()
        gc.collect()

        base = rows.get("torch")
        for b in backends:
            res = rows[b]
            if base is not None and base.median_ms and res.median_ms:
                res.vs_torch = res.median_ms / base.median_ms
                res.speedup = base.median_ms / res.median_ms
                res.vs_torch_min = res.min_ms / base.min_ms
            if res.status in ("mismatch", "failed"):
                report["ok"] = False
            report["results"].append(asdict(res))
        del model, prepared
        gc.collect()
    report["machine"]["loadavg_end"] = _loadavg()
    return report


# --------------------------------------------------------------------------- output


def _ms(v) -> str:
    if v is None:
        return "-"
    return f"{v:.1f}" if v >= 100 else f"{v:.2f}"


def _ratio(r: dict, key: str = "vs_torch") -> str:
    """Latency relative to torch eager, in words: "1.80x faster", "61.70x slower"."""
    if r["backend"] == "torch":
        return "1.00x (ref)" if r["median_ms"] else "-"
    v = r[key]
    if not v:
        return "-"
    return f"{1 / v:.2f}x faster" if v <= 1 else f"{v:.2f}x slower"


def format_table(report: dict) -> str:
    c, m = report["config"], report["machine"]
    lines = [
        f"sliver bench: batch 1, {c['resolution']}x{c['resolution']}, {c['threads']} thread(s), "
        f"warmup {c['warmup']}, repeat {c['repeat']}, budget {c['budget_s']:g} s per backend, tol {c['tol']:g}, "
        f"{c['calls']} call(s) per turn, rounds in random order, {c['pause_s']:g} s pause before every turn, "
        f"{c.get('clock', 'wall time')}",
        f"machine: {m['cpu']}, {m['cpu_count']} CPUs, load average {m['loadavg_start']} -> {m.get('loadavg_end', '?')}; "
        f"torch {m['torch']}, tvm {m.get('tvm', '-')}, onnxruntime {m.get('onnxruntime', '-')}",
        "",
    ]
    peak = fp32_peak(c["threads"])
    head = ("model", "backend", "thr", "calls", "median ms", "min ms", "first median", "first min", "p90 ms",
            "vs torch (median)", "vs torch (min)", "% peak", "max rel err", "check", "others")
    rows = []
    for r in report["results"]:
        if r["status"] in ("skipped", "failed") and r["median_ms"] is None:
            check = "SKIPPED" if r["status"] == "skipped" else "FAILED"
            rows.append((r["model"], LABELS[r["backend"]], *["-"] * 11, check, "-"))
            continue
        runs = f"{r['runs']}{'*' if r['budget_hit'] else ''}"
        if r["backend"] == "torch" and r["matches_torch"] is not False:
            err, check = "-", "reference"
        else:
            err = f"{r['max_rel_err']:.1e}" if r["max_rel_err"] is not None else "-"
            check = "ok" if r["matches_torch"] else "MISMATCH"
        rows.append((r["model"], LABELS[r["backend"]], str(r["threads"] if r["threads"] is not None else "?"), runs,
                     _ms(r["median_ms"]), _ms(r["min_ms"]), _ms(r["first_median_ms"]), _ms(r["first_min_ms"]),
                     _ms(r["p90_ms"]), _ratio(r), _ratio(r, "vs_torch_min"),
                     percent_of_peak(report.get("flops", {}).get(r["model"]), r["median_ms"], peak), err, check,
                     "?" if r["other_load"] is None else f"{r['other_load']:.2f}"))
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h) for i, h in enumerate(head)]
    left = {0, 1, 9, 10, 13}

    def fmt(row):
        return "  ".join(v.ljust(w) if i in left else v.rjust(w) for i, (v, w) in enumerate(zip(row, widths))).rstrip()

    lines.append(fmt(head))
    lines.append("  ".join("-" * w for w in widths))
    prev = None
    for row in rows:
        if prev is not None and row[0] != prev:
            lines.append("")
        lines.append(fmt(row))
        prev = row[0]
    if any(r["budget_hit"] for r in report["results"]):
        lines.append("* the time budget (--budget) cut the warm-up or the timed runs short")
    lines.append("median/min: the warm calls (2nd and later of a turn); first: the first call of each turn, "
                 "after the pause")
    lines.append(f"% peak: FLOPs (convolutions and matrix products) / median time / fp32 peak; peak = {peak.how}")
    lines.append("others: CPUs that other processes kept busy, on average, while the row was timed")
    loads = [r["other_load"] for r in report["results"] if r["other_load"] is not None]
    if loads and max(loads) >= BUSY:
        lines.append(f"!!! BUSY MACHINE: other processes used up to {max(loads):.2f} of {m['cpu_count']} CPUs while "
                     "timing; multi-threaded latencies are inflated and noisy (compare the min column, "
                     "or rerun on an idle machine)")

    notes = []
    for r in report["results"]:
        who = f"{r['model']} / {LABELS[r['backend']]}"
        if r["backend"].startswith("sliver") and r["prepare_s"] is not None:
            notes.append(f"{who}: compile (sliver.lower: trace + passes + TVM) {r['prepare_s']:.1f} s, "
                         f"load {r['load_s']:.2f} s, first run {_ms(r['first_run_ms'])} ms; {r['note']}")
        elif r["backend"] == "onnxruntime" and r["prepare_s"] is not None:
            notes.append(f"{who}: ONNX export + session {r['prepare_s']:.1f} s, first run {_ms(r['first_run_ms'])} ms; "
                         f"{r['note']}")
        elif r["status"] in ("skipped", "failed"):
            notes.append(f"{who}: {r['status'].upper()}: {r['note']}")
    if notes:
        lines += ["", *notes]
    bad = [r for r in report["results"] if r["status"] in ("mismatch", "failed")]
    if bad:
        lines.append("")
        for r in bad:
            what = (f"output differs from torch (max rel err {r['max_rel_err']:.3g} > {c['tol']:g})"
                    if r["status"] == "mismatch" else r["note"])
            lines.append(f"!!! {r['status'].upper()}: {r['model']} / {LABELS[r['backend']]}: {what}")
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        prog="python -m sliver.benchmarks.latency",
        description="Latency of torch eager, a sliver x86_64 artifact and onnxruntime (batch 1), "
                    "with every backend's output checked against torch.")
    p.add_argument("--models", default=",".join(DEFAULT_MODELS),
                   help="comma-separated zoo models (default: %(default)s)")
    p.add_argument("--resolution", type=int, default=224, help="input height and width (default: %(default)s)")
    p.add_argument("--num-classes", type=int, default=1000, help="classifier outputs (default: %(default)s)")
    p.add_argument("--threads", type=int, default=2, help="threads for every backend (default: %(default)s)")
    p.add_argument("--warmup", type=int, default=5, help="untimed runs per backend (default: %(default)s)")
    p.add_argument("--repeat", type=int, default=30, help="timed runs per backend (default: %(default)s)")
    p.add_argument("--budget", type=float, default=20.0,
                   help="seconds of timed runs per backend before stopping early; warm-up gets a quarter "
                        "of it (default: %(default)s)")
    p.add_argument("--tol", type=float, default=1e-3,
                   help="max error relative to the largest torch output before a MISMATCH (default: %(default)s)")
    p.add_argument("--onnx-exporter", choices=("auto", "dynamo", "torchscript"), default="auto",
                   help="torch.onnx exporter; auto = dynamo (needs onnxscript), else TorchScript (default: %(default)s)")
    p.add_argument("--interleave", action="store_true",
                   help="no effect (older records' commands use it): every run interleaves the backends, in "
                        "shuffled rounds with a pause before every turn")
    p.add_argument("--calls", type=int, default=3,
                   help="calls per backend turn: the first one right after the pause, the others warm "
                        "(default: %(default)s)")
    p.add_argument("--pause", type=float, default=PAUSE_S,
                   help="seconds of sleep before every backend's turn (default: %(default)s; below 0.15 the "
                        "previous runtime's spinning threads steal cores)")
    p.add_argument("--seed", type=int, default=0, help="seed of the rounds' random orders (default: %(default)s)")
    p.add_argument("--cpu-time", action="store_true",
                   help="with --threads 1: time each call by the calling thread's CPU time instead of wall time, "
                        "which leaves out the time other processes held the core (torch, onnxruntime and TVM "
                        "all compute in the calling thread at 1 thread); for busy machines")
    p.add_argument("--skip-sliver", action="store_true", help="do not lower and time the sliver artifact")
    p.add_argument("--skip-ort", action="store_true", help="do not time onnxruntime")
    p.add_argument("--skip-tuned", action="store_true",
                   help="no 'sliver tuned' column (it applies the x86_64 tuning database, see `sliver tune`)")
    p.add_argument("--tune-budget", metavar="T",
                   help="tune each model on this machine for T (e.g. 10m; resumable) before the tuned column")
    p.add_argument("--json", metavar="PATH", help="also write the results (with every run's time) as JSON")
    p.add_argument("-v", "--verbose", action="store_true", help="show compiler and exporter messages")
    args = p.parse_args(argv)
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    if not args.models:
        p.error("--models is empty")
    if args.cpu_time and args.threads != 1:
        p.error("--cpu-time needs --threads 1: other threads' work is not the calling thread's CPU time")
    if args.threads < 1 or args.repeat < 1 or args.warmup < 0 or args.budget <= 0 or args.resolution < 1 \
            or args.calls < 1 or args.pause < 0:
        p.error("--threads, --repeat and --calls must be >= 1, --warmup and --pause >= 0, --budget and "
                "--resolution > 0")
    return args


def main(argv=None, build=None):
    """Run the benchmark and print the table; 0 if every backend ran and matched torch, else 1.
    ``build(name) -> (model, inputs)`` replaces the test zoo (the speed set uses it); then
    the return value is ``(status, report)``."""
    args = parse_args(argv)
    set_tvm_threads(args.threads)  # as early as possible: before anything can start TVM's pool
    t0 = time.perf_counter()
    report = run_benchmark(args, build)
    report["wall_s"] = time.perf_counter() - t0
    print(format_table(report))
    print(f"\ntotal {report['wall_s']:.0f} s", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
        print(f"wrote {args.json}")
    code = 0 if report["ok"] else 1
    return code if build is None else (code, report)


if __name__ == "__main__":
    sys.exit(main())
