"""`sliver demo`: the main job on the bundled example, end to end.

Lowers ``tools/examples/tiny_cnn.py`` for x86_64 and arm64, runs the x86_64
artifact here and the arm64 one on the emulated Raspberry Pi, and shows that both
match torch.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from sliver.common.numerics import output_error


def _example():
    import importlib.util

    path = Path(__file__).with_name("examples") / "tiny_cnn.py"
    spec = importlib.util.spec_from_file_location("sliver_example_tiny_cnn", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return path, mod.build()


def _row(name: str, out: np.ndarray, ref: np.ndarray) -> str:
    err = output_error(out, ref)[1]
    top = ", ".join(f"{v:+.4f}" for v in out.reshape(-1)[:5])
    return f"  {name:<26} [{top}, …]  argmax {int(out.argmax())}  max rel err {err:.1e}"


def main(*, emulate: bool = True, out_dir: str = "out") -> int:
    import torch

    import sliver
    from sliver.tools.emulator import emulate as emu

    path, (model, inputs) = _example()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        ref = model(*inputs).numpy()
    print(f"sliver demo: {path.name} (TinyCNN, {sum(p.numel() for p in model.parameters()):,} params)")
    rows = [_row("torch eager", ref, ref)]

    t0 = time.perf_counter()
    x86 = sliver.lower(model, inputs, target="x86_64").save(out / "tiny_cnn.x86_64.sliver")
    print(f"  lowered for x86_64 in {time.perf_counter() - t0:.1f}s -> {x86}")
    got = sliver.load(x86)(inputs[0].numpy())
    rows.append(_row("sliver x86_64 (this CPU)", got, ref))

    t0 = time.perf_counter()
    arm = sliver.lower(model, inputs, target="arm64").save(out / "tiny_cnn.arm64.sliver")
    print(f"  lowered for arm64 in {time.perf_counter() - t0:.1f}s -> {arm}")
    ok = True
    if emulate:
        emu.ensure_ready()
        npz = out / "tiny_cnn.arm64.outputs.npz"
        proc = emu.run_module(["run", str(arm.resolve()), "--verify", "--output", str(npz.resolve())])
        if proc.returncode != 0:
            print(proc.stdout + proc.stderr, file=sys.stderr)
            return proc.returncode
        with np.load(npz) as z:
            rows.append(_row("sliver arm64 (emulated Pi)", z[z.files[0]], ref))
        ok = "verify: passed" in proc.stdout
    print("outputs (first 5 logits):")
    print("\n".join(rows))
    print("all outputs match torch" if ok else "MISMATCH")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
