"""``sliver bundle ARTIFACT -o DIR``: a folder holding exactly what a device needs.

A device with Python 3 and numpy (Raspberry Pi OS ships both) runs an artifact with a
bundle and nothing else installed:

    DIR/run.py           the launcher: python3 DIR/run.py --verify  (or --inputs/--output)
    DIR/model.sliver     the artifact, unchanged
    DIR/lib/             libtvm_runtime.so and libtvm_ffi.so for the artifact's CPU
    DIR/python/sliver/   sliver's device runtime: sliver.runtime and sliver.common
    DIR/bundle.json      what is inside: versions, each file's size and sha256
    with --native:       DIR/sliver-run, DIR/lib/libsliver.so, DIR/include/sliver.h
                         (the native runtime, sliver.tools.native: no Python needed)

The two libraries come from the TVM and TVM FFI wheels sliver is pinned to
(apache-tvm 0.27.0.post1, apache-tvm-ffi 0.1.14.post1), for the artifact's architecture:
from the installed packages when the artifact is for this machine, from the emulated
Pi's aarch64 wheels (``tools/emulator/setup_pi_emulator.sh``) for aarch64, or from
wheel files in a folder (``--wheels DIR``, e.g. from ``pip download``).  TVM's and TVM
FFI's Python packages stay behind: the runtime reaches the libraries through their C
ABI (:mod:`sliver.runtime.tvm_c`), so the bundle works with any Python 3.10+.

The folder is built beside ``DIR`` and moved into place when complete; an existing
``DIR`` is replaced only if it is an earlier bundle (or empty).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import stat
from pathlib import Path

from sliver.common.errors import ArtifactError, UsageError
from sliver.common.files import atomic_directory
from sliver.common.platform import elf_arch
from sliver.tools.tvm_libs import (  # noqa: F401  (part of this module's API)
    LIBRARIES, TVM_FFI_VERSION, TVM_VERSION, _installed_site, _package_dir, runtime_libraries,
)

BUNDLE_FORMAT = "sliver-bundle"
MANIFEST = "bundle.json"
ARTIFACT = "model.sliver"
LAUNCHER = "run.py"
#: what --native adds: the C++ runner, the C ABI's library and its header
NATIVE_FILES = ("sliver-run", "lib/libsliver.so", "include/sliver.h")
#: the sliver packages a device needs (dotted name → folder in the bundle)
PACKAGES = {"sliver.common": "common", "sliver.runtime": "runtime"}


@dataclasses.dataclass
class Bundle:
    """What ``make_bundle`` wrote: the folder, the architecture, each file's size."""

    path: Path
    arch: str
    files: dict[str, int]
    source: str  # where the libraries came from

    @property
    def total(self) -> int:
        return sum(self.files.values())

    def sizes(self) -> dict[str, int]:
        """Bytes per part: artifact, TVM runtime, TVM FFI, Python code, launcher and manifest."""
        parts = {"artifact": 0, "libtvm_runtime.so": 0, "libtvm_ffi.so": 0, "python": 0}
        for name, n in self.files.items():
            key = ("artifact" if name == ARTIFACT else Path(name).name if name[4:] in LIBRARIES
                   else "python" if name.startswith("python/") else "native" if name in NATIVE_FILES else "other")
            parts[key] = parts.get(key, 0) + n
        return parts

    def report(self) -> str:
        mb = 1 << 20
        parts = ", ".join(f"{k} {v / mb:.2f} MB" for k, v in self.sizes().items())
        return f"{self.path}: {self.arch} bundle, {self.total / mb:.2f} MB ({parts}); libraries from {self.source}"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# -- the bundle ----------------------------------------------------------------------

LAUNCHER_SOURCE = '''\
#!/usr/bin/env python3
"""Run this bundle's model with this Python and numpy (nothing else installed):

    python3 run.py --verify                         # the golden inputs vs the golden outputs
    python3 run.py --inputs in.npz --output out.npz  # your inputs (arrays in input order, or by name)
    python3 run.py --help

In your own code: sys.path.insert(0, "BUNDLE/python"); os.environ["SLIVER_TVM_LIB_DIR"] =
"BUNDLE/lib"; import sliver; model = sliver.load("BUNDLE/model.sliver").
"""
import hashlib
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def check_libraries():
    """The runtime libraries must be the ones the bundle was made with (a damaged copy
    would otherwise crash inside the dynamic loader)."""
    try:
        with open(os.path.join(HERE, "bundle.json")) as f:
            files = json.load(f)["files"]
        libs = {name: files[name]["sha256"] for name in ("lib/libtvm_ffi.so", "lib/libtvm_runtime.so")}
        for name, digest in libs.items():
            with open(os.path.join(HERE, name), "rb") as f:
                if hashlib.sha256(f.read()).hexdigest() != digest:
                    sys.exit(f"sliver: error: {name} in {HERE} is damaged (its sha256 differs from bundle.json); "
                             "copy the bundle again")
    except (OSError, ValueError, KeyError, TypeError) as e:
        sys.exit(f"sliver: error: {HERE} is not a complete sliver bundle ({type(e).__name__}: {e}); copy it again "
                 "or make it again with `sliver bundle`")


if __name__ == "__main__":
    if sys.version_info < (3, 10):
        sys.exit(f"sliver: error: this bundle needs Python 3.10 or newer, not {sys.version.split()[0]}")
    try:
        import numpy  # noqa: F401
    except ImportError:
        sys.exit("sliver: error: this bundle needs numpy: sudo apt install python3-numpy (or pip install numpy)")
    check_libraries()
    sys.path.insert(0, os.path.join(HERE, "python"))
    os.environ["SLIVER_TVM_LIB_DIR"] = os.path.join(HERE, "lib")
    from sliver.runtime.cli import main

    sys.exit(main(["run", os.path.join(HERE, "model.sliver"), *sys.argv[1:]]))
'''


