"""The ``.sliver`` artifact: one file holding everything a device needs.

A zip archive (stored, not compressed: the library is mostly weights) of

    manifest.json   versions, target, input/output names, shapes and dtypes,
                    the pass pipeline, sha256 of the library, tolerances
    lib.so          the compiled TVM library (weights included)
    golden.npz      example inputs and the reference outputs for them
    signature.json  optional: an ed25519 signature over manifest.json (``sliver sign``)
    tokenizer.json  a generating artifact's tokenizer (``tokenizers`` JSON; sha256 in
                    the manifest's ``llm.tokenizer``)

An artifact is executable code: loading it runs its library.  ``load`` checks the
archive's structure and sizes, the signature (with ``trusted_keys``), the manifest's
schema, the hashes and the CPU architecture before any code is loaded, and only then
opens the library with the TVM runtime.  The hashes catch damage, not tampering
(whoever edits the library can edit its hash): only a signature checked against a
key you trust says who built it (docs/security.md).  This module
imports neither torch nor TVM's compiler; set ``TVM_USE_RUNTIME_LIB=1`` (as
``sliver run`` does) to load only TVM's runtime library.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import math
import os
import struct
import tempfile
import threading
import weakref
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from sliver.common.errors import ArtifactError, InputError
from sliver.common.files import atomic_write
from sliver.common.numerics import as_numpy, output_error
from sliver.common.platform import elf_arch, host_arch

from sliver.runtime.manifest import (  # noqa: F401  (FORMAT*: part of this module's API)
    FORMAT, FORMAT_VERSION, MAX_MANIFEST_BYTES, MAX_TOKENIZER_BYTES, NUMPY_DTYPES, Manifest, parse,
)

LIBRARY = "lib.so"
MANIFEST = "manifest.json"
GOLDEN = "golden.npz"
SIGNATURE = "signature.json"
TOKENIZER = "tokenizer.json"


#: the calling thread's TVM worker-pool setting (TVM's pool belongs to the calling thread)
_POOL = threading.local()


def _env_threads() -> int:
    try:
        return int(os.environ.get("TVM_NUM_THREADS", "0"))
    except ValueError:
        return 0


def numpy_dtype(dtype: str) -> np.dtype:
    return np.dtype(NUMPY_DTYPES[dtype])


@dataclass
class Artifact:
    """A compiled model before or after it is written to disk."""

    library: bytes
    manifest: Manifest  # a dict is checked and converted (Manifest.from_json)
    golden: dict[str, np.ndarray] = field(default_factory=dict)
    #: compiler-side extras (not saved): the optimized IR and the pass records
    module: object = None
    records: list = field(default_factory=list)
    #: a generating artifact's tokenizer.json (manifest.llm.tokenizer has its hash)
    tokenizer: bytes | None = None

    def __post_init__(self):
        if isinstance(self.manifest, dict):
            self.manifest = Manifest.from_json(self.manifest)

    @property
    def target(self) -> str:
        return self.manifest.target.name

    def _writer(self):
        """A function writing the archive to an open binary file."""
        golden = io.BytesIO()
        np.savez(golden, **self.golden)
        # the manifest carries the golden data's hash, so that a signature over the
        # manifest covers every byte of the archive
        digest = hashlib.sha256(golden.getvalue()).hexdigest()
        manifest = dataclasses.replace(self.manifest, golden=dataclasses.replace(self.manifest.golden, sha256=digest))

        def write(f):
            with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED) as z:
                z.writestr(MANIFEST, manifest.dumps())
                z.writestr(LIBRARY, self.library)
                z.writestr(GOLDEN, golden.getvalue())
                if self.tokenizer is not None:
                    z.writestr(TOKENIZER, self.tokenizer)

        return write

    def save(self, path) -> Path:
        """Write the artifact atomically: a crash never leaves a half-written file."""
        return atomic_write(path, self._writer())

    def to_bytes(self) -> bytes:
        """The ``.sliver`` file's bytes (what :meth:`save` writes); ``sliver.load(data)``
        reads them back with every check a file gets."""
        buf = io.BytesIO()
        self._writer()(buf)
        return buf.getvalue()

    def load(self, *, threads: int | None = None) -> "CompiledModel":
        """Run this artifact in the current process (its target must be this machine)."""
        return CompiledModel(self, threads=threads)

    def __call__(self, *inputs, **named):
        """Load (once per call: use :meth:`load` to keep it) and run; inputs and the
        result as :meth:`CompiledModel.__call__`."""
        return self.load()(*inputs, **named)


def _label(source) -> str:
    """How messages name an artifact: its path, ``<bytes>`` or the file object's name."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return "<bytes>"
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    return str(getattr(source, "name", "<file>"))


