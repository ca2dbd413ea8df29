"""Compilation targets by name.

``x86_64``  the build machine's own x86-64 CPU (its exact model is detected and
            recorded in the artifact's manifest),
``arm64``   a Raspberry Pi 4 class board: aarch64, Cortex-A72, NEON,
``rpi5``    a Raspberry Pi 5: aarch64, Cortex-A76, NEON + dot product,
or a raw TVM target dict (``{"kind": "llvm", "mtriple": ..., ...}``).

This module does not import TVM; :func:`tvm_target` does, when asked.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field

from sliver.common.errors import TargetError
from sliver.common.platform import host_arch


@dataclass(frozen=True)
class Target:
    name: str
    arch: str  # the machine the artifact runs on: "x86_64" or "aarch64"
    spec: dict = field(hash=False)  # the TVM target dict
    cross_compiler: str | None = None  # gcc to link with, None for the host compiler


def _host_cpu() -> str:
    from tvm.target import codegen  # the wheel's LLVM knows the host CPU; "native" is ignored

    return codegen.llvm_get_system_cpu()


def _arm(name: str, mcpu: str, mattr: list[str], cores: int) -> Target:
    spec = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": mcpu, "mattr": mattr, "num-cores": cores}
    cross = None if host_arch() == "aarch64" else "aarch64-linux-gnu-gcc"
    return Target(name, "aarch64", spec, cross)


def _x86() -> Target:
    import os

    spec = {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": _host_cpu(), "num-cores": os.cpu_count() or 1}
    cross = None if host_arch() == "x86_64" else "x86_64-linux-gnu-gcc"
    return Target("x86_64", "x86_64", spec, cross)


NAMES = {
    "x86_64": _x86,
    "arm64": lambda: _arm("arm64", "cortex-a72", ["+neon"], 4),
    "rpi4": lambda: _arm("rpi4", "cortex-a72", ["+neon"], 4),
    "rpi5": lambda: _arm("rpi5", "cortex-a76", ["+neon", "+dotprod"], 4),
}
ALIASES = {"x86": "x86_64", "x86-64": "x86_64", "host-x86_64": "x86_64", "aarch64": "arm64"}


def resolve(target) -> Target:
    """A :class:`Target` from a name, a TVM target dict, or a Target."""
    if isinstance(target, Target):
        return target
    if isinstance(target, dict):
        if target.get("kind") != "llvm":
            raise TargetError(f"sliver compiles for CPUs: target dicts need \"kind\": \"llvm\", got {target!r}")
        triple = str(target.get("mtriple", ""))
        arch = "aarch64" if triple.startswith("aarch64") else "x86_64" if triple.startswith("x86_64") or not triple else None
        if arch is None:
            raise TargetError(f"unsupported mtriple {triple!r}: sliver targets aarch64-linux-gnu and x86_64-linux-gnu")
        spec = dict(target)
        if arch == "x86_64" and "mcpu" not in spec and host_arch() == "x86_64":
            spec["mcpu"] = _host_cpu()
        if spec.get("mcpu") == "native":
            raise TargetError('"mcpu": "native" is silently ignored by TVM\'s LLVM; use the target name "x86_64"')
        cross = None if arch == host_arch() else f"{arch}-linux-gnu-gcc"
        return Target("custom", arch, spec, cross)
    if not isinstance(target, str):
        raise TargetError(f"a target is a name ({', '.join(NAMES)}) or a TVM target dict, not {type(target).__name__}")
    key = ALIASES.get(target, target)
    if key not in NAMES:
        raise TargetError(f"unknown target {target!r}; choose one of {', '.join(NAMES)} or pass a TVM target dict")
    return NAMES[key]()


def check_toolchain(target: Target) -> None:
    """Fail early, with the fix, when the cross compiler is missing."""
    if target.cross_compiler and shutil.which(target.cross_compiler) is None:
        raise TargetError(
            f"compiling for {target.name} needs the cross compiler {target.cross_compiler}, which is not installed; "
            "run `bash tools/emulator/setup_pi_emulator.sh` (or `apt-get install gcc-aarch64-linux-gnu`)"
        )


def tvm_target(target: Target):
    import tvm

    return tvm.target.Target(target.spec)
