"""The tuning database: one folder of MetaSchedule JSON-lines records per (TVM
version, target), repaired when a killed run tore its last line, applied to the
default pipeline's PrimFuncs, and exported/imported as one zip file.

TVM's own JSON database matches records by workload only, whatever target they
were measured on (apache/tvm#15549).  sliver keeps one database per (TVM version,
target) in its own folder, ``<root>/tvm-<version>/<arch>-<cpu>-<hash of the full
target dict>/``, so an x86 record can never be applied to arm64, nor a record from
another TVM.  ``root`` is ``$SLIVER_TUNING_DIR`` or ``~/.cache/sliver/tuning``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import zipfile
from pathlib import Path

from sliver.common.files import atomic_write
from sliver.backends.tvm.build import tvm_version
from sliver.backends.tvm.targets import resolve, tvm_target
from sliver.backends.tvm.tuning.budget import TuningError

ENV_DIR = "SLIVER_TUNING_DIR"
EXPORT_FORMAT = "sliver-tuning"
EXPORT_VERSION = 1
WORKLOADS = "database_workload.json"
RECORDS = "database_tuning_record.json"
META = "sliver.json"
FAILED = 1e10  # seconds: a record that failed to build or run


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
