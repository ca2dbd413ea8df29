"""Compilation targets by name, and the CPU facts every later step reads from them.

``x86_64``     this build machine's own x86-64 CPU: TVM's LLVM and the C kernels use
               every instruction it has (its exact model, e.g. ``znver5``, is recorded
               in the artifact's manifest).  The artifact may stop with SIGILL on
               another x86-64 CPU that lacks one of them;
``x86-64-v2``  any x86-64 CPU with SSE4.2 and POPCNT (Nehalem, Bulldozer and later),
``x86-64-v3``  any x86-64 CPU with AVX2, FMA and BMI2 (Haswell, Zen 1 and later),
``x86-64-v4``  any x86-64 CPU with AVX-512 F/BW/CD/DQ/VL (Skylake-SP, Zen 4 and later):
               the portable x86 targets, whose artifacts run on every CPU of the level,
``arm64``      a Raspberry Pi 4 class board: aarch64, Cortex-A72, NEON (alias ``rpi4``),
``rpi5``       a Raspberry Pi 5: aarch64, Cortex-A76, NEON + dot product,
or a raw TVM target dict (``{"kind": "llvm", "mtriple": ..., "mcpu": ...}``).

:func:`resolve` builds a :class:`Target` once; it carries what the backend needs to
know about the CPU (vector lanes, registers, cores, the low-bit kernel policy, the C
compiler's flags), so nothing downstream parses a triple or a CPU name again.

This module imports TVM only to ask its LLVM about a CPU it does not know the facts of
(the host's, or a target dict's ``mcpu``).
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from dataclasses import dataclass, field

from sliver.common.errors import TargetError
from sliver.common.platform import host_arch

#: LLVM's feature names each x86-64 micro-architecture level adds (the psABI's levels).
X86_LEVEL_FEATURES = {
    "x86-64-v2": ("cx16", "popcnt", "sahf", "sse3", "sse4.1", "sse4.2", "ssse3"),
    "x86-64-v3": ("avx", "avx2", "bmi", "bmi2", "f16c", "fma", "lzcnt", "movbe", "xsave"),
    "x86-64-v4": ("avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"),
}
X86_LEVELS = tuple(X86_LEVEL_FEATURES)

#: The kernel a low-bit layer below 8 bits gets per architecture, picked by
#: ``python -m sliver.benchmarks.bench_lowbit`` (docs/results/lowbit.md): on aarch64
#: bit-serial (NEON cnt) executes 2.8-2.9x fewer instructions than the int8 kernel on
#: ResNet-18 3x3 convs; on x86-64 (AVX2 nibble-table popcount, no vector popcount
#: instruction) bit-serial beat unpacking to the int8 kernel's byte dot products only on
#: long rows (3x3x128: 1.13x, 3x3x256: 1.35x) and lost on 3x3x64 (0.78x) and the small
#: CNN end to end (0.66x): there a layer gets bit-serial only when one bit plane of its
#: row has at least :data:`BITSERIAL_MIN_ROW` bytes, else the int8 kernel.
LOWBIT_KERNEL = {"aarch64": "bitserial", "x86_64": "bitserial"}
#: Per architecture: the shortest bit-plane row (KH*KW*ceil(Cg/8) bytes) given to the
#: bit-serial kernel; shorter ones go to the int8 kernel.
BITSERIAL_MIN_ROW = {"x86_64": 128}


@dataclass(frozen=True)
class Target:
    """A compilation target with its CPU facts, made by :func:`resolve`."""

    name: str
    arch: str  # the machine the artifact runs on: "x86_64" or "aarch64"
    spec: dict = field(hash=False)  # the TVM target dict
    cross_compiler: str | None = None  # gcc to link with, None for the host compiler
    cpu: str = "generic"  # LLVM's CPU name (the TVM target's mcpu): "znver5", "x86-64-v3", "cortex-a72"
    level: str | None = None  # x86-64: the micro-architecture level its code needs ("x86-64-v3")
    portable: bool = True  # False: compiled for this build machine's exact CPU
    lanes: int = 4  # float32 lanes in one vector register (16 AVX-512, 8 AVX2, 4 NEON/SSE)
    registers: int = 16  # architectural vector registers (32 on AVX-512 and AArch64)
    cores: int = 1
    gcc_flags: tuple = ()  # the C kernels' machine flags (only ones the C compiler accepts)
    lowbit_kernel: str = "generic"  # the kernel for low-bit layers below 8 bits (LOWBIT_KERNEL)
    bitserial_min_row: int = 0  # ... when one bit plane of a row has at least this many bytes
    runs_on: str = ""  # which CPUs the artifact runs on, for people
    #: the int8 kernel's dot-product instructions (INT8_DOT), chosen from the CPU's features
    int8_dot: str = "scalar"
    #: post-training int8 activation codes: "uint8" (asymmetric, u8 x s8 products as
    #: vpdpbusd / vpmaddubsw take them) or "int8" (symmetric, s8 x s8 as sdot / smull)
    int8_activations: str = "uint8"

    @property
    def triple(self) -> str:
        return str(self.spec.get("mtriple", ""))

    def facts(self) -> dict:
        """What the artifact's manifest records about the target."""
        return {"name": self.name, "arch": self.arch, "tvm": self.spec, "cpu": self.cpu, "level": self.level,
                "portable": self.portable, "runs_on": self.runs_on, "int8_dot": self.int8_dot}


