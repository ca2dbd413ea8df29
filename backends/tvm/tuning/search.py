"""A tuning run: the default schedule of every task measured once, then
MetaSchedule's evolutionary search in rounds, every batch saved as it is measured."""

from __future__ import annotations

import dataclasses
import os
import shutil
import sys
import tempfile
import time
from typing import Callable

from sliver.backends.tvm.targets import Target, check_toolchain, resolve, tvm_target
from sliver.backends.tvm.tuning.budget import Budget, TuningError, format_duration
from sliver.backends.tvm.tuning.database import TuningDatabase, _mean_secs
from sliver.backends.tvm.tuning.measure import RPC, DeviceLost, _builder, _fastest, _runner, check_secret
from sliver.backends.tvm.tuning.progress import Progress
from sliver.backends.tvm.tuning.tasks import Task, allocate, extract_tasks

#: search trials measured per batch (one builder/runner round trip; a kill loses at most one)
TRIALS_PER_BATCH = int(os.environ.get("SLIVER_TUNE_BATCH", "8"))
#: the first round gives the model this many trials per task (then doubles)
FIRST_ROUND_PER_TASK = 8


@dataclasses.dataclass
class TuneReport:
    """What a tuning run did (also the return value of :func:`tune`)."""

    target: str
    database: str
    budget: str
    tasks: int
    trials_run: int = 0  # search trials measured by this run
    trials_total: int = 0  # search trials the database holds for the model's tasks
    defaults_measured: int = 0
    stopped: str = "done"  # done | time | device-lost
    seconds: float = 0.0
    default_ms: float | None = None  # estimated model latency with default schedules
    best_ms: float | None = None  # with the best records
    per_task: list = dataclasses.field(default_factory=list)

    def summary(self) -> str:
        est = ""
        if self.default_ms is not None and self.best_ms is not None:
            est = (f"; estimated kernel time {self.best_ms:.3f} ms (default schedules {self.default_ms:.3f} ms, "
                   f"{self.default_ms / self.best_ms:.2f}x)")
        return (f"{self.trials_run} trials this run, {self.trials_total} in the database for {self.tasks} tasks "
                f"({self.budget}) in {format_duration(self.seconds)}{est}")


class _OutOfTime(Exception):
    pass


# --------------------------------------------------------------------------- tuning


def _import_tensor_intrinsics() -> None:
    """``TuneContext`` imports ``tvm.s_tir.tensor_intrin``, whose hundreds of
    ``@T.prim_func`` each call ``inspect.stack()``: with torch loaded, that looks up
    the source of every frame through every module (minutes on 2 busy cores).
    Import it once with a stack that skips the source lookup; TVMScript reads only
    the frames (and no intrinsic is defined in a class, where it would read the line)."""
    if "tvm.s_tir.tensor_intrin" in sys.modules:
        return
    import inspect

    real = inspect.stack

    def frames_only(context=1):
        out, f = [], sys._getframe(1)
        while f is not None:
            out.append(inspect.FrameInfo(f, f.f_code.co_filename, f.f_lineno, f.f_code.co_name, None, None))
            f = f.f_back
        return out

    inspect.stack = frames_only
    try:
        import tvm.s_tir.tensor_intrin  # noqa: F401
    finally:
        inspect.stack = real


def check_measurable(target, rpc: RPC | None) -> Target:
    """Fail early when ``target`` cannot be measured: another CPU needs a device."""
    tgt = resolve(target)
    check_toolchain(tgt)
    if rpc is None and tgt.cross_compiler:
        raise TuningError(f"tuning for {tgt.name} needs its device to measure on: run `sliver device serve --tracker "
                          f"HOST:PORT --key pi` on it and pass --rpc HOST:PORT --key pi")
    return tgt


