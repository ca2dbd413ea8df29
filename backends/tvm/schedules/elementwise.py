"""Injective blocks (elementwise, broadcast, padding, transposes, layout changes):
parallel over the outer loops, vectorized over the innermost axis."""

from __future__ import annotations

from sliver.backends.tvm.schedules.common import CPU, NotApplicable, extent, iter_kinds, pick_lanes, trivial_loops

#: Below this many elements a parallel loop costs more (thread wake-up) than it saves.
MIN_PARALLEL = 4096
#: An innermost axis this short and no multiple of 4 lanes is unrolled, not vectorized
#: (:func:`schedule_injective`).
SHORT_AXIS = 4


def schedule_injective(sch, block, cpu: CPU) -> None:
    """``for …, c: out[…, c] = f(…)`` → ``parallel for fused(…): vectorized for c``.

    The innermost axis is vectorized by ``cpu.lanes`` (or the widest smaller vector
    dividing it); when none divides it, a short one (≤ ``SHORT_AXIS``) is unrolled and a
    longer one vectorized by the widest vector it holds with a scalar rest; otherwise
    the fused loop nest is split, and when nothing divides only the outer loops are
    parallelized.
    """
    kinds = iter_kinds(sch, block)
    if "R" in kinds or "O" in kinds:
        raise NotApplicable("not an injective block")
    loops = trivial_loops(sch, block)
    if not loops:
        return
    sizes = [extent(sch, l) for l in loops]
    total = 1
    for s in sizes:
        total *= s
    lanes = pick_lanes(sizes[-1], cpu)
    if lanes == 1 and 1 < sizes[-1] <= SHORT_AXIS and len(loops) >= 3:
        # a short innermost axis (an image's 3 channels going channels last): unrolled, the
        # loop around it left to LLVM's vectorizer (interleaved stores); fused with the outer
        # loops, every lane's indices took a division (1x3x224x224 NCHW → NHWC, one Zen 5
        # core: 0.150 → 0.021 ms)
        sch.unroll(loops[-1])
        par = sch.fuse(*loops[:-2]) if len(loops) > 3 else loops[0]
        if total >= MIN_PARALLEL and cpu.cores > 1:
            sch.parallel(par)
        return
    if lanes == 1 and sizes[-1] > SHORT_AXIS and len(loops) > 1:
        # e.g. 7 or 14 columns: vectors over the leading columns of each row and a scalar
        # rest.  Fusing the whole nest into vectors instead makes every lane's index a
        # division by the row length (a gather of scalars: ~35 instructions per element
        # of a quantize on aarch64, against ~5)
        par = sch.fuse(*loops[:-1]) if len(loops) > 2 else loops[0]
        if total >= MIN_PARALLEL and cpu.cores > 1:
            sch.parallel(par)
        v = cpu.lanes
        while v > sizes[-1]:
            v //= 2
        _vector_loop(sch, loops[-1], v)
        return
    if lanes > 1:
        outer, vec = sch.split(loops[-1], [None, lanes])
        body = loops[:-1] + [outer]
    else:
        lanes = pick_lanes(total, cpu)
        fused = sch.fuse(*loops) if len(loops) > 1 else loops[0]
        if lanes > 1:
            body_loop, vec = sch.split(fused, [None, lanes])
            body = [body_loop]
        else:
            vec, body = None, [fused]
    par = sch.fuse(*body) if len(body) > 1 else body[0]
    if total >= MIN_PARALLEL and cpu.cores > 1:
        sch.parallel(par)  # TVM hands each thread one contiguous chunk
    if vec is not None:
        sch.vectorize(vec)


def schedule_reduction_outer(sch, block, cpu: CPU) -> None:
    """Any other reduction (softmax, norms, reductions over the contiguous axis):
    parallelize the spatial loops that come before the first reduction loop."""
    kinds = iter_kinds(sch, block)
    loops = trivial_loops(sch, block)
    lead = []
    for loop, k in zip(loops, kinds):
        if k != "S":
            break
        lead.append(loop)
    if not lead or cpu.cores <= 1:
        return
    par = sch.fuse(*lead) if len(lead) > 1 else lead[0]
    if extent(sch, par) > 1:
        sch.parallel(par)


