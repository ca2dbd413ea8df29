"""Matrix products: ``relax.linear`` / ``relax.matmul`` legalized to ``matmul``
blocks ``C[…, m, n] += A[…, m, k] * B[…, k, n]`` (linear's weight is transposed
to [K, N] by constant folding, so N is contiguous in B and C).

A product with a 2-D right operand (a linear layer's weight) is legalized by
:func:`legalize` with that operand *packed*: ``[K, N]`` becomes ``[N / b, K, b]``
with ``b`` the micro-kernel's width (:func:`~.common.register_tile`), so each
reduction step reads the next contiguous ``b`` floats of one panel instead of a row
``N`` floats away from the last (BERT-base's 128x768x3072 feed-forward on Zen 5: a
new page every few steps, ~12 GFLOP/s per core).  The packing is a ``call_tir`` on
the constant, which FoldConstant evaluates at compile time, as for convolutions.

Micro-kernel: ``rt`` rows of A x ``nv`` vectors of N in registers, the k loop
outside it; batch and the outer tiles run in parallel.  With batch-1 inference
(M = 1) this is a GEMV vectorized over N.

**Rows and columns the tile does not divide.**  The register tile's rows must divide M
and its width N: ViT-B/16's 197 tokens are prime, so every product got 1-row tiles
(~50 GFLOP/s per core on Zen 5 against ~145 for BERT's 128), and the attention scores'
197 (or Whisper's 1500) columns are no multiple of 16 lanes.  :func:`padded_tile` picks
the tile as if M (and, for a product of two activations, N) were padded to its
multiple, and the legalization computes the product over the padded rows and columns
into a scratch buffer of the function, which the output then slices (the slice is the
first block of the epilogue, so the tile's stores skip the padded rows).  Padded rows
read A's last row again (``A[min(m, M - 1), k]``: no copy of A, no test in the
reduction loop); padded columns read a zero-padded copy of B (K x N, small next to the
product), and the epilogue's column loop is left to LLVM's vectorizer (masked stores:
:func:`~.common.tile_reduction`).  The waste is what the padding adds: 197 → 200 rows
is 1.5%.

**NEON.**  On AArch64 the micro-kernel unrolls k by :data:`NEON_K_STEP`, reads each row of A's
tile as vectors whose lanes ``fmla`` takes by element (one ``ldp q`` per row and 8 k steps
instead of a broadcast load per row and step, as onnxruntime's MLAS kernels do) and picks its
tile by :func:`neon_tile_cost`; padded rows of A are then a stage of their own, computed into
that buffer (:func:`_rows_padded`).  BERT-base's 128x768x3072 product + bias + GELU on the
emulated Pi 4: 124.8 M -> 96.0 M instructions (onnxruntime: 102.5 M), of which the GELU
epilogue's vectorization (:mod:`.elementwise`) is 9 M."""

from __future__ import annotations

from sliver.backends.tvm.schedules.common import (CPU, SCRATCH_SCOPE, NotApplicable, block_name, divisors,
                                                  extent, iter_kinds, register_tile, tile_cost, tile_reduction)

NAMES = ("matmul", "T_matmul", "NT_matmul", "T_batch_matmul", "dense", "T_dense")
PACKED = "matmul_packed"
PADDED = "matmul_padded"
PAD_COLUMNS = "T_pad_columns"
#: A with its rows padded to the tile's multiple, a stage of its own on NEON (:func:`_rows_padded`)
PAD_ROWS = "T_pad_rows"
#: a padded tile must beat the best tile that divides the rows by this factor: padding costs a
#: slice in the epilogue and a wider function, which the cost model does not see
PAD_GAIN = 1.1


