"""Modeled Cortex-A72 cycles of code counted on the emulated Pi.

:mod:`sliver.tools.emulator.icount` counts executed instructions exactly, but an instruction
count is a poor proxy for time when kernels use instructions of very different cost: on
the Pi 4's Cortex-A72 a 64-byte ``tbl`` lookup occupies both NEON pipes for several
cycles while an ``and`` or ``cnt`` takes half a cycle of one.  qemu has no timing model;
``llvm-mca`` has one.  :func:`estimate` disassembles every block of the library that a
counted call executed, asks ``llvm-mca`` how many cycles one pass of each block takes in
steady state on the CPU's scheduling model, and sums ``cycles x executions``:

    from sliver.tools.emulator import cycles, icount
    counted = icount.count_library(lib, inputs)
    est = cycles.estimate(counted, lib)
    est.cycles        # modeled cycles per call in the library's code
    est.functions     # {function: modeled cycles per call}
    est.blocks[:3]    # the blocks that cost the most cycles: (Block, cycles per execution)

**What the number is, and is not.**  It is a static throughput model, not a measurement:

* LLVM has no scheduling model of its own for the Cortex-A72: ``-mcpu=cortex-a72`` uses
  its Cortex-A57 model (the A72's predecessor, the same two 128-bit FP/NEON pipes).
* Every load hits the L1 cache; branches are predicted; each block is modeled on its own
  in steady state (a loop body repeated), so the overlap between consecutive different
  blocks is not modeled.  Calls (``bl``/``blr``) are modeled as ``nop``: the callee's own
  blocks are counted where they run.
* Only the library's code is modeled.  Instructions outside it (libm, the TVM runtime, the
  VM interpreter, Python) are reported in :attr:`CycleEstimate.outside`, not converted.

Use it to compare kernels that execute similar code paths (the same layer through two
kernels), where the model's blind spots cancel; do not read it as a Pi wall time.

Needs ``llvm-mca`` and ``llvm-objdump`` (Debian's ``llvm``), which
``tools/emulator/setup_pi_emulator.sh`` installs with the rest of the emulated Pi.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from sliver.common.errors import SliverError
from sliver.tools.emulator.icount import Block, InstructionCount

#: The Pi 4's core.  LLVM models it with its Cortex-A57 scheduling model.
MCPU = "cortex-a72"
#: Steady-state passes llvm-mca simulates per block.
ITERATIONS = 100
TOOLS = ("llvm-mca", "llvm-objdump")


@dataclass
class CycleEstimate:
    """What :func:`estimate` modeled for one counted call."""

    #: modeled cycles per call in the library's code
    cycles: float
    #: {function in the library: modeled cycles per call}, most first
    functions: dict[str, float]
    #: the library instructions per call the model covers (= the count's library part)
    instructions: int
    #: {other shared object or "python": instructions per call}: not modeled
    outside: dict[str, int]
    #: executed library instructions llvm-mca could not take (modeled as ``nop``), per call
    unmodeled: int
    #: e.g. "llvm-mca 14.0.6, -mcpu=cortex-a72"
    model: str
    #: (block, modeled cycles per execution), most cycles per call first
    blocks: list[tuple[Block, float]] = field(default_factory=list)

    @property
    def ipc(self) -> float:
        """Modeled instructions per cycle of the library's code."""
        return self.instructions / self.cycles if self.cycles else 0.0


def missing_tools() -> list[str]:
    """The tools of :data:`TOOLS` not on PATH (none: cycles can be modeled here)."""
    return [t for t in TOOLS if shutil.which(t) is None]


def ensure_ready() -> None:
    """Fail with the fix when llvm-mca or llvm-objdump is missing."""
    missing = missing_tools()
    if missing:
        raise SliverError(
            f"modeling cycles needs {' and '.join(missing)} (Debian's llvm package). Install it with: "
            f"apt-get install llvm (or rerun bash tools/emulator/setup_pi_emulator.sh)"
        )


def estimate(counted: InstructionCount, library, *, mcpu: str = MCPU, iterations: int = ITERATIONS) -> CycleEstimate:
    """Model the cycles of the library code in ``counted`` (from
    :func:`sliver.tools.emulator.icount.count_library` or ``count_artifact``); ``library`` is the
    same ``.so`` (bytes or path) that was counted."""
    ensure_ready()
    data = library if isinstance(library, (bytes, bytearray)) else Path(library).read_bytes()
    with tempfile.TemporaryDirectory(prefix="sliver-cycles-") as tmp:
        lib = Path(tmp) / "lib.so"
        lib.write_bytes(data)
        blocks = counted.blocks
        code = disassemble(lib, only={b.address + 4 * i for b in blocks for i in range(b.insns)})
    listings = []
    for b in blocks:
        lines = []
        for i in range(b.insns):
            text = code.get(b.address + 4 * i)
            if text is None:
                raise SliverError(f"no instruction at {b.address + 4 * i:#x} ({b.function}+{b.offset + 4 * i:#x}) "
                                  f"in the library's disassembly: is this the library that was counted?")
            lines.append(text)
        listings.append(lines)
    per_block, bad = block_cycles(listings, mcpu=mcpu, iterations=iterations)
    unmodeled = sum(len(bad_lines) * b.times for b, bad_lines in zip(blocks, bad))
    functions: dict[str, float] = {}
    for b, c in zip(blocks, per_block):
        functions[b.function] = functions.get(b.function, 0.0) + c * b.times
    ranked = sorted(zip(blocks, per_block), key=lambda bc: -bc[1] * bc[0].times)
    return CycleEstimate(
        cycles=sum(c * b.times for b, c in zip(blocks, per_block)),
        functions=dict(sorted(functions.items(), key=lambda kv: -kv[1])),
        instructions=sum(b.total for b in blocks),
        outside=dict(counted.outside),
        unmodeled=unmodeled,
        model=f"{mca_version()}, -mcpu={mcpu}",
        blocks=ranked,
    )