# -- the C compiler -------------------------------------------------------------------------


def c_compiler(target_cross: str | None = None) -> str:
    """The compiler TVM links the library with (and the C kernels are compiled by)."""
    if target_cross:
        return target_cross
    for name in (os.environ.get("CXX"), os.environ.get("CC"), "g++", "gcc", "clang++", "clang", "c++", "cc"):
        if name and shutil.which(name.split()[0]):
            return name
    return "g++"


@functools.lru_cache(maxsize=None)
def compiler_accepts(compiler: str, *flags: str) -> bool:
    """Whether ``compiler`` accepts the machine ``flags`` (compiling an empty C file)."""
    try:
        proc = subprocess.run(compiler.split() + [*flags, "-x", "c", "-c", "-o", os.devnull, "-"], input=b"",
                              capture_output=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return False
    return proc.returncode == 0


#: gcc's flags for each level's features, for compilers that do not know ``-march=x86-64-vN``
#: (gcc before 11)
_GCC_LEVEL_FLAGS = {
    "x86-64-v2": ("-mcx16", "-mpopcnt", "-msahf", "-msse3", "-msse4.1", "-msse4.2", "-mssse3"),
    "x86-64-v3": ("-mavx", "-mavx2", "-mbmi", "-mbmi2", "-mf16c", "-mfma", "-mlzcnt", "-mmovbe", "-mxsave"),
    "x86-64-v4": ("-mavx512f", "-mavx512bw", "-mavx512cd", "-mavx512dq", "-mavx512vl"),
}


def _x86_level_flags(compiler: str, level: str | None) -> tuple:
    """Flags for code that runs on any CPU of ``level`` (None: baseline x86-64)."""
    if level is None:
        return ("-march=x86-64", "-mtune=generic")
    if compiler_accepts(compiler, f"-march={level}"):
        return (f"-march={level}", "-mtune=generic")
    flags = ["-march=x86-64", "-mtune=generic"]
    for lv in X86_LEVELS[: X86_LEVELS.index(level) + 1]:
        flags += _GCC_LEVEL_FLAGS[lv]
    return tuple(flags)


def _gcc_flags(arch: str, cpu: str, level: str | None, *, native: bool, cross: str | None,
               mattr=()) -> tuple:
    """The C compiler's machine flags: ``-march=native`` for this machine's own CPU, the
    CPU's name where the compiler knows it, else the flags of the CPU's feature level;
    never a CPU name the compiler would reject (gcc 12 does not know ``znver5``)."""
    compiler = c_compiler(cross)
    if arch == "aarch64":
        if compiler_accepts(compiler, f"-mcpu={cpu}"):
            return (f"-mcpu={cpu}",)
        return ("-march=armv8.2-a+dotprod",) if "+dotprod" in mattr else ("-march=armv8-a",)
    if native and compiler_accepts(compiler, "-march=native"):
        return ("-march=native",)
    if cpu not in X86_LEVELS and cpu != "generic" and compiler_accepts(compiler, f"-march={cpu}"):
        return (f"-march={cpu}",)
    return _x86_level_flags(compiler, level)


# -- CPU facts ---------------------------------------------------------------------------------


def _llvm_features(spec: dict) -> set[str]:
    """The features LLVM enables for ``spec``'s CPU (mcpu and mattr)."""
    import tvm
    from tvm.target import codegen

    return set(codegen.llvm_get_cpu_features(tvm.target.Target(spec)))


def x86_level(features) -> str | None:
    """The highest x86-64 level whose features are all in ``features`` (None: baseline)."""
    level = None
    have = set(features)
    for lv in X86_LEVELS:
        if not set(X86_LEVEL_FEATURES[lv]) <= have:
            break
        level = lv
    return level


def _level_features(level: str | None) -> set[str]:
    if level is None:
        return set()
    return {f for lv in X86_LEVELS[: X86_LEVELS.index(level) + 1] for f in X86_LEVEL_FEATURES[lv]}


def _x86_vector(features) -> tuple[int, int]:
    """(float32 lanes, vector registers) of an x86-64 CPU with ``features``."""
    if "avx512f" in features:
        return 16, 32
    if "avx2" in features or "avx" in features:
        return 8, 16
    return 4, 16


_LEVEL_WORDS = {
    None: "any x86-64 CPU",
    "x86-64-v2": "any x86-64 CPU with SSE4.2 and POPCNT (x86-64-v2)",
    "x86-64-v3": "any x86-64 CPU with AVX2, FMA and BMI2 (x86-64-v3: Haswell, Zen 1 and later)",
    "x86-64-v4": "any x86-64 CPU with AVX-512 F/BW/CD/DQ/VL (x86-64-v4: Skylake-SP, Zen 4 and later)",
}


#: the int8 kernel's inner product per instruction set (``kernels/lowbit.c`` picks the same
#: one from the compiler's macros, which follow the target's flags):
INT8_DOT = {
    "avx512-vnni": "vpdpbusd zmm (AVX-512 VNNI): u8 x s8, four products into each int32 lane",
    "avx-vnni": "vpdpbusd ymm (AVX-VNNI): u8 x s8, four products into each int32 lane",
    "avx2": "bytes widened to int16, vpmaddwd (AVX2; exact, where vpmaddubsw would saturate)",
    "sdot": "sdot (Armv8.2 dot product): s8 x s8, four products into each int32 lane",
    "neon": "smull + smlal2 + sadalp (Armv8.0 NEON): s8 x s8 into int16 pairs, then int32",
    "scalar": "scalar C",
}


def int8_dot(arch: str, features) -> str:
    """The int8 kernel's instructions (a key of :data:`INT8_DOT`) for a CPU's features
    (LLVM feature names for x86, the target's ``mattr`` for aarch64)."""
    f = set(features)
    if arch == "aarch64":
        return "sdot" if ("+dotprod" in f or "dotprod" in f) else "neon"
    if "avx512vnni" in f and "avx512bw" in f:
        return "avx512-vnni"
    if "avxvnni" in f:
        return "avx-vnni"
    return "avx2" if "avx2" in f else "scalar"


def _host_cpu() -> str:
    from tvm.target import codegen  # the wheel's LLVM knows the host CPU; "native" is ignored

    return codegen.llvm_get_system_cpu()


def _cores() -> int:
    return os.cpu_count() or 1


def _x86(name: str, spec: dict, *, native: bool, features: set[str] | None = None) -> Target:
    cross = None if host_arch() == "x86_64" else "x86_64-linux-gnu-gcc"
    cpu = str(spec.get("mcpu", "generic"))
    if features is None:
        features = _llvm_features(spec)
    level = x86_level(features)
    lanes, registers = _x86_vector(features)
    if native:
        runs_on = (f"this build machine's CPU ({cpu}) and CPUs with every feature it has; build for "
                   "x86-64-v3 or x86-64-v4 for an artifact that runs on any CPU of that level")
    elif cpu in X86_LEVELS:
        runs_on = _LEVEL_WORDS[level]
    else:
        runs_on = f"x86-64 CPUs with every feature of {cpu}"
    return Target(name, "x86_64", spec, cross, cpu=cpu, level=level, portable=not native and cpu in X86_LEVELS,
                  lanes=lanes, registers=registers, cores=int(spec.get("num-cores", 1)),
                  gcc_flags=_gcc_flags("x86_64", cpu, level, native=native, cross=cross),
                  lowbit_kernel=LOWBIT_KERNEL["x86_64"], bitserial_min_row=BITSERIAL_MIN_ROW["x86_64"],
                  runs_on=runs_on, int8_dot=int8_dot("x86_64", features), int8_activations="uint8")


@functools.lru_cache(maxsize=None)
def _host_x86() -> Target:
    if host_arch() != "x86_64":
        raise TargetError(f"the target x86_64 means this build machine's own x86-64 CPU, and this machine is "
                          f"{host_arch()}; use x86-64-v2, x86-64-v3 or x86-64-v4")
    spec = {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": _host_cpu(), "num-cores": _cores()}
    return _x86("x86_64", spec, native=True)


@functools.lru_cache(maxsize=None)
def _level(level: str) -> Target:
    spec = {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": level, "num-cores": _cores()}
    return _x86(level, spec, native=False, features=_level_features(level))


def _aarch64(name: str, spec: dict, runs_on: str) -> Target:
    cross = None if host_arch() == "aarch64" else "aarch64-linux-gnu-gcc"
    cpu = str(spec.get("mcpu", "cortex-a72"))
    mattr = tuple(spec.get("mattr", ()))
    return Target(name, "aarch64", spec, cross, cpu=cpu, level=None, portable=True, lanes=4, registers=32,
                  cores=int(spec.get("num-cores", 1)),
                  gcc_flags=_gcc_flags("aarch64", cpu, None, native=False, cross=cross, mattr=mattr),
                  lowbit_kernel=LOWBIT_KERNEL["aarch64"], bitserial_min_row=BITSERIAL_MIN_ROW.get("aarch64", 0),
                  runs_on=runs_on, int8_dot=int8_dot("aarch64", mattr), int8_activations="int8")


def _arm(name: str, mcpu: str, mattr: list[str], cores: int, board: str) -> Target:
    spec = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": mcpu, "mattr": mattr, "num-cores": cores}
    return _aarch64(name, spec, f"{board} and later aarch64 CPUs with the features of a {mcpu}")


NAMES = {
    "x86_64": _host_x86,
    "arm64": lambda: _arm("arm64", "cortex-a72", ["+neon"], 4, "Raspberry Pi 4 class boards (Cortex-A72)"),
    "rpi4": lambda: _arm("rpi4", "cortex-a72", ["+neon"], 4, "Raspberry Pi 4 class boards (Cortex-A72)"),
    "rpi5": lambda: _arm("rpi5", "cortex-a76", ["+neon", "+dotprod"], 4, "Raspberry Pi 5 (Cortex-A76)"),
    "x86-64-v2": lambda: _level("x86-64-v2"),
    "x86-64-v3": lambda: _level("x86-64-v3"),
    "x86-64-v4": lambda: _level("x86-64-v4"),
}
#: every named target's architecture (known without building the target, which asks TVM about the host)
ARCH = {name: "x86_64" if name.startswith(("x86_64", "x86-64")) else "aarch64" for name in NAMES}
ALIASES = {"x86": "x86_64", "x86-64": "x86_64", "host-x86_64": "x86_64", "aarch64": "arm64"}


def _custom(target: dict) -> Target:
    if target.get("kind") != "llvm":
        raise TargetError(f"sliver compiles for CPUs: target dicts need \"kind\": \"llvm\", got {target!r}")
    triple = str(target.get("mtriple", ""))
    arch = "aarch64" if triple.startswith("aarch64") else "x86_64" if triple.startswith("x86_64") or not triple else None
    if arch is None:
        raise TargetError(f"unsupported mtriple {triple!r}: sliver targets aarch64-linux-gnu and x86_64-linux-gnu")
    spec = dict(target)
    if spec.get("mcpu") == "native":
        raise TargetError('"mcpu": "native" is silently ignored by TVM\'s LLVM; use the target name "x86_64"')
    native = False
    if arch == "x86_64" and "mcpu" not in spec and host_arch() == "x86_64":
        spec["mcpu"] = _host_cpu()  # no CPU named: this machine's, like the target x86_64
        native = not spec.get("mattr")
    if arch == "aarch64":
        return _aarch64("custom", spec, f"aarch64 CPUs with every feature of {spec.get('mcpu', 'cortex-a72')}")
    return _x86("custom", spec, native=native)


def resolve(target) -> Target:
    """A :class:`Target` from a name, a TVM target dict, or a Target."""
    if isinstance(target, Target):
        return target
    if isinstance(target, dict):
        return _custom(target)
    if not isinstance(target, str):
        raise TargetError(f"a target is a name ({', '.join(NAMES)}) or a TVM target dict, not {type(target).__name__}")
    key = ALIASES.get(target, target)
    if key not in NAMES:
        raise TargetError(f"unknown target {target!r}; choose one of {', '.join(NAMES)} or pass a TVM target dict")
    return NAMES[key]()


def of(target) -> Target:
    """The :class:`Target` of anything the backend is handed: a Target, a name, a target
    dict, or a ``tvm.target.Target`` (its llvm attributes; no ``mcpu`` means LLVM's
    generic CPU, as TVM compiles it)."""
    if isinstance(target, (Target, str, dict)):
        return resolve(target)
    return _of_tvm(str(target), _tvm_spec(target))


def _tvm_spec(target) -> tuple:
    attrs = target.attrs if target.attrs is not None else {}
    if str(target.kind.name) != "llvm":
        raise TargetError(f"sliver compiles for CPUs (llvm targets), not {target.kind.name}")
    spec = {"kind": "llvm", "mtriple": str(attrs.get("mtriple", "")) or "x86_64-linux-gnu",
            "mcpu": str(attrs.get("mcpu", "")) or "generic"}
    if "mattr" in attrs and attrs["mattr"]:
        spec["mattr"] = [str(a) for a in attrs["mattr"]]
    if "num-cores" in attrs:
        spec["num-cores"] = int(attrs["num-cores"])
    return tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in spec.items()))


@functools.lru_cache(maxsize=64)
def _of_tvm(_text: str, spec: tuple) -> Target:
    return resolve({k: list(v) if isinstance(v, tuple) else v for k, v in spec})


def check_toolchain(target: Target) -> None:
    """Fail early, with the fix, when the cross compiler is missing."""
    if target.cross_compiler and shutil.which(target.cross_compiler) is None:
        package = "gcc-aarch64-linux-gnu" if target.arch == "aarch64" else "gcc-x86-64-linux-gnu"
        raise TargetError(
            f"compiling for {target.name} needs the cross compiler {target.cross_compiler}, which is not installed; "
            f"run `bash tools/emulator/setup_pi_emulator.sh` (or `apt-get install {package}`)"
        )


def tvm_target(target: Target):
    import tvm

    return tvm.target.Target(target.spec)


def host_target() -> Target:
    """This machine's own target (``x86_64`` or ``arm64``): what lowering outside a build assumes."""
    return resolve("arm64" if host_arch() == "aarch64" else "x86_64")
