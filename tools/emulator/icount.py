"""Executed-instruction counts of compiled aarch64 code on the emulated Raspberry Pi.

Without Arm hardware, wall time under qemu says nothing about speed on a Pi; the
number of instructions a kernel executes is a deterministic proxy for comparing
kernels on the same ISA.  This module runs a TVM library on the emulated Pi
(:mod:`sliver.tools.emulator.emulate`) under ``qemu-aarch64`` with a small TCG plugin
(``qemu_icount.c``, compiled here with the host C compiler on first use) that adds
each executed block's instruction count to a counter: exact, and as fast as plain
emulation, unlike ``-singlestep -d exec`` (one log line per instruction).

    from sliver.tools.emulator import icount
    c = icount.count_artifact("model.sliver")            # golden inputs
    c.per_call            # instructions executed inside one vm["main"](...) call
    c.functions           # {PrimFunc name: instructions per call}, e.g. fused_conv2d_add_relu
    c.blocks[:3]          # the hottest blocks: Block(function, offset, insns, times)
    c = icount.count_library("kernel.so", [a, b, out], function="default_function")

**What is counted.**  The emulated Python starts, loads the library, converts the
inputs to TVM tensors and makes ``warmup`` untimed calls.  Around each of the
``repeat`` measured calls it sets a marker (a ``close()`` of a magic negative fd,
which the plugin sees as a syscall); the count of a call is the difference between
its two markers, minus the cost of an empty marker pair measured in the same run.
Interpreter start-up, imports and library loading (~0.9 billion instructions) are
therefore excluded exactly, not estimated.  Per-function counts attribute every
executed block inside the library to the function symbol it starts in: TVM emits
a PrimFunc ``f`` as ``__tvm_ffi_f`` (argument checks), ``f_compute_`` (the body)
and unnamed parallel-loop bodies placed right after it, all reported as ``f``.
Static C functions linked into the library (the low-bit kernels' phases) are
symbols too and get their own counts.  ``blocks`` goes one level finer: every
executed block of the library with its function, offset, size and execution count,
hottest first, so a loop body shows as one block run many times (the offset is
from the symbol the block starts in, as ``objdump -d`` of the library shows it).
Blocks outside the library (libm's ``expf``, the TVM runtime's workspace and
thread-pool code, the VM interpreter, Python) are reported per shared object in
``outside``.  ``per_call`` includes the cost of calling from Python through the
FFI (about 2,000 instructions for a plain PrimFunc; the VM adds its interpreter):
for a micro-kernel, read ``functions``.  The TVM thread pool runs with one thread (``TVM_NUM_THREADS=1``):
with several, the total is the same work but the plugin's counters race.

The host needs Debian's ``qemu-user`` (the dynamically linked ``qemu-aarch64``;
``qemu-user-static`` cannot load plugins) and a C compiler; both are installed by
``tools/emulator/setup_pi_emulator.sh``.  This module imports neither torch nor TVM on the
host: it runs the guest side (``python -m sliver.tools.emulator.icount JOB``) on the Pi.
"""

from __future__ import annotations

import bisect
import json
import os
import pathlib
import shutil
import struct
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from typing import Sequence

from sliver.common.errors import SliverError

#: the plugin-capable qemu (Debian's qemu-user); the static build has no plugin loader
QEMU_PLUGIN_HOST = "qemu-aarch64"
#: a marker is close(-(MARK_BASE + 2*k + dump)); keep in sync with qemu_icount.c
MARK_BASE = 0x51100000
PLUGIN_SOURCE = pathlib.Path(__file__).with_name("qemu_icount.c")


@dataclass(frozen=True)
class Block:
    """One executed translation block of the library: straight-line code from ``offset``
    bytes into ``function`` (its symbol, as in :attr:`InstructionCount.functions`)."""

    function: str
    offset: int
    #: instructions in the block, and how often it ran
    insns: int
    times: int
    #: where the block starts in the library (its virtual address, as ``objdump -d`` prints it)
    address: int = 0

    @property
    def total(self) -> int:
        return self.insns * self.times


