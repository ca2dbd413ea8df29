"""Shared pieces of sliver's default CPU schedules: what the target's vector unit
looks like, how to read a block's loop nest, and the one loop-nest recipe most
rules share (:func:`tile_reduction`, a register-tiled, vectorized, parallel
reduction with its elementwise epilogue fused in).

All schedules here are semantics-preserving ``tvm.s_tir.Schedule`` primitives:
they reorder, split, fuse, inline and annotate loops, never change arithmetic.
"""

from __future__ import annotations

from dataclasses import dataclass


#: Storage scope of the per-task scratch buffers the rules create inside a parallel loop
#: (a register tile's accumulators, a Winograd tile's half-transformed values).  TVM's
#: LowerTVMBuiltin puts an allocation on the stack only if its scope is "global" and it is
#: under 1 KB; any other scope ("local" included) becomes a TVMBackendAllocWorkspace /
#: TVMBackendFreeWorkspace pair of runtime calls (plus a thread-local lookup) on every
#: iteration of the loop that holds it, i.e. per tile.  "global" makes them allocas in the
#: parallel loop's body, which LLVM keeps in registers.  (A 28x28x128 F(4x4) conv on the
#: emulated Pi executed 2.5M of its 19.1M instructions outside the library with "local": 1.9M in
#: libtvm_runtime, 0.6M in ld.so's TLS lookup; 0.02M with "global", and 16.4M in all.)
SCRATCH_SCOPE = "global"
#: ... and the size limit for that (TVM's ``runtime::kMaxStackAlloca``): a scratch buffer of this
#: many bytes or more is a workspace call per iteration even in "global" scope.  The Winograd
#: transforms stay under it (:func:`.winograd._stack_columns`), and so do register tiles
#: (:func:`stack_accumulators`: at most 15 zmm accumulators on AVX-512).
STACK_ALLOCA_BYTES = 1024


#: Relax's ``OpPatternKind::kOutEWiseFusable``: the pattern of a conv, into which FuseOps
#: fuses the elementwise ops that follow (bias, residual add, relu).  The PrimFuncs sliver
#: writes for convs (Winograd, convs of channel selections) carry it.
OUT_EWISE_FUSABLE = 4


class NotApplicable(Exception):
    """A rule does not fit this PrimFunc (not an error: the next rule is tried)."""


@dataclass(frozen=True)
class CPU:
    """What a schedule needs to know about the target CPU."""

    lanes: int  # float32 lanes in one vector register (16 AVX-512, 8 AVX2, 4 NEON/SSE)
    registers: int  # architectural vector registers (32 on AVX-512 and AArch64, 16 else)
    cores: int

    @property
    def max_acc(self) -> int:
        """How many vector accumulators a micro-kernel may keep in registers, leaving
        room for the weight vectors and the broadcast operand, and small enough for
        the tile to be a stack buffer (:func:`stack_accumulators`)."""
        return min(self.registers - 8 if self.registers > 16 else self.registers - 4, stack_accumulators(self))


def stack_accumulators(cpu: CPU) -> int:
    """The most float32 vector accumulators a register tile may hold and still be a
    stack buffer (under :data:`STACK_ALLOCA_BYTES`): 15 zmm on AVX-512 (16 x 64 bytes is
    exactly 1 KB: a TVMBackendAllocWorkspace call per tile, and a heap pointer LLVM cannot
    keep in registers), 31 ymm on AVX2, 63 NEON q registers."""
    return (STACK_ALLOCA_BYTES - 1) // (4 * cpu.lanes)


def cpu_of(target) -> CPU:
    """The :class:`CPU` of a target (a :class:`~sliver.backends.tvm.targets.Target`, a
    name or a ``tvm.target.Target``): the vector facts its Target carries."""
    from sliver.backends.tvm.targets import of

    t = of(target)
    return CPU(lanes=t.lanes, registers=t.registers, cores=t.cores)


# -- reading a block ------------------------------------------------------------------------


def extent(sch, loop) -> int:
    e = sch.get(loop).extent
    try:
        return int(e)
    except TypeError as exc:  # symbolic shapes: the default rules want static ones
        raise NotApplicable("dynamic loop extent") from exc


def iter_kinds(sch, block) -> str:
    """``"SSSSRRR"``: one letter per block iterator (Spatial, Reduction, Other)."""
    from tvm import tirx

    kinds = {tirx.IterVar.DataPar: "S", tirx.IterVar.CommReduce: "R"}
    return "".join(kinds.get(int(iv.iter_type), "O") for iv in sch.get(block).iter_vars)