# ------------------------------------------------------------------ IEEE NaN semantics
#
# TVM lowers max/min to an ordered compare and select (x86 ``maxps``), which returns
# the *other* operand when one is NaN: relu(NaN) = 0, clamp(NaN) = a bound.  torch (and
# sliver's interpreter) propagate NaN.  These legalizations replace TVM's for float
# tensors with selects that keep NaN, written so LLVM still emits one ``maxps``/``minps``
# (operands swapped) when one side is a number: ``select(x < c, c, x)`` is NaN for a NaN
# x.  A max of two tensors needs one more test (``isnan(b)``).  Ints keep TVM's rules.


def is_float(dtype) -> bool:
    return str(dtype).startswith(("float", "bfloat"))


def _number(v) -> bool:
    """A float literal that is not NaN (then ``isnan`` of it need not be tested)."""
    import math

    from tvm import tirx

    return isinstance(v, tirx.FloatImm) and not math.isnan(v.value)


def nan_max(a, b):
    """max(a, b), NaN when either is NaN (torch.maximum).  A reduction combines
    ``nan_max(accumulator, value)``: the value is read twice, the accumulator (a
    register) three times."""
    from tvm import tirx

    if _number(a) and not _number(b):
        a, b = b, a
    if _number(b):
        return tirx.Select(a < b, b, a)
    return tirx.Select(tirx.Or(a >= b, tirx.isnan(a)), a, b)


def nan_min(a, b):
    """min(a, b), NaN when either is NaN (torch.minimum)."""
    from tvm import tirx

    if _number(a) and not _number(b):
        a, b = b, a
    if _number(b):
        return tirx.Select(b < a, b, a)
    return tirx.Select(tirx.Or(a <= b, tirx.isnan(a)), a, b)


def _tvm_legalize(bb, call):
    """TVM's own legalization of ``call`` (for the dtypes that have no NaN)."""
    return call.op.get_attr("FLegalize")(bb, call)


def _scalar_of(expr):
    """A shape-() relax constant as a TIR literal, else ``expr``."""
    from tvm.relax.transform.legalize_ops.common import _try_convert_to_scalar_const

    return _try_convert_to_scalar_const(expr)


def _broadcast_load(t, out_shape, index):
    """``t`` (a te tensor, or a TIR literal) at output ``index`` under numpy broadcasting."""
    from tvm import te

    if not isinstance(t, te.Tensor):
        return t
    lead = len(out_shape) - len(t.shape)
    return t[tuple(0 if _is_one(d) and not _is_one(out_shape[lead + k]) else index[lead + k]
                   for k, d in enumerate(t.shape))]


def _is_one(d) -> bool:
    """A dimension that is statically 1 (a symbolic one is not: it broadcasts as its own size)."""
    from tvm import tirx

    return isinstance(d, int) and d == 1 or isinstance(d, tirx.IntImm) and int(d) == 1


def _binary_legalize(combine, name):
    def legalize(bb, call):
        from tvm import te

        from tvm import tirx

        if not is_float(call.ty.dtype):
            return _tvm_legalize(bb, call)
        out_shape = [int(v) if isinstance(v, tirx.IntImm) else v for v in call.ty.shape.values]  # symbolic: kept

        def f(a, b):
            return te.compute(out_shape, lambda *i: combine(_broadcast_load(a, out_shape, i),
                                                            _broadcast_load(b, out_shape, i)),
                              name="T_" + name, tag="broadcast")

        return bb.call_te(f, _scalar_of(call.args[0]), _scalar_of(call.args[1]), primfunc_name_hint=name)

    return legalize