@dataclass
class InstructionCount:
    """What :func:`count_library` measured (all counts are executed aarch64 instructions)."""

    #: instructions inside one call (the smallest over the repeats; they normally agree)
    per_call: int
    #: each measured call's count (marker cost subtracted)
    calls: list[int]
    #: instructions before the first marker: interpreter start-up, imports, loading, warm-up
    startup: int
    #: cost of an empty marker pair, already subtracted from ``calls``
    marker_cost: int
    #: {function in the library: instructions per call} (last measured call)
    functions: dict[str, int] = field(default_factory=dict)
    #: {other shared object or "python": instructions per call} (last measured call)
    outside: dict[str, int] = field(default_factory=dict)
    #: the library's executed blocks (last measured call), most instructions first: where
    #: inside a function the instructions go (a hot loop is one block executed many times)
    blocks: list[Block] = field(default_factory=list)
    #: the function's results of the last call (VM outputs, or every argument after the
    #: call for a plain packed function: destination-passing style writes into them)
    results: list = field(default_factory=list)


# -- host side -------------------------------------------------------------------


def ensure_ready() -> None:
    """Fail with the fix when the emulated Pi, the plugin-capable qemu or a C compiler is missing."""
    from sliver.tools.emulator import emulate

    emulate.ensure_ready()
    if shutil.which(QEMU_PLUGIN_HOST) is None:
        raise SliverError(
            f"counting instructions needs {QEMU_PLUGIN_HOST} with plugin support (Debian's qemu-user; "
            f"qemu-user-static cannot load plugins). Install it with: apt-get install qemu-user "
            f"(or rerun {emulate.install_command()})"
        )
    if _host_cc() is None:
        raise SliverError("counting instructions builds a qemu plugin with the host C compiler: install gcc")


def _host_cc() -> str | None:
    return next((c for c in (os.environ.get("CC"), "cc", "gcc") if c and shutil.which(c)), None)


