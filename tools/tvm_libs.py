"""Where TVM's runtime libraries come from, for ``sliver bundle`` and the native runtime's
build: ``libtvm_runtime.so`` and ``libtvm_ffi.so`` of the pinned wheels, for one CPU
architecture, from an installed site-packages folder or from wheel files."""

from __future__ import annotations

import importlib.util
import zipfile
from pathlib import Path

from sliver.common.errors import SliverError, UsageError
from sliver.common.platform import elf_arch, host_arch

TVM_VERSION = "0.27.0.post1"
TVM_FFI_VERSION = "0.1.14.post1"
#: library → (distribution, its path inside the wheel / site-packages, version)
LIBRARIES = {
    "libtvm_runtime.so": ("apache_tvm", "tvm/lib/libtvm_runtime.so", TVM_VERSION),
    "libtvm_ffi.so": ("apache_tvm_ffi", "tvm_ffi/lib/libtvm_ffi.so", TVM_FFI_VERSION),
}
#: the most a library may weigh (the aarch64 runtime is ~3 MB): a bigger file is not the runtime
_MAX_LIBRARY = 64 << 20


def _package_dir(name: str) -> Path:
    """The folder of an installed sliver package (pyproject maps them onto separate folders)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise SliverError(f"cannot locate the installed package {name!r}; reinstall sliver")
    return Path(list(spec.submodule_search_locations)[0])


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