def _relu_legalize(bb, call):
    from tvm import te, tirx

    if not is_float(call.ty.dtype):
        return _tvm_legalize(bb, call)

    def relu(x):
        zero = tirx.const(0.0, x.dtype)
        return te.compute(x.shape, lambda *i: nan_max(x(*i), zero), name="compute", tag="elemwise")

    return bb.call_te(relu, call.args[0], primfunc_name_hint="relu")


def _clip_legalize(bb, call):
    from tvm import relax, te, tirx

    if not is_float(call.ty.dtype):
        return _tvm_legalize(bb, call)

    def bound(arg, dtype):
        v = arg.value if isinstance(arg, relax.PrimValue) else arg
        return tirx.const(float(v.value), dtype)

    def clip(x):
        lo, hi = bound(call.args[1], x.dtype), bound(call.args[2], x.dtype)
        return te.compute(x.shape, lambda *i: nan_min(nan_max(x(*i), lo), hi), name="compute", tag="elemwise")

    return bb.call_te(clip, call.args[0], primfunc_name_hint="tir_clip")


# -- vectorizable transcendental functions ---------------------------------------------------------
#
# TVM lowers ``tirx.erf``, ``tirx.exp`` and ``tirx.tanh`` to LLVM intrinsics that LLVM turns
# into one libm call per lane: on Zen 5, 393k float32 values took erf 3.7 ms, exp 0.53 ms and
# tanh 1.23 ms, against 0.045-0.05 ms for TOPI's polynomial versions (fast_erf, fast_exp,
# fast_tanh), which vectorize.  BERT-base spent ~44 ms per inference (one core) in the erf of
# its GELUs alone.  Their error against float64 (measured over -100..100): fast_erf 4.2e-7,
# fast_tanh 3.2e-7 (absolute; both saturate to ±1 exactly), fast_exp 1.1e-6 relative for
# |x| < 20 (4e-6 near the float32 overflow, where it also rounds up to inf slightly early);
# float32's own step is 1.2e-7.  So the activations and softmax use them; a plain ``exp``
# op keeps the exact libm one.  NaN stays NaN (TOPI's fast_erf and fast_tanh alone give ±1: see below).
#
# The rational erf and tanh TOPI's fast_erf and fast_tanh evaluate (Eigen's coefficients, the same
# operations in the same order), clamped with compares instead of TOPI's min/max: a NaN fails
# both compares and stays NaN through the polynomials.  TOPI's clamp made NaN ±1, and the
# ``isnan`` select that fixed it kept TVM from vectorizing any epilogue whose vector loop sits
# in an unrolled one (every NEON and AVX2 matmul + bias + GELU: 6 x 4 lanes per tile row), so
# LLVM got a scalar loop with a branch per element (BERT-base's 128x768x3072 product + GELU on
# the emulated Pi: 15 M of its 125 M instructions).
_ERF_P = (-2.72614225801306e-10, 2.77068142495902e-08, -2.10102402082508e-06, -5.69250639462346e-05,
          -7.34990630326855e-04, -2.95459980854025e-03, -1.60960333262415e-02)
_ERF_Q = (-1.45660718464996e-05, -2.13374055278905e-04, -1.68282697438203e-03, -7.37332916720468e-03,
          -1.42647390514189e-02)
_TANH_P = (-2.76076847742355e-16, 2.00018790482477e-13, -8.60467152213735e-11, 5.12229709037114e-08,
           1.48572235717979e-05, 6.37261928875436e-04, 4.89352455891786e-03)
_TANH_Q = (1.19825839466702e-06, 1.18534705686654e-04, 2.26843463243900e-03, 4.89352518554385e-03)


def _clamp_keeping_nan(v, bound: float):
    from tvm import tirx

    hi, lo = tirx.const(bound, "float32"), tirx.const(-bound, "float32")
    return tirx.Select(v > hi, hi, tirx.Select(v < lo, lo, v))


def _horner(x2, coefficients):
    from tvm import tirx

    acc = x2 * tirx.const(coefficients[0], "float32") + tirx.const(coefficients[1], "float32")
    for c in coefficients[2:]:
        acc = x2 * acc + tirx.const(c, "float32")
    return acc