def tune(module, target, budget: Budget, *, rpc: RPC | None = None, root=None, progress: Progress | None = None,
         seed: int | None = None, on_trial: Callable[[int], None] | None = None, winograd: bool = True) -> TuneReport:
    """Tune ``module``'s fused PrimFuncs for ``target`` within ``budget`` (``module``: a
    sliver Module or the Relax module ``to_relax`` made of it); records go to
    the target's :class:`TuningDatabase` under ``root`` (``winograd=False``: the
    kernels of a ``compile_module(..., winograd=False)`` build).  ``on_trial(n)`` is called
    after each batch with the number of search trials this run has measured."""
    if not isinstance(budget, Budget):
        budget = Budget.of(budget)
    tgt = check_measurable(target, rpc)
    if rpc is not None:
        check_secret(rpc)  # a device with another secret: say so now, not as failed trials
    progress = progress or Progress()
    t_start = time.perf_counter()
    deadline = t_start + budget.seconds if budget.seconds is not None else None

    _import_tensor_intrinsics()
    db = TuningDatabase(tgt, root)
    tasks = extract_tasks(module, tgt, winograd=winograd)
    report = TuneReport(target=tgt.name, database=str(db.dir), budget=str(budget), tasks=len(tasks))
    if not tasks:
        progress.say("nothing to tune: the model has no kernels")
        return report
    where = f"device {rpc.key!r} via tracker {rpc.tracker}" if rpc else "this machine"
    progress.say(f"{len(tasks)} tasks for {tgt.name}, {budget}, measuring on {where}; database {db.dir}")

    target_obj = tvm_target(tgt)
    builder = _builder(tgt)
    aborted: list = []  # what stopped a search: TVM re-raises our exceptions as RuntimeErrors
    runner = _runner(tgt, rpc, progress.say, aborted)

    stats = db.stats()

    def done_of(t: Task) -> int:
        n = stats.get(t.hash, {}).get("records", 0)
        return max(0, n - (1 if db.default_of(t.hash) is not None else 0))

    def best_of(t: Task):
        return stats.get(t.hash, {}).get("best")

    def estimate():
        d = [db.default_of(t.hash) for t in tasks]
        if any(x is None or x.get("seconds") is None for x in d):
            return None, None
        default = sum(t.weight * x["seconds"] for t, x in zip(tasks, d)) * 1e3
        best = sum(t.weight * min(best_of(t) or x["seconds"], x["seconds"]) for t, x in zip(tasks, d)) * 1e3
        return default, best

    def status(extra: str = "", force=False):
        elapsed = time.perf_counter() - t_start
        done = report.trials_run
        if budget.trials is not None:
            total = sum(min(done_of(t), a) for t, a in zip(tasks, final_alloc))
            frac = total / budget.trials
            head = f"{total}/{budget.trials} trials"
            eta = (elapsed / done * (budget.trials - total)) if done else None
        else:
            left = max(0.0, deadline - time.perf_counter())
            frac = min(1.0, elapsed / budget.seconds)
            head = f"{done} trials"
            eta = left
        default, best = estimate()
        lat = f" | est. {best:.3f} ms (default {default:.3f} ms)" if best is not None else ""
        progress.status(f"{head} ({100 * frac:.0f}%){lat} | {extra}{format_duration(elapsed)} elapsed, ETA "
                        f"{format_duration(eta) if eta is not None else '?'}", force=force)

    final_alloc = allocate(tasks, budget.trials) if budget.trials is not None else [0] * len(tasks)

    # 1. the default schedule of every task, measured once: the baseline to beat
    import tvm
    from tvm.s_tir.meta_schedule.arg_info import ArgInfo
    from tvm.s_tir.meta_schedule.builder import BuilderInput
    from tvm.s_tir.meta_schedule.runner import RunnerInput

    from sliver.backends.tvm.schedules import default_schedule

    try:
        for t in tasks:
            if db.default_of(t.hash) is not None:
                continue
            if deadline is not None and time.perf_counter() > deadline:
                raise _OutOfTime()
            sch, _rule = default_schedule(t.mod["main"], target_obj, name=t.name)
            if sch is None:
                sch = tvm.s_tir.Schedule(t.mod)
            (br,) = builder.build([BuilderInput(sch.mod, target_obj)])
            args_info = ArgInfo.from_prim_func(t.mod["main"])
            run_secs = None
            if br.error_msg is None:
                (fut,) = runner.run([RunnerInput(br.artifact_path, "cpu", args_info)])
                rr = fut.result()
                shutil.rmtree(os.path.dirname(br.artifact_path), ignore_errors=True)
                run_secs = _fastest(rr.run_secs) if rr.error_msg is None else None
            secs = _mean_secs(run_secs)
            db.commit(t.mod, sch.trace, run_secs, args_info, target_obj)  # failed: a record without times
            db.set_default(t.hash, t.name, secs)
            stats = db.stats()
            report.defaults_measured += 1
            status(f"measured default schedule of {t.name} ({'failed' if secs is None else f'{secs * 1e3:.3f} ms'}) | ")

        # 2. search, in rounds: every task gets some trials before any gets many
        cost_model = _cost_model(progress)
        exhausted: set[str] = set()
        round_total = FIRST_ROUND_PER_TASK * len(tasks)
        while True:
            cap = round_total if budget.trials is None else min(round_total, budget.trials)
            goal = allocate(tasks, cap)
            if budget.trials is not None:
                goal = [min(g, a) for g, a in zip(goal, final_alloc)]
            todo = [(t, g - done_of(t)) for t, g in zip(tasks, goal) if g - done_of(t) > 0 and t.hash not in exhausted]
            for t, n in todo:
                if deadline is not None and time.perf_counter() > deadline:
                    raise _OutOfTime()
                before = done_of(t)
                _search(t, n, target_obj, builder, runner, db, cost_model, seed, report, deadline, aborted,
                        lambda: (stats.update(db.stats()), status(f"{t.name} | "),
                                 on_trial(report.trials_run) if on_trial else None))
                stats = db.stats()
                if done_of(t) == before:
                    exhausted.add(t.hash)  # the search space has nothing new
            if budget.trials is not None and cap >= budget.trials:
                break  # the last round topped every task up to its share
            if len(exhausted) == len(tasks):
                break
            round_total *= 2
    except _OutOfTime:
        report.stopped = "time"
    except DeviceLost as e:
        report.stopped = "device-lost"
        stats = db.stats()
        report.trials_total = sum(done_of(t) for t in tasks)
        progress.close()
        raise DeviceLost(f"{e}; {report.trials_run} trials of this run are saved in {db.dir}: start the device "
                         "again and rerun the same command to resume") from None
    finally:
        progress.close()

    stats = db.stats()
    report.trials_total = sum(done_of(t) for t in tasks)
    report.seconds = time.perf_counter() - t_start
    report.default_ms, report.best_ms = estimate()
    for t in tasks:
        d = db.default_of(t.hash) or {}
        report.per_task.append({"name": t.name, "calls": t.weight, "flops": t.flops, "trials": done_of(t),
                                "default_ms": None if d.get("seconds") is None else d["seconds"] * 1e3,
                                "best_ms": None if best_of(t) is None else best_of(t) * 1e3})
    progress.say(("time budget used up: " if report.stopped == "time" else "done: ") + report.summary())
    return report