def _source(source):
    """``(label, what zipfile opens)`` for a path, bytes or a binary file object."""
    label = _label(source)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return label, io.BytesIO(bytes(source))
    if hasattr(source, "read"):
        if isinstance(source, io.TextIOBase):
            raise ArtifactError(f"{label}: a file opened in text mode; open the artifact with open(path, 'rb')")
        try:
            seekable = source.seekable()
        except (AttributeError, OSError, ValueError):
            seekable = False
        if seekable:
            return label, source
        try:  # a pipe or socket: zipfile needs to seek, so the bytes are read first
            data = source.read()
        except (OSError, ValueError) as e:
            raise ArtifactError(f"{label}: cannot read the artifact ({e})") from None
        if not isinstance(data, (bytes, bytearray)):
            raise ArtifactError(f"{label}: a file opened in text mode; open the artifact with open(path, 'rb')")
        return label, io.BytesIO(bytes(data))
    if not isinstance(source, (str, os.PathLike)):
        raise ArtifactError(f"an artifact is a path, bytes or a binary file object, not a {type(source).__name__}")
    path = Path(source)
    if not path.is_file():
        raise ArtifactError(f"{path}: no such artifact file")
    return str(path), path


def read(source, *, trusted_keys=None) -> Artifact:
    """Read and check a ``.sliver`` artifact without loading its code: ``source`` is a
    path, the artifact's bytes (:meth:`Artifact.to_bytes`) or a binary file object;
    all three get exactly the same checks.

    The archive's structure is checked first (exactly the known entries, once each, no
    links, no paths, every entry's size declared within its limit before a byte of it
    is read), then, with ``trusted_keys`` (key files or
    :class:`~sliver.runtime.signing.PublicKey` objects), the signature, then the
    manifest against its schema, then the library's and the golden data's sha256."""
    path, opened = _source(source)
    keys = None
    if trusted_keys is not None:
        from sliver.runtime import signing

        keys = signing.trusted(trusted_keys)
        if not keys:
            raise ArtifactError("trusted_keys is empty: no artifact could be trusted (pass the signer's public key)")
    try:
        with zipfile.ZipFile(opened) as z:
            entries = _entries(path, z)
            manifest_bytes = _read_entry(z, entries[MANIFEST])
            if keys is not None:
                signing.check(path, manifest_bytes,
                              _read_entry(z, entries[SIGNATURE]) if SIGNATURE in entries else None, keys)
            try:
                manifest = parse(manifest_bytes)
            except ArtifactError as e:
                raise ArtifactError(f"{path}: {e}") from None
            if keys is not None and manifest.golden.sha256 is None:
                raise ArtifactError(f"{path}: the signed manifest has no sha256 of {GOLDEN}; sign it again")
            size = entries[LIBRARY].file_size
            if size != manifest.library.bytes:
                raise ArtifactError(f"{path}: {LIBRARY} holds {size:,} bytes, the manifest says "
                                    f"{manifest.library.bytes:,}: the file was modified or damaged")
            limit = _golden_limit(manifest)
            if entries[GOLDEN].file_size > limit:
                raise ArtifactError(f"{path}: {GOLDEN} would unpack to {entries[GOLDEN].file_size:,} bytes, more "
                                    f"than the {limit:,} its inputs and outputs need: refused (a zip bomb?)")
            library = _read_entry(z, entries[LIBRARY])
            golden_bytes = _read_entry(z, entries[GOLDEN])
            tokenizer = _read_tokenizer(path, z, entries, manifest)
    except ArtifactError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, KeyError, ValueError, NotImplementedError,
            RuntimeError, zlib.error, struct.error, OverflowError) as e:
        raise ArtifactError(
            f"{path}: the artifact is corrupt or truncated ({e}); copy it again or rebuild it with `sliver lower`"
        ) from None
    digest = hashlib.sha256(library).hexdigest()
    if digest != manifest.library.sha256:
        raise ArtifactError(
            f"{path}: the library's sha256 is {digest[:16]}…, the manifest says {manifest.library.sha256[:16]}…: "
            "the file was modified or damaged; rebuild it with `sliver lower`"
        )
    if manifest.golden.sha256 is not None and hashlib.sha256(golden_bytes).hexdigest() != manifest.golden.sha256:
        raise ArtifactError(f"{path}: {GOLDEN} does not match the manifest's sha256: the file was modified or "
                            "damaged; rebuild it with `sliver lower`")
    golden = _read_golden(path, golden_bytes, manifest)
    return Artifact(library, manifest, golden, tokenizer=tokenizer)


