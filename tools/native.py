"""Build sliver's native runtime: ``libsliver.so`` (the C ABI of ``runtime/native/sliver.h``)
and the ``sliver-run`` program, for this machine or cross-compiled for aarch64.

    from sliver.tools import native
    built = native.build("aarch64", "out/native")   # out/native/sliver-run, out/native/lib/*.so

The sources ship with sliver's runtime package (``sliver/runtime/native/``). They are
compiled as C++17 against TVM FFI's headers, which ship in the apache-tvm-ffi wheel
(``tvm_ffi/include``: ``tvm/ffi/*.h`` and ``dlpack/dlpack.h``), and linked against
``libtvm_ffi.so`` and ``libtvm_runtime.so`` of the pinned wheels for the target
architecture (found as ``sliver bundle`` finds them).  The output folder is
self-contained: ``sliver-run`` finds ``lib/`` through its RUNPATH (``$ORIGIN/lib``).
Compilers: ``g++`` for this machine, ``aarch64-linux-gnu-g++`` (Debian's
``g++-aarch64-linux-gnu``, installed by ``tools/emulator/setup_pi_emulator.sh``) for the Pi.
"""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
from pathlib import Path

from sliver.common.errors import SliverError
from sliver.common.files import atomic_directory
from sliver.common.platform import host_arch
from sliver.tools import tvm_libs

SOURCES = ("sliver.cc", "sliver_run.cc")
HEADERS = ("sliver.h", "npy.hpp")
COMPILERS = {"x86_64": "x86_64-linux-gnu-g++", "aarch64": "aarch64-linux-gnu-g++"}
FLAGS = ["-std=c++17", "-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"]


@dataclasses.dataclass
class Native:
    path: Path  # the output folder
    arch: str
    runner: Path  # path/sliver-run
    library: Path  # path/lib/libsliver.so
    header: Path  # path/include/sliver.h


def sources() -> Path:
    """The folder of the C/C++ sources (shipped with the runtime package)."""
    folder = tvm_libs._package_dir("sliver.runtime") / "native"
    if not all((folder / n).is_file() for n in SOURCES + HEADERS):
        raise SliverError(f"{folder}: sliver's native sources are missing; reinstall sliver")
    return folder


def compiler(arch: str) -> str:
    """The C++ compiler that builds for ``arch``, or an error naming the package to install."""
    candidates = [COMPILERS.get(arch, "")] + (["g++", "c++"] if arch == host_arch() else [])
    for name in candidates:
        if name and shutil.which(name):
            return name
    package = "g++-aarch64-linux-gnu" if arch == "aarch64" else "g++"
    raise SliverError(f"no C++ compiler for {arch} (looked for {', '.join(c for c in candidates if c)}); install "
                      f"it with: sudo apt-get install {package} (tools/emulator/setup_pi_emulator.sh does)")


def _ffi_include(site: Path) -> Path:
    include = site / "tvm_ffi" / "include"
    if not (include / "tvm" / "ffi" / "c_api.h").is_file() or not (include / "dlpack" / "dlpack.h").is_file():
        raise SliverError(f"{site}: apache-tvm-ffi {tvm_libs.TVM_FFI_VERSION} has no C++ headers (tvm_ffi/include)")
    return include


def build(arch: str, out_dir, *, verbose: bool = False) -> Native:
    """Compile the native runtime for ``arch`` into ``out_dir`` (replaced if it is an
    earlier build); returns where everything is."""
    cxx = compiler(arch)
    src = sources()
    libs, source = tvm_libs.runtime_libraries(arch)
    include = _ffi_include(Path(source))
    out = Path(out_dir)

    def fill(tmp: Path) -> None:
        (tmp / "lib").mkdir()
        (tmp / "include").mkdir()
        for name, data in libs.items():
            (tmp / "lib" / name).write_bytes(data)
        shutil.copyfile(src / "sliver.h", tmp / "include" / "sliver.h")
        steps = [
            [cxx, *FLAGS, "-fPIC", "-shared", "-o", str(tmp / "lib" / "libsliver.so"), str(src / "sliver.cc"),
             f"-I{include}", f"-L{tmp / 'lib'}", "-Wl,--no-as-needed", "-ltvm_ffi", "-ltvm_runtime",
             "-Wl,-rpath,$ORIGIN", "-Wl,-soname,libsliver.so"],
            [cxx, *FLAGS, "-o", str(tmp / "sliver-run"), str(src / "sliver_run.cc"), f"-I{src}",
             f"-L{tmp / 'lib'}", "-lsliver", "-Wl,-rpath,$ORIGIN/lib", "-Wl,-rpath-link," + str(tmp / "lib")],
        ]
        for cmd in steps:
            if verbose:
                print(" ".join(cmd))
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                raise SliverError(f"compiling the native runtime for {arch} failed:\n{' '.join(cmd)}\n"
                                  f"{proc.stderr[-4000:]}")
        (tmp / "BUILD").write_text(f"native runtime for {arch}; TVM {tvm_libs.TVM_VERSION}, TVM FFI "
                                   f"{tvm_libs.TVM_FFI_VERSION} from {source}; compiler {cxx}\n")

    def replaceable(p: Path) -> bool:
        return (p / "BUILD").is_file()

    try:
        atomic_directory(out, fill, replaceable=replaceable)
    except FileExistsError:
        raise SliverError(f"{out} exists and is not a native runtime build; name a new or empty folder") from None
    return Native(out, arch, out / "sliver-run", out / "lib" / "libsliver.so", out / "include" / "sliver.h")