def _cost_model(progress: Progress):
    from tvm.s_tir import meta_schedule as ms

    try:
        import xgboost  # noqa: F401
    except ImportError:
        progress.say("xgboost is not installed (pip install -e '.[tune]'): searching without a cost model")
        return ms.cost_model.RandomModel()
    return ms.cost_model.XGBModel(num_warmup_samples=16, verbose_eval=0)


def _population() -> int:
    """Candidates per generation of the evolutionary search (TVM's default 512 costs
    minutes per round on 2 cores; ``SLIVER_TUNE_POPULATION`` changes it, tests use less)."""
    return max(8, int(os.environ.get("SLIVER_TUNE_POPULATION", "128")))


def _search(task: Task, trials: int, target_obj, builder, runner, db: TuningDatabase, cost_model, seed,
            report: TuneReport, deadline, aborted: list, after_batch):
    """``trials`` MetaSchedule trials of one task; each measured batch goes to the
    database at once (a kill loses at most one batch)."""
    from tvm.ir.utils import derived_object
    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.meta_schedule.measure_callback import PyMeasureCallback

    @derived_object
    class Record(PyMeasureCallback):
        def apply(self, task_scheduler, task_id, measure_candidates, builder_results, runner_results):
            for cand, br, rr in zip(measure_candidates, builder_results, runner_results):
                ok = br.error_msg is None and rr.error_msg is None
                db.commit(task.mod, cand.sch.trace, _fastest(rr.run_secs) if ok else None, cand.args_info,
                          target_obj)
                report.trials_run += 1
            after_batch()
            if deadline is not None and time.perf_counter() > deadline:
                aborted.append(_OutOfTime())
                raise aborted[-1]

    ctx = ms.TuneContext(
        mod=task.mod, target=target_obj, space_generator="post-order-apply",
        search_strategy=ms.search_strategy.EvolutionarySearch(population_size=_population(), init_min_unmeasured=16,
                                                              genetic_num_iters=2),
        task_name=task.name, num_threads=max(1, (os.cpu_count() or 1)), rand_state=seed if seed is not None else -1,
    ).clone()
    with tempfile.TemporaryDirectory(prefix="sliver-tune-logs-") as work_dir:
        try:
            ms.tune_tasks(tasks=[ctx], task_weights=[1.0], work_dir=work_dir, max_trials_global=trials,
                          num_trials_per_iter=min(TRIALS_PER_BATCH, trials), builder=builder, runner=runner,
                          database=db.db, cost_model=cost_model,
                          measure_callbacks=[Record(), ms.measure_callback.RemoveBuildArtifact(),
                                             ms.measure_callback.UpdateCostModel()],
                          task_scheduler="round-robin")
        except Exception:  # noqa: BLE001 - TVM re-raises ours as RuntimeError: raise the original
            if aborted:
                raise aborted.pop() from None
            raise


def coverage(module, target, root=None) -> dict:
    """What the database holds for ``module``: ``{"tasks", "searched" (tasks with
    search trials), "trials" (search trials), "database"}``."""
    db = TuningDatabase(target, root, create=False)
    tasks = extract_tasks(module, target)
    stats = db.stats() if db.exists() else {}
    counts = [max(0, stats.get(t.hash, {}).get("records", 0) - (db.default_of(t.hash) is not None))
              for t in tasks] if stats else [0] * len(tasks)
    return {"tasks": len(tasks), "searched": sum(c > 0 for c in counts), "trials": sum(counts), "database": str(db.dir)}