def _read_tokenizer(path, z: zipfile.ZipFile, entries: dict, manifest: Manifest) -> bytes | None:
    """A generating artifact's tokenizer.json, checked against the manifest's size and
    sha256 (an entry the manifest does not declare is refused)."""
    declared = manifest.llm.tokenizer if manifest.llm is not None else None
    if TOKENIZER not in entries:
        if declared is not None:
            raise ArtifactError(f"{path}: the manifest declares {TOKENIZER} but the archive has none: rebuild it")
        return None
    if declared is None:
        raise ArtifactError(f"{path}: {TOKENIZER} is not declared by the manifest (a tampered archive): refused")
    if entries[TOKENIZER].file_size != declared.bytes:
        raise ArtifactError(f"{path}: {TOKENIZER} holds {entries[TOKENIZER].file_size:,} bytes, the manifest says "
                            f"{declared.bytes:,}: the file was modified or damaged")
    data = _read_entry(z, entries[TOKENIZER])
    if hashlib.sha256(data).hexdigest() != declared.sha256:
        raise ArtifactError(f"{path}: {TOKENIZER} does not match the manifest's sha256: the file was modified or "
                            "damaged; rebuild it")
    return data


#: the entries an artifact may hold, and the most bytes each may unpack to
#: (the library's and the golden data's sizes are checked against the manifest too)
ENTRY_LIMITS = {MANIFEST: MAX_MANIFEST_BYTES, LIBRARY: 8 << 30, GOLDEN: 8 << 30, SIGNATURE: 4096,
                TOKENIZER: MAX_TOKENIZER_BYTES}
_S_IFMT, _S_IFLNK, _S_IFREG = 0o170000, 0o120000, 0o100000


def _entries(path, z: zipfile.ZipFile) -> dict[str, zipfile.ZipInfo]:
    """The archive's entries by name, after refusing anything but the known entries
    stored once each as plain files within their size limits."""
    out: dict[str, zipfile.ZipInfo] = {}
    infos = z.infolist()
    if len(infos) > 2 * len(ENTRY_LIMITS):
        raise ArtifactError(f"{path}: {len(infos):,} entries; an artifact has {len(ENTRY_LIMITS)} at most")
    for info in infos:
        name = info.filename
        if name.startswith(("/", "\\")) or ".." in name.replace("\\", "/").split("/") or ":" in name:
            raise ArtifactError(f"{path}: entry {name!r} is a path outside the archive: refused")
        if name in out:
            raise ArtifactError(f"{path}: the entry {name} occurs twice (a tampered archive): refused")
        mode = (info.external_attr >> 16) & _S_IFMT
        if mode == _S_IFLNK:
            raise ArtifactError(f"{path}: entry {name!r} is a symbolic link: refused")
        if name not in ENTRY_LIMITS or info.is_dir() or mode not in (0, _S_IFREG):
            raise ArtifactError(f"{path}: unexpected entry {name!r} (an artifact holds only "
                                f"{', '.join(ENTRY_LIMITS)}): refused")
        if info.flag_bits & 0x1:
            raise ArtifactError(f"{path}: entry {name} is encrypted: refused")
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise ArtifactError(f"{path}: entry {name} uses compression method {info.compress_type}: refused")
        if info.file_size > ENTRY_LIMITS[name]:
            raise ArtifactError(f"{path}: entry {name} would unpack to {info.file_size:,} bytes (at most "
                                f"{ENTRY_LIMITS[name]:,}): refused")
        out[name] = info
    missing = [n for n in (MANIFEST, LIBRARY, GOLDEN) if n not in out]
    if missing:
        raise ArtifactError(f"{path}: not a complete sliver artifact (missing {', '.join(missing)})")
    return out


