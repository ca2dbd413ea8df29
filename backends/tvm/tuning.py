"""Autotuning with MetaSchedule, and the tuning database it fills.

    db = TuningDatabase("x86_64")                       # ~/.cache/sliver/tuning/tvm-<ver>/<target key>/
    tune(module, "x86_64", Budget(trials=200))           # or Budget(seconds=600), rpc=RPC("host:9190", "pi")
    compile_module(module, "x86_64", tuning=db)          # tuned records replace default schedules

What is tuned: the very PrimFuncs sliver's default pipeline compiles (the output of
:func:`sliver.backends.tvm.schedules.front_passes`: channels-last convolutions with
their fused epilogues), one task per distinct function.  Before any search, each
task's *default schedule* is measured once and stored as a record of its own, so a
tuned record replaces the default only where it measured faster, and a function
without records keeps its default schedule (never TVM's naive loops).

The database: TVM's own JSON database matches records by workload only, whatever
target they were measured on (apache/tvm#15549).  sliver keeps one database per
(TVM version, target) in its own folder, ``<root>/tvm-<version>/<arch>-<cpu>-<hash of
the full target dict>/``, so an x86 record can never be applied to arm64, nor a
record from another TVM.  ``root`` is ``$SLIVER_TUNING_DIR`` or
``~/.cache/sliver/tuning``.  Records are appended one line at a time as they are
measured: killing a tuning run loses at most the batch in flight, and running the
same command again continues where it stopped (``--trials N`` counts the records the
database already holds for the model's workloads).  Models that share a workload
share its records.  ``export``/``import_file`` move a target's database between
machines as one file.

Budgets: ``--trials N`` search trials over the model's tasks, split in proportion to
each task's FLOPs times its number of calls, handed out in rounds (every task gets
some before any gets many); or ``--time-budget 10m``, the same rounds until the time
is up.  Measuring: on this machine (a runner process), or on a device over TVM's RPC
tracker (``RPC("host:port", key)``): the builder cross-links a ``.so`` for the
device; a device that stops answering is retried with back-off, a candidate that
keeps failing on a live device is skipped (recorded as failed), and a device that
stays away ends the run with everything measured so far saved, to resume later.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
import shutil
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Callable

from sliver.common.errors import SliverError
from sliver.common.files import atomic_write
from sliver.backends.tvm.targets import Target, check_toolchain, resolve, tvm_target

ENV_DIR = "SLIVER_TUNING_DIR"
EXPORT_FORMAT = "sliver-tuning"
EXPORT_VERSION = 1
WORKLOADS = "database_workload.json"
RECORDS = "database_tuning_record.json"
META = "sliver.json"
#: search trials measured per batch (one builder/runner round trip; a kill loses at most one)
TRIALS_PER_BATCH = int(os.environ.get("SLIVER_TUNE_BATCH", "8"))
#: the first round gives the model this many trials per task (then doubles)
FIRST_ROUND_PER_TASK = 8
FAILED = 1e10  # seconds: a record that failed to build or run


class TuningError(SliverError):
    """A bad budget, a broken tuning database or a device that went away."""


# --------------------------------------------------------------------------- budgets


_DURATION = re.compile(r"^(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m(?:in)?)?(?:(\d+(?:\.\d+)?)s?)?$")


def parse_duration(text) -> float:
    """Seconds in ``"90s"``, ``"10m"``, ``"1h30m"``, ``"1.5h"`` or a plain number of seconds."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        seconds = float(text)
    else:
        m = _DURATION.match(str(text).strip().lower().replace(" ", ""))
        if not m or not any(m.groups()):
            raise TuningError(f"time budget {text!r} is not a duration: write it like 90s, 10m, 1h30m or 1.5h")
        h, mi, s = (float(g) if g else 0.0 for g in m.groups())
        seconds = 3600 * h + 60 * mi + s
    if not seconds > 0 or math.isinf(seconds):
        raise TuningError(f"time budget {text!r} must be a positive duration, e.g. 10m")
    return seconds


def format_duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