def _copy_native(built, dest: Path) -> None:
    if built.arch != dest_arch(dest):
        raise UsageError(f"the native runtime in {built.path} is for {built.arch}, the artifact for {dest_arch(dest)}")
    for name in NATIVE_FILES:
        (dest / name).parent.mkdir(exist_ok=True)
        shutil.copy2(built.path / name, dest / name)


def dest_arch(folder: Path) -> str | None:
    """The CPU architecture of the TVM runtime library in a bundle folder."""
    with open(folder / "lib" / "libtvm_runtime.so", "rb") as f:
        return elf_arch(f.read(64))


def _is_bundle(path: Path) -> bool:
    try:
        return json.loads((path / MANIFEST).read_text()).get("format") == BUNDLE_FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def make_bundle(artifact, out_dir, *, wheels=None, native=False) -> Bundle:
    """Write the device bundle of ``artifact`` (a .sliver file) into ``out_dir``; with
    ``native``, also the native runtime for its CPU (``sliver-run``, ``lib/libsliver.so``,
    ``include/sliver.h``), built here (``native=True``) or taken from an earlier
    :func:`sliver.tools.native.build` for that CPU (``native=`` its result)."""
    from sliver.runtime.artifact import read

    artifact = Path(artifact)
    art = read(artifact)  # every check a device would make, before anything is written
    arch = art.manifest.target.arch
    if art.manifest.tvm_version.split("+")[0] != TVM_VERSION:
        raise ArtifactError(f"{artifact} was compiled with TVM {art.manifest.tvm_version}; the bundle's runtime is "
                            f"TVM {TVM_VERSION}: lower the model again with this sliver")
    libs, source = runtime_libraries(arch, wheels)
    out = Path(out_dir)

    def fill(tmp: Path) -> None:
        shutil.copyfile(artifact, tmp / ARTIFACT)
        (tmp / "lib").mkdir()
        for name, data in libs.items():
            (tmp / "lib" / name).write_bytes(data)
            os.chmod(tmp / "lib" / name, 0o755)
        pkg = tmp / "python" / "sliver"
        pkg.mkdir(parents=True)
        shutil.copyfile(_package_dir("sliver") / "__init__.py", pkg / "__init__.py")
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "native")
        for name, folder in PACKAGES.items():
            shutil.copytree(_package_dir(name), pkg / folder, ignore=ignore)
        (tmp / LAUNCHER).write_text(LAUNCHER_SOURCE)
        os.chmod(tmp / LAUNCHER, 0o755)
        if native is True:
            import tempfile

            from sliver.tools import native as _native

            with tempfile.TemporaryDirectory(prefix="sliver-native-") as build_dir:
                _copy_native(_native.build(arch, Path(build_dir) / "native"), tmp)
        elif native:
            _copy_native(native, tmp)
        files = {}
        for p in sorted(tmp.rglob("*")):
            if p.is_file() and not p.is_symlink():
                rel = p.relative_to(tmp).as_posix()
                files[rel] = {"bytes": p.stat().st_size, "sha256": _sha256(p)}
        meta = {
            "format": BUNDLE_FORMAT, "version": 1, "arch": arch, "target": art.manifest.target.name,
            "tvm": TVM_VERSION, "tvm_ffi": TVM_FFI_VERSION, "launcher": f"python3 {LAUNCHER}", "files": files,
        }
        (tmp / MANIFEST).write_text(json.dumps(meta, indent=1) + "\n")

    try:
        atomic_directory(out, fill, replaceable=_is_bundle)
    except FileExistsError:
        raise UsageError(f"-o {out}: exists and is not a sliver bundle; name a new or empty folder") from None
    files = {p.relative_to(out).as_posix(): p.stat().st_size for p in out.rglob("*")
             if p.is_file() and stat.S_ISREG(p.lstat().st_mode)}
    return Bundle(out, arch, files, source)


def add_arguments(p) -> None:
    p.add_argument("artifact", help="a .sliver file")
    p.add_argument("-o", "--output", dest="bundle_dir", required=True, metavar="DIR",
                   help="the folder to write (replaced if it holds an earlier bundle)")
    p.add_argument("--wheels", metavar="DIR", help="take libtvm_runtime.so and libtvm_ffi.so from the apache-tvm "
                   f"{TVM_VERSION} and apache-tvm-ffi {TVM_FFI_VERSION} wheels in DIR (default: the installed "
                   "packages, or the emulated Pi's aarch64 wheels)")
    p.add_argument("--native", action="store_true", help="also build the native runtime for the artifact's CPU: "
                   "sliver-run (run it without Python: ./sliver-run model.sliver --verify), lib/libsliver.so and "
                   "include/sliver.h (needs g++, or aarch64-linux-gnu-g++ for arm64)")


def run(args) -> int:
    b = make_bundle(args.artifact, args.bundle_dir, wheels=args.wheels, native=args.native)
    print(b.report())
    print(f"copy {b.path} to the device and run: python3 {b.path.name}/{LAUNCHER} --verify"
          + (f" (or, without Python: {b.path.name}/sliver-run {b.path.name}/{ARTIFACT} --verify)" if args.native else ""))
    return 0