def _odd_rational(bound: float, p, q):
    """``x * P(x²) / Q(x²)`` of ``x`` clamped to ±bound, NaN kept."""

    def f(v):
        c = _clamp_keeping_nan(v, bound)
        x2 = c * c
        return divide(c * _horner(x2, p), _horner(x2, q))

    return f


def _is_aarch64() -> bool:
    """Whether the target being compiled for (the current TVM target) is AArch64."""
    import tvm

    tgt = tvm.target.Target.current(allow_none=True)
    return tgt is not None and str(tgt.kind.name) == "llvm" and str(tgt.attrs.get("mtriple", "")).startswith("aarch64")


def reciprocal(q):
    """``1 / q`` from NEON's reciprocal estimate refined by two Newton steps (``frecpe``, then
    ``r * frecps(r, q)`` twice: within 2 ulp of the quotient, and exact at 0, ±inf and NaN like
    it).  The Cortex-A72 divides four floats in one ``fdiv`` that holds its pipe ~34 cycles in
    llvm-mca's model, the six instructions here take ~6."""
    from tvm import tirx

    r = tirx.call_llvm_pure_intrin("float32", "llvm.aarch64.neon.frecpe", q)
    for _ in range(2):
        r = r * tirx.call_llvm_pure_intrin("float32", "llvm.aarch64.neon.frecps", r, q)
    return r


def divide(p, q):
    """``p / q`` for float32 expressions: a division, or on AArch64 ``p * reciprocal(q)``."""
    if _is_aarch64() and str(q.ty) == "float32":
        return p * reciprocal(q)
    return p / q


def fast_erf(x):
    """erf, vectorizable, NaN-keeping (absolute error 4.2e-7 against float64)."""
    from tvm import te

    f = _odd_rational(4.0, _ERF_P, _ERF_Q)
    return te.compute(x.shape, lambda *i: f(x(*i)), name="T_fast_erf", tag="elemwise")


def fast_tanh(x):
    """tanh, vectorizable, NaN-keeping (absolute error 3.2e-7 against float64)."""
    from tvm import te

    f = _odd_rational(9.0, _TANH_P, _TANH_Q)
    return te.compute(x.shape, lambda *i: f(x(*i)), name="T_fast_tanh", tag="elemwise")


def _fast_unary(name, build):
    """A legalization of a float32 unary op as ``build(x)`` (TE); TVM's for other dtypes."""

    def legalize(bb, call):
        if str(call.ty.dtype) != "float32" or str(call.args[0].ty.dtype) != "float32":
            return _tvm_legalize(bb, call)
        return bb.call_te(build, call.args[0], primfunc_name_hint=name)

    return legalize


def _tanh(x):
    return fast_tanh(x)


def _gelu(x):
    from tvm import tirx, topi

    half = tirx.const(0.5, "float32")
    erf = fast_erf(topi.multiply(x, tirx.const(0.5 ** 0.5, "float32")))
    return topi.multiply(x, topi.add(half, topi.multiply(erf, half)))


def _gelu_tanh(x):
    import math

    from tvm import te, tirx, topi

    c, k = tirx.const(math.sqrt(2.0 / math.pi), "float32"), tirx.const(0.044715, "float32")
    inner = te.compute(x.shape, lambda *i: c * x(*i) * (tirx.const(1.0, "float32") + k * x(*i) * x(*i)),
                       name="T_gelu_inner", tag="elemwise")
    t = fast_tanh(inner)
    return te.compute(x.shape, lambda *i: tirx.const(0.5, "float32") * x(*i) * (tirx.const(1.0, "float32") + t(*i)),
                      name="T_gelu_tanh", tag="elemwise")


def _sigmoid(x):
    from tvm import te, tirx, topi

    e = topi.fast_exp(topi.negative(x))
    return te.compute(x.shape, lambda *i: divide(tirx.const(1.0, "float32"), tirx.const(1.0, "float32") + e(*i)),
                      name="T_sigmoid", tag="elemwise")


