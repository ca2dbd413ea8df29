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
is 1.5%."""

from __future__ import annotations

from sliver.backends.tvm.schedules.common import (CPU, NotApplicable, block_name, iter_kinds,
                                                  register_tile, tile_cost, tile_reduction)

NAMES = ("matmul", "T_matmul", "NT_matmul", "T_batch_matmul", "dense", "T_dense")
PACKED = "matmul_packed"
PADDED = "matmul_padded"
PAD_COLUMNS = "T_pad_columns"
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
            cost = tile_cost(rt, nv, cpu)
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
        rt, nv = register_tile(int(it[-3].dom.extent), int(it[-2].dom.extent), cpu)
        return tile_reduction(sch, block, cpu, width=nv * cpu.lanes, reg_tile=rt,
                              vector_epilogue=not _has_block(sch, PAD_COLUMNS))
    if b is not None:
        it = sch.get(block).iter_vars
        rows, n = int(it[-3].dom.extent) if len(it) >= 3 else 1, int(it[-2].dom.extent)
        rt, nv = register_tile(rows, n, cpu)
        if nv * cpu.lanes != b:  # packed for another CPU: keep its width
            rt, _ = register_tile(rows, b, cpu)
        return tile_reduction(sch, block, cpu, width=b, reg_tile=rt, vector_epilogue=not _slices_columns(sch, n))
    return tile_reduction(sch, block, cpu, max_vectors=2)


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
    full = te.compute((*a.shape[:-2], rows, nb * b),
                      lambda *i: te.sum(_row(a, i, rk, rows != m).astype(out_dtype)
                                        * wp[i[-1] // b, rk, i[-1] % b].astype(out_dtype), axis=rk),
                      name=PACKED)
    return _unpad(full, (*a.shape[:-1], n), "T_matmul_unpad")


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
    full = te.compute((*batch, rows, cols),
                      lambda *i: te.sum(_row(a, i, rk, rows != m).astype(out_dtype)
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
