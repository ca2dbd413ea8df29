"""Modeled Cortex-A72 cycles (sliver.tools.emulator.cycles): objdump lines become assembler
input, llvm-mca's model tells cheap instructions from expensive ones, and a counted call
is modeled block by block (the shared emulated run of the example: test_icount.py)."""

import pytest

from sliver.common.errors import SliverError
from sliver.tools.emulator import cycles

needs_mca = pytest.mark.skipif(
    bool(cycles.missing_tools()),
    reason="needs llvm-mca and llvm-objdump: bash tools/emulator/setup_pi_emulator.sh installs them",
)


@pytest.mark.parametrize("line, want", [
    ("ldr\tq0, [x2], #16", "ldr q0, [x2], #16"),
    ("b.ne\t0x1a2c0 <conv_row_2_2+0x40>", "b.ne ."),
    ("tbz\tw3, #2, 0x40 <f+0x40>", "tbz w3, #2, ."),
    ("cbnz\tx6, 0x1234 <g>", "cbnz x6, ."),
    ("adrp\tx0, 0x12000 <h+0x10>", "adrp x0, ."),
    ("bl\t0x20 <memcpy@plt>", "nop"),
    ("blr\tx8", "nop"),
    ("mov\tx0, #16 // =0x10", "mov x0, #16"),
    ("ldr\tx1, [x0, #8]", "ldr x1, [x0, #8]"),
    ("ret", "ret"),
])
def test_objdump_lines_become_assembler_input(line, want):
    assert cycles.assembler_syntax(line) == want


@needs_mca
def test_model_tells_cheap_neon_instructions_from_expensive_ones():
    """Eight independent instructions of each kind, one pass in steady state: logic ops
    share both NEON pipes, a byte mla is slower, a 64-byte table lookup far slower."""
    def eight(fmt):
        return [fmt.format(i=i) for i in range(8)]

    listings = [eight("and v{i}.16b, v20.16b, v21.16b"), eight("mla v{i}.16b, v20.16b, v21.16b"),
                eight("tbl v{i}.16b, {{v20.16b-v23.16b}}, v24.16b")]
    (and_, mla, tbl), bad = cycles.block_cycles(listings)
    assert bad == [set(), set(), set()]
    assert 3.5 <= and_ <= 5.0  # 2 per cycle
    assert mla > 1.5 * and_
    assert tbl > 2 * mla


@needs_mca
def test_lines_the_model_cannot_take_become_nops():
    (c,), bad = cycles.block_cycles([["add x0, x0, #1", "frobnicate x0, x1", "add x1, x1, #1"]])
    assert bad == [{1}] and c > 0


def test_missing_tools_are_named_with_the_fix(monkeypatch):
    monkeypatch.setattr(cycles.shutil, "which", lambda tool: None)
    with pytest.raises(SliverError, match="llvm-mca and llvm-objdump.*apt-get install llvm"):
        cycles.ensure_ready()