@dataclasses.dataclass(frozen=True)
class Budget:
    """How much to tune: ``trials`` search trials in total over the model's tasks
    (records already in the database count), or ``seconds`` of wall time."""

    trials: int | None = None
    seconds: float | None = None

    def __post_init__(self):
        if (self.trials is None) == (self.seconds is None):
            raise TuningError("give a tuning budget as a number of trials (--trials 200) or a time "
                              "(--time-budget 10m), not both and not neither")
        if self.trials is not None and (isinstance(self.trials, bool) or not isinstance(self.trials, int)
                                        or self.trials < 1):
            raise TuningError(f"--trials {self.trials!r}: the number of trials must be a whole number >= 1")
        if self.seconds is not None and not (self.seconds > 0 and not math.isinf(self.seconds)):
            raise TuningError(f"time budget {self.seconds!r} s must be positive, e.g. --time-budget 10m")

    @classmethod
    def parse(cls, trials=None, time_budget=None) -> "Budget":
        """From CLI-style values: ``trials`` an int (or its text), ``time_budget`` a duration."""
        if trials is not None and not isinstance(trials, int):
            try:
                trials = int(str(trials).strip())
            except ValueError:
                raise TuningError(f"--trials {trials!r}: the number of trials must be a whole number >= 1") from None
        seconds = parse_duration(time_budget) if time_budget is not None else None
        return cls(trials=trials, seconds=seconds)

    @classmethod
    def of(cls, tune) -> "Budget":
        """``lower(tune=…)``'s value: an int (trials), a duration string, a Budget."""
        if isinstance(tune, Budget):
            return tune
        if isinstance(tune, bool):
            raise TuningError("tune=True names no budget: pass tune=200 (trials) or tune='10m' (time)")
        if isinstance(tune, int):
            return cls(trials=tune)
        if isinstance(tune, str):
            return cls(seconds=parse_duration(tune))
        raise TuningError(f"tune={tune!r}: pass a number of trials (tune=200), a time (tune='10m') or a Budget")

    def __str__(self) -> str:
        return f"{self.trials} trials" if self.trials is not None else f"{format_duration(self.seconds)} of tuning"


@dataclasses.dataclass(frozen=True)
class RPC:
    """Measure on a device registered with a TVM RPC tracker under ``key``."""

    tracker: str  # "host:port"
    key: str
    session_timeout_s: int = 120
    retries: int = 3
    backoff_s: float = 2.0

    def __post_init__(self):
        host, _, port = str(self.tracker).rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise TuningError(f"--rpc {self.tracker!r}: give the tracker as HOST:PORT, e.g. 127.0.0.1:9190")
        if not self.key:
            raise TuningError("--rpc needs --key: the key the device registered with (sliver device serve --key pi)")

    @property
    def host(self) -> str:
        return self.tracker.rpartition(":")[0]

    @property
    def port(self) -> int:
        return int(self.tracker.rpartition(":")[2])


# --------------------------------------------------------------------------- the database


def cache_root() -> Path:
    """Where tuning databases live: ``$SLIVER_TUNING_DIR`` or ``~/.cache/sliver/tuning``."""
    env = os.environ.get(ENV_DIR)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "sliver" / "tuning"


def _canonical(spec: dict) -> str:
    return json.dumps(spec, sort_keys=True, separators=(",", ":"), default=str)


def target_key(target) -> str:
    """The folder name of a target's database: ``arch-cpu-hash`` where the hash covers
    the whole target dict (CPU, features, core count)."""
    target = resolve(target)
    cpu = re.sub(r"[^A-Za-z0-9_.+-]", "_", str(target.spec.get("mcpu", "generic")))
    digest = hashlib.sha256(_canonical(target.spec).encode()).hexdigest()[:12]
    return f"{target.arch}-{cpu}-{digest}"


def tvm_version() -> str:
    import tvm

    return tvm.__version__


def _normalize(func):
    """A PrimFunc as the IRModule MetaSchedule keys workloads by."""
    from tvm.s_tir.meta_schedule.tune_context import _normalize_mod

    return _normalize_mod(func)


def workload_hash(mod) -> str:
    import tvm_ffi

    return f"{tvm_ffi.structural_hash(mod) & 0xFFFFFFFFFFFFFFFF:016x}"


def _stat(path: Path):
    try:
        return path.stat()
    except FileNotFoundError:
        return None


def _repair_json_lines(path: Path) -> int:
    """Drop lines that do not parse (a run killed while appending leaves a torn last
    line, which TVM's loader would reject); returns how many were dropped."""
    if not path.is_file():
        return 0
    lines = path.read_text().splitlines()
    good = []
    for line in lines:
        if not line.strip():
            continue
        try:
            json.loads(line)
        except json.JSONDecodeError:
            continue
        good.append(line)
    dropped = len([ln for ln in lines if ln.strip()]) - len(good)
    if dropped:
        atomic_write(path, lambda f: f.write(("\n".join(good) + "\n" if good else "").encode()))
    return dropped


