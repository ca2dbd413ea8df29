"""Lowering of the integer low-bit ops: ``quantize``, ``dequantize``, ``qconv2d``, ``qdense``
(declared in ``ir/ops.py``; the op contract is ``notes/LOWBIT_CONTRACT.md``).

Integer codes (``u1``..``u8``, ``i1``..``i8``) travel between ops as one byte each
(``uint8`` / ``int8``).  A ``qconv2d`` / ``qdense`` computes the exact integer
accumulator ``acc = Σ (x − x_zero_point)(w − w_zero_point)`` with one of three kernels,
then the f32 epilogue (``acc·scale[o] + bias[o]``, clamp, and the fused requantize into
the next layer's codes, the same float32 steps ``quantize`` lowers to): in Relax after
the generic path, inside the C kernels (per output row, on sums still in cache) after
the other two:

``generic``    codes → int16, zero points subtracted (so the zero padding of
               ``conv2d`` is exactly "padding with the activation zero point"), an
               int16 x int16 → int32 ``conv2d`` / ``matmul`` with the weights'
               ``w − w_zero_point`` folded at compile time.  Runs through sliver's default schedules like any conv.
               The reference the benchmark compares with (``compile_module(..., lowbit_kernel="generic")``).
``bitserial``  the C kernel ``kernels/lowbit.c`` (bit planes, AND + popcount, int32
               accumulators; NEON ``cnt`` + ``uadalp`` on aarch64), called with
               ``relax.call_dps_packed`` and linked into the artifact's library.  The
               weights are bit-packed here at compile time (a W2 layer's weight bytes
               are ~1/16 of fp32); activations are packed by the kernel at run time.
               Zero points are folded exactly (see the C file), padded borders included.
               Widths 1-7.
``int8``       the int8 C kernel in the same file (one signed byte per code, NEON
               ``smull``/``smlal2`` + ``sadalp`` on aarch64 — no ``sdot`` on the Pi 4's
               ARMv8.0 — and AVX2 ``vpmaddwd`` on x86); weights stored as int8.  Any
               width up to 8; the kernel for 8-bit operands.  With AVX-512 VNNI,
               convs with symmetric weights take its lane kernel (output pixels in the
               vector lanes, the input packed once per call, no im2col, the epilogue on
               registers: :func:`lanes_layout`), depthwise ones included.

Which kernel a layer gets is decided per target (``Target.lowbit_kernel`` and
``Target.bitserial_min_row``, :mod:`~sliver.backends.tvm.targets`, measured by
``python -m sliver.benchmarks.bench_lowbit``); :func:`~sliver.backends.tvm.build.compile_module`'s ``lowbit_kernel`` forces one (the
benchmark uses it to compare).  The choice per layer lands in the lowering report
(``LowerContext.kernels``) and from there in the artifact's manifest.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sliver.backends.tvm.registry import _channel_vector, _const, _R, _scalar, lowers
from sliver.common.errors import SliverError

#: The C source linked into libraries that use the bit-serial kernel.
KERNEL_SOURCE = Path(__file__).with_name("kernels") / "lowbit.c"
#: Packed-function names exported by the C kernels.
BITSERIAL = "sliver_lowbit_bitserial"
INT8 = "sliver_lowbit_int8"
#: Rows of the int8 kernel are padded to whole 16-byte vectors.
INT8_ROW_ALIGN = 16
KERNELS = ("generic", "bitserial", "int8")
#: Order of the int32 ``meta`` operand of the C kernel (its ``enum M_*``).
META_FIELDS = ("N", "C", "H", "W", "O", "KH", "KW", "SH", "SW", "PT", "PL", "PB", "PR", "DH", "DW", "G",
               "ABITS", "ASIGNED", "WBITS", "WSIGNED", "XZ", "WZ", "OH", "OW", "TAPB", "RB", "OUT", "QMIN", "QMAX",
               "LAYOUT")
#: The C kernels' ``OUT`` codes: the fused epilogue writes f32, or requantized codes
#: held in uint8 / int8.
OUT_KINDS = {"float32": 0, "uint8": 1, "int8": 2}
#: Packed rows are padded to a whole 64-bit word (``ROW_ALIGN`` in the C file; the
#: kernels finish a row with an 8-byte step rather than padding it to a vector register).
ROW_ALIGN = 8
#: W2A2 rows of at most this many bytes get the W2A2 block layout on aarch64
#: (``W2A2_MAX_RB`` in the C file: 16-bit sums).
W2A2_MAX_RB = 904
#: ... and signed W2 weights of whole four-channel blocks in rows of at most this many
#: bytes get it with two's complement planes (LAYOUT 2, ``W2A2_TC_MAX_RB`` in the C
#: file): no weight zero point to fold for symmetric weights, so no Sx sums at run time.
W2A2_TC_MAX_RB = 680
#: meta ``LAYOUT`` values (the C file's ``LAYOUT_*``)
LAYOUT_PLAIN, LAYOUT_W2A2, LAYOUT_W2A2_TC, LAYOUT_W2A2_TC8, LAYOUT_I8_TILE, LAYOUT_I8_LANES = 0, 1, 2, 3, 4, 5
#: the lane kernel on a qdense's rows: x [M, K] and the result [M, O] row-major (see _qdense_lanes)
LAYOUT_I8_ROWS = 6
#: The int8 kernel's register tiles (LAYOUT_I8_TILE) exist for these ``Target.int8_dot``
#: instruction sets; they take groups of at least I8_TILE_MIN_OG output channels (the
#: weights are stored in blocks of 16 channels: fewer would mostly multiply zeros)
I8_TILE_DOTS = ("avx512-vnni", "sdot")
I8_TILE_MIN_OG = 8

def check_kernel(kernel: str | None) -> None:
    """``kernel`` is None or one of :data:`KERNELS` (``LowerContext.lowbit_kernel``)."""
    if kernel not in (None,) + KERNELS:
        raise SliverError(f"unknown low-bit kernel {kernel!r}; choose one of {', '.join(KERNELS)}")


def code_bits(dtype: str) -> tuple[int, bool]:
    """(bits, signed) of a code type ``uB`` / ``iB``."""
    from sliver.ir.types import is_lowbit

    if not is_lowbit(dtype):
        raise SliverError(f"expected a 1- to 8-bit integer code type (u1..u8, i1..i8), got {dtype!r}")
    return int(dtype[1:]), dtype[0] == "i"


def storage_dtype(dtype: str) -> str:
    """The one-byte TVM dtype that holds codes of ``dtype``."""
    return "int8" if code_bits(dtype)[1] else "uint8"


def _choose(bb, op) -> str:
    abits, _ = code_bits(op.operands[0].type.dtype)
    wbits, _ = code_bits(op.operands[1].type.dtype)
    forced = bb.context.lowbit_kernel
    if forced in ("generic", "int8"):
        return forced
    if max(abits, wbits) >= 8:
        return "int8"  # 8 bits: the int8 kernel
    if forced:
        return forced
    target = bb.context.target
    kernel = target.lowbit_kernel
    if kernel == "bitserial":
        w = op.operands[1].type.shape  # [O, Cg, KH, KW] or [O, K]
        row = (-(-w[1] // 8)) * (w[2] * w[3] if len(w) == 4 else 1)
        if row < target.bitserial_min_row:
            return "int8"
    return kernel


def _record(bb, op, kernel: str) -> None:
    ctx = bb.context
    ctx.kernels[op.result.name] = kernel
    if kernel in ("bitserial", "int8"):
        ctx.sources.add(str(KERNEL_SOURCE))


def _weights(op, w_expr) -> np.ndarray:
    from tvm.ir.expr import Constant

    if not isinstance(w_expr, Constant):
        raise SliverError(f"{op.kind} %{op.result.name}: the weight must be a param (a compile-time constant), "
                          f"not the computed value %{op.operands[1].name}")
    return w_expr.value.numpy()


# -- quantize / dequantize ------------------------------------------------------------------


def quantize_expr(bb, y, scale: float, zero_point: int, dtype: str):
    """f32 ``y`` → codes: clamp(round(y · (1/scale)) + zp, qmin, qmax), the reciprocal taken
    in float32 like torch's fake-quant kernel, round half to even (LLVM nearbyint)."""
    from sliver.ir.types import int_range

    R = _R()
    qmin, qmax = int_range(dtype)
    inv = float(np.float32(1.0) / np.float32(scale))
    q = bb.emit(R.round(R.multiply(y, _scalar(inv, y))))
    if zero_point:
        q = bb.emit(R.add(q, _scalar(float(zero_point), q)))
    q = bb.emit(R.minimum(R.maximum(q, _scalar(float(qmin), q)), _scalar(float(qmax), q)))
    return bb.emit(R.astype(q, storage_dtype(dtype)))


