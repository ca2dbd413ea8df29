"""Count the spike's phases under the same qemu plugin as sliver.tools.emulator.icount, and
model their Cortex-A72 cycles with sliver.tools.emulator.cycles (llvm-mca)."""
import pathlib, subprocess, sys, tempfile
from sliver.tools.emulator import cycles, emulate, icount

prog = pathlib.Path(sys.argv[1])
with tempfile.TemporaryDirectory() as tmp:
    plugin = icount._build_plugin(pathlib.Path(tmp))
    log = pathlib.Path(tmp) / "log"
    p = subprocess.run(["qemu-aarch64", "-cpu", emulate.PI_CPU, "-plugin", f"{plugin},out={log}", str(prog)],
                       capture_output=True, text=True)
    print(p.stdout.strip(), "rc", p.returncode)
    marks, _ = icount._parse_log(log.read_text())
    tot = {k: t for k, t, _ in marks}
    mc = tot[1] - tot[0]
    print(f"marker cost {mc}; build_index {tot[3]-tot[2]-mc:,}; conv {tot[5]-tot[4]-mc:,}")
    code = cycles.disassemble(prog)  # a static binary: block addresses are its own
    modeled = []
    for k in (3, 5):  # the blocks of the index image, of the conv
        blocks = sorted(marks[k][2].items())
        per_block, _ = cycles.block_cycles([[code[va + 4 * i] for i in range(n)] for (va, n), _ in blocks])
        modeled.append(sum(c * times for c, (_, times) in zip(per_block, blocks)))
    print(f"modeled cycles ({cycles.mca_version()}, -mcpu={cycles.MCPU}): "
          f"build_index {modeled[0]:,.0f}; conv+epilogue {modeled[1]:,.0f}")
    blocks = marks[-1][2]
    top = sorted(blocks.items(), key=lambda kv: -kv[0][1] * kv[1])[:4]
    for (va, n), times in top:
        print(f"  block {va:#x}: {n} insns x {times} = {n*times:,}")