def _build_plugin(dest: pathlib.Path) -> pathlib.Path:
    out = dest / "qemu_icount.so"
    proc = subprocess.run([_host_cc(), "-shared", "-fPIC", "-O2", "-o", str(out), str(PLUGIN_SOURCE)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise SliverError(f"building the qemu instruction-count plugin failed:\n{proc.stderr.strip()}")
    return out


def count_program(argv: Sequence[str], *, timeout: float | None = 600) -> int:
    """Instructions a whole aarch64 program executes (start-up included) under the
    emulated Pi's CPU and sysroot: the plugin's total at exit."""
    from sliver.tools.emulator import emulate

    ensure_ready()
    with tempfile.TemporaryDirectory(prefix="sliver-icount-") as tmp:
        plugin, log = _build_plugin(pathlib.Path(tmp)), pathlib.Path(tmp) / "counts.txt"
        cmd = [QEMU_PLUGIN_HOST, "-cpu", emulate.PI_CPU, "-plugin", f"{plugin},out={log}",
               "-L", str(emulate.pi_root() / "sysroot"), *argv]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            raise SliverError(f"{' '.join(argv)} failed under qemu (exit {proc.returncode}): {proc.stderr[-2000:]}")
        _, total = _parse_log(log.read_text())
        return total


def count_artifact(artifact, inputs: Sequence | None = None, **kw) -> InstructionCount:
    """Count the instructions of one ``main`` call of an arm64 artifact (a path or an
    :class:`~sliver.runtime.artifact.Artifact`); ``inputs`` default to its golden inputs.
    Keyword arguments go to :func:`count_library`."""
    from sliver.runtime.artifact import Artifact, read

    art = artifact if isinstance(artifact, Artifact) else read(artifact)
    if art.manifest.target.arch != "aarch64":
        raise SliverError(
            f"instruction counts are measured on the emulated Pi: the artifact is built for "
            f"{art.manifest.target.arch} ({art.target}); lower it with --target arm64"
        )
    if inputs is None:
        inputs = [art.golden[f"input_{i}"] for i in range(len(art.manifest.inputs))]
    return count_library(art.library, inputs, function="main", **kw)


def count_library(
    library,
    inputs: Sequence,
    *,
    function: str = "main",
    repeat: int = 1,
    warmup: int = 1,
    timeout: float | None = 1800,
    cpu: str | None = None,
) -> InstructionCount:
    """Run ``function`` of an aarch64 TVM library on the emulated Pi and count the
    instructions executed inside each call.  ``cpu`` is the CPU qemu emulates (default
    the Pi 4's ``cortex-a72``; ``cortex-a76`` for a Pi 5 library that uses its dot product).

    ``library`` is the bytes or path of an exported ``.so``: a Relax VM executable
    (``function`` is a VM function, usually ``main``; ``inputs`` are its arguments)
    or a plain TIR library (``function`` is a PrimFunc; ``inputs`` are all its
    arguments, outputs included, as TIR functions write into their outputs).
    ``inputs`` are numpy arrays.
    """
    import numpy as np

    if repeat < 1 or warmup < 0:
        raise SliverError(f"repeat must be >= 1 and warmup >= 0 (got repeat={repeat}, warmup={warmup})")
    ensure_ready()
    from sliver.common.platform import elf_arch

    data = library if isinstance(library, (bytes, bytearray)) else pathlib.Path(library).read_bytes()
    if elf_arch(bytes(data[:64])) != "aarch64":
        raise SliverError(f"instruction counts need an aarch64 library; this one is {elf_arch(bytes(data[:64]))}")
    with tempfile.TemporaryDirectory(prefix="sliver-icount-") as tmp:
        job = pathlib.Path(tmp)
        (job / "lib.so").write_bytes(data)
        np.savez(job / "inputs.npz", *[np.ascontiguousarray(np.asarray(x)) for x in inputs])
        (job / "job.json").write_text(json.dumps({"function": function, "repeat": repeat, "warmup": warmup}))
        marks = run_counted(["-m", "sliver.tools.emulator.icount", str(job)], timeout=timeout,
                            **({"cpu": cpu} if cpu else {}))
        maps = (job / "maps.txt").read_text()
        with np.load(job / "results.npz") as z:
            results = [z[f"arr_{i}"] for i in range(len(z.files))]
        return _summarize(marks, maps, bytes(data), str(job / "lib.so"), repeat, results)


def run_counted(argv: Sequence[str], *, timeout: float | None = 1800, **kw) -> list:
    """Run the emulated Pi's ``python3.11 *argv`` under the counting plugin (one
    thread for TVM, OpenMP and OpenBLAS) and return its markers:
    ``[(k, total at the marker, {(vaddr, n_insns): times})]``.  The program sets
    markers with :func:`mark`; keyword arguments go to
    :func:`sliver.tools.emulator.emulate.run_python` (``extra_path``, ``pi_cpuinfo``...).
    Use :func:`segments` for the counts between them."""
    from sliver.tools.emulator import emulate

    ensure_ready()
    with tempfile.TemporaryDirectory(prefix="sliver-icount-run-") as tmp:
        plugin, log = _build_plugin(pathlib.Path(tmp)), pathlib.Path(tmp) / "counts.txt"
        env = {"TVM_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", **kw.pop("env", {})}
        proc = emulate.run_python(list(argv), env=env, timeout=timeout, qemu=QEMU_PLUGIN_HOST,
                                  qemu_args=["-plugin", f"{plugin},out={log}"], stage_emulator=True, **kw)
        if proc.returncode != 0:
            raise SliverError(f"the emulated run failed (exit {proc.returncode}):\n{(proc.stderr or proc.stdout)[-3000:]}")
        if not log.is_file():
            raise SliverError(f"{QEMU_PLUGIN_HOST} wrote no counts: was the plugin loaded?\n{proc.stderr[-2000:]}")
        marks, _ = _parse_log(log.read_text())
        return marks


def segments(marks, n: int) -> tuple[list[int], int, int]:
    """(instructions between markers 2+2i and 3+2i for i < n, the cost of the empty
    pair 0-1 already subtracted from them, instructions before marker 0), for a
    program that sets markers as :func:`_guest_main` does."""
    totals = {k: total for k, total, _ in marks}
    if len(totals) != 2 + 2 * n:
        raise SliverError(f"expected {2 + 2 * n} markers from the emulated run, got {len(totals)}")
    marker_cost = totals[1] - totals[0]
    return [totals[3 + 2 * i] - totals[2 + 2 * i] - marker_cost for i in range(n)], marker_cost, totals[0]


def _parse_log(text: str):
    """[(mark k, total at mark, {(vaddr, n_insns): times})], exit total."""
    marks, exit_total = [], None
    for line in text.splitlines():
        parts = line.split()
        if parts[0] == "mark":
            marks.append((int(parts[1]), int(parts[2]), {}))
        elif parts[0] == "tb":
            vaddr, n, times = int(parts[1], 16), int(parts[2]), int(parts[3])
            # a block translated twice (same address) is counted once per translation
            blocks = marks[-1][2]
            key = (vaddr, n)
            blocks[key] = blocks.get(key, 0) + times
        elif parts[0] == "exit":
            exit_total = int(parts[1])
    return marks, exit_total


def _summarize(marks, maps: str, library: bytes, lib_path: str, repeat: int, results) -> InstructionCount:
    # Guest protocol (see _guest_main): marks 0,1 = an empty pair (marker cost), then
    # marks 2+2r, 3+2r around call r; odd marks dump the blocks run since the previous one.
    calls, marker_cost, startup = segments(marks, repeat)
    blocks = marks[-1][2]
    empty = marks[1][2]  # blocks of the empty pair: the marker code itself
    functions, outside, lib_blocks = _attribute(blocks, empty, maps, library, lib_path)
    return InstructionCount(per_call=min(calls), calls=calls, startup=startup, marker_cost=marker_cost,
                            functions=functions, outside=outside, blocks=lib_blocks, results=results)


def _attribute(blocks: dict, empty: dict, maps: str, library: bytes, lib_path: str):
    """Instructions per function of the library and per other mapped object, and the
    library's blocks (:class:`Block`, most instructions first)."""
    regions = _parse_maps(maps)
    base = min((start - off for start, end, off, path in regions if path == lib_path), default=None)
    starts, names = _function_symbols(library)
    functions: dict[str, int] = {}
    outside: dict[str, int] = {}
    lib_blocks: list[Block] = []
    for (vaddr, n), times in blocks.items():
        times -= empty.get((vaddr, n), 0)  # the closing marker's own code
        if times <= 0:
            continue
        region = next((r for r in regions if r[0] <= vaddr < r[1]), None)
        path = region[3] if region else "?"
        if path == lib_path and base is not None:
            i = bisect.bisect_right(starts, vaddr - base) - 1
            name = _primfunc_name(names[i]) if i >= 0 else "?"
            functions[name] = functions.get(name, 0) + n * times
            lib_blocks.append(Block(name, vaddr - base - (starts[i] if i >= 0 else 0), n, times, vaddr - base))
        else:
            key = os.path.basename(path) or "?"
            outside[key] = outside.get(key, 0) + n * times
    order = lambda d: dict(sorted(d.items(), key=lambda kv: -kv[1]))  # noqa: E731
    lib_blocks.sort(key=lambda b: (-b.total, b.function, b.offset))
    return order(functions), order(outside), lib_blocks


def _parse_maps(text: str):
    """/proc/self/maps → [(start, end, file offset, path)]."""
    regions = []
    for line in text.splitlines():
        parts = line.split(maxsplit=5)
        if len(parts) < 5:
            continue
        lo, hi = (int(x, 16) for x in parts[0].split("-"))
        regions.append((lo, hi, int(parts[2], 16), parts[5].strip() if len(parts) == 6 else ""))
    return regions


def _primfunc_name(symbol: str) -> str:
    """``__tvm_ffi_f`` / ``f_compute_`` → ``f``."""
    if symbol.startswith("__tvm_ffi_"):
        symbol = symbol[len("__tvm_ffi_"):]
    if symbol.endswith("_compute_"):
        symbol = symbol[: -len("_compute_")]
    return symbol


def _function_symbols(elf: bytes):
    """Sorted start addresses and names of the function symbols of a 64-bit
    little-endian ELF (``.symtab``, else ``.dynsym``)."""
    if elf[:4] != b"\x7fELF" or elf[4] != 2 or elf[5] != 1:
        raise SliverError("not a 64-bit little-endian ELF library")
    shoff, = struct.unpack_from("<Q", elf, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", elf, 0x3A)
    sections = [struct.unpack_from("<IIQQQQIIQQ", elf, shoff + i * shentsize) for i in range(shnum)]
    by_type = {s[1]: s for s in sections}
    symtab = by_type.get(2) or by_type.get(11)  # SHT_SYMTAB, SHT_DYNSYM
    if symtab is None:
        return [], []
    strtab = sections[symtab[6]]
    syms = []
    for off in range(symtab[4], symtab[4] + symtab[5], 24):
        st_name, st_info, _other, st_shndx, st_value, _size = struct.unpack_from("<IBBHQQ", elf, off)
        if st_info & 0xF != 2 or st_value == 0:  # STT_FUNC, defined
            continue
        s = strtab[4] + st_name
        name = elf[s: elf.index(b"\0", s)].decode(errors="replace")
        syms.append((st_value, name))
    syms.sort()
    return [v for v, _ in syms], [n for _, n in syms]


# -- guest side (runs on the emulated Pi) -----------------------------------------------


def mark(k: int, dump: bool = False) -> None:
    """Set marker ``k`` (guest side); with ``dump`` the plugin also lists the blocks
    executed since the previous marker (for per-function counts)."""
    try:
        os.close(-(MARK_BASE + 2 * k + int(dump)))
    except OSError:
        pass  # EBADF: the plugin has seen the syscall, nothing else happened


def _guest_main(job_dir: str) -> int:
    import numpy as np
    import tvm

    job = pathlib.Path(job_dir)
    spec = json.loads((job / "job.json").read_text())
    with np.load(job / "inputs.npz") as z:
        arrays = [z[f"arr_{i}"] for i in range(len(z.files))]
    lib = tvm.runtime.load_module(str(job / "lib.so"))
    is_vm = lib.implements_function("vm_load_executable")
    if is_vm:
        from tvm.runtime import vm as _vm

        func = _vm.VirtualMachine(lib, tvm.cpu())[spec["function"]]
    else:
        func = lib[spec["function"]]
    args = [tvm.runtime.tensor(a) for a in arrays]
    for _ in range(spec["warmup"]):
        func(*args)
    mark(0, False)
    mark(1, True)
    out = None
    for r in range(spec["repeat"]):
        mark(2 + 2 * r, False)
        out = func(*args)
        mark(3 + 2 * r, True)
    if is_vm:
        outs = list(out) if isinstance(out, (list, tuple)) or type(out).__name__ == "Array" else [out]
        results = [o.numpy() for o in outs]
    else:
        results = [a.numpy() for a in args]
    np.savez(job / "results.npz", *results)
    shutil.copyfile("/proc/self/maps", job / "maps.txt")
    return 0


if __name__ == "__main__":
    sys.exit(_guest_main(sys.argv[1]))
