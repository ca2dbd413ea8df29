"""The tuning database: one folder of MetaSchedule JSON-lines records per (TVM
version, target), repaired when a killed run tore its last line, applied to the
default pipeline's PrimFuncs, and exported/imported as one zip file.

TVM's own JSON database matches records by workload only, whatever target they
were measured on (apache/tvm#15549).  sliver keeps one database per (TVM version,
target) in its own folder, ``<root>/tvm-<version>/<arch>-<cpu>-<hash of the full
target dict>/``, so an x86 record can never be applied to arm64, nor a record from
another TVM.  ``root`` is ``$SLIVER_TUNING_DIR`` or ``~/.cache/sliver/tuning``.

Concurrent writers: TVM's JSON database refers to a record's workload by its line
number in the workloads file, counted in the memory of the process that wrote it,
so two runs appending to one folder corrupt it (run B's record says "workload 3",
line 3 is run A's).  sliver therefore never lets TVM write the shared files: each
process opens TVM's database on a private snapshot of the files (taken under a
shared ``flock`` on ``.lock``), and :meth:`TuningDatabase.commit` appends the
workload (if the shared file lacks it) and the record line itself, under an
exclusive lock, numbering the workload by the shared file.  A writer killed
mid-line leaves a torn tail, which the next writer cuts off (under the lock) and
readers skip.  The meta file (``sliver.json``: measured defaults, the workload
index) is read, merged and replaced under the same lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import tempfile
import warnings
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
LOCK = ".lock"
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


class TuningDatabaseWarning(UserWarning):
    """The tuning database could not be read: compiling goes on with the default schedules."""


@contextlib.contextmanager
def _locked(folder: Path, exclusive: bool):
    """``flock`` on ``folder/.lock`` (released when the block ends or the process dies)."""
    try:
        fd = os.open(folder / LOCK, os.O_RDWR | os.O_CREAT, 0o666)
    except PermissionError:  # a read-only database: readers need no lock from writers that cannot exist
        if exclusive:
            raise
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)


def _complete_lines(data: bytes) -> list[bytes]:
    """The complete non-blank lines of a JSON-lines file (a killed writer's torn tail dropped)."""
    return [ln for ln in data[: data.rfind(b"\n") + 1].split(b"\n") if ln.strip()]


def _parses(line: bytes) -> bool:
    try:
        json.loads(line)
        return True
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False


def _snapshot(workloads: bytes, records: bytes, folder: Path) -> int:
    """Write the readable part of a database's files into ``folder`` for TVM's loader;
    returns how many record lines were dropped (unparsable, or naming no workload).
    A workload line that does not parse cannot be dropped (records count lines), so
    it makes the database unreadable."""
    wl = _complete_lines(workloads)
    for i, line in enumerate(wl):
        if not _parses(line):
            raise TuningError(f"line {i + 1} of {WORKLOADS} is not JSON")
    good = []
    for line in _complete_lines(records):
        try:
            index = json.loads(line)[0]
        except (json.JSONDecodeError, UnicodeDecodeError, TypeError, KeyError, IndexError):
            continue
        if isinstance(index, int) and 0 <= index < len(wl):
            good.append(line)
    (folder / WORKLOADS).write_bytes(b"".join(ln + b"\n" for ln in wl))
    (folder / RECORDS).write_bytes(b"".join(ln + b"\n" for ln in good))
    return len(_complete_lines(records)) - len(good)


def _cut_torn_tail(fd: int) -> None:
    """Cut the unfinished last line a killed writer left (call under the exclusive
    lock: then no live writer is mid-line)."""
    size = os.fstat(fd).st_size
    if size and os.pread(fd, 1, size - 1) != b"\n":
        os.ftruncate(fd, os.pread(fd, size, 0).rfind(b"\n") + 1)


def _append_line(path: Path, line: bytes) -> None:
    """Append one line (call under the exclusive lock), after cutting a torn tail so
    the new line does not join it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o666)
    try:
        _cut_torn_tail(fd)
        view = memoryview(line + b"\n")
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return b""


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
        self._private = None  # the folder of the snapshot TVM's database reads (and writes)
        self._snapshot_stamp = None
        self._shared = []  # (structural hash, JSON text) of each line of the shared workloads file read so far
        self._shared_read = (None, 0)  # (inode, bytes) of the shared workloads file behind _shared

    # the files ---------------------------------------------------------------
    def exists(self) -> bool:
        return (self.dir / RECORDS).exists()

    @property
    def db(self):
        """TVM's JSON database over a private snapshot of this folder (taken on first
        use, after cutting a torn last line a killed run left): TVM may write to the
        snapshot, never to the shared files."""
        if self._db is None:
            from tvm.s_tir import meta_schedule as ms

            self.dir.mkdir(parents=True, exist_ok=True)
            self._private = tempfile.TemporaryDirectory(prefix="sliver-tuning-db-")
            folder = Path(self._private.name)
            try:
                writable = os.access(self.dir, os.W_OK)
                with _locked(self.dir, exclusive=writable):
                    for name in (WORKLOADS, RECORDS) if writable else ():
                        if (self.dir / name).is_file():
                            fd = os.open(self.dir / name, os.O_RDWR)
                            try:
                                _cut_torn_tail(fd)
                            finally:
                                os.close(fd)
                    self._snapshot_stamp = self._files_stamp()
                    _snapshot(_read(self.dir / WORKLOADS), _read(self.dir / RECORDS), folder)
                self._db = ms.database.JSONDatabase(str(folder / WORKLOADS), str(folder / RECORDS),
                                                    allow_missing=True, module_equality="structural")
            except Exception as e:
                raise TuningError(f"the tuning database in {self.dir} cannot be read ({type(e).__name__}: "
                                  f"{str(e).strip().splitlines()[-1] if str(e).strip() else ''}); move the "
                                  "folder away to start afresh") from e
        return self._db

    def _read_meta(self) -> dict:
        path = self.dir / META
        meta = {}
        if path.is_file():
            try:
                meta = json.loads(path.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError):
                meta = {}
        if not isinstance(meta, dict):
            meta = {}
        meta.setdefault("format", EXPORT_FORMAT)
        meta["tvm_version"] = self.tvm_version
        meta["target"] = {"name": self.target.name, "arch": self.target.arch, "tvm": self.target.spec}
        if not isinstance(meta.get("defaults"), dict):
            meta["defaults"] = {}
        return meta

    @property
    def meta(self) -> dict:
        if self._meta is None:
            self._meta = self._read_meta()
        return self._meta

    def _update_meta(self, change) -> None:
        """Re-read the meta file, apply ``change(meta)`` and write it, all under the
        exclusive lock (another run may have added its defaults meanwhile)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        with _locked(self.dir, exclusive=True):
            meta = self._read_meta()
            change(meta)
            data = json.dumps(meta, indent=1, sort_keys=True).encode()
            atomic_write(self.dir / META, lambda f: f.write(data))
        self._meta = meta

    # records -----------------------------------------------------------------
    def commit(self, workload_mod, trace, run_secs, args_info, target_obj):
        """Append one record (``run_secs`` None: failed) to the shared files and to
        this process's view of them."""
        from tvm.s_tir import meta_schedule as ms

        wl = self.db.commit_workload(workload_mod)
        record = ms.database.TuningRecord(trace, wl, run_secs, target_obj, args_info)
        self.db.commit_tuning_record(record)
        self._append(wl, record)

    def _append(self, workload, record) -> None:
        """Write ``record`` to the shared files under the exclusive lock, numbering its
        workload by the shared workloads file (appending the workload if it lacks it)."""
        wl_json = workload.as_json()
        with _locked(self.dir, exclusive=True):
            index = self._shared_index(wl_json)
            if index is None:
                _append_line(self.dir / WORKLOADS, json.dumps(wl_json).encode())
                self._sync_shared()
                index = self._shared_index(wl_json)
            _append_line(self.dir / RECORDS, json.dumps([index, record.as_json()]).encode())

    def _sync_shared(self) -> None:
        """Read the lines other writers appended to the shared workloads file since the
        last call (all of it if the file was replaced)."""
        path = self.dir / WORKLOADS
        st = _stat(path)
        inode, done = self._shared_read
        if st is None or st.st_ino != inode or st.st_size < done:
            self._shared, done = [], 0
        try:
            with open(path, "rb") as f:
                f.seek(done)
                data = f.read()
        except FileNotFoundError:
            data = b""
        end = data.rfind(b"\n") + 1
        for line in data[:end].split(b"\n"):
            if line.strip():
                try:
                    self._shared.append(tuple(json.loads(line)))
                except (json.JSONDecodeError, UnicodeDecodeError, TypeError):
                    self._shared.append((None, None))  # keeps the numbering
        self._shared_read = (st.st_ino if st else None, done + end)

    def _shared_index(self, wl_json):
        """The line of the shared workloads file holding this workload, or None."""
        import tvm_ffi
        from tvm.s_tir import meta_schedule as ms

        self._sync_shared()
        mod = None
        for i, (shash, text) in enumerate(self._shared):
            if shash != wl_json[0]:
                continue
            if text == wl_json[1]:
                return i
            if mod is None:
                mod = ms.database.Workload.from_json(wl_json).mod
            if tvm_ffi.structural_equal(ms.database.Workload.from_json([shash, text]).mod, mod):
                return i
        return None

    def set_default(self, task_hash: str, name: str, seconds: float | None):
        self._update_meta(lambda meta: meta["defaults"].__setitem__(task_hash, {"name": name, "seconds": seconds}))

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
        index = self.meta.get("workload_index") or {}
        if isinstance(index, dict) and index.get("stamp") == self._files_stamp():
            return set(index["hashes"])
        if self._db is not None and self._snapshot_stamp != self._files_stamp():
            self._db = None  # a fresh snapshot: the index is valid for the files it was taken from
        hashes = set(self.stats())
        stamp = self._snapshot_stamp

        def change(meta):
            meta["workload_index"] = {"stamp": stamp, "hashes": sorted(hashes)}

        try:
            self._update_meta(change)
        except OSError:  # a database this user may only read: no index, the next call opens it again
            pass
        return hashes

    # applying ----------------------------------------------------------------
    def apply(self, mod, report: dict | None = None):
        """Replace every unscheduled PrimFunc of ``mod`` this database has a record for
        by its best record's schedule (marked scheduled, so the default schedules
        leave it alone)."""
        from sliver.backends.tvm.schedules import SCHEDULED_ATTR, unscheduled_primfuncs

        if not self.exists():
            return mod
        try:
            known = self.workload_hashes()
            candidates = [(gv, func, wl) for gv, func in unscheduled_primfuncs(mod)
                          if workload_hash(wl := _normalize(func)) in known]
            db = self.db if candidates else None
        except (TuningError, OSError) as e:
            warnings.warn(TuningDatabaseWarning(f"{e}; compiling with the default schedules"), stacklevel=2)
            return mod
        target = tvm_target(self.target) if candidates else None
        updates = {}
        for gv, func, wl in candidates:
            if not db.has_workload(wl):
                continue
            sch = db.query_schedule(wl, target, gv.name_hint)
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

        with _locked(self.dir, exclusive=False):
            files = {name: b"".join(ln + b"\n" for ln in _complete_lines(_read(self.dir / name)))
                     for name in (WORKLOADS, RECORDS)}

        def write(f):
            with zipfile.ZipFile(f, "w", zipfile.ZIP_DEFLATED) as z:
                z.writestr(META, json.dumps(meta, indent=1, sort_keys=True))
                for name, data in files.items():
                    z.writestr(name, data)

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
        try:
            _snapshot(files[WORKLOADS], files[RECORDS], Path(tmp))
            theirs = ms.database.JSONDatabase(str(Path(tmp, WORKLOADS)), str(Path(tmp, RECORDS)),
                                              allow_missing=False, module_equality="structural")
        except Exception as e:  # noqa: BLE001 - TVM's loader raises what it likes
            raise TuningError(f"{path} holds records that cannot be read ({type(e).__name__}: "
                              f"{str(e).strip().splitlines()[-1] if str(e).strip() else ''})") from None
        ours = local.db
        seen = {_record_key(r) for r in ours.get_all_tuning_records()}
        added = 0
        for rec in theirs.get_all_tuning_records():
            k = _record_key(rec)
            if k in seen:
                continue
            seen.add(k)
            wl = ours.commit_workload(rec.workload.mod)
            record = ms.database.TuningRecord(rec.trace, wl, rec.run_secs, rec.target, rec.args_info)
            ours.commit_tuning_record(record)
            local._append(wl, record)
            added += 1
    defaults = meta.get("defaults", {})

    def change(local_meta):
        for h, d in (defaults.items() if isinstance(defaults, dict) else ()):
            local_meta["defaults"].setdefault(h, d)

    local._update_meta(change)
    return local, added


def _record_key(rec) -> str:
    """Identifies a record across databases: its workload and its JSON (trace, times, target)."""
    return workload_hash(rec.workload.mod) + str(rec.as_json())