class TuningDatabase:
    """The tuning records of one target under one TVM version (see the module doc)."""

    def __init__(self, target, root=None, *, create: bool = True):
        self.target = resolve(target)
        self.root = Path(root) if root is not None else cache_root()
        self.tvm_version = tvm_version()
        self.key = target_key(self.target)
        self.dir = self.root / f"tvm-{self.tvm_version}" / self.key
        if create:
            self.dir.mkdir(parents=True, exist_ok=True)
        self._db = None
        self._meta = None

    # the files ---------------------------------------------------------------
    def exists(self) -> bool:
        return (self.dir / RECORDS).is_file()

    @property
    def db(self):
        """TVM's JSON database over this folder (opened on first use)."""
        if self._db is None:
            from tvm.s_tir import meta_schedule as ms

            self.dir.mkdir(parents=True, exist_ok=True)
            for name in (WORKLOADS, RECORDS):
                _repair_json_lines(self.dir / name)
            try:
                self._db = ms.database.JSONDatabase(str(self.dir / WORKLOADS), str(self.dir / RECORDS),
                                                    allow_missing=True, module_equality="structural")
            except Exception as e:
                raise TuningError(f"the tuning database in {self.dir} cannot be read ({type(e).__name__}: "
                                  f"{str(e).strip().splitlines()[-1] if str(e).strip() else ''}); move the "
                                  "folder away to start afresh") from e
            self._write_meta()
        return self._db

    @property
    def meta(self) -> dict:
        if self._meta is None:
            path = self.dir / META
            meta = {}
            if path.is_file():
                try:
                    meta = json.loads(path.read_text())
                except json.JSONDecodeError:
                    meta = {}
            meta.setdefault("format", EXPORT_FORMAT)
            meta["tvm_version"] = self.tvm_version
            meta["target"] = {"name": self.target.name, "arch": self.target.arch, "tvm": self.target.spec}
            meta.setdefault("defaults", {})
            self._meta = meta
        return self._meta

    def _write_meta(self):
        data = json.dumps(self.meta, indent=1, sort_keys=True).encode()
        atomic_write(self.dir / META, lambda f: f.write(data))

    # records -----------------------------------------------------------------
    def commit(self, workload_mod, trace, run_secs, args_info, target_obj):
        """Append one record (``run_secs`` None: failed)."""
        from tvm.s_tir import meta_schedule as ms

        wl = self.db.commit_workload(workload_mod)
        self.db.commit_tuning_record(ms.database.TuningRecord(trace, wl, run_secs, target_obj, args_info))

    def set_default(self, task_hash: str, name: str, seconds: float | None):
        self.meta["defaults"][task_hash] = {"name": name, "seconds": seconds}
        self._write_meta()

    def default_of(self, task_hash: str):
        return self.meta["defaults"].get(task_hash)

    def stats(self) -> dict:
        """``{workload hash: {"records": n, "best": seconds or None}}`` over all records."""
        out: dict[str, dict] = {}
        hashes = []  # (workload object, hash): a handful of workloads, hundreds of records
        for rec in self.db.get_all_tuning_records():
            wl = rec.workload
            h = next((hh for w, hh in hashes if w.same_as(wl)), None)
            if h is None:
                h = workload_hash(wl.mod)
                hashes.append((wl, h))
            s = out.setdefault(h, {"records": 0, "best": None})
            s["records"] += 1
            secs = _mean_secs(rec.run_secs)
            if secs is not None and (s["best"] is None or secs < s["best"]):
                s["best"] = secs
        return out

    def __len__(self) -> int:
        return len(self.db)

    def _files_stamp(self) -> list:
        return [[st.st_size, st.st_mtime_ns] if (st := _stat(self.dir / name)) else None
                for name in (WORKLOADS, RECORDS)]

    def workload_hashes(self) -> set[str]:
        """:func:`workload_hash` of every workload a record of this database tunes.

        Opening TVM's JSON database parses every workload in it (27 s for a
        database of two tuned CNNs), so :meth:`apply` asks this set first and
        opens the database only for a module that has a tuned function.  The set
        is kept in the meta file, stamped with the size and modification time of
        the records and workloads files, and rebuilt (opening the database once)
        when they change."""
        stamp = self._files_stamp()
        index = self.meta.get("workload_index") or {}
        if index.get("stamp") == stamp:
            return set(index["hashes"])
        hashes = set(self.stats())  # opens the database (and may repair torn lines: stamp it after)
        stamp = self._files_stamp()
        self.meta["workload_index"] = {"stamp": stamp, "hashes": sorted(hashes)}
        self._write_meta()
        return hashes

    # applying ----------------------------------------------------------------
    def apply(self, mod, report: dict | None = None):
        """Replace every unscheduled PrimFunc of ``mod`` this database has a record for
        by its best record's schedule (marked scheduled, so the default schedules
        leave it alone)."""
        from sliver.backends.tvm.schedules import SCHEDULED_ATTR, unscheduled_primfuncs

        if not self.exists():
            return mod
        known = self.workload_hashes()
        candidates = [(gv, func, wl) for gv, func in unscheduled_primfuncs(mod)
                      if workload_hash(wl := _normalize(func)) in known]
        target = tvm_target(self.target) if candidates else None
        updates = {}
        for gv, func, wl in candidates:
            if not self.db.has_workload(wl):
                continue
            sch = self.db.query_schedule(wl, target, gv.name_hint)
            if sch is None:
                continue
            new = sch.mod["main"]
            if func.attrs is None or "global_symbol" not in func.attrs:
                new = new.without_attr("global_symbol")  # the workload's name ("main") is not the function's
            for k, v in (func.attrs.items() if func.attrs is not None else ()):
                new = new.with_attr(k, v)
            updates[gv] = new.with_attr(SCHEDULED_ATTR, True)
            if report is not None:
                report[gv.name_hint] = "tuned"
        for gv, func in updates.items():
            mod[gv] = func
        return mod

    def apply_pass(self, report: dict | None = None):
        """:meth:`apply` as a TVM module pass (for the default pipeline)."""
        import tvm

        @tvm.transform.module_pass(opt_level=0, name="SliverApplyTuningRecords")
        def _pass(mod, _ctx):
            return self.apply(mod, report)

        return _pass

    # moving between machines -------------------------------------------------
    def export(self, path) -> Path:
        """Write this target's database as one file (a zip of the JSON lines files and
        the metadata: TVM version, target)."""
        if not self.exists() or len(self) == 0:
            raise TuningError(f"no tuning records for target {self.target.name} ({self.key}) in {self.root}: "
                              "tune first (sliver tune MODEL --target ...)")
        meta = dict(self.meta, format=EXPORT_FORMAT, format_version=EXPORT_VERSION, key=self.key)

        def write(f):
            with zipfile.ZipFile(f, "w", zipfile.ZIP_DEFLATED) as z:
                z.writestr(META, json.dumps(meta, indent=1, sort_keys=True))
                for name in (WORKLOADS, RECORDS):
                    z.write(self.dir / name, name)

        return atomic_write(path, write)