def _read_entry(z: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes:
    """The entry's bytes; never more than its declared size (zipfile stops there and
    checks the CRC)."""
    with z.open(info) as f:
        data = f.read(info.file_size + 1)
    if len(data) != info.file_size:
        raise ValueError(f"entry {info.filename} holds {len(data):,} bytes, its header says {info.file_size:,}")
    return data


_NPY_SLACK = 64 * 1024  # an .npy header, and the zip's own bookkeeping, per array


def _golden_limit(manifest: Manifest) -> int:
    specs = manifest.inputs + manifest.outputs
    return sum(8 * s.max_numel(manifest.dims) + 2 * _NPY_SLACK for s in specs) + _NPY_SLACK


def _read_golden(path, data: bytes, manifest: Manifest) -> dict[str, np.ndarray]:
    """The golden arrays, checked against the manifest's inputs and outputs before
    any is allocated: the names, each array's header (shape, dtype) and size."""
    want = {f"input_{i}": (s, True) for i, s in enumerate(manifest.inputs)}
    want.update({f"output_{i}": (s, False) for i, s in enumerate(manifest.outputs)})
    golden = {}
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            infos = z.infolist()
            names = [i.filename for i in infos]
            extra = [n for n in names if n[:-4] not in want or not n.endswith(".npy")]
            if extra or len(set(names)) != len(names):
                raise ArtifactError(f"{GOLDEN} holds unexpected or repeated arrays ({', '.join(names[:8])})")
            for info in infos:
                key = info.filename[:-4]
                spec, is_input = want[key]
                if info.file_size > 8 * spec.max_numel(manifest.dims) + _NPY_SLACK:
                    raise ArtifactError(f"{GOLDEN}'s {key} would unpack to {info.file_size:,} bytes: refused")
                golden[key] = _read_npy(z, info, spec, is_input, manifest.dims)
    except ArtifactError as e:
        raise ArtifactError(f"{path}: {e}") from None
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, ValueError, NotImplementedError,
            RuntimeError, zlib.error, struct.error, OverflowError, TypeError, SyntaxError) as e:
        raise ArtifactError(f"{path}: {GOLDEN} is damaged ({type(e).__name__}: {e}); rebuild it with `sliver lower`") \
            from None
    missing = [k for k in want if k not in golden]
    if missing:
        raise ArtifactError(f"{path}: {GOLDEN} has no {', '.join(missing)}; rebuild it with `sliver lower`")
    return golden


def _read_npy(z: zipfile.ZipFile, info: zipfile.ZipInfo, spec, is_input: bool, dims=()) -> np.ndarray:
    fmt = np.lib.format
    with z.open(info) as f:
        version = fmt.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = fmt.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, fortran, dtype = fmt.read_array_header_2_0(f)
        else:
            raise ValueError(f"npy format version {version}")
        key = info.filename[:-4]
        if not spec.fits(list(shape), dims) or dtype.hasobject or (is_input and dtype != numpy_dtype(spec.dtype)) \
                or dtype.itemsize > 8 or dtype.kind not in "biuf":
            raise ArtifactError(f"{GOLDEN}'s {key} is {dtype}{list(shape)}, the manifest says "
                                f"{numpy_dtype(spec.dtype)}{spec.shape}; rebuild it with `sliver lower`")
        n = math.prod(shape) * dtype.itemsize
        raw = bytearray(f.read(n + 1))
    if len(raw) != n:
        raise ValueError(f"{key}: {len(raw):,} bytes of data, the header says {n:,}")
    return np.frombuffer(raw, dtype=dtype).reshape(shape, order="F" if fortran else "C")