@lowers("quantize")
def _quantize(bb, op, x):
    a = op.attrs
    return quantize_expr(bb, x, a["scale"], a["zero_point"], a["dtype"])


@lowers("dequantize")
def _dequantize(bb, op, q):
    R = _R()
    a = op.attrs
    y = bb.emit(R.astype(q, "float32"))
    if a["zero_point"]:
        y = bb.emit(R.subtract(y, _scalar(float(a["zero_point"]), y)))
    return bb.emit(R.multiply(y, _scalar(float(np.float32(a["scale"])), y)))


# -- qconv2d / qdense -------------------------------------------------------------------------


def _epilogue(bb, op, acc, scale, bias, rank: int):
    """int32 acc → f32 · scale[o] + bias[o] → clamp → f32 or requantized codes; channels
    on axis 1 (conv, rank 4) or last (dense)."""
    R = _R()
    a = op.attrs
    y = bb.emit(R.astype(acc, "float32"))
    vec = (lambda v: _channel_vector(bb, v, 4)) if rank == 4 else (lambda v: v)
    y = bb.emit(R.multiply(y, vec(scale)))
    if bias is not None:
        y = bb.emit(R.add(y, vec(bias)))
    if a["clamp_min"] is not None:
        y = bb.emit(R.maximum(y, _scalar(float(a["clamp_min"]), y)))
    if a["clamp_max"] is not None:
        y = bb.emit(R.minimum(y, _scalar(float(a["clamp_max"]), y)))
    if a["out_dtype"] == "f32":
        return y
    return quantize_expr(bb, y, a["out_scale"], a["out_zero_point"], a["out_dtype"])