def _silu(x):
    from tvm import topi

    return topi.multiply(x, _sigmoid(x))


def _softmax_legalize(bb, call):
    from tvm import topi

    if str(call.ty.dtype) != "float32":
        return _tvm_legalize(bb, call)
    x = call.args[0]
    shape = getattr(x.ty, "shape", None)
    axis = int(call.attrs.axis)
    try:
        dims = [int(d) for d in shape]
    except TypeError:
        dims = None
    if dims and axis in (-1, len(dims) - 1):
        return bb.call_te(softmax_rows_te, x, primfunc_name_hint="softmax")
    return bb.call_te(topi.nn.fast_softmax, x, axis, primfunc_name_hint="softmax")


# -- softmax over the contiguous axis ----------------------------------------------------------------
#
# TOPI's softmax reduces each row with a scalar loop and makes five passes over memory
# (max, x - max, exp, sum, divide), each a parallel loop of its own: Whisper-tiny's encoder
# spent 250 ms of 870 (one Zen 5 core) in its 6 x 1500 x 1500 attention softmaxes.  Here
# the max and the sum of a row of L are first taken over ``SOFTMAX_LANES`` columns at once
# (partial results per lane: a vector loop whatever L is), then over those lanes and the
# tail that L leaves; :func:`schedule_softmax` computes every stage of a row inside one
# parallel loop over rows, so a row's exponentials stay in L1.

#: the width of the partial max and sum (one AVX-512 vector; two AVX2, four NEON ones)
SOFTMAX_LANES = 16
SOFTMAX_BLOCKS = ("softmax_max_part", "softmax_max", "softmax_exp", "softmax_sum_part", "softmax_sum", "softmax_norm")


def split_reduce(name, whole, combine, lead, length: int):
    """``combine`` of ``whole(*lead, j)`` over j < ``length`` in two blocks: ``name_part``, one
    partial result per lane of :data:`SOFTMAX_LANES` (a vector loop whatever the length), then
    ``name`` over those lanes and the tail the lanes leave."""
    from tvm import te, tirx

    v = min(SOFTMAX_LANES, length)
    parts, main = length // v, (length // v) * v
    tail = length - main
    o = te.reduce_axis((0, parts), "o")
    p = te.compute((*lead, v), lambda *i: combine(whole(*i[:-1], o * v + i[-1]), o), name=name + "_part")
    u = te.reduce_axis((0, v + tail), "u")
    # u < v: the lane's partial result; else the tail's column main + u - v (in bounds either way)
    return te.compute(tuple(lead), lambda *i: combine(tirx.Select(u < v, p(*i, tirx.min(u, v - 1)),
                                                                  whole(*i, main + u - v)), u), name=name)


def softmax_rows_te(x):
    """``exp(x - max) / sum(exp(x - max))`` over the last axis, with TOPI's polynomial exp."""
    from tvm import te, tirx, topi

    *lead, length = (int(d) for d in x.shape)
    mx = split_reduce("softmax_max", x, lambda val, ax: te.max(val, axis=ax), lead, length)
    delta = te.compute(x.shape, lambda *i: x(*i) - mx(*i[:-1]), name="softmax_delta")
    e = topi.fast_exp(delta)
    e = te.compute(x.shape, lambda *i: e(*i), name="softmax_exp")
    sm = split_reduce("softmax_sum", e, lambda val, ax: te.sum(val, axis=ax), lead, length)
    if _is_aarch64():  # a multiply by the row's reciprocal (LLVM hoists it): a NEON fdiv is ~34 cycles
        one = tirx.const(1.0, "float32")
        return te.compute(x.shape, lambda *i: e(*i) * (one / sm(*i[:-1])), name="softmax_norm")
    return te.compute(x.shape, lambda *i: e(*i) / sm(*i[:-1]), name="softmax_norm")


def match_softmax(sch) -> bool:
    return match_blocks(sch, SOFTMAX_BLOCKS)