def _mean_secs(run_secs) -> float | None:
    if run_secs is None:
        return None
    vals = [float(v) for v in run_secs]
    if not vals:
        return None
    m = sum(vals) / len(vals)
    return None if m >= FAILED else m


def import_file(path, root=None) -> tuple[TuningDatabase, int]:
    """Merge an exported database into the local one of the same target; returns
    (that database, number of new records).  Refuses files from another TVM version
    (their schedules would not replay) or that are not sliver tuning exports."""
    from tvm.s_tir import meta_schedule as ms

    path = Path(path)
    if not path.is_file():
        raise TuningError(f"--import {path}: no such file")
    try:
        with zipfile.ZipFile(path) as z:
            meta = json.loads(z.read(META))
            files = {name: z.read(name) for name in (WORKLOADS, RECORDS)}
    except (zipfile.BadZipFile, KeyError, json.JSONDecodeError) as e:
        raise TuningError(f"{path} is not a sliver tuning export (sliver tune --export): {e}") from None
    if meta.get("format") != EXPORT_FORMAT:
        raise TuningError(f"{path} is not a sliver tuning export (format {meta.get('format')!r})")
    if meta.get("tvm_version") != tvm_version():
        raise TuningError(f"{path} holds records from TVM {meta.get('tvm_version')}; this is TVM {tvm_version()}: "
                          "schedules do not carry across TVM versions, so tune again")
    spec = meta.get("target", {}).get("tvm")
    if not isinstance(spec, dict):
        raise TuningError(f"{path} names no target")
    local = TuningDatabase(spec, root)
    with tempfile.TemporaryDirectory(prefix="sliver-import-") as tmp:
        for name, data in files.items():
            Path(tmp, name).write_bytes(data)
        _repair_json_lines(Path(tmp, WORKLOADS))
        _repair_json_lines(Path(tmp, RECORDS))
        theirs = ms.database.JSONDatabase(str(Path(tmp, WORKLOADS)), str(Path(tmp, RECORDS)),
                                          allow_missing=False, module_equality="structural")
        ours = local.db
        seen = {_record_key(r) for r in ours.get_all_tuning_records()}
        added = 0
        for rec in theirs.get_all_tuning_records():
            k = _record_key(rec)
            if k in seen:
                continue
            seen.add(k)
            wl = ours.commit_workload(rec.workload.mod)
            ours.commit_tuning_record(ms.database.TuningRecord(rec.trace, wl, rec.run_secs, rec.target, rec.args_info))
            added += 1
    for h, d in meta.get("defaults", {}).items():
        local.meta["defaults"].setdefault(h, d)
    local._write_meta()
    return local, added