def trivial_loops(sch, block):
    """The block's loops when each loop binds exactly one block iterator, in order
    (what legalization produces); raises :class:`NotApplicable` otherwise."""
    import tvm

    loops = sch.get_loops(block)
    realize = tvm.get_global_func("s_tir.schedule.GetSBlockRealize")(sch, block)
    values = list(realize.iter_values)
    if len(loops) != len(values):
        raise NotApplicable("loops and block iterators differ in number")
    for loop, value in zip(loops, values):
        if not sch.get(loop).loop_var.same_as(value):
            raise NotApplicable("block iterators are not bound to plain loop variables")
    return list(loops)


def root_blocks(sch):
    return list(sch.get_child_blocks(sch.get_sblock("root")))


def block_name(sch, block) -> str:
    return sch.get(block).name_hint


def writes_last_axis_with(sch, block, spatial_index: int) -> bool:
    """Whether the block's output buffer has the block's ``spatial_index``-th iterator
    as its last (contiguous) index, i.e. vectorizing that iterator gives vector stores."""
    b = sch.get(block)
    if len(b.writes) != 1:
        return False
    region = b.writes[0].region
    if not region:
        return False
    last = region[-1]
    var = b.iter_vars[spatial_index].var
    return last.min.same_as(var) and int(last.extent) == 1


def pick_lanes(n: int, cpu: CPU) -> int:
    """The widest vector (cpu.lanes, lanes/2, …, 4) that divides ``n``; 1 if none."""
    v = cpu.lanes
    while v >= 4:
        if n % v == 0:
            return v
        v //= 2
    return 1


def largest_divisor(n: int, at_most: int) -> int:
    for d in range(max(1, min(n, at_most)), 0, -1):
        if n % d == 0:
            return d
    return 1


# -- the shared recipe -------------------------------------------------------------------


def inline_epilogue(sch, block):
    """Inline the elementwise blocks that consume ``block`` (directly or through each
    other) until one consumer block is left, the one that writes the function output;
    return it, or None when the reduction's result is the function output itself.

    The epilogue may be a DAG, not only a chain: GELU reads its input twice
    (``x * (0.5 + 0.5 * erf(x / √2))``), so after a bias add is inlined the reduction has
    two consumers, the erf's argument and the final product; each non-final one is
    inlined in turn."""
    while True:
        consumers = list(sch.get_consumers(block))
        if not consumers:
            return None
        if any("R" in iter_kinds(sch, c) for c in consumers):
            raise NotApplicable("a reduction consumes the reduction")
        inner = [c for c in consumers if sch.get_consumers(c)]
        if not inner:
            if len(consumers) != 1:
                raise NotApplicable("reduction result has several consumers")
            return consumers[0]
        sch.compute_inline(inner[0])


def pads_last_axis(sch, block) -> bool:
    """``block`` (a padding) pads its input's innermost axis (the channels, in NHWC)."""
    b = sch.get(block)
    return any(int(b.writes[0].source.shape[-1]) != int(r.source.shape[-1]) for r in b.reads)


def inline_padding(sch, block) -> None:
    """Read ``block``'s input through its padding (a bounds check per load) instead
    of from a padded copy (``pad_temp``: a pass over memory of its own), where the
    block does few operations per input value (depthwise convs, pooling).  A padding
    of the innermost (vectorized) axis stays a copy: checked in place, every vector
    load would test each lane."""
    for p in sch.get_producers(block):
        if sch.get(p).name_hint.startswith("pad") and not pads_last_axis(sch, p):
            try:
                sch.compute_inline(p)
            except Exception:  # noqa: BLE001 - TVM refuses an unsafe inline: keep the copy
                pass


def vectorize_tail(sch, loop, lanes: int):
    """Split ``loop`` into (…, lanes) and vectorize the inner part (unrolling the
    outer part when it is short)."""
    n = extent(sch, loop)
    if lanes <= 1 or n % lanes:
        return
    if n == lanes:
        sch.vectorize(loop)
        return
    outer, inner = sch.split(loop, [None, lanes])
    sch.vectorize(inner)
    if n // lanes <= 8:
        sch.unroll(outer)


def divisors(n: int, at_most: int) -> list[int]:
    return [d for d in range(1, min(n, at_most) + 1) if n % d == 0]