def load(source, *, trusted_keys=None, threads: int | None = None) -> "CompiledModel":
    """Load a ``.sliver`` artifact for running on this machine.  ``source`` is a path,
    the artifact's bytes or a binary file object (checked alike: :func:`read`).  With
    ``trusted_keys`` (public key files from ``sliver keygen``), an artifact that is not
    signed by one of them is refused before any of its code is mapped.  ``threads``:
    TVM's worker threads per call (:class:`CompiledModel`)."""
    art = read(source, trusted_keys=trusted_keys)
    return CompiledModel(art, source=_label(source), threads=threads)


def sign(path, key, *, output=None) -> Path:
    """Sign the artifact at ``path`` with the ed25519 private key file ``key``, in
    place or into ``output``; a signature already there is replaced.  The artifact is
    read and checked first; an older format is written in the current one (with the
    golden data's hash, which the signature covers)."""
    from sliver.runtime import signing

    path = Path(path)
    art = read(path)
    with zipfile.ZipFile(path) as z:
        entries = _entries(path, z)
        library = _read_entry(z, entries[LIBRARY])
        golden = _read_entry(z, entries[GOLDEN])
        tokenizer = _read_entry(z, entries[TOKENIZER]) if TOKENIZER in entries else None
    manifest = dataclasses.replace(
        art.manifest, golden=dataclasses.replace(art.manifest.golden, sha256=hashlib.sha256(golden).hexdigest()))
    manifest_bytes = manifest.dumps().encode()
    signature = signing.signature_entry(manifest_bytes, key)

    def write(f):
        with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED) as z:
            z.writestr(MANIFEST, manifest_bytes)
            z.writestr(LIBRARY, library)
            z.writestr(GOLDEN, golden)
            if tokenizer is not None:
                z.writestr(TOKENIZER, tokenizer)
            z.writestr(SIGNATURE, signature)

    return atomic_write(output if output is not None else path, write)


def _load_library(tvm, path: str):
    from sliver.runtime import tvm_c

    if tvm is tvm_c.API:
        return tvm.load_module(path)
    import tvm_ffi

    return tvm_ffi.load_module(path, keep_module_alive=False)


def _import_tvm_runtime():
    """TVM's Python runtime, or, when ``SLIVER_TVM_LIB_DIR`` names a folder holding
    ``libtvm_runtime.so`` and ``libtvm_ffi.so`` (a device bundle's), the same calls over
    their C ABI (:mod:`sliver.runtime.tvm_c`), without TVM's Python packages."""
    from sliver.runtime import tvm_c

    if tvm_c.selected():
        tvm_c.library()
        return tvm_c.API
    try:
        import tvm
        from tvm.runtime import vm  # noqa: F401
    except ImportError as e:
        raise ArtifactError(
            "running an artifact needs the TVM runtime: pip install apache-tvm==0.27.0.post1 "
            f"apache-tvm-ffi==0.1.14.post1 ({e})"
        ) from None
    return tvm