def _record_key(rec) -> str:
    """Identifies a record across databases: its workload and its JSON (trace, times, target)."""
    return workload_hash(rec.workload.mod) + str(rec.as_json())


# --------------------------------------------------------------------------- tasks


@dataclasses.dataclass
class Task:
    """One distinct fused PrimFunc of the model: what MetaSchedule tunes."""

    name: str
    mod: object  # normalized IRModule {"main": PrimFunc}
    weight: int  # calls in the model
    flops: float
    hash: str

    @property
    def cost(self) -> float:
        return self.weight * max(self.flops, 1.0)


def fused_module(module, target, *, winograd: bool = True):
    """sliver's IR → Relax → the front passes of the default pipeline: the module
    whose PrimFuncs the default schedules (and the tuner) see (``winograd``: as
    :func:`~sliver.backends.tvm.build.compile_module`'s)."""
    import tvm

    from sliver.backends.tvm.lower import LowerContext, to_relax
    from sliver.backends.tvm.schedules import front_passes

    mod = to_relax(module, LowerContext(target=resolve(target)))  # as compile_module lowers it
    with tvm_target(resolve(target)), tvm.transform.PassContext(opt_level=3):
        return tvm.transform.Sequential(front_passes(winograd=winograd))(mod)


def _call_counts(mod) -> dict[str, int]:
    from tvm import relax

    counts: dict[str, int] = {}

    def visit(expr):
        if isinstance(expr, relax.Call):
            for arg in expr.args:
                if isinstance(arg, relax.GlobalVar):
                    counts[arg.name_hint] = counts.get(arg.name_hint, 0) + 1

    for gv, func in mod.functions_items():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(func, visit)
    return counts


def extract_tasks(module, target, *, winograd: bool = True) -> list[Task]:
    """The distinct unscheduled PrimFuncs of ``module`` (a sliver IR Module) after the
    default pipeline's front passes, heaviest first."""
    import tvm_ffi
    from tvm.s_tir.analysis import estimate_tir_flops

    from sliver.backends.tvm.schedules import unscheduled_primfuncs

    mod = fused_module(module, target, winograd=winograd)
    calls = _call_counts(mod)
    tasks: list[Task] = []
    for gv, func in unscheduled_primfuncs(mod):
        wl = _normalize(func)
        h = workload_hash(wl)
        same = next((t for t in tasks if t.hash == h and tvm_ffi.structural_equal(t.mod, wl)), None)
        n = max(calls.get(gv.name_hint, 1), 1)
        if same is not None:
            same.weight += n
            continue
        try:
            flops = float(estimate_tir_flops(wl))
        except Exception:  # noqa: BLE001 - only a weight for the budget split
            flops = 1.0
        tasks.append(Task(gv.name_hint, wl, n, flops, h))
    tasks.sort(key=lambda t: -t.cost)
    return tasks


def allocate(tasks: list[Task], total: int) -> list[int]:
    """Split ``total`` trials over tasks in proportion to FLOPs x calls (largest
    remainder), so the time goes where the model spends it."""
    if not tasks or total <= 0:
        return [0] * len(tasks)
    weights = [t.cost for t in tasks]
    s = sum(weights)
    raw = [total * w / s for w in weights]
    out = [int(r) for r in raw]
    for i in sorted(range(len(tasks)), key=lambda i: -(raw[i] - out[i]))[: total - sum(out)]:
        out[i] += 1
    return out