def _round_up(n: int, m: int) -> int:
    return -(-n // m) * m


def padded_tile(rows: int, n_out: int, cpu: CPU, *, pad_columns: bool = False) -> tuple[int, int, int, int]:
    """``(rt, nv, padded rows, padded columns)``: the register tile for an ``rows`` x
    ``n_out`` product when the rows (and with ``pad_columns`` the columns) may be padded
    to the tile's multiple.  Each tile's :func:`~.common.tile_cost` (loads per FMA) is
    weighed by the work the padding adds, ``(1 + cost) * padded / useful``; a padded
    tile is chosen only when it beats the best exact one by :data:`PAD_GAIN` (and
    without ``pad_columns``, ``n_out`` must be a multiple of the vector width)."""
    lanes = cpu.lanes
    if not pad_columns and n_out % lanes:
        raise NotApplicable(f"{n_out} output channels are not a multiple of {lanes} lanes")
    vectors = -(-n_out // lanes)
    best, best_eff, exact, exact_eff = None, None, None, None
    for nv in range(1, 9):
        if not pad_columns and vectors % nv:
            continue
        cols = _round_up(n_out, nv * lanes)
        for rt in range(1, 17):
            cost = dense_tile_cost(rt, nv, cpu)
            if cost is None:
                continue
            mp = _round_up(rows, rt)
            eff = (1.0 + cost) * mp * cols / (rows * n_out)
            if best_eff is None or eff < best_eff - 1e-9:
                best, best_eff = (rt, nv, mp, cols), eff
            if mp == rows and cols == n_out and (exact_eff is None or eff < exact_eff - 1e-9):
                exact, exact_eff = (rt, nv, mp, cols), eff
    if exact is not None and exact_eff <= best_eff * PAD_GAIN:
        return exact
    return best


def match(sch, block) -> bool:
    name = block_name(sch, block)
    kinds = iter_kinds(sch, block)
    return any(name.startswith(n) for n in NAMES) and kinds.endswith("R") and kinds.count("R") == 1


def _packed_width(sch, block) -> int | None:
    """``b`` of a packed matmul block (its 3-d panel buffer's last extent), else None."""
    if not block_name(sch, block).startswith(PACKED):
        return None
    b = sch.get(block)
    return int(b.reads[-1].source.shape[-1])


def _has_block(sch, name: str) -> bool:
    try:
        sch.get_sblock(name)
        return True
    except Exception:  # noqa: BLE001 - no such block
        return False


def _slices_columns(sch, n: int) -> bool:
    """The product's ``n`` columns are sliced (its weight was padded to whole panels)."""
    if not _has_block(sch, "T_matmul_unpad"):
        return False
    return int(sch.get(sch.get_sblock("T_matmul_unpad")).writes[0].source.shape[-1]) != n


def schedule(sch, block, cpu: CPU) -> list:
    if not match(sch, block):
        raise NotApplicable("not a matmul")
    b = _packed_width(sch, block)
    if b is None and block_name(sch, block).startswith(PADDED):  # padded to the tile chosen for it
        it = sch.get(block).iter_vars
        rt, nv = dense_tile(int(it[-3].dom.extent), int(it[-2].dom.extent), cpu)
        return _tile(sch, block, cpu, width=nv * cpu.lanes, reg_tile=rt,
                     vector_epilogue=not _has_block(sch, PAD_COLUMNS))
    if b is not None:
        it = sch.get(block).iter_vars
        rows, n = int(it[-3].dom.extent) if len(it) >= 3 else 1, int(it[-2].dom.extent)
        rt, nv = dense_tile(rows, n, cpu)
        if nv * cpu.lanes != b:  # packed for another CPU: keep its width
            rt, _ = dense_tile(rows, b, cpu)
        return _tile(sch, block, cpu, width=b, reg_tile=rt, vector_epilogue=not _slices_columns(sch, n))
    return tile_reduction(sch, block, cpu, max_vectors=2)


#: k steps per unrolled iteration of a NEON micro-kernel: two q registers of each row of A
#: (one ``ldp q``), 4 when 8 does not divide K
NEON_K_STEP = 8


def is_neon(cpu: CPU) -> bool:
    """AArch64's vector unit (4 float32 lanes, 32 registers; x86's 4-lane SSE has 16)."""
    return cpu.lanes == 4 and cpu.registers == 32


def neon_tile_cost(rt: int, nv: int, cpu: CPU) -> float | None:
    """The NEON micro-kernel's instructions per ``fmla`` beyond the ``fmla`` itself, for ``rt``
    rows x ``nv`` vectors; None when its registers do not fit.

    Per :data:`NEON_K_STEP` k steps the kernel loads each row of A once (one ``ldp q``: its lanes
    are the k steps' by-element operands, :func:`_rows_as_vectors`), the packed B panel in
    ``ldp q`` pairs, and runs ``rt * nv * NEON_K_STEP`` ``fmla`` and 4 instructions of loop.
    The accumulators, the rows of A and one k step's B vectors must all be registers: LLVM
    loads the B vectors of a step together, and a tile over 32 spills accumulators to the
    stack (6 x 6 vectors with one q register per row: two spills per k step).  onnxruntime's
    MLAS kernel is 4 x 4 with 4 k steps, 1.23 instructions per ``fmla``; 4 x 4 here is 1.19.
    Under 12 accumulators the ``fmla`` latency shows, as on x86 (:func:`~.common.tile_cost`)."""
    acc = rt * nv
    a_registers = rt * NEON_K_STEP // cpu.lanes
    if acc + a_registers + nv > cpu.registers:
        return None
    fmla = acc * NEON_K_STEP
    return (rt * NEON_K_STEP / 8 + nv * NEON_K_STEP / 2 + 4) / fmla + max(0, 12 - acc) * 0.05


def dense_tile_cost(rt: int, nv: int, cpu: CPU) -> float | None:
    """A product's tile cost: :func:`neon_tile_cost` on NEON, else :func:`~.common.tile_cost`."""
    return neon_tile_cost(rt, nv, cpu) if is_neon(cpu) else tile_cost(rt, nv, cpu)


def dense_tile(rows: int, n_out: int, cpu: CPU) -> tuple[int, int]:
    """``(rt, nv)``: the register tile of a ``rows`` x ``n_out`` product, ``rt`` dividing the rows
    and ``nv`` vectors dividing the columns (:func:`~.common.register_tile`; on NEON by
    :func:`neon_tile_cost`)."""
    if not is_neon(cpu):
        return register_tile(rows, n_out, cpu)
    if n_out % cpu.lanes:
        raise NotApplicable(f"{n_out} output channels are not a multiple of {cpu.lanes} lanes")
    best, best_cost = (1, 1), None
    for nv in divisors(n_out // cpu.lanes, 8):
        for rt in divisors(rows, 16):
            cost = neon_tile_cost(rt, nv, cpu)
            if cost is not None and (best_cost is None or cost < best_cost - 1e-9):
                best, best_cost = (rt, nv), cost
    return best


def _tile(sch, block, cpu: CPU, **kw) -> list:
    """:func:`~.common.tile_reduction` of a matmul block; on NEON with the k loop unrolled by
    :data:`NEON_K_STEP` (or 4 when it does not divide K) and A's rows read as vectors."""
    k = int(sch.get(block).iter_vars[-1].dom.extent)
    step = next((s for s in (NEON_K_STEP, cpu.lanes) if k % s == 0 and k > s), None)
    if not is_neon(cpu) or step is None:
        return tile_reduction(sch, block, cpu, **kw)
    done = tile_reduction(sch, block, cpu, unroll_reduction=step, **kw)
    return done + [_rows_as_vectors(sch, block)]


def _k_outer(sch, block):
    """The outer of the two loops the reduction iterator is split over."""
    import tvm
    from tvm import tirx

    realize = tvm.get_global_func("s_tir.schedule.GetSBlockRealize")(sch, block)
    k_vars = tirx.analysis.undefined_vars(realize.iter_values[-1], [])
    loops = [l for l in sch.get_loops(block) if any(sch.get(l).loop_var.same_as(v) for v in k_vars)]
    if len(loops) != 2:
        raise NotApplicable("the reduction is not split in two loops")
    return loops[0]


def _rows_as_vectors(sch, block):
    """Read the tile's rows of A a k step at a time (:data:`NEON_K_STEP`) into a small buffer (one
    ``ldp q`` per row), whose lanes the unrolled k steps take as ``fmla``'s by-element operand,
    instead of one ``ld1r``/``ldr s`` per row and k step."""
    from tvm import tirx

    b = sch.get(block)
    columns = b.iter_vars[-2].var
    out = b.writes[0].source

    def uses_columns(region) -> bool:
        return any(v.same_as(columns) for r in region.region for v in tirx.analysis.undefined_vars(r.min, []))

    (a,) = [i for i, r in enumerate(b.reads) if not r.source.same_as(out) and not uses_columns(r)]
    k_outer = _k_outer(sch, block)
    padded = [p for p in sch.get_producers(block) if block_name(sch, p).startswith(PAD_ROWS)]
    if padded:  # the padded copy of A is the buffer: computed a tile and k step at a time
        (rows,) = padded
        sch.set_scope(rows, 0, SCRATCH_SCOPE)
    else:
        rows = sch.cache_read(block, a, SCRATCH_SCOPE)
    sch.compute_at(rows, k_outer, preserve_unit_loops=True)
    loops = sch.get_loops(rows)
    for loop in loops[-2:]:
        extent(sch, loop)  # a tile's rows and a k step: constant, or TVM fails to unroll at build time
    sch.vectorize(loops[-1])
    sch.unroll(loops[-2])
    return rows


# -- legalization: a packed right operand, padded rows and columns ---------------------------------


def pack_te(w, b: int):
    """``[K, N]`` → ``[N / b, K, b]``; when ``b`` does not divide N, the last panel's columns
    past N are zeros."""
    from tvm import te, tirx

    k, n = (int(d) for d in w.shape)
    if n % b == 0:
        return te.compute((n // b, k, b), lambda o, r, j: w[r, o * b + j], name="pack_weight")
    zero = tirx.const(0, w.dtype)
    return te.compute((-(-n // b), k, b), lambda o, r, j: tirx.Select(
        o * b + j < n, w[r, tirx.min(o * b + j, n - 1)], zero), name="pack_weight")


def _row(a, i, rk, padded: bool):
    """``a[…, m, k]`` at output index ``i``; ``a[…, min(m, M - 1), k]`` when the output's
    rows are padded past a's M."""
    from tvm import tirx

    m = i[-2]
    if padded:
        m = tirx.min(m, int(a.shape[-2]) - 1)
    return a[(*i[:-2], m, rk)]


def _rows_padded(a, rows: int):
    """``(a, padded)`` for :func:`_row`: on AArch64 a stage of ``a`` with its rows padded to ``rows``
    (the padded ones repeat the last), which the NEON kernel computes a tile and k step at a time
    into its vector buffer of A (:func:`_rows_as_vectors`); elsewhere ``a`` itself, read through
    ``min``."""
    from tvm import te, tirx

    from sliver.backends.tvm.schedules.elementwise import _is_aarch64

    m = int(a.shape[-2])
    if rows == m or not _is_aarch64():
        return a, rows != m
    padded = te.compute((*a.shape[:-2], rows, a.shape[-1]),
                        lambda *i: a[(*i[:-2], tirx.min(i[-2], m - 1), i[-1])], name=PAD_ROWS)
    return padded, False


def _unpad(full, shape, name: str):
    """The first ``shape`` of ``full`` (the padded product's useful part)."""
    from tvm import te

    return te.compute(tuple(shape), lambda *i: full(*i), name=name)


def packed_matmul_te(a, wp, out_dtype: str, rows: int | None = None, n: int | None = None):
    """``out[…, m, n] = Σ_k a[…, m, k] * wp[n // b, k, n % b]``; with ``rows`` (a multiple
    of the register tile above M) computed over ``rows`` rows, the padded ones reading
    a's last row, and with ``n`` (under the panels' N / b * b columns: zero columns padded
    the weight to whole panels) over every panel's columns; sliced to M x n."""
    from tvm import te

    nb, k, b = wp.shape
    m = int(a.shape[-2]) if len(a.shape) >= 2 else 1
    rows = m if rows is None else rows
    n = int(nb * b) if n is None else n
    rk = te.reduce_axis((0, k), "k")
    if rows == m and n == nb * b:
        return te.compute((*a.shape[:-1], nb * b),
                          lambda *i: te.sum(a[(*i[:-1], rk)].astype(out_dtype) * wp[i[-1] // b, rk, i[-1] % b]
                                            .astype(out_dtype), axis=rk),
                          name=PACKED)
    shape = (*a.shape[:-1], n)
    a, padded = _rows_padded(a, rows)
    full = te.compute((*a.shape[:-2], rows, nb * b),
                      lambda *i: te.sum(_row(a, i, rk, padded).astype(out_dtype)
                                        * wp[i[-1] // b, rk, i[-1] % b].astype(out_dtype), axis=rk),
                      name=PACKED)
    return _unpad(full, shape, "T_matmul_unpad")


def padded_matmul_te(a, b, rows: int, cols: int, out_dtype: str):
    """``out[…, m, n] = Σ_k a[…, m, k] * b[…, k, n]`` (equal batch dimensions) computed
    over ``rows`` x ``cols`` (the register tile's multiples): padded rows read a's last
    row, padded columns a zero-padded copy of b; sliced to M x N."""
    from tvm import te, tirx

    *batch, m, k = (int(d) for d in a.shape)
    n = int(b.shape[-1])
    if cols != n:
        zero = tirx.const(0, b.dtype)
        b = te.compute((*batch, k, cols), lambda *i: tirx.if_then_else(i[-1] < n, b(*i), zero),  # reads b only then
                       name=PAD_COLUMNS)
    rk = te.reduce_axis((0, k), "k")
    a, padded = _rows_padded(a, rows)
    full = te.compute((*batch, rows, cols),
                      lambda *i: te.sum(_row(a, i, rk, padded).astype(out_dtype)
                                        * b[(*i[:-2], rk, i[-1])].astype(out_dtype), axis=rk),
                      name=PADDED)
    return _unpad(full, (*batch, m, n), "T_matmul_unpad")


def kernel_choice(call, target=None):
    """How :func:`legalize` computes a float32 ``relax.matmul`` ``call`` with static shapes:
    ``("packed", b, rows)`` for a 2-D right operand (packed width ``b``, rows padded to
    ``rows``), ``("padded", rows, cols)`` for a product of two operands of equal batch
    dimensions whose tile needs padding; None for the rest (TVM's own legalization)."""
    import tvm

    from sliver.backends.tvm.schedules.common import cpu_of
    from sliver.backends.tvm.schedules.conv2d import _static, _ty

    tgt = target if target is not None else tvm.target.Target.current(allow_none=True)
    if tgt is None or (isinstance(tgt, tvm.target.Target) and str(tgt.kind.name) != "llvm"):
        return None
    a, w = call.args
    at, wt, yt = (_ty(e) for e in (a, w, call))
    as_, ws = (_static(getattr(t, "shape", None) or []) for t in (at, wt))
    if (not as_ or not ws or len(as_) < 2 or len(ws) < 2 or as_[-1] != ws[-2]
            or {str(at.dtype), str(wt.dtype), str(yt.dtype)} != {"float32"}):
        return None
    cpu = cpu_of(tgt)
    if len(ws) == 2:
        try:
            _, nv, rows, _ = padded_tile(as_[-2], ws[1], cpu)
        except NotApplicable:  # N no multiple of the lanes (1000 classes on AVX-512): zero columns pad the panels
            if ws[1] < cpu.lanes or cpu.lanes < 8:
                return None
            _, nv, rows, _ = padded_tile(as_[-2], ws[1], cpu, pad_columns=True)
        return ("packed", nv * cpu.lanes, rows)
    if len(as_) != len(ws) or as_[:-2] != ws[:-2] or cpu.lanes < 4:
        return None
    _, _, rows, cols = padded_tile(as_[-2], ws[-1], cpu, pad_columns=True)
    if (rows, cols) == (as_[-2], ws[-1]):
        return None  # TVM's matmul, tiled as it is by :func:`schedule`
    return ("padded", rows, cols)


def legalize(target=None):
    """A ``relax.matmul`` legalization for ``LegalizeOps(customize_legalize_map=…)``:
    products with a 2-D float32 right operand become a packing ``call_tir`` plus a
    packed matmul, products of two activations whose tile needs padding a padded one
    (:func:`kernel_choice`); the rest go to TVM's own rule."""
    import tvm

    from sliver.backends.tvm.schedules.conv2d import _static, _ty

    default = tvm.ir.Op.get("relax.matmul").get_attr("FLegalize")

    def rule(bb, call):
        choice = kernel_choice(call, target)
        if choice is None:
            return default(bb, call)
        a, w = call.args
        if choice[0] == "packed":
            _, b, rows = choice
            wp = bb.emit_te(pack_te, w, b, primfunc_name_hint="pack_weight")
            n = int(_static(_ty(w).shape)[1])
            return _fusable(bb, bb.call_te(packed_matmul_te, a, wp, "float32", rows, n, primfunc_name_hint="matmul"))
        _, rows, cols = choice
        return _fusable(bb, bb.call_te(padded_matmul_te, a, w, rows, cols, "float32", primfunc_name_hint="matmul"))

    return rule


def _fusable(bb, call):
    """Mark the matmul's function ``kOutEWiseFusable`` (a padded product is three blocks,
    which TVM's pattern analysis would not call fusable): FuseOps fuses the bias, residual
    add and activation after it, as for any matmul."""
    import tvm_ffi
    from tvm import relax

    from sliver.backends.tvm.schedules.common import OUT_EWISE_FUSABLE

    gv = call.args[0]
    func = bb.get()[gv].with_attr("op_pattern", OUT_EWISE_FUSABLE)
    # call_te deduplicates functions only as it made them (without the attribute): share an
    # equal marked one, the same one every time (else FuseOps makes a fused copy per
    # function: ViT-B/16 compiled twice the kernels); the unmarked copy is dropped later
    for other, f in sorted(bb.get().functions_items(), key=lambda item: item[0].name_hint):
        if not other.same_as(gv) and other.name_hint.startswith("matmul") and tvm_ffi.structural_equal(f, func):
            return relax.Call(call.op, [other, *call.args[1:]], call.attrs, call.ty_args)
    bb.update_func(gv, func)
    return call
