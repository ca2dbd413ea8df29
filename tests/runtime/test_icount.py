"""Instruction counts on the emulated Pi (sliver.tools.emulator.icount).

Two qemu runs in all: a tiny static program whose count is checked against the
reference method of DESIGN.md (`-singlestep -d exec`, one log line per executed
instruction), and the bundled example's arm64 artifact.
"""

import subprocess

import numpy as np
import pytest

from sliver.common.errors import SliverError
from sliver.tools.emulator import cycles, emulate, icount

LOOP = r"""
void _start(void) {
    volatile long s = 0;
    for (long i = 0; i < 2000; i++) s += i;
    register long x8 asm("x8") = 93; register long x0 asm("x0") = 0;   /* exit(0) */
    asm volatile("svc 0" :: "r"(x8), "r"(x0));
}
"""

needs_counter = pytest.mark.skipif(
    not emulate.is_ready() or not __import__("shutil").which(icount.QEMU_PLUGIN_HOST),
    reason="needs the emulated Pi and qemu-user: bash tools/emulator/setup_pi_emulator.sh",
)


@pytest.mark.emulated
@needs_counter
def test_plugin_count_equals_singlestep_trace(tmp_path):
    src, prog = tmp_path / "loop.c", tmp_path / "loop"
    src.write_text(LOOP)
    subprocess.run(["aarch64-linux-gnu-gcc", "-O1", "-static", "-nostdlib", "-o", str(prog), str(src)], check=True)
    trace = subprocess.run([emulate.QEMU, "-cpu", emulate.PI_CPU, "-singlestep", "-d", "exec", str(prog)],
                           capture_output=True, text=True, check=True)
    want = trace.stderr.count("Trace")
    assert want > 2000 * 4  # the loop really ran
    assert icount.count_program([str(prog)]) == want


@pytest.fixture(scope="module")
def counted(example_arm64):
    """The one emulated run of the example artifact the tests below share."""
    return icount.count_artifact(example_arm64, repeat=2)


@pytest.mark.emulated
@pytest.mark.slow
@needs_counter
def test_artifact_counts_per_call_and_per_primfunc(example_arm64, counted):
    from sliver.runtime.artifact import read

    art = read(example_arm64)
    c = counted
    # the call ran on the golden input and produced the golden output
    np.testing.assert_allclose(c.results[0], art.golden["output_0"], rtol=1e-4, atol=1e-5)
    # start-up (interpreter, imports, loading) is excluded, and it dwarfs one call
    assert 0 < c.per_call < c.startup
    assert c.per_call == min(c.calls) and len(c.calls) == 2
    # every instruction of the call is attributed: library functions + other objects
    attributed = sum(c.functions.values()) + sum(c.outside.values())
    assert abs(attributed - c.calls[-1]) <= c.marker_cost
    # ... and within the library, block by block (hottest first), each inside its function
    assert sum(b.total for b in c.blocks) == sum(c.functions.values())
    assert [b.total for b in c.blocks] == sorted((b.total for b in c.blocks), reverse=True)
    for name, n in c.functions.items():
        assert sum(b.total for b in c.blocks if b.function == name) == n
    assert all(b.offset >= 0 and b.insns >= 1 and b.times >= 1 for b in c.blocks)
    # the convolutions are PrimFuncs of their own and dominate the count
    convs = {k: v for k, v in c.functions.items() if "conv2d" in k}
    assert convs and sum(convs.values()) > 0.5 * c.per_call
    assert not any(k.startswith("__tvm_ffi_") or k.endswith("_compute_") for k in c.functions)


@pytest.mark.emulated
@pytest.mark.slow
@needs_counter
@pytest.mark.skipif(bool(cycles.missing_tools()),
                    reason="needs llvm-mca and llvm-objdump: bash tools/emulator/setup_pi_emulator.sh installs them")
def test_counted_call_gets_modeled_cycles_block_by_block(example_arm64, counted):
    """sliver.tools.emulator.cycles models every executed block of the library the count saw."""
    from sliver.runtime.artifact import read

    est = cycles.estimate(counted, read(example_arm64).library)
    assert est.instructions == sum(counted.functions.values())
    assert est.unmodeled == 0  # every executed instruction assembled for llvm-mca
    assert set(est.functions) == set(counted.functions)
    assert est.cycles == pytest.approx(sum(c * b.times for b, c in est.blocks))
    assert est.cycles == pytest.approx(sum(est.functions.values()))
    assert 0.2 < est.ipc <= 3  # the A72 dispatches at most 3 instructions per cycle
    # the convolutions dominate the modeled cycles as they dominate the count
    convs = sum(v for k, v in est.functions.items() if "conv2d" in k)
    assert convs > 0.5 * est.cycles
    assert "cortex-a72" in est.model and est.outside == counted.outside


def test_refuses_an_x86_library(example_x86):
    from sliver.runtime.artifact import read

    with pytest.raises(SliverError, match="arm64"):
        icount.count_artifact(read(example_x86))


@pytest.mark.emulated
@pytest.mark.slow
@needs_counter
def test_bench_emulate_reports_instructions_per_layer(example_arm64, counted, tmp_path, monkeypatch, capsys):
    """`sliver bench ARTIFACT --emulate --per-layer` reports the counter's numbers,
    each function named by the sliver layers it computes (the run is shared)."""
    import json

    from sliver.runtime.artifact import read
    from sliver.tools.cli import main as sliver

    monkeypatch.setattr(icount, "count_artifact", lambda art, repeat: counted)
    assert sliver(["bench", str(example_arm64), "--emulate", "--per-layer", "--json", str(tmp_path / "e.json")]) == 0
    out = capsys.readouterr().out
    report = json.loads((tmp_path / "e.json").read_text())
    assert report["instructions"] == counted.per_call and f"{counted.per_call:,}" in out
    rows = {r["function"]: r for r in report["functions"]}
    manifest = read(example_arm64).manifest
    for name, n in counted.functions.items():
        assert rows[name]["instructions"] == n
    conv_layers = {o.layer for o in manifest.ops if o.kind == "conv2d"}
    named = {layer for r in rows.values() for layer in r["layers"]}
    assert conv_layers and conv_layers <= named
    # ... and the library's modeled cycles, in total and per function, when llvm is installed
    if not cycles.missing_tools():
        assert "modeled cycles" in out and "cortex-a72" in report["cycle_model"]
        assert report["modeled_cycles"] == pytest.approx(sum(rows[name]["cycles"] for name in counted.functions))