# --------------------------------------------------------------------------- measuring


def _builder(target: Target):
    """Builds candidates in this process with ``tvm.tirx.build`` (TVM's LocalBuilder
    imports ``tvm.s_tir.tensor_intrin`` in every worker, ~40 s on 2 busy cores, and
    times out) and exports a ``.so``, cross-linked for a device."""
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.builder import BuilderResult, PyBuilder

    cross = target.cross_compiler

    @derived_object
    class InProcessBuilder(PyBuilder):
        def build(self, build_inputs):
            import tvm

            results = []
            for bi in build_inputs:
                try:
                    lib = tvm.tirx.build(bi.mod, target=bi.target)  # what tvm.driver.build calls
                    path = os.path.join(tempfile.mkdtemp(prefix="sliver-tune-"), "candidate.so")
                    if cross:
                        from tvm.support import cc

                        lib.export_library(path, fcompile=cc.cross_compiler(cross))
                    else:
                        lib.export_library(path)
                    results.append(BuilderResult(path, None))
                except Exception as e:  # noqa: BLE001 - a candidate that does not build is a failed trial
                    results.append(BuilderResult(None, f"{type(e).__name__}: {str(e).strip()[-2000:]}"))
            return results

    return InProcessBuilder()


class DeviceLost(TuningError):
    """The RPC device stopped answering and did not come back."""


_CONNECTION_ERROR = re.compile(r"connect|socket|tracker|timeout|timed out|broken pipe|reset by peer|RPCSession|"
                               r"RPCError|closed|refused|EOF", re.IGNORECASE)


def _listed(summary: dict, key: str) -> bool:
    return any(str(s.get("key", "")).split(":", 1)[-1] == key for s in summary.get("server_info", []))


def device_present(rpc: RPC) -> bool:
    """Whether the tracker lists a server under ``rpc.key`` right now."""
    from tvm import rpc as tvm_rpc

    try:
        return _listed(tvm_rpc.connect_tracker(rpc.host, rpc.port).summary(), rpc.key)
    except Exception:  # noqa: BLE001 - no tracker: no device
        return False


def _create_session(rpc_config):
    """The RPC runner's session factory (runs in its worker process): like TVM's,
    but fails at once when no server is registered under the key, where TVM's waits
    for one forever."""
    from tvm import rpc as tvm_rpc

    tracker = tvm_rpc.connect_tracker(rpc_config.tracker_host, rpc_config.tracker_port)
    if not _listed(tracker.summary(), rpc_config.tracker_key):
        raise ConnectionError(f"no RPC server is registered with the tracker under {rpc_config.tracker_key!r}")
    return tracker.request(rpc_config.tracker_key, priority=rpc_config.session_priority,
                           session_timeout=rpc_config.session_timeout_sec)


#: each measurement: ``repeat`` timings of ``number`` runs (at least ``min_repeat_ms``);
#: the database keeps the fastest timing, which a busy machine disturbs least
EVALUATOR = dict(number=2, repeat=3, min_repeat_ms=20)


def _fastest(run_secs):
    """The fastest of a measurement's timings, as the one-element list TVM records
    hold (TVM ranks records by their mean, which one preempted timing ruins)."""
    if run_secs is None:
        return None
    vals = [float(v) for v in run_secs]
    return [min(vals)] if vals else None


