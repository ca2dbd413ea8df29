"""The int8 C kernel alone, layer by layer: thread CPU time of one call per conv shape of
ResNet-18 or MobileNetV2 (224x224), each result checked exactly against numpy.

    python -m sliver.benchmarks.bench_int8_layers --model resnet18
    python -m sliver.benchmarks.bench_int8_layers --model mobilenet_v2 --layout tile

The kernel (``backends/tvm/kernels/lowbit.c``) is built with the host target's flags
(``lowbit.compile_flags``) into a small library with a C entry point that wraps the
arrays as the TVM-FFI tensors the kernel takes, and called serially (no TVM thread
pool: one thread, so the calling thread's CPU time is the whole cost; a loaded machine
inflates it less than wall time).  Codes, weights and epilogue are seeded random (uint8
activations with zero point 7, symmetric int8 weights, ReLU, requantized uint8 codes).
``--layout`` picks the weight layout the lowering would (``auto``: the lane kernel where
:func:`~sliver.backends.tvm.lowbit.lanes_layout` takes the layer) or forces the register
tiles (``tile``) or plain rows (``plain``), to compare the kernels on the same layers.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

# (name, C, H, O, K, stride, pad, groups, times in the model)
RESNET18 = [("stem 7x7/2 3->64 @224", 3, 224, 64, 7, 2, 3, 1, 1),
            ("3x3 64 @56", 64, 56, 64, 3, 1, 1, 1, 4),
            ("3x3/2 64->128 @56", 64, 56, 128, 3, 2, 1, 1, 1),
            ("1x1/2 64->128 @56", 64, 56, 128, 1, 2, 0, 1, 1),
            ("3x3 128 @28", 128, 28, 128, 3, 1, 1, 1, 3),
            ("3x3/2 128->256 @28", 128, 28, 256, 3, 2, 1, 1, 1),
            ("1x1/2 128->256 @28", 128, 28, 256, 1, 2, 0, 1, 1),
            ("3x3 256 @14", 256, 14, 256, 3, 1, 1, 1, 3),
            ("3x3/2 256->512 @14", 256, 14, 512, 3, 2, 1, 1, 1),
            ("1x1/2 256->512 @14", 256, 14, 512, 1, 2, 0, 1, 1),
            ("3x3 512 @7", 512, 7, 512, 3, 1, 1, 1, 3)]


def _mobilenet_v2():
    rows = [("stem 3x3/2 3->32 @224", 3, 224, 32, 3, 2, 1, 1, 1), ("dw 32 @112", 32, 112, 32, 3, 1, 1, 32, 1),
            ("1x1 32->16 @112", 32, 112, 16, 1, 1, 0, 1, 1)]
    c, h = 16, 112
    for t, out, n, s in [(6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]:
        for i in range(n):
            e, st = c * t, s if i == 0 else 1
            rows.append((f"1x1 {c}->{e} @{h}", c, h, e, 1, 1, 0, 1, 1))
            rows.append((f"dw{'/2' if st == 2 else ''} {e} @{h}", e, h, e, 3, st, 1, e, 1))
            h //= st
            rows.append((f"1x1 {e}->{out} @{h}", e, h, out, 1, 1, 0, 1, 1))
            c = out
    rows.append((f"1x1 {c}->1280 @{h}", c, h, 1280, 1, 1, 0, 1, 1))
    merged: dict = {}
    for r in rows:  # identical shapes: one row, counted
        key = r[1:8]
        merged[key] = (r[0], *key, merged[key][8] + 1) if key in merged else r
    return list(merged.values())


MODELS = {"resnet18": RESNET18, "mobilenet_v2": _mobilenet_v2()}

WRAPPER = r"""
#include "%s"
int sliver_bench_int8(void** ptrs) {
  sliver_DLTensor t[8];
  sliver_Any a[8], r;
  for (int i = 0; i < 8; i++) {
    memset(&t[i], 0, sizeof t[i]);
    t[i].data = ptrs[i];
    a[i].type_index = kAnyDLTensorPtr;
    a[i].u.v_ptr = &t[i];
  }
  return __tvm_ffi_sliver_lowbit_int8(NULL, a, 8, &r);
}
"""


def build_library(tmp: str):
    from sliver.backends.tvm import lowbit
    from sliver.backends.tvm.targets import host_target

    src = os.path.join(tmp, "bench.c")
    with open(src, "w") as f:
        f.write(WRAPPER % lowbit.KERNEL_SOURCE)
    so = os.path.join(tmp, "bench.so")
    subprocess.run(["gcc", "-shared", "-fPIC", *lowbit.compile_flags(host_target()), src, "-o", so], check=True)
    return ctypes.CDLL(so), host_target()


def reference(x, w, xz, stride, pad, groups):
    """exact int64 sums of (x - xz) * w, zero padding of x - xz"""
    o, cg, kh, kw = w.shape
    xp = np.pad(x.astype(np.int64) - xz, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    oh = (xp.shape[2] - kh) // stride + 1
    ow = (xp.shape[3] - kw) // stride + 1
    og = o // groups
    out = np.zeros((x.shape[0], o, oh, ow), np.int64)
    for g in range(groups):
        xs = xp[:, g * cg:(g + 1) * cg]
        for i in range(kh):
            for j in range(kw):
                patch = xs[:, :, i:i + stride * oh:stride, j:j + stride * ow:stride]
                out[:, g * og:(g + 1) * og] += np.einsum("nchw,oc->nohw", patch, w[g * og:(g + 1) * og, :, i, j])
    return out


def run_layer(lib, target, layer, layout: str, repeat: int) -> dict:
    from sliver.backends.tvm import lowbit as L

    name, c, h, o, k, s, p, g, _ = layer
    rng = np.random.default_rng(0)
    xz = 7
    x = rng.integers(0, 256, (1, c, h, h)).astype(np.uint8)
    w = rng.integers(-127, 128, (o, c // g, k, k)).astype(np.int64)
    oh = (h + 2 * p - k) // s + 1
    og = o // g
    if layout == "auto" and L.lanes_layout(target.int8_dot, 0, (1, 1), g, c // g, og, oh * oh):
        kind, (packed, rb) = L.LAYOUT_I8_LANES, L.pack_weights_int8_lanes(w, g)
    elif layout in ("auto", "tile") and target.int8_dot in L.I8_TILE_DOTS and og >= L.I8_TILE_MIN_OG:
        kind, (packed, rb) = L.LAYOUT_I8_TILE, L.pack_weights_int8_tiled(w, g)
    else:
        kind, (packed, rb) = L.LAYOUT_PLAIN, L.pack_weights_int8(w)
    meta = dict(N=1, C=c, H=h, W=h, O=o, KH=k, KW=k, SH=s, SW=s, PT=p, PL=p, PB=p, PR=p, DH=1, DW=1, G=g, ABITS=8,
                ASIGNED=0, WBITS=8, WSIGNED=1, XZ=xz, WZ=0, OH=oh, OW=oh, TAPB=c // g, RB=rb,
                OUT=L.OUT_KINDS["uint8"], QMIN=0, QMAX=255, LAYOUT=kind)
    meta = np.array([meta[f] for f in L.META_FIELDS], np.int32)
    scale = rng.random(o).astype(np.float32) * 1e-3 + 1e-4
    bias = rng.standard_normal(o).astype(np.float32)
    epi = np.array([0.0, np.inf, 1 / 0.05, 3], np.float32)
    out = np.zeros((1, o, oh, oh), np.uint8)
    args = [x, packed, w.reshape(o, -1).sum(1).astype(np.int32), meta, scale, bias, epi, out]
    ptrs = (ctypes.c_void_p * 8)(*[a.ctypes.data for a in args])
    if lib.sliver_bench_int8(ptrs) != 0:
        raise SystemExit(f"bench_int8_layers: the kernel refused {name}")
    y = reference(x, w, xz, s, p, g).astype(np.float32) * scale[None, :, None, None] + bias[None, :, None, None]
    want = np.clip(np.round(np.maximum(y, np.float32(0)) * epi[2]) + epi[3], 0, 255)
    exact = bool(np.array_equal(want.astype(np.int64), out.astype(np.int64)))
    times = []
    for _ in range(repeat):
        t = time.thread_time_ns()
        lib.sliver_bench_int8(ptrs)
        times.append(time.thread_time_ns() - t)
    ms = min(times) / 1e6
    macs = o * oh * oh * (c // g) * k * k
    return {"layer": name, "count": layer[8], "ms": ms, "gmacs": macs / ms / 1e6, "exact": exact,
            "layout": {L.LAYOUT_I8_LANES: "lanes", L.LAYOUT_I8_TILE: "tile", L.LAYOUT_PLAIN: "plain"}[kind]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m sliver.benchmarks.bench_int8_layers",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=sorted(MODELS), default="resnet18")
    p.add_argument("--layout", choices=("auto", "tile", "plain"), default="auto")
    p.add_argument("--repeat", type=int, default=7, help="timed calls per layer (the minimum is reported)")
    p.add_argument("--json", help="write the rows here")
    args = p.parse_args(argv)
    os.environ["TVM_NUM_THREADS"] = "1"  # should TVM's pool be loaded in this process: one thread
    with tempfile.TemporaryDirectory() as tmp:
        lib, target = build_library(tmp)
        rows = [run_layer(lib, target, layer, args.layout, args.repeat) for layer in MODELS[args.model]]
    print(f"{args.model}: int8 kernel {target.int8_dot}, thread CPU time, one call per row (min of {args.repeat})")
    print(f"  {'layer':<24} {'layout':<6} {'ms':>8} {'GMAC/s':>8} {'x':>3}  exact")
    for r in rows:
        print(f"  {r['layer']:<24} {r['layout']:<6} {r['ms']:>8.3f} {r['gmacs']:>8.1f} {r['count']:>3}  {r['exact']}")
    total = sum(r["ms"] * r["count"] for r in rows)
    print(f"  every conv of the model once: {total:.2f} ms")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"model": args.model, "int8_dot": target.int8_dot, "rows": rows, "total_ms": total}, f, indent=1)
    return 0 if all(r["exact"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
