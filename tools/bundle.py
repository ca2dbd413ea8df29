"""``sliver bundle ARTIFACT -o DIR``: a folder holding exactly what a device needs.

A device with Python 3 and numpy (Raspberry Pi OS ships both) runs an artifact with a
bundle and nothing else installed:

    DIR/run.py           the launcher: python3 DIR/run.py --verify  (or --inputs/--output)
    DIR/model.sliver     the artifact, unchanged
    DIR/lib/             libtvm_runtime.so and libtvm_ffi.so for the artifact's CPU
    DIR/python/sliver/   sliver's device runtime: sliver.runtime and sliver.common
    DIR/bundle.json      what is inside: versions, each file's size and sha256

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
import importlib.util
import json
import os
import re
import shutil
import stat
import zipfile
from pathlib import Path

from sliver.common.errors import ArtifactError, SliverError, UsageError
from sliver.common.files import atomic_directory
from sliver.common.platform import elf_arch, host_arch

TVM_VERSION = "0.27.0.post1"
TVM_FFI_VERSION = "0.1.14.post1"
#: library → (distribution, its path inside the wheel / site-packages, version)
LIBRARIES = {
    "libtvm_runtime.so": ("apache_tvm", "tvm/lib/libtvm_runtime.so", TVM_VERSION),
    "libtvm_ffi.so": ("apache_tvm_ffi", "tvm_ffi/lib/libtvm_ffi.so", TVM_FFI_VERSION),
}
BUNDLE_FORMAT = "sliver-bundle"
MANIFEST = "bundle.json"
ARTIFACT = "model.sliver"
LAUNCHER = "run.py"
#: the most a library may weigh (the aarch64 runtime is ~3 MB): a bigger file is not the runtime
_MAX_LIBRARY = 64 << 20
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
        parts = {"artifact": 0, "libtvm_runtime.so": 0, "libtvm_ffi.so": 0, "python": 0, "other": 0}
        for name, n in self.files.items():
            key = ("artifact" if name == ARTIFACT else Path(name).name if name.startswith("lib/")
                   else "python" if name.startswith("python/") else "other")
            parts[key] += n
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


# -- where the runtime libraries come from ------------------------------------------

def _installed_site(dist: str) -> Path | None:
    """The site-packages folder of this Python's installed ``dist`` (found without importing it)."""
    spec = importlib.util.find_spec(dist.replace("apache_", ""))
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]).parent


def _from_site(site: Path, arch: str) -> tuple[dict[str, bytes], str]:
    """The libraries from a site-packages folder holding both distributions, or ({}, why not)."""
    out = {}
    for lib, (dist, member, version) in LIBRARIES.items():
        if not (site / f"{dist}-{version}.dist-info").is_dir():
            found = sorted(p.name for p in site.glob(f"{dist}-*.dist-info"))
            return {}, f"{site}: {dist} {version} is not installed there ({', '.join(found) or 'none'})"
        path = site / member
        if not path.is_file() or path.stat().st_size > _MAX_LIBRARY:
            return {}, f"{site}: no {member}"
        data = path.read_bytes()
        if elf_arch(data) != arch:
            return {}, f"{site}: {member} is built for {elf_arch(data)}, not {arch}"
        out[lib] = data
    return out, ""


_WHEEL = re.compile(r"(?P<dist>[A-Za-z0-9_]+)-(?P<version>[^-]+)-.*\.whl")


