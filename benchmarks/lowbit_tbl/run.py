"""Count the spike's phases under the same qemu plugin as sliver.runtime.icount."""
import pathlib, subprocess, sys, tempfile
from sliver.runtime import icount, emulate
prog = sys.argv[1]
with tempfile.TemporaryDirectory() as tmp:
    plugin = icount._build_plugin(pathlib.Path(tmp))
    log = pathlib.Path(tmp) / "log"
    p = subprocess.run(["qemu-aarch64", "-cpu", emulate.PI_CPU, "-plugin", f"{plugin},out={log}", prog],
                       capture_output=True, text=True)
    print(p.stdout.strip(), "rc", p.returncode)
    marks, _ = icount._parse_log(log.read_text())
    tot = {k: t for k, t, _ in marks}
    mc = tot[1] - tot[0]
    print(f"marker cost {mc}; build_index {tot[3]-tot[2]-mc:,}; conv {tot[5]-tot[4]-mc:,}")
    blocks = marks[-1][2]
    top = sorted(blocks.items(), key=lambda kv: -kv[0][1] * kv[1])[:4]
    for (va, n), times in top:
        print(f"  block {va:#x}: {n} insns x {times} = {n*times:,}")