def _runner(target: Target, rpc: RPC | None, say: Callable[[str], None], aborted: list):
    from tvm.s_tir import meta_schedule as ms

    if rpc is None:
        return ms.runner.LocalRunner(evaluator_config=ms.runner.EvaluatorConfig(**EVALUATOR))
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.runner import PyRunner, PyRunnerFuture, RunnerResult

    def rpc_runner():
        return ms.runner.RPCRunner(
            rpc_config=ms.runner.RPCConfig(tracker_host=rpc.host, tracker_port=rpc.port, tracker_key=rpc.key,
                                           session_timeout_sec=rpc.session_timeout_s),
            evaluator_config=ms.runner.EvaluatorConfig(**EVALUATOR),
            f_create_session=_create_session,
            max_workers=1,
        )

    inner = [rpc_runner()]

    def measure(inputs):
        """Run ``inputs`` on the device; a session the device never answers (it died
        after accepting) is cut off after the session timeout: the worker is replaced."""
        futures = inner[0].run(inputs)
        deadline = time.monotonic() + rpc.session_timeout_s * len(inputs) + 30
        while not all(f.done() for f in futures) and time.monotonic() < deadline:
            time.sleep(0.1)
        if all(f.done() for f in futures):
            return [f.result() for f in futures]
        out = [f.result() if f.done() else RunnerResult(None, "RPC session timed out: the device stopped answering")
               for f in futures]
        try:
            inner[0].pool.shutdown(wait=False)  # kills the stuck worker
        except Exception:  # noqa: BLE001
            pass
        inner[0] = rpc_runner()
        return out

    @derived_object
    class Done(PyRunnerFuture):
        def __init__(self, result):
            super().__init__()
            self._result = result

        def done(self):
            return True

        def result(self):
            return self._result

    @derived_object
    class RetryingRPCRunner(PyRunner):
        """Retries connection failures with back-off while the device is away;
        raises :class:`DeviceLost` when it stays away; a candidate that fails again
        on a live device is returned as failed (skipped)."""

        def run(self, runner_inputs):
            results = measure(runner_inputs)

            def unreached():
                return [i for i, r in enumerate(results)
                        if r.error_msg is not None and _CONNECTION_ERROR.search(str(r.error_msg))]

            for attempt in range(rpc.retries):
                bad = unreached()
                if not bad:
                    break
                wait = rpc.backoff_s * 2 ** attempt
                say(f"device {rpc.key!r}: {len(bad)} measurement(s) did not reach it; retry "
                    f"{attempt + 1}/{rpc.retries} in {wait:g}s")
                time.sleep(wait)
                if not device_present(rpc):
                    continue  # still away: do not wait for a session timeout
                for i, r in zip(bad, measure([runner_inputs[i] for i in bad])):
                    results[i] = r
            if unreached() and not device_present(rpc):
                aborted.append(DeviceLost(f"the device {rpc.key!r} at tracker {rpc.tracker} stopped answering"))
                raise aborted[-1]
            # what still fails on a live device is the candidate's fault: recorded as failed (skipped)
            return [Done(RunnerResult(r.run_secs, r.error_msg)) for r in results]

    return RetryingRPCRunner()


# --------------------------------------------------------------------------- progress


class Progress:
    """One status line on stderr: trials done, the model's estimated latency (sum of
    its kernels' best times, times their calls), elapsed time and ETA."""

    def __init__(self, out=None, say: Callable[[str], None] | None = None):
        self.out = out or sys.stderr
        self.tty = hasattr(self.out, "isatty") and self.out.isatty()
        self.say_fn = say
        self.t0 = time.perf_counter()
        self._last = 0.0
        self._open = False

    def say(self, msg: str):
        self._end_line()
        if self.say_fn:
            self.say_fn(msg)
        else:
            print(f"[tune] {msg}", file=self.out, flush=True)

    def status(self, text: str, force: bool = False):
        now = time.perf_counter()
        if self.tty:
            print("\r[tune] " + text + "\x1b[K", end="", file=self.out, flush=True)
            self._open = True
        elif force or now - self._last >= 5:
            print("[tune] " + text, file=self.out, flush=True)
            self._last = now

    def _end_line(self):
        if self._open:
            print(file=self.out, flush=True)
            self._open = False

    def close(self):
        self._end_line()


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
    """Tune ``module``'s fused PrimFuncs for ``target`` within ``budget``; records go to
    the target's :class:`TuningDatabase` under ``root`` (``winograd=False``: the
    kernels of a ``compile_module(..., winograd=False)`` build).  ``on_trial(n)`` is called
    after each batch with the number of search trials this run has measured."""
    if not isinstance(budget, Budget):
        budget = Budget.of(budget)
    tgt = check_measurable(target, rpc)
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


def start_tracker(host: str = "127.0.0.1", port: int = 9190, port_end: int = 9199, silent: bool = True):
    """A TVM RPC tracker in a helper process: ``.host``, ``.port``, ``.terminate()``."""
    from tvm.rpc.tracker import Tracker

    return Tracker(host, port=port, port_end=port_end, silent=silent)


__all__ = ["Budget", "RPC", "TuningDatabase", "TuningError", "DeviceLost", "Task", "TuneReport", "allocate",
           "cache_root", "coverage", "extract_tasks", "import_file", "parse_duration", "start_tracker", "target_key", "tune"]