# -- layer norm over the contiguous axis -------------------------------------------------------------
#
# TOPI's layer norm sums each row with a scalar loop (one add every FMA latency) in three
# parallel loops (sum, sum of squared deviations, output): Whisper-tiny's 1500 x 384 took
# 0.89 ms on one Zen 5 core.  Here, as for the softmax, both sums go over 16 lanes at once
# and every stage of a row runs in one parallel loop over rows.

LAYER_NORM_BLOCKS = ("ln_sum_part", "ln_sum", "ln_var_part", "ln_var", "ln_out")


def layer_norm_rows_te(x, gamma, beta, eps: float):
    """``(x - mean) / sqrt(var + eps) * gamma + beta`` over the last axis (the variance of the
    deviations from the mean, as TOPI's)."""
    from tvm import te, tirx

    *lead, length = (int(d) for d in x.shape)
    n = tirx.const(float(length), x.dtype)
    s = split_reduce("ln_sum", x, lambda val, ax: te.sum(val, axis=ax), lead, length)

    def dev(*i):
        return x(*i) - s(*i[:-1]) / n

    var = split_reduce("ln_var", lambda *i: dev(*i) * dev(*i), lambda val, ax: te.sum(val, axis=ax), lead, length)
    return te.compute(x.shape, lambda *i: dev(*i) * tirx.rsqrt(var(*i[:-1]) / n + tirx.const(eps, x.dtype))
                      * gamma[i[-1]] + beta[i[-1]], name="ln_out")


def _layer_norm_legalize(bb, call):
    """Over the last axis of a static float32 tensor: :func:`layer_norm_rows_te`; else TVM's."""
    x, gamma, beta = call.args
    try:
        dims = [int(d) for d in x.ty.shape]
    except TypeError:
        dims = None
    axes = [int(a) for a in call.attrs.axes]
    if (not dims or str(call.ty.dtype) != "float32" or len(gamma.ty.shape) != 1
            or [a % len(dims) for a in axes] != [len(dims) - 1]):
        return _tvm_legalize(bb, call)
    return bb.call_te(layer_norm_rows_te, x, gamma, beta, float(call.attrs.epsilon), primfunc_name_hint="layer_norm")


def match_layer_norm(sch) -> bool:
    return match_blocks(sch, LAYER_NORM_BLOCKS)


def match_blocks(sch, names) -> bool:
    """The function has blocks of all these ``names``."""
    have = {sch.get(b).name_hint for b in root_blocks_of(sch)}
    return all(n in have for n in names)


def root_blocks_of(sch):
    return list(sch.get_child_blocks(sch.get_sblock("root")))


def _vector_loop(sch, loop, lanes: int) -> None:
    """Vectorize ``loop`` by ``lanes``; a remainder the lanes do not divide becomes a scalar loop of its own."""
    n = extent(sch, loop)
    main = n // lanes * lanes
    if main == 0:
        return
    if main != n:
        loop = sch.loop_partition(loop, [main, None])[0]
    if main == lanes:
        sch.vectorize(loop)
        return
    _, inner = sch.split(loop, [None, lanes])
    sch.vectorize(inner)


def vectorize_partial_reductions(sch, names) -> None:
    """The partial max / sum blocks ``names`` (``part[…, lane] = combine over o of x[…, o * lanes + lane]``):
    the lanes innermost and vectorized, the initialization too."""
    for name in names:
        b = sch.get_sblock(name)
        lane, o = sch.get_loops(b)[-2:]
        sch.reorder(o, lane)
        sch.vectorize(lane)
        init = sch.decompose_reduction(b, o)
        sch.vectorize(sch.get_loops(init)[-1])


def schedule_softmax(sch, cpu: CPU) -> set:
    """One parallel loop over rows; in it the row's partial max (vectorized over its lanes), max,
    exponentials (vectorized), partial sum, sum and the output with the fused epilogue
    (vectorized).  Returns the names of the blocks it scheduled."""
    return schedule_rows(sch, cpu, {"softmax_exp"}, ("softmax_max_part", "softmax_sum_part"))