class CompiledModel:
    """A loaded artifact: call it with numpy arrays, get numpy arrays back.

    Inputs, for every way of running it: arrays by position (``m(x)``), by name
    (``m(x=a)``; the names are the traced ``forward``'s parameters, :attr:`input_names`),
    or one dict of name → array (``m({"x": a})``).  What comes back is one rule per
    method: ``m(...)`` returns what the torch model returned (the array for one output,
    a tuple for several), ``m.run(...)`` a list of all outputs, always, and
    ``m.run_dict(...)`` a dict of output name → array, always (:attr:`output_names`:
    ``lower(output_names=...)``, else ``output`` / ``output_0``, … / a returned dict's keys).

    Thread-safe: one loaded model may be called from any number of threads and gives
    the single-thread results.  TVM's Relax VM is not (its register file is per VM: two
    threads calling one VM at once corrupt each other's frames, then crash), so each
    calling thread gets its own VM over the one loaded library (a VM holds only its
    frames; the code and weights are shared).  Measured against one VM behind a lock
    (docs/results/threads.md: 2-core x86, 8 threads, fastest of 3 rounds): ResNet-18
    4.7 ms per call with a VM per thread against 6.6 with the lock (9.9 single-threaded),
    the small example 0.33 against 0.72 ms.  Behind a lock, the worker pool of the thread
    that just ran keeps spinning while the next thread's pool computes; with a VM per
    thread the calls overlap.

    ``threads``: how many worker threads TVM's runtime uses inside a call (None keeps
    TVM's default: ``TVM_NUM_THREADS``, else the number of physical cores).  TVM's pool
    belongs to the calling thread and starts at its first call; a thread whose pool
    already started with fewer threads keeps at most that many.
    """

    def __init__(self, artifact: Artifact, source: str = "<memory>", *, threads: int | None = None):
        self.artifact = artifact
        self.manifest = artifact.manifest
        self.source = source
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise InputError(f"threads={threads!r}: give a whole number ≥ 1 (or None for TVM's default)")
        self.threads = threads
        if threads is not None and threads > _env_threads():
            # TVM sizes a thread's pool from this when the pool starts (else from the
            # physical cores); a pool that started smaller stays at most that size
            os.environ["TVM_NUM_THREADS"] = str(max(threads, _env_threads() or os.cpu_count() or 1))
        want = self.manifest.target.arch
        built = elf_arch(artifact.library)
        if built != want:
            raise ArtifactError(f"{source}: the library is built for {built}, the manifest says {want}")
        if want != host_arch():
            raise ArtifactError(
                f"{source} was compiled for {want} ({self.manifest.target.name}) but this machine is "
                f"{host_arch()}; lower the model with --target for this machine, or run it with --emulate"
            )
        tvm = _import_tvm_runtime()
        self._tvm = tvm
        self._lock = threading.Lock()
        self._lib = None
        #: a VM per calling thread (dropped with the thread)
        self._vms: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        #: per calling thread, the input tensors of its last call (refilled when the next call's
        #: inputs have the same shapes: see :meth:`_input_tensors`)
        self._inputs: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        # the library goes through a file (dlopen needs one) that is removed at once:
        # the mapping stays, nothing is left on disk, even if the process is killed
        with tempfile.TemporaryDirectory(prefix="sliver-") as tmp:
            lib_path = os.path.join(tmp, LIBRARY)
            with open(lib_path, "wb") as f:
                f.write(artifact.library)
            try:
                # not kept alive for the whole process (TVM's default): the library is
                # unmapped when the model is closed or collected (its VMs hold it till then)
                self._lib = _load_library(tvm, lib_path)
                self._vms[threading.current_thread()] = tvm.runtime.vm.VirtualMachine(self._lib, tvm.cpu())
            except Exception as e:
                raise ArtifactError(f"{source}: the TVM runtime could not load the library: {e}") from e
        self.inputs = self.manifest.inputs
        self.outputs = self.manifest.outputs

    @property
    def input_names(self) -> list[str]:
        """The inputs' names (the traced model's ``forward`` parameters), in order."""
        return [s.name for s in self.inputs]

    @property
    def output_names(self) -> list[str]:
        """The outputs' names (``lower(output_names=...)``, or from the model's output
        structure: ``output`` for one tensor, ``output_0``, … for a tuple, the keys of a
        dict), in order."""
        return [s.name for s in self.outputs]

    def _bind(self, args: tuple, named: dict) -> list:
        """The inputs in the manifest's order, from positional arrays, keywords, or one
        dict of name → array (the three may not give an input twice)."""
        names = self.input_names
        if len(args) == 1 and isinstance(args[0], Mapping) and not named:
            named, args = dict(args[0]), ()
        if len(args) > len(names):
            raise InputError(f"the model takes {len(names)} input(s) ({', '.join(names)}), got {len(args)}")
        bound = dict(zip(names, args))
        for key, value in named.items():
            if key not in names:
                raise InputError(f"the model has no input {key!r}; its inputs are {', '.join(names)}")
            if key in bound:
                raise InputError(f"input {key!r} is given twice (by position and by name)")
            bound[key] = value
        missing = [n for n in names if n not in bound]
        if missing:
            if not named:
                raise InputError(f"the model takes {len(names)} input(s) ({', '.join(names)}), got {len(args)}")
            raise InputError(f"input(s) {', '.join(missing)} missing: the model takes {', '.join(names)}")
        return [bound[n] for n in names]

    def _check(self, inputs: Sequence) -> list[np.ndarray]:
        if len(inputs) != len(self.inputs):
            names = ", ".join(i.name for i in self.inputs)
            raise InputError(f"the model takes {len(self.inputs)} input(s) ({names}), got {len(inputs)}")
        arrays = []
        for spec, x in zip(self.inputs, inputs):
            try:
                arrays.append(np.asarray(x))
            except (ValueError, TypeError) as e:  # ragged nested lists and the like
                raise InputError(f"input {spec.name!r} is not an array ({e})") from None
        self.manifest.bind([x.shape for x in arrays])  # fixed sizes, and dynamic ones within their ranges
        out = []
        for spec, x in zip(self.inputs, arrays):
            want_dtype = numpy_dtype(spec.dtype)
            if x.dtype != want_dtype:
                raise InputError(
                    f"input {spec.name!r} must be {want_dtype}, got {x.dtype} (convert with .astype(np.{want_dtype}))"
                )
            out.append(as_numpy(x))  # a 0-d input stays 0-d
        return out

    def run(self, *inputs, **named) -> list[np.ndarray]:
        """The outputs as a list in the manifest's order, always (even for one output).
        Inputs as for :meth:`__call__`."""
        tensors = self._input_tensors(self._check(self._bind(inputs, named)))
        self._use_threads()
        result = self._vm["main"](*tensors)
        results = list(result) if len(self.outputs) > 1 else [result]
        return [r.numpy() for r in results]

    def _input_tensors(self, arrays: list[np.ndarray]) -> list:
        """The calling thread's input tensors holding ``arrays``: its last call's, refilled, when
        the shapes and dtypes are the same, else new ones.  A new tensor per call was a fresh
        allocation whose pages the first kernel faulted in (MobileNetV2 at 224x224, one Zen 5
        core: ~0.1 ms of 3.9).  The outputs are copied out before the next call can refill."""
        thread = threading.current_thread()
        signature = tuple((a.shape, a.dtype.str) for a in arrays)
        kept = self._inputs.get(thread)
        # the bundles' C-ABI runtime (runtime/tvm_c.py) has no copyfrom: new tensors there
        if kept is not None and kept[0] == signature and all(hasattr(t, "copyfrom") for t in kept[1]):
            for t, a in zip(kept[1], arrays):
                t.copyfrom(a)
            return kept[1]
        tensors = [self._tvm.runtime.tensor(a) for a in arrays]
        self._inputs[thread] = (signature, tensors)
        return tensors

    def run_dict(self, *inputs, **named) -> dict[str, np.ndarray]:
        """The outputs as a dict of output name → array (in the manifest's order),
        always.  Inputs as for :meth:`__call__`."""
        return dict(zip(self.output_names, self.run(*inputs, **named)))

    @property
    def _vm(self):
        """The calling thread's VM (made at its first call)."""
        thread = threading.current_thread()
        vm = self._vms.get(thread)
        if vm is None:
            with self._lock:
                if self._lib is None:
                    raise ArtifactError(f"{self.source}: the model was closed")
                vm = self._vms[thread] = self._tvm.runtime.vm.VirtualMachine(self._lib, self._tvm.cpu())
        return vm

    def _use_threads(self) -> None:
        """Size the calling thread's TVM worker pool for this model (when the thread's
        last call was of a model with another setting; 0 is TVM's default)."""
        if getattr(_POOL, "threads", None) != self.threads:
            self._tvm.get_global_func("runtime.config_threadpool")(1, self.threads or 0)
            _POOL.threads = self.threads

    def close(self) -> None:
        """Unload the library now (also done when the model is garbage-collected); a
        call still running in another thread finishes first."""
        with self._lock:
            self._vms.clear()
            self._inputs.clear()
            self._lib = None

    def __enter__(self) -> "CompiledModel":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __call__(self, *inputs, **named):
        """Run the model.  Inputs: numpy arrays (or anything ``np.asarray`` takes) by
        position, by name as keywords (``m(x=a)``), or one dict of name → array
        (``m({"x": a})``); :attr:`input_names` are the traced ``forward``'s parameter
        names.  Returns what a torch model returns: the array for one output, a tuple
        of arrays (in the manifest's order) for several.  :meth:`run` always returns a
        list, :meth:`run_dict` a dict by output name."""
        outs = self.run(*inputs, **named)
        return outs[0] if len(outs) == 1 else tuple(outs)

    @property
    def tokenizer(self):
        """A generating artifact's tokenizer (:class:`~sliver.runtime.generate.Tokenizer`)."""
        from sliver.runtime.generate import Tokenizer

        self._generating()
        if getattr(self, "_tokenizer", None) is None:
            self._tokenizer = Tokenizer(self.artifact.tokenizer, self.source)
        return self._tokenizer

    def _generating(self) -> None:
        if self.manifest.llm is None:
            raise InputError(f"{self.source} is not a generating artifact (it has no KV cache and no step function): "
                             "lower the causal LM with sliver.lower_llm(model, tokenizer) or `sliver lower ... "
                             "--generate`")

    def generate(self, prompt, *, max_new_tokens: int = 64, temperature: float = 0.0, top_k: int | None = None,
                 top_p: float | None = None, seed: int | None = None, stop_at_eos: bool = True, callback=None):
        """Generate text after ``prompt`` (a str, or token ids) with a generating
        artifact (:func:`sliver.lower_llm`): greedy at ``temperature`` 0, else sampled
        (``top_k``, ``top_p``; ``seed`` makes it reproducible), at most
        ``max_new_tokens``, stopping after an end-of-sequence token.  ``callback`` is
        called with each new piece of text as it is generated.  Returns a
        :class:`~sliver.runtime.generate.Generation` (``.text``, ``.tokens``,
        ``.time_to_first_token``, ``.decode_tokens_per_s``).  A prompt that does not fit
        the KV cache is a :class:`~sliver.runtime.generate.ContextLengthError`."""
        from sliver.runtime import generate

        self._generating()
        return generate.generate(self, prompt, max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
                                 top_p=top_p, seed=seed, stop_at_eos=stop_at_eos, callback=callback)

    def stream(self, prompt, *, max_new_tokens: int = 64, temperature: float = 0.0, top_k: int | None = None,
               top_p: float | None = None, seed: int | None = None, stop_at_eos: bool = True):
        """An iterator over the generated text's pieces, as :meth:`generate` makes them."""
        from sliver.runtime import generate

        self._generating()
        return generate.stream(self, prompt, max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
                               top_p=top_p, seed=seed, stop_at_eos=stop_at_eos)

    def golden_inputs(self) -> list[np.ndarray]:
        return [self.artifact.golden[f"input_{i}"] for i in range(len(self.inputs))]

    def verify(self, *, rtol: float | None = None, atol: float | None = None) -> list[dict]:
        """Run the golden inputs and compare with the golden outputs.  Returns one
        report per output (max abs error, max rel error, ok).  The tolerances are the
        manifest's (at most ``MAX_RTOL``/``MAX_ATOL``) unless given here."""
        tol = self.manifest.golden
        rtol = tol.rtol if rtol is None else _tolerance("rtol", rtol)
        atol = tol.atol if atol is None else _tolerance("atol", atol)
        outs = self.run(*self.golden_inputs())
        reports = []
        for i, (spec, got) in enumerate(zip(self.outputs, outs)):
            want = self.artifact.golden[f"output_{i}"]
            err, rel = output_error(got, want)
            scale = float(np.abs(want).max()) if want.size else 0.0
            ok = bool(np.allclose(got, want, rtol=rtol, atol=atol * max(scale, 1e-30)))
            reports.append({"output": spec.name, "max_abs_err": err, "max_rel_err": rel, "ok": ok})
        return reports


def _tolerance(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < math.inf:
        raise InputError(f"{name}={value!r}: a tolerance is a finite number ≥ 0")
    return float(value)