def mca_version() -> str:
    out = subprocess.run(["llvm-mca", "--version"], capture_output=True, text=True).stdout
    m = re.search(r"LLVM version (\S+)", out)
    return f"llvm-mca {m.group(1) if m else '?'}"


# -- disassembly ------------------------------------------------------------------------

_LINE = re.compile(r"^\s*([0-9a-f]+):\s+(.*)$")
#: PC-relative operands: what follows the mnemonic's other operands is an address
_PC_RELATIVE = re.compile(r"^(b|bl|b\.\w+|cbn?z|tbn?z|adrp?|ldr|ldrsw|prfm)$")


def disassemble(lib: Path, only: set[int] | None = None) -> dict[int, str]:
    """{address: instruction} of an aarch64 ELF's code, in llvm-mca's assembler syntax
    (with ``only``, just those addresses: a large library such as onnxruntime's has
    millions of instructions, of which a run executes a few thousand blocks)."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.run(["llvm-objdump", "-d", "--no-show-raw-insn", "--triple=aarch64", str(lib)],
                              stdout=out, stderr=err, text=True)
        if proc.returncode != 0:
            err.seek(0)
            raise SliverError(f"llvm-objdump could not disassemble the library: {err.read().strip()[:500]}")
        out.seek(0)
        code = {}
        for line in out:
            m = _LINE.match(line)
            if m:
                address = int(m.group(1), 16)
                if only is None or address in only:
                    code[address] = assembler_syntax(m.group(2))
    return code


def assembler_syntax(text: str) -> str:
    """One line of ``llvm-objdump -d`` as llvm-mca can assemble it: comments dropped,
    branch and literal targets (absolute addresses) replaced by ``.`` (the model does not
    follow them), calls as ``nop``."""
    text = re.sub(r"\s*(//|<).*$", "", text.strip())
    mnemonic, _, operands = text.partition("\t")
    mnemonic = mnemonic.strip()
    if mnemonic in ("bl", "blr"):
        return "nop"
    if _PC_RELATIVE.match(mnemonic):
        ops = [o.strip() for o in operands.split(",")]
        if ops and re.fullmatch(r"(0x)?[0-9a-f]+", ops[-1]):
            ops[-1] = "."
            operands = ", ".join(ops)
    return f"{mnemonic} {operands.strip()}".strip()


# -- llvm-mca --------------------------------------------------------------------------


def block_cycles(listings: list[list[str]], *, mcpu: str = MCPU, iterations: int = ITERATIONS):
    """Steady-state cycles of one pass through each listing (a block's instructions), by
    ``llvm-mca`` in one run (one code region per block), and per listing the indices of
    the lines it could not assemble (modeled as ``nop``)."""
    ensure_ready()
    lines = [list(ls) for ls in listings]
    bad: list[set[int]] = [set() for _ in lines]
    for _ in range(4):  # llvm-mca reports every line it cannot assemble at once
        source, where = _regions(lines)
        proc = subprocess.run(["llvm-mca", f"-mtriple=aarch64", f"-mcpu={mcpu}", f"-iterations={iterations}",
                               "-json", "-"], input=source, capture_output=True, text=True)
        # llvm-mca may skip a line it cannot assemble and still succeed: errors decide
        failed = [int(n) for n in re.findall(r"<stdin>:(\d+):\d+: error", proc.stderr)]
        if proc.returncode == 0 and not failed:
            regions = json.loads(proc.stdout)["CodeRegions"]
            if len(regions) != len(lines):
                raise SliverError(f"llvm-mca returned {len(regions)} regions for {len(lines)} blocks")
            return [r["SummaryView"]["TotalCycles"] / r["SummaryView"]["Iterations"] for r in regions], bad
        if not failed:
            raise SliverError(f"llvm-mca failed: {proc.stderr.strip()[:1000]}")
        for n in failed:
            block, index = where[n]
            lines[block][index] = "nop"
            bad[block].add(index)
    raise SliverError(f"llvm-mca still rejects the code after replacing what it could not assemble: "
                      f"{proc.stderr.strip()[:1000]}")


def _regions(listings: list[list[str]]):
    """llvm-mca source with one named region per listing, and {source line: (listing, index)}."""
    out, where = [], {}
    for i, lines in enumerate(listings):
        out.append(f"# LLVM-MCA-BEGIN b{i}")
        for j, text in enumerate(lines):
            out.append(text)
            where[len(out)] = (i, j)
        out.append(f"# LLVM-MCA-END b{i}")
    return "\n".join(out) + "\n", where