def schedule_layer_norm(sch, cpu: CPU) -> set:
    """As :func:`schedule_softmax`: in one parallel loop over rows, the row's partial sums
    (vectorized), sums and the output with the fused epilogue (vectorized)."""
    return schedule_rows(sch, cpu, set(), ("ln_sum_part", "ln_var_part"))


def schedule_rows(sch, cpu: CPU, keep: set, parts, *, reduced: bool = False) -> set:
    """One parallel loop over the rows of the last (output) block, every other block computed
    in it per row: the elementwise blocks inlined (those in ``keep`` computed and vectorized
    instead), the partial reductions ``parts`` vectorized over their lanes, the output
    vectorized.  ``reduced``: the output has one value per row (every loop of it is a row
    loop).  Returns the names of the blocks it scheduled."""
    blocks = root_blocks_of(sch)
    for b in blocks:  # x - max into exp, the output into its epilogue (a where of fully masked rows…)
        name = sch.get(b).name_hint
        if name in keep or "R" in iter_kinds(sch, b) or not sch.get_consumers(b):
            continue
        sch.compute_inline(b)
    blocks = root_blocks_of(sch)
    out = blocks[-1]
    if "R" in iter_kinds(sch, out):
        raise NotApplicable("the row output is a reduction")
    loops = trivial_loops(sch, out)
    if reduced:
        loops = loops + [None]
    if len(loops) < 2:
        raise NotApplicable("rows of a vector")
    rows = sch.fuse(*loops[:-1]) if len(loops) > 2 else loops[0]
    for b in reversed(blocks[:-1]):
        sch.compute_at(b, rows, preserve_unit_loops=True)
    if cpu.cores > 1:
        sch.parallel(rows)
    vectorize_partial_reductions(sch, parts)
    for b in [sch.get_sblock(name) for name in sorted(keep)] + ([] if reduced else [out]):  # last: see _vector_loop
        _vector_loop(sch, sch.get_loops(b)[-1], SOFTMAX_LANES)
    return {sch.get(b).name_hint for b in root_blocks_of(sch)}


def _power_legalize(bb, call):
    """``x ** c`` for a small whole constant ``c`` (GPT-2's GELU cubes its input) as products:
    TVM's ``pow`` is one libm call per element (GPT-2 small spent 15% of its time in it)."""
    from tvm import te, tirx

    base, exp = call.args[0], _scalar_of(call.args[1])
    if (str(call.ty.dtype) != "float32" or not isinstance(exp, tirx.FloatImm | tirx.IntImm)
            or float(exp.value) not in (2.0, 3.0, 4.0) or str(base.ty.dtype) != "float32"):
        return _tvm_legalize(bb, call)
    n = int(exp.value)

    def power(x):
        def f(*i):
            v = x(*i)
            out = v
            for _ in range(n - 1):
                out = out * v
            return out

        return te.compute(x.shape, f, name="T_power", tag="elemwise")

    return bb.call_te(power, base, primfunc_name_hint="power")


#: relax op → legalization (LegalizeOps' customize_legalize_map): NaN-keeping max/min/relu/clip,
#: vectorizable activations and softmax
LEGALIZE = {
    "relax.nn.relu": _relu_legalize,
    "relax.maximum": _binary_legalize(nan_max, "maximum"),
    "relax.minimum": _binary_legalize(nan_min, "minimum"),
    "relax.clip": _clip_legalize,
    "relax.erf": _fast_unary("erf", fast_erf),
    "relax.tanh": _fast_unary("tanh", _tanh),
    "relax.nn.gelu": _fast_unary("gelu", _gelu),
    "relax.nn.gelu_tanh": _fast_unary("gelu_tanh", _gelu_tanh),
    "relax.sigmoid": _fast_unary("sigmoid", _sigmoid),
    "relax.nn.silu": _fast_unary("silu", _silu),
    "relax.nn.softmax": _softmax_legalize,
    "relax.nn.layer_norm": _layer_norm_legalize,
    "relax.power": _power_legalize,
}
