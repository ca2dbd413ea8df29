"""The ``.sliver`` artifact: one file holding everything a device needs.

A zip archive (stored, not compressed: the library is mostly weights) of

    manifest.json   versions, target, input/output names, shapes and dtypes,
                    the pass pipeline, sha256 of the library, tolerances
    lib.so          the compiled TVM library (weights included)
    golden.npz      example inputs and the reference outputs for them

``load`` checks the archive, the hash and the CPU architecture before any code
is loaded, and only then opens the library with the TVM runtime.  This module
imports neither torch nor TVM's compiler; set ``TVM_USE_RUNTIME_LIB=1`` (as
``sliver run`` does) to load only TVM's runtime library.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from sliver.common.errors import ArtifactError, InputError
from sliver.common.files import atomic_write
from sliver.common.numerics import output_error
from sliver.common.platform import elf_arch, host_arch

from sliver.runtime.manifest import FORMAT, FORMAT_VERSION, NUMPY_DTYPES, Manifest, parse  # noqa: F401

LIBRARY = "lib.so"
MANIFEST = "manifest.json"
GOLDEN = "golden.npz"


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

    def __post_init__(self):
        if isinstance(self.manifest, dict):
            self.manifest = Manifest.from_json(self.manifest)

    @property
    def target(self) -> str:
        return self.manifest.target.name

    def save(self, path) -> Path:
        """Write the artifact atomically: a crash never leaves a half-written file."""
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

        return atomic_write(path, write)

    def load(self) -> "CompiledModel":
        """Run this artifact in the current process (its target must be this machine)."""
        return CompiledModel(self)

    def __call__(self, *inputs):
        return self.load()(*inputs)


def read(path) -> Artifact:
    """Read and check a ``.sliver`` file without loading its code."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path}: no such artifact file")
    try:
        with zipfile.ZipFile(path) as z:
            names = set(z.namelist())
            missing = {MANIFEST, LIBRARY, GOLDEN} - names
            if missing:
                raise ArtifactError(f"{path}: not a complete sliver artifact (missing {', '.join(sorted(missing))})")
            manifest_bytes = z.read(MANIFEST)
            library = z.read(LIBRARY)
            golden_bytes = z.read(GOLDEN)
    except ArtifactError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, KeyError, ValueError) as e:
        raise ArtifactError(
            f"{path}: the artifact is corrupt or truncated ({e}); copy it again or rebuild it with `sliver lower`"
        ) from None
    try:
        manifest = parse(manifest_bytes)
    except ArtifactError as e:
        raise ArtifactError(f"{path}: {e}") from None
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
    return Artifact(library, manifest, golden)


def _read_golden(path, data: bytes, manifest: Manifest) -> dict[str, np.ndarray]:
    """The golden arrays, checked against the manifest's inputs and outputs."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as g:
            golden = {k: g[k] for k in g.files}
    except Exception as e:  # numpy raises ValueError, OSError, zipfile and pickle errors for a damaged npz
        raise ArtifactError(f"{path}: {GOLDEN} is damaged ({type(e).__name__}: {e}); rebuild it with `sliver lower`")
    for kind, specs in (("input", manifest.inputs), ("output", manifest.outputs)):
        for i, spec in enumerate(specs):
            a = golden.get(f"{kind}_{i}")
            if a is None:
                raise ArtifactError(f"{path}: {GOLDEN} has no {kind}_{i} ({spec.name}); rebuild it with `sliver lower`")
            if list(a.shape) != spec.shape or (kind == "input" and a.dtype != numpy_dtype(spec.dtype)):
                raise ArtifactError(f"{path}: {GOLDEN}'s {kind}_{i} is {a.dtype}{list(a.shape)}, the manifest says "
                                    f"{numpy_dtype(spec.dtype)}{spec.shape}; rebuild it with `sliver lower`")
    return golden


def load(path) -> "CompiledModel":
    """Load a ``.sliver`` artifact for running on this machine."""
    return CompiledModel(read(path), source=str(path))


def _import_tvm_runtime():
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
    """A loaded artifact: call it with numpy arrays, get numpy arrays back."""

    def __init__(self, artifact: Artifact, source: str = "<memory>"):
        self.artifact = artifact
        self.manifest = artifact.manifest
        self.source = source
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
        self._tmp = tempfile.TemporaryDirectory(prefix="sliver-")
        lib_path = os.path.join(self._tmp.name, LIBRARY)
        with open(lib_path, "wb") as f:
            f.write(artifact.library)
        try:
            lib = tvm.runtime.load_module(lib_path)
            self._vm = tvm.runtime.vm.VirtualMachine(lib, tvm.cpu())
        except Exception as e:
            raise ArtifactError(f"{source}: the TVM runtime could not load the library: {e}") from e
        self._tvm = tvm
        self.inputs = self.manifest.inputs
        self.outputs = self.manifest.outputs

    def _check(self, inputs: Sequence) -> list[np.ndarray]:
        if len(inputs) != len(self.inputs):
            names = ", ".join(i.name for i in self.inputs)
            raise InputError(f"the model takes {len(self.inputs)} input(s) ({names}), got {len(inputs)}")
        out = []
        for spec, x in zip(self.inputs, inputs):
            x = np.asarray(x)
            want_dtype = numpy_dtype(spec.dtype)
            if list(x.shape) != spec.shape:
                raise InputError(
                    f"input {spec.name!r} must have shape {spec.shape}, got {list(x.shape)} "
                    "(artifacts are compiled for fixed shapes: lower again for a new shape)"
                )
            if x.dtype != want_dtype:
                raise InputError(
                    f"input {spec.name!r} must be {want_dtype}, got {x.dtype} (convert with .astype(np.{want_dtype}))"
                )
            out.append(np.ascontiguousarray(x))
        return out

    def run(self, *inputs) -> list[np.ndarray]:
        """Always a list of outputs."""
        arrays = self._check(inputs)
        result = self._vm["main"](*[self._tvm.runtime.tensor(a) for a in arrays])
        results = list(result) if len(self.outputs) > 1 else [result]
        return [r.numpy() for r in results]

    def __call__(self, *inputs):
        """One output → the array; several → a tuple."""
        outs = self.run(*inputs)
        return outs[0] if len(outs) == 1 else tuple(outs)

    def golden_inputs(self) -> list[np.ndarray]:
        return [self.artifact.golden[f"input_{i}"] for i in range(len(self.inputs))]

    def verify(self) -> list[dict]:
        """Run the golden inputs and compare with the golden outputs.  Returns one
        report per output (max abs error, max rel error, ok)."""
        tol = self.manifest.golden
        outs = self.run(*self.golden_inputs())
        reports = []
        for i, (spec, got) in enumerate(zip(self.outputs, outs)):
            want = self.artifact.golden[f"output_{i}"]
            err, rel = output_error(got, want)
            scale = float(np.abs(want).max()) if want.size else 0.0
            ok = bool(np.allclose(got, want, rtol=tol.rtol, atol=tol.atol * max(scale, 1e-30)))
            reports.append({"output": spec.name, "max_abs_err": err, "max_rel_err": rel, "ok": ok})
        return reports