def register_tile(rows: int, n_out: int, cpu: CPU) -> tuple[int, int]:
    """``(rt, nv)``: the micro-kernel's register tile for ``rows`` output positions
    (rt of them, a divisor of ``rows``) x ``n_out`` output channels (nv vectors of
    ``cpu.lanes``, nv dividing ``n_out / lanes``).

    Per reduction step the kernel loads rt broadcast inputs and nv weight vectors for
    rt * nv FMAs.  The tile keeps ``rt * nv + nv + 1`` vector registers live; spilling
    one costs more than any tile gains, and on 16 registers (AVX2) more than 8
    accumulators were never faster (Zen 3: 4x2 and 2x4 ran at ~85 GFLOP/s per core,
    4x3 and 6x2 slower, 7x2 spills).  Among tiles that fit, the one with the fewest
    loads per FMA wins, a weight load (streamed from L2) weighing 1.5 an input
    broadcast (L1) on x86; on AArch64 both weigh 1 (instruction counts).  Tiles under
    six accumulators leave the FMA pipes idle (their latency is 4 cycles) and are
    penalized: 7x1 beats 1x8 on a 7-wide map (72 vs 34 GFLOP/s)."""
    lanes = cpu.lanes
    if n_out % lanes:
        raise NotApplicable(f"{n_out} output channels are not a multiple of {lanes} lanes")
    best, best_cost = (1, 1), None
    for nv in divisors(n_out // lanes, 8):
        for rt in divisors(rows, 16):
            cost = tile_cost(rt, nv, cpu)
            if cost is not None and (best_cost is None or cost < best_cost - 1e-9):
                best, best_cost = (rt, nv), cost
    return best


def tile_cost(rt: int, nv: int, cpu: CPU) -> float | None:
    """:func:`register_tile`'s cost of an ``rt`` x ``nv``-vector tile (loads per FMA, plus a
    penalty under six accumulators); None when the tile does not fit the registers."""
    acc = rt * nv
    cap = min(8 if cpu.registers <= 16 else 24, stack_accumulators(cpu))
    if acc > cap or acc + nv + 1 > cpu.registers - 1:
        return None
    w_cost = 1.0 if cpu.registers > 16 and cpu.lanes == 4 else 1.5
    return w_cost / rt + 1.0 / nv + max(0, 6 - acc) * 0.5


def tile_reduction(sch, block, cpu: CPU, *, max_vectors: int = 2, reg_tile: int | None = None,
                   width: int | None = None, channels_inner: bool = False, unroll_reduction: int = 1,
                   stage: bool = False, vector_epilogue: bool = True):
    """Schedule a reduction block ``out[s0, …, sr, sv] += f(… r …)`` whose last
    spatial iterator ``sv`` is the output's contiguous axis (NHWC convolutions over
    output channels, matmuls over N, NHWC pooling over C).

    Loop nest produced, per output tile of ``rt`` rows (``sr``) x ``nv*lanes``
    columns (``sv``)::

        parallel for (sv_outer, s0…, sr_outer):        # fused
            init acc[rt, nv*lanes] (vectorized)
            for r… (reduction, original order):
                for sr_inner in 0..rt (unrolled):
                    for v in 0..nv (unrolled): acc[.., v] += … (vectorized)
            epilogue (bias, residual add, relu, …) on acc, vectorized, stored

    ``acc`` is a buffer of rt * nv vectors on the task's stack (:data:`SCRATCH_SCOPE`): LLVM keeps it in registers.
    ``nv <= max_vectors`` (the most that divides the axis) and ``rt`` is the largest
    divisor of the row extent that fits the remaining accumulator budget
    (``cpu.max_acc``), or of ``reg_tile`` when given.  Measured on Zen 4 (AVX-512,
    ResNet-18 3x3 convs): 8x2, 7x2, 14x2 and 7x4 tiles all run at the same
    compute-bound speed; tiles with fewer than ~8 accumulators are 1.3-8x slower.
    Since 16 zmm accumulators are no stack buffer any more (:func:`stack_accumulators`),
    AVX-512 tiles are 7x2, 4x3 and the like.

    ``stage=True``: the reduction's consumers are not an elementwise epilogue (they
    read other tiles, e.g. a Winograd output transform): each tile is written to
    the reduction's own buffer and the consumers are left alone.

    ``vector_epilogue=False``: the epilogue's column loop is left to LLVM's vectorizer.
    When the tile's columns pass the output's end (a product padded to the tile), the
    epilogue stores under a per-lane condition, which TVM's vectorizer turns into a
    scalar loop of tests; LLVM vectorizes it with masked stores (Whisper's 1500-column
    attention scores, one Zen 4 core: 37.9 -> 29.8 ms).
    """
    kinds = iter_kinds(sch, block)
    if "O" in kinds or "R" not in kinds:
        raise NotApplicable("not a plain reduction block")
    loops = trivial_loops(sch, block)
    s_idx = [i for i, k in enumerate(kinds) if k == "S"]
    r_loops = [loops[i] for i, k in enumerate(kinds) if k == "R"]
    if not s_idx:
        raise NotApplicable("no spatial iterator")
    if not writes_last_axis_with(sch, block, s_idx[-1]):
        raise NotApplicable("last spatial iterator is not the output's contiguous axis")

    sv = loops[s_idx[-1]]
    n_v = extent(sch, sv)
    lanes = pick_lanes(n_v, cpu)
    if width is not None:  # the caller's tile (e.g. the packed weights' block)
        if n_v % width or (lanes > 1 and width % lanes):
            raise NotApplicable(f"tile width {width} does not fit {n_v} columns of {lanes} lanes")
        lanes = lanes if lanes > 1 else 1
    else:
        nv = 1
        for cand in range(max_vectors, 0, -1):
            if n_v % (cand * lanes) == 0:
                nv = cand
                break
        width = nv * lanes
        if lanes == 1:
            width = largest_divisor(n_v, 4)

    # Register tiling over the spatial iterator just before sv (output width / rows).
    sr = loops[s_idx[-2]] if len(s_idx) >= 2 else None
    rt = 1
    if sr is not None:
        budget = max(1, cpu.max_acc // max(1, width // max(lanes, 1)))
        rt = largest_divisor(extent(sch, sr), reg_tile or budget)
    outer_spatial = [loops[i] for i in s_idx[:-2]] if sr is not None else []

    epilogue = None if stage else inline_epilogue(sch, block)
    if epilogue is None:  # the reduction writes the output: stage its tiles locally
        epilogue = sch.cache_write(block, 0, "global")
    sch.set_scope(block, 0, SCRATCH_SCOPE)

    sv_o, sv_i = sch.split(sv, [None, width])
    if sr is not None:
        sr_o, sr_i = sch.split(sr, [None, rt])
        if channels_inner:  # neighbouring tasks read neighbouring channels of the same pixels
            sch.reorder(*outer_spatial, sr_o, sv_o, *r_loops, sr_i, sv_i)
            par = sch.fuse(*outer_spatial, sr_o, sv_o)
        else:  # neighbouring tasks share one slice of the weights
            sch.reorder(sv_o, *outer_spatial, sr_o, *r_loops, sr_i, sv_i)
            par = sch.fuse(sv_o, *outer_spatial, sr_o)
    else:
        sch.reorder(sv_o, *r_loops, sv_i)
        par = sv_o
        sr_i = None

    sch.reverse_compute_at(epilogue, par, preserve_unit_loops=False)
    sch.parallel(par)

    # micro-kernel: unroll the register rows, vectorize the columns
    if lanes > 1:
        vo, vi = sch.split(sv_i, [None, lanes])
        sch.vectorize(vi)
        sch.unroll(vo)
    if sr_i is not None and rt > 1:
        sch.unroll(sr_i)
    # a very short innermost reduction (3 input channels of an RGB stem) is all loop
    # overhead: unroll it
    if extent(sch, r_loops[-1]) <= 4:
        sch.unroll(r_loops[-1])
    elif unroll_reduction > 1 and extent(sch, r_loops[-1]) % unroll_reduction == 0:
        # LLVM does not unroll the AArch64 micro-kernel loop itself: unrolled, the loop
        # counter and branch are paid once per `unroll_reduction` steps
        r_out, r_in = sch.split(r_loops[-1], [None, unroll_reduction])
        sch.unroll(r_in)
        r_loops = r_loops[:-1] + [r_out]  # a matmul's only reduction loop is also the first
    init = sch.decompose_reduction(block, r_loops[0])
    init_loops = sch.get_loops(init)
    if lanes > 1:
        vectorize_tail(sch, init_loops[-1], lanes)
    epi_loops = sch.get_loops(epilogue)
    if lanes > 1 and len(epi_loops) > 1 and vector_epilogue:
        vectorize_tail(sch, epi_loops[-1], lanes)
    return [block, init, epilogue]