#: The generic path's operand type: codes minus zero points span at most [-255, 255].
#: int16 operands (int32 accumulators) keep 8-bit weights at 2 bytes in the library
#: and let LLVM use 16-bit multiply-adds (vpmaddwd / smlal).
WIDE = "int16"


def _codes_minus_zero_point(bb, x, zp: int):
    R = _R()
    xi = bb.emit(R.astype(x, WIDE))
    return bb.emit(R.subtract(xi, _const(np.array(zp, WIDE)))) if zp else xi


def _weights_minus_zero_point(codes: np.ndarray, zp: int) -> np.ndarray:
    return (codes.astype(np.int32) - np.int32(zp)).astype(WIDE)


def pack_weights(w: np.ndarray, wbits: int, tapb: int, align: int = ROW_ALIGN) -> tuple[np.ndarray, int]:
    """Bit-pack weight codes ``[O, Cg, KH, KW]`` into the C kernel's rows:
    ``uint8 [O, wbits, RB]``, plane j of output channel o holding the bits of the taps
    (kh, kw) in order, ``tapb`` bytes per tap (channel c at bit c % 8 of byte c // 8,
    two's complement for signed codes), zero-filled to RB (a multiple of ``align``)."""
    o, cg, kh, kw = w.shape
    u = w.astype(np.int64) & ((1 << wbits) - 1)  # two's complement in wbits bits
    taps = np.transpose(u, (0, 2, 3, 1)).reshape(o, kh * kw, cg)  # [O, tap, c]
    planes = np.stack([(taps >> j) & 1 for j in range(wbits)], axis=1).astype(np.uint8)  # [O, WB, tap, c]
    padded = np.zeros((o, wbits, kh * kw, tapb * 8), np.uint8)
    padded[..., :cg] = planes
    rows = np.packbits(padded, axis=-1, bitorder="little").reshape(o, wbits, kh * kw * tapb)
    rb = -(-rows.shape[-1] // align) * align
    out = np.zeros((o, wbits, rb), np.uint8)
    out[..., : rows.shape[-1]] = rows
    return out, rb


def w2a2_blocks(packed: np.ndarray, groups: int, block: int = 4) -> np.ndarray:
    """The aarch64 W2A2 kernel's block layout of ``pack_weights``' rows ``[O, 2, RB]``:
    per group, the first ``Og // block * block`` channels in blocks of ``block`` (4 or 8),
    each block's rows (channel-major, plane-minor) interleaved in the order its inner
    loop reads them: per 16-byte step the rows' 16 bytes, then their 8-byte tails
    (RB % 16). The blocks keep their byte ranges; the other channels stay as they are."""
    o, wb, rb = packed.shape
    og = o // groups
    steps = rb // 16
    out = packed.copy()
    for g in range(groups):
        for b in range(og // block):
            lo = g * og + block * b
            blk = packed[lo: lo + block]  # [block, 2, rb]
            main = blk[:, :, : steps * 16].reshape(block, wb, steps, 16).transpose(2, 0, 1, 3).reshape(-1)
            tail = blk[:, :, steps * 16:].reshape(-1)
            out[lo: lo + block] = np.concatenate([main, tail]).reshape(block, wb, rb)
    return out


def bitserial_layout(arch: str, abits: int, wbits: int, wsigned: bool, rb: int, og: int) -> int:
    """The bit-serial kernel's weight layout (meta ``LAYOUT``) for a layer: on aarch64,
    W2A2 rows of 16..``W2A2_MAX_RB`` bytes with at least four output channels per group
    take the W2A2 block layout (:func:`w2a2_blocks`), with two's complement planes
    when the weights are signed, the rows at most ``W2A2_TC_MAX_RB`` bytes and the
    channels whole blocks of eight (``LAYOUT_W2A2_TC8``) or four (``LAYOUT_W2A2_TC``),
    else offset-binary planes in blocks of four (``LAYOUT_W2A2``); everything else is
    ``LAYOUT_PLAIN``."""
    if arch != "aarch64" or (abits, wbits) != (2, 2) or not 16 <= rb <= W2A2_MAX_RB or og < 4:
        return LAYOUT_PLAIN
    if wsigned and rb <= W2A2_TC_MAX_RB and og % 4 == 0:
        return LAYOUT_W2A2_TC8 if og % 8 == 0 else LAYOUT_W2A2_TC
    return LAYOUT_W2A2


def pack_weights_int8(w: np.ndarray, align: int = INT8_ROW_ALIGN) -> tuple[np.ndarray, int]:
    """Weight codes ``[O, Cg, KH, KW]`` (already signed bytes) as the int8 kernel's rows:
    ``int8 [O, RB]``, taps (kh, kw) in order, Cg bytes each, zero-filled to RB (a multiple
    of ``align``)."""
    o, cg, kh, kw = w.shape
    k = kh * kw * cg
    rb = -(-k // align) * align
    out = np.zeros((o, rb), np.int8)
    out[:, :k] = np.transpose(w, (0, 2, 3, 1)).reshape(o, k)
    return out, rb


def pack_weights_int8_tiled(w: np.ndarray, groups: int) -> tuple[np.ndarray, int]:
    """The int8 kernel's rows (:func:`pack_weights_int8`) in its register tiles' layout
    (``LAYOUT_I8_TILE``): per group, blocks of 16 output channels (zero channels fill the
    last), each ``[RB/4][16][4]``: for every 4 consecutive row bytes, those bytes of the
    16 channels in turn (what one ``vpdpbusd`` / four ``sdot`` by element multiply)."""
    rows, rb = pack_weights_int8(w)
    o = rows.shape[0]
    og = o // groups
    blocks = -(-og // 16)
    out = np.zeros((groups, blocks * 16, rb), np.int8)
    out[:, :og] = rows.reshape(groups, og, rb)
    out = out.reshape(groups, blocks, 16, rb // 4, 4).transpose(0, 1, 3, 2, 4)
    return np.ascontiguousarray(out).reshape(groups * blocks * 16, rb), rb


#: The lane kernel (LAYOUT_I8_LANES: output pixels in the vector lanes, no im2col) exists
#: for these ``Target.int8_dot``; its dense tiles take blocks of LANES_NO output channels.
I8_LANES_DOTS = ("avx512-vnni",)
LANES_NO = 8


def lanes_layout(dot: str, wz: int, dilation, groups: int, cg: int, og: int, out_pixels: int) -> bool:
    """Whether a qconv2d takes the lane kernel: an AVX-512 VNNI target, symmetric weights
    (``wz`` 0 after the signed shift: no per-pixel sum of the activations), no dilation,
    at least 16 output pixels (a vector), and groups of at least 8 output channels or a
    depthwise conv (one input and one output channel per group)."""
    depthwise = groups > 1 and cg == 1 and og == 1
    return (dot in I8_LANES_DOTS and wz == 0 and tuple(dilation) == (1, 1) and out_pixels >= 16
            and (og >= I8_TILE_MIN_OG or depthwise))


def pack_weights_int8_lanes(w: np.ndarray, groups: int) -> tuple[np.ndarray, int]:
    """Weight codes ``[O, Cg, KH, KW]`` (signed bytes) in the lane kernel's layout
    (``LAYOUT_I8_LANES``); returns (bytes, RB: bytes per output channel's steps).

    Dense groups: per group, blocks of ``LANES_NO`` output channels (zero channels fill
    the last), each ``[KH*KW*Cq][LANES_NO][4]``: a step is one tap's quad of 4 input
    channels (Cq = ceil(Cg/4) quads per tap, zero channels filling the last), and per step
    the 4 bytes of each channel of the block (what one broadcast feeds to vpdpbusd).
    Depthwise (Cg = 1 = O/groups): per quad of 4 channels ``[KH*KW][4][4]``, channel j's
    weight in byte j of its 4 (the input is packed in quads of 4 channels)."""
    o, cg, kh, kw = w.shape
    taps = kh * kw
    if groups > 1 and cg == 1 and o == groups:
        cq = -(-o // 4)
        out = np.zeros((cq * 4, taps, 4), np.int8)
        t = w.reshape(o, taps)
        out[np.arange(o), :, np.arange(o) % 4] = t
        out = out.reshape(cq, 4, taps, 4).transpose(0, 2, 1, 3)  # [quad][tap][channel j][byte]
        return np.ascontiguousarray(out).reshape(cq, taps * 16), taps * 16
    og = o // groups
    q = -(-cg // 4)
    blocks = -(-og // LANES_NO)
    wt = np.zeros((groups, blocks * LANES_NO, kh, kw, q * 4), np.int8)
    wt[:, :og, :, :, :cg] = np.transpose(w, (0, 2, 3, 1)).reshape(groups, og, kh, kw, cg)
    wt = wt.reshape(groups, blocks, LANES_NO, taps * q, 4).transpose(0, 1, 3, 2, 4)  # [g][b][step][ch][4]
    rb = taps * q * 4
    return np.ascontiguousarray(wt).reshape(groups * blocks * LANES_NO, rb), rb


def _packed_kernel(bb, op, kernel: str, x, w_codes: np.ndarray, scale, bias, *, xshape, stride, padding, dilation,
                   groups, out_hw, rows: bool = False):
    """The result [N, O, OH, OW] (f32, or the requantized codes) from one of the C kernels
    (``bitserial`` or ``int8``) with the epilogue fused (the kernel applies it to each
    output row while its int32 sums are in cache); both take (x codes, packed weights,
    Σw per channel, meta, scale, bias, epi, out).  ``rows``: the lane kernel on a qdense
    (x [M, K] given as one image [1, K, 1, M]), the result [M, O]."""
    from tvm import relax

    from sliver.ir.types import int_range

    abits, asigned = code_bits(op.operands[0].type.dtype)
    wbits, wsigned = code_bits(op.operands[1].type.dtype)
    a = op.attrs
    w_codes = w_codes.astype(np.int64)
    n, c, h, wd = xshape
    o, cg, kh, kw = w_codes.shape
    tapb = -(-cg // 8)
    layout = LAYOUT_PLAIN
    if kernel == "bitserial":
        rb = -(-(kh * kw * tapb) // ROW_ALIGN) * ROW_ALIGN
        layout = bitserial_layout(bb.context.target.arch, abits, wbits, wsigned, rb, o // groups)
    if layout in (LAYOUT_W2A2_TC, LAYOUT_W2A2_TC8):
        shift = 0  # two's complement planes: the top one weighs -2 (the kernel's LAYOUT 2)
    elif kernel == "bitserial":
        # Signed weights as offset binary (w + 2^(W-1), the zero point moving with them):
        # (w - wz) is unchanged and every bit plane weighs +2^j, which lets the kernel fuse
        # plane pairs (the kernel does the same to signed activations at run time).
        shift = 1 << (wbits - 1) if wsigned else 0
    else:
        # Unsigned weights as signed bytes (w - 128), for signed multiplies; the kernel
        # does the same to unsigned activations.
        shift = 0 if wsigned else -128
    w_codes = w_codes + shift
    wz = a["w_zero_point"] + shift
    if kernel == "bitserial":
        packed, rb = pack_weights(w_codes, wbits, tapb, ROW_ALIGN)
        narrow = 0  # WSIGNED: 0 for bit planes (two's complement ones say so in LAYOUT)
        if layout:
            packed = w2a2_blocks(packed, groups, 8 if layout == LAYOUT_W2A2_TC8 else 4)
    else:
        tapb = cg
        if rows or lanes_layout(bb.context.target.int8_dot, wz, dilation, groups, cg, o // groups, out_hw[0] * out_hw[1]):
            layout = LAYOUT_I8_ROWS if rows else LAYOUT_I8_LANES
            packed, rb = pack_weights_int8_lanes(w_codes, groups)
        elif bb.context.target.int8_dot in I8_TILE_DOTS and o // groups >= I8_TILE_MIN_OG:
            layout = LAYOUT_I8_TILE
            packed, rb = pack_weights_int8_tiled(w_codes, groups)
        else:
            packed, rb = pack_weights_int8(w_codes)
        narrow = int((w_codes > -128).all())  # WSIGNED: no weight is -128 (two products fit int16)
    wsum = w_codes.reshape(o, -1).sum(axis=1).astype(np.int32)
    quantized = a["out_dtype"] != "f32"
    qmin, qmax = int_range(a["out_dtype"]) if quantized else (0, 0)
    out_dtype = storage_dtype(a["out_dtype"]) if quantized else "float32"
    meta = dict(N=n, C=c, H=h, W=wd, O=o, KH=kh, KW=kw, SH=stride[0], SW=stride[1], PT=padding[0], PL=padding[1],
                PB=padding[2], PR=padding[3], DH=dilation[0], DW=dilation[1], G=groups, ABITS=abits,
                ASIGNED=int(asigned), WBITS=wbits, WSIGNED=narrow, XZ=a["x_zero_point"],
                WZ=wz, OH=out_hw[0], OW=out_hw[1], TAPB=tapb, RB=rb, OUT=OUT_KINDS[out_dtype], QMIN=qmin, QMAX=qmax,
                LAYOUT=layout)
    meta_arr = np.array([meta[k] for k in META_FIELDS], np.int32)
    # the epilogue's floats, as quantize_expr and _epilogue use them (no clamp: ±inf)
    inv = float(np.float32(1.0) / np.float32(a["out_scale"])) if quantized else 1.0
    epi = np.array([-np.inf if a["clamp_min"] is None else a["clamp_min"],
                    np.inf if a["clamp_max"] is None else a["clamp_max"],
                    inv, a["out_zero_point"] if quantized else 0], np.float32)
    if bias is None:
        bias = _const(np.zeros(o, np.float32))
    out = relax.TensorType((out_hw[1], o) if rows else (n, o, out_hw[0], out_hw[1]), out_dtype)
    if kernel == "bitserial":
        bb.context.defines.add(f"SLIVER_LOWBIT_PAIR_{abits}_{wbits}=1")  # the library carries this width pair's kernel
    fn = BITSERIAL if kernel == "bitserial" else INT8
    return bb.emit(relax.call_dps_packed(fn, [x, _const(packed), _const(wsum), _const(meta_arr), scale, bias,
                                              _const(epi)], out))


@lowers("qconv2d")
def _qconv2d(bb, op, x, w, scale, bias=None):
    R = _R()
    a = op.attrs
    codes = _weights(op, w)
    kernel = _choose(bb, op)
    _record(bb, op, kernel)
    if kernel != "generic":
        oshape = op.result.type.shape
        return _packed_kernel(bb, op, kernel, x, codes, scale, bias, xshape=op.operands[0].type.shape,
                              stride=a["stride"], padding=a["padding"], dilation=a["dilation"], groups=a["groups"],
                              out_hw=oshape[2:])
    xi = _codes_minus_zero_point(bb, x, a["x_zero_point"])  # zero padding == padding with x_zero_point
    wi = _const(_weights_minus_zero_point(codes, a["w_zero_point"]))
    acc = bb.emit(R.nn.conv2d(xi, wi, strides=a["stride"], padding=a["padding"], dilation=a["dilation"],
                              groups=a["groups"], out_dtype="int32"))
    return _epilogue(bb, op, acc, scale, bias, 4)


@lowers("qdense")
def _qdense(bb, op, x, w, scale, bias=None):
    R = _R()
    a = op.attrs
    codes = _weights(op, w)
    kernel = _choose(bb, op)
    _record(bb, op, kernel)
    xshape = op.operands[0].type.shape
    k = xshape[-1]
    o = codes.shape[0]
    if kernel != "generic":
        m = int(np.prod(xshape[:-1], dtype=np.int64))
        if kernel == "int8" and _dense_lanes(bb, op, m, o):
            return _qdense_lanes(bb, op, x, codes, scale, bias, m, k, o)
        x4 = bb.emit(R.reshape(x, [m, k, 1, 1]))
        y = _packed_kernel(bb, op, kernel, x4, codes.reshape(o, k, 1, 1), scale, bias, xshape=(m, k, 1, 1),
                           stride=(1, 1), padding=(0, 0, 0, 0), dilation=(1, 1), groups=1, out_hw=(1, 1))
        return bb.emit(R.reshape(y, list(xshape[:-1]) + [o]))
    xi = _codes_minus_zero_point(bb, x, a["x_zero_point"])
    wt = _const(np.ascontiguousarray(_weights_minus_zero_point(codes, a["w_zero_point"]).T))
    acc = bb.emit(R.matmul(xi, wt, out_dtype="int32"))
    return _epilogue(bb, op, acc, scale, bias, len(xshape))


def _dense_lanes(bb, op, m: int, o: int) -> bool:
    """Whether a qdense of ``m`` rows runs as a 1x1 conv on the lane kernel (its rows the
    output pixels): as the lane kernel takes a conv (:func:`lanes_layout`), symmetric
    signed weights."""
    signed = code_bits(op.operands[1].type.dtype)[1]
    return signed and lanes_layout(bb.context.target.int8_dot, op.attrs["w_zero_point"], (1, 1), 1, 1, o, m)


def _qdense_lanes(bb, op, x, codes, scale, bias, m: int, k: int, o: int):
    """qdense of m >= 16 rows on the lane kernel: x [m, k] read as one image of k channels
    and m pixels (the kernel packs each row's quads of 4 bytes straight from x), a 1x1 conv
    whose result the kernel stores as [m, o] (``LAYOUT_I8_ROWS``).  The sums and the
    epilogue are the conv kernel's, so the values are those of any other int8 path; the
    kernel runs 16 rows per vector instead of one row per register tile (a weight matrix
    read once per row), and no transposes are left to TVM (fused with the ops around,
    they gathered and scattered element by element)."""
    R = _R()
    x2 = bb.emit(R.reshape(x, [m, k]))
    y = _packed_kernel(bb, op, "int8", x2, codes.reshape(o, k, 1, 1), scale, bias, xshape=(1, k, 1, m),
                       stride=(1, 1), padding=(0, 0, 0, 0), dilation=(1, 1), groups=1, out_hw=(1, m), rows=True)
    return bb.emit(R.reshape(y, list(op.operands[0].type.shape[:-1]) + [o]))


def compile_flags(target, defines=()) -> list[str]:
    """gcc flags for the C kernel: optimized, for the target's CPU (``Target.gcc_flags``,
    only flags the compiler accepts), with only the bit-serial width pairs in ``defines``
    (``LowerContext.defines``) built in."""
    # no fused multiply-add: the fused epilogue rounds like the interpreter
    flags = ["-O3", "-fno-math-errno", "-ffp-contract=off", *target.gcc_flags]
    return flags + ["-DSLIVER_LOWBIT_SELECT"] + [f"-D{d}" for d in sorted(defines)]