def _from_wheels(folder: Path, arch: str) -> tuple[dict[str, bytes], str]:
    """The libraries from .whl files in ``folder`` (their platform tag must name ``arch``)."""
    out, why = {}, []
    for lib, (dist, member, version) in LIBRARIES.items():
        for wheel in sorted(folder.glob(f"{dist}-{version}-*.whl")):
            if not wheel.name.endswith(f"_{arch}.whl"):
                why.append(f"{wheel.name} is not for {arch}")
                continue
            try:
                with zipfile.ZipFile(wheel) as z:
                    info = z.getinfo(member)
                    if info.file_size > _MAX_LIBRARY:
                        raise ValueError(f"{member} is {info.file_size:,} bytes")
                    data = z.read(info)
            except (KeyError, ValueError, OSError, zipfile.BadZipFile, EOFError) as e:
                why.append(f"{wheel.name}: unreadable ({e})")
                continue
            if elf_arch(data) != arch:
                why.append(f"{wheel.name}: {member} is built for {elf_arch(data)}")
                continue
            out[lib] = data
            break
        else:
            return {}, f"{folder}: no usable {dist}-{version} wheel for {arch}" + (f" ({'; '.join(why)})" if why else "")
    return out, ""


def runtime_libraries(arch: str, wheels=None) -> tuple[dict[str, bytes], str]:
    """``{"libtvm_runtime.so": bytes, "libtvm_ffi.so": bytes}`` for ``arch`` and where they
    came from.  Looks in ``wheels`` (a folder of .whl files) when given, else in this
    Python's installed packages (``arch`` is this machine's) and in the emulated Pi's
    aarch64 wheels."""
    tried = []
    if wheels is not None:
        folder = Path(wheels)
        if not folder.is_dir():
            raise UsageError(f"--wheels {folder}: no such folder")
        libs, why = _from_wheels(folder, arch)
        if libs:
            return libs, str(folder)
        tried.append(why)
    else:
        sites = []
        if arch == host_arch():
            site = _installed_site("apache_tvm")
            if site is not None:
                sites.append(site)
        if arch == "aarch64":
            from sliver.tools.emulator import emulate

            sites.append(emulate.pi_root() / "site")
        for site in sites:
            if not site.is_dir():
                tried.append(f"{site}: not there")
                continue
            libs, why = _from_site(site, arch)
            if libs:
                return libs, str(site)
            tried.append(why)
    platform = {"aarch64": "manylinux_2_28_aarch64", "x86_64": "manylinux_2_28_x86_64"}.get(arch, arch)
    raise SliverError(
        f"no TVM {TVM_VERSION} / TVM FFI {TVM_FFI_VERSION} runtime libraries for {arch} found "
        f"({'; '.join(tried) or 'nowhere to look'}). Fetch the wheels with: pip download --no-deps "
        f"--only-binary=:all: --platform {platform} --python-version 3.11 apache-tvm=={TVM_VERSION} "
        f"apache-tvm-ffi=={TVM_FFI_VERSION} -d wheels && sliver bundle ARTIFACT -o DIR --wheels wheels"
        + (" (or run tools/emulator/setup_pi_emulator.sh, which fetches them)" if arch == "aarch64" else "")
    )


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
    with open(os.path.join(HERE, "bundle.json")) as f:
        files = json.load(f)["files"]
    for name, meta in files.items():
        if name.startswith("lib/"):
            with open(os.path.join(HERE, name), "rb") as f:
                if hashlib.sha256(f.read()).hexdigest() != meta["sha256"]:
                    sys.exit(f"sliver: error: {name} in {HERE} is damaged (its sha256 differs from bundle.json); "
                             "copy the bundle again")


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


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise SliverError(f"cannot locate the installed package {name!r}; reinstall sliver")
    return Path(list(spec.submodule_search_locations)[0])


def _is_bundle(path: Path) -> bool:
    try:
        return json.loads((path / MANIFEST).read_text()).get("format") == BUNDLE_FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def make_bundle(artifact, out_dir, *, wheels=None) -> Bundle:
    """Write the device bundle of ``artifact`` (a .sliver file) into ``out_dir``."""
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


def run(args) -> int:
    b = make_bundle(args.artifact, args.bundle_dir, wheels=args.wheels)
    print(b.report())
    print(f"copy {b.path} to the device and run: python3 {b.path.name}/{LAUNCHER} --verify")
    return 0
