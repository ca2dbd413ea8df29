"""Low-bit kernel benchmark: fp32 vs W8A8 vs W2A2 (and W4A4) per layer, end to end, and sizes.

    python -m sliver.benchmarks.bench_lowbit [--repeat 20] [--no-arm] [--arm-size 14] [--layers 56,28,14] [--threads 1,2]

Everything is measured side by side in one run and printed as ratios:

* **x86-64 wall time** (this machine, one thread by default: ``TVM_NUM_THREADS=1``;
  ``--threads N`` runs TVM's pool, which the C kernels split their output rows over too,
  with N threads, ``--threads 1,2`` both in one run, pool resized between rounds, with
  the speed-ups; each row says how many CPUs other processes kept busy meanwhile) of
  ResNet-18-style 3x3 convolutions (56x56x64, 28x28x128, 14x14x256, stride 1, padding
  1, batch 1) and of a small CNN end to end: sliver's
  fp32 build (Winograd for wide 3x3 stride-1 convs) and its direct convs, W8A8 with the
  int8 C kernel and with the generic int16 path (int16 operands, int32 sums, TVM
  schedules), W2A2 with the bit-serial C kernel, unpacked to the int8 kernel's byte dot
  products, with the int16 path, and with the kernel x86's policy picks per layer
  (``Target.lowbit_kernel``, ``Target.bitserial_min_row``), timed interleaved; the kernels each
  variant used are printed.
* **arm64 executed instructions** under qemu (``sliver.tools.emulator.icount``: exact
  counts of one call, start-up excluded, a TCG plugin so full-size layers take
  seconds) for the same layers and the small CNN, fp32 vs int8 (W8A8 on the int8 NEON
  kernel: smull/smlal2 + sadalp) vs W2A2 (bit-serial NEON); ``--arm-size`` counts
  smaller spatial sizes instead.  Beside each count, the **modeled Cortex-A72 cycles** of
  the same call's library code (``sliver.tools.emulator.cycles``: llvm-mca's scheduling model
  per executed block x executions), because instructions of different kernels differ in
  cost (a NEON ``mla`` or ``tbl`` is not an ``and``); the instructions the model leaves
  out (outside the library) are printed too.  Rows are printed as they are measured, each conv
  with the W2A2 call's breakdown: instructions per phase of the bit-serial kernel (its
  functions: packing, im2col, the Sx sums of a weight zero point, the dot products,
  the epilogue) and its hottest blocks (the dot products' inner loop).

8-bit weights are drawn from [-127, 127] (symmetric, as TFLite's int8 scheme has them),
which lets the int8 kernel pair two products per 16-bit lane: the faster int8 baseline.
* **sizes**: artifact bytes and weight bytes of the small CNN at fp32 / W8 / W4 / W2.

Layers are built directly in sliver IR (input codes → qconv2d → f32), so a layer's
cost is the kernel plus its epilogue; the fp32 layer is conv2d + bias.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

import numpy as np

LAYERS = {56: 64, 28: 128, 14: 256}  # spatial size → channels (ResNet-18 stages 1-3)


def _code_param(m, name, data, dtype):
    from sliver.ir.types import TensorType

    m.params[name] = data
    return m.add_op("param", types=[TensorType(data.shape, dtype)], names=[name]).result


def _codes(g, dtype, shape):
    from sliver.ir.types import int_range

    lo, hi = int_range(dtype)
    if dtype == "i8":
        lo = -127  # symmetric int8 weights (TFLite's scheme)
    return g.integers(lo, hi + 1, size=shape).astype(np.int8 if dtype[0] == "i" else np.uint8)


def conv_layer(kind: str, hw: int, c: int, seed: int = 0):
    """(module, inputs) of one 3x3 conv c→c at hw x hw: ``fp32`` or ``WxAy`` (e.g. W2A2)."""
    from sliver.ir.core import Module
    from sliver.ir.types import TensorType

    g = np.random.default_rng(seed)
    m = Module(f"conv{hw}_{kind}")
    if kind == "fp32":
        x = m.add_input(TensorType((1, c, hw, hw), "f32"), "x")
        w = m.add_param("w", (g.standard_normal((c, c, 3, 3)) * 0.05).astype(np.float32))
        b = m.add_param("b", g.standard_normal(c).astype(np.float32))
        y = m.add_op("conv2d", [x, w, b], {"padding": [1, 1, 1, 1]}).result
        m.set_outputs([y])
        return m, [g.standard_normal((1, c, hw, hw)).astype(np.float32)]
    wbits, abits = _bits(kind)
    xd, wd = f"u{abits}", f"i{wbits}"
    x = m.add_input(TensorType((1, c, hw, hw), xd), "x")
    ops = [x, _code_param(m, "w", _codes(g, wd, (c, c, 3, 3)), wd),
           m.add_param("s", (g.random(c) * 0.01).astype(np.float32)), m.add_param("b", g.standard_normal(c).astype(np.float32))]
    y = m.add_op("qconv2d", ops, {"padding": [1, 1, 1, 1], "x_zero_point": 0, "clamp_min": 0.0}, names=["conv"]).result
    m.set_outputs([y])
    return m, [_codes(g, xd, (1, c, hw, hw))]


def _bits(kind: str) -> tuple[int, int]:
    w, a = kind.upper().lstrip("W").split("A")
    return int(w), int(a)


def small_cnn(kind: str, seed: int = 0):
    """(module, inputs): five 3x3 convs (3→32→64→64→128→128, two of stride 2) on a
    1x3x32x32 input, global mean, linear classifier.  Quantized kinds quantize the
    input to u8 and run every conv as qconv2d with ReLU and the fused requantize into
    the next layer's codes; the RGB stem conv keeps 8-bit weights (3 input channels)
    and the mean + classifier stay f32."""
    from sliver.ir.core import Module
    from sliver.ir.types import TensorType

    g = np.random.default_rng(seed)
    m = Module(f"cnn_{kind}")
    x = m.add_input(TensorType((1, 3, 32, 32), "f32"), "x")
    chans = [(3, 32, 1), (32, 64, 2), (64, 64, 1), (64, 128, 2), (128, 128, 1)]
    if kind == "fp32":
        h = x
        for i, (ci, co, s) in enumerate(chans):
            w = m.add_param(f"w{i}", (g.standard_normal((co, ci, 3, 3)) / np.sqrt(ci * 9)).astype(np.float32))
            b = m.add_param(f"b{i}", (g.standard_normal(co) * 0.1).astype(np.float32))
            h = m.add_op("conv2d", [h, w, b], {"stride": [s, s], "padding": [1, 1, 1, 1]}).result
            h = m.add_op("relu", [h]).result
        h = m.add_op("mean", [h], {"axes": [2, 3], "keepdim": False}).result
        w = m.add_param("fc", (g.standard_normal((10, 128)) / np.sqrt(128)).astype(np.float32))
        h = m.add_op("linear", [h, w]).result
        m.set_outputs([h])
        return m, [g.standard_normal((1, 3, 32, 32)).astype(np.float32)]
    wbits, abits = _bits(kind)
    wd, ad = f"i{wbits}", f"u{abits}"
    h = m.add_op("quantize", [x], {"scale": 0.05, "zero_point": 128, "dtype": "u8"}).result
    xz = 128
    for i, (ci, co, s) in enumerate(chans):
        first = i == 0
        wdt = "i8" if first else wd  # the RGB stem stays 8-bit (3 input channels: nothing to gain)
        w = _code_param(m, f"w{i}", _codes(g, wdt, (co, ci, 3, 3)), wdt)
        sc = m.add_param(f"s{i}", np.full(co, 0.5 / (ci * 9), np.float32))
        b = m.add_param(f"b{i}", (g.standard_normal(co) * 0.1).astype(np.float32))
        last = i == len(chans) - 1
        attrs = {"stride": [s, s], "padding": [1, 1, 1, 1], "x_zero_point": xz, "clamp_min": 0.0}
        if not last:
            attrs.update(out_dtype=ad, out_scale=0.05, out_zero_point=0)
        h = m.add_op("qconv2d", [h, w, sc, b], attrs, names=[f"conv{i}"]).result
        xz = 0
    h = m.add_op("mean", [h], {"axes": [2, 3], "keepdim": False}).result
    w = m.add_param("fc", (g.standard_normal((10, 128)) / np.sqrt(128)).astype(np.float32))
    h = m.add_op("linear", [h, w]).result
    m.set_outputs([h])
    return m, [g.standard_normal((1, 3, 32, 32)).astype(np.float32)]


def _compile(module, target: str, kernel: str | None):
    """(library bytes, {layer: kernel}); ``kernel`` forces a low-bit kernel, or is
    ``"direct"``: fp32 convs without Winograd (the default build runs 3x3 stride-1
    convs with >= 32 channels as Winograd F(4x4) / F(2x2))."""
    from sliver.backends.tvm.build import compile_module

    compiled = compile_module(module, target, winograd=kernel != "direct",
                              lowbit_kernel=None if kernel == "direct" else kernel)
    kernels = dict(compiled.kernels)
    if compiled.winograd:
        kernels["fp32 convs"] = "winograd"
    return compiled.library, kernels


def _vm(lib: bytes, tmp: str, name: str):
    import tvm

    path = os.path.join(tmp, f"{name}.so")
    with open(path, "wb") as f:
        f.write(lib)
    return tvm.relax.VirtualMachine(tvm.runtime.load_module(path), tvm.cpu())


def _runner(vm, inputs):
    import tvm

    args = [tvm.runtime.tensor(x) for x in inputs]
    return lambda: vm["main"](*args)


VARIANTS = [("fp32", "fp32", None), ("fp32 direct", "fp32", "direct"), ("W8A8 int8", "W8A8", None), ("W8A8 int16 path", "W8A8", "generic"),
            ("W2A2 bitserial", "W2A2", "bitserial"), ("W2A2 int8", "W2A2", "int8"),
            ("W2A2 int16 path", "W2A2", "generic"), ("W2A2 policy", "W2A2", None)]


def _time_pool_sizes(fns: dict, threads, repeat: int, budget_s: float) -> dict:
    """``{n: {label: times in ms}}`` for each pool size n in ``threads``: rounds of
    :func:`~sliver.benchmarks.latency.time_fair` (one warm-up and one timed run of every
    function), TVM's pool resized between them (``runtime.config_threadpool``, the order
    of sizes alternating), so every thread count sees the same machine load."""
    import tvm

    from sliver.benchmarks.latency import time_fair

    resize = tvm.get_global_func("runtime.config_threadpool")
    out = {n: {k: [] for k in fns} for n in threads}
    for r in range(max(repeat, 1)):
        for n in (threads if r % 2 == 0 else threads[::-1]):
            resize(1, n)
            for k, t in time_fair(fns, 3 if r == 0 else 1, 1, budget_s).items():
                out[n][k] += t.times
    return out


def bench_x86(layers, repeat: int, say, threads=(1,)) -> list[dict]:
    """Rows of median ms per variant (``ms``), and with several ``threads`` per pool size
    (``ms_by_threads``, timed by :func:`_time_pool_sizes`; ``ms`` is then the first size's)."""
    from sliver.ir.interp import run
    from sliver.benchmarks.latency import OtherLoad, time_fair
    from sliver.tools.profile import stats

    rows = []
    with tempfile.TemporaryDirectory(prefix="sliver-bench-lowbit-") as tmp:
        jobs = [(f"conv {hw}x{hw}x{LAYERS[hw]}", lambda kind, hw=hw: conv_layer(kind, hw, LAYERS[hw])) for hw in layers]
        jobs.append(("small CNN end to end", small_cnn))
        for title, make in jobs:
            fns, kernels = {}, {}
            for label, kind, kernel in VARIANTS:
                module, inputs = make(kind)
                say(f"compiling {title} {label}")
                lib, k = _compile(module, "x86_64", kernel)
                vm = _vm(lib, tmp, f"{len(rows)}_{label.replace(' ', '_')}")
                if title.startswith("conv"):  # exactness check on the spot
                    (want,) = run(module, inputs)
                    got = vm["main"](*[__import__("tvm").runtime.tensor(x) for x in inputs]).numpy()
                    err = float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-12))
                    if err > 1e-5:
                        raise SystemExit(f"{title} {label}: compiled output differs from the interpreter ({err:.2e})")
                fns[label] = _runner(vm, inputs)
                kernels[label] = sorted(set(k.values())) or ["fp32"]
            row = {"layer": title, "kernels": kernels}
            with OtherLoad() as load:
                if len(threads) == 1:
                    times = time_fair(fns, warmup=3, repeat=repeat, budget_s=20.0)
                    row["ms"] = {k: stats(v.times)["median_ms"] for k, v in times.items()}
                else:
                    by_n = _time_pool_sizes(fns, list(threads), repeat, 20.0)
                    row["ms_by_threads"] = {n: {k: stats(v)["median_ms"] for k, v in t.items()} for n, t in by_n.items()}
                    row["ms"] = row["ms_by_threads"][threads[0]]
            row["other_load"] = load.value
            rows.append(row)
    return rows


def print_x86(rows, threads=(1,)) -> None:
    """One table per thread count (ratio to fp32 at that count), then, with several, each
    variant's speed-up from the first count."""
    from sliver.backends.tvm.targets import host_target
    from sliver.tools.profile import tvm_threads

    labels = [v[0] for v in VARIANTS]
    head = f"{'layer':<26}" + "".join(f"{l:>22}" for l in labels)
    load = {r["layer"]: "?" if r["other_load"] is None else f"{r['other_load']:.2f}" for r in rows}
    for n in threads:
        if len(threads) == 1:
            pool = f"TVM_NUM_THREADS={n} (TVM's pool: {tvm_threads()} threads)"
        else:
            pool = f"TVM's pool resized to {n} of TVM_NUM_THREADS={max(threads)} threads, interleaved"
        print(f"\n== x86-64 wall time, {pool}, median ms (ratio = fp32 / variant; >1 is faster) ==")
        if n == threads[0]:
            x86 = host_target()
            print(f"x86 policy for < 8 bits: {x86.lowbit_kernel} for bit-plane rows of >= "
                  f"{x86.bitserial_min_row} bytes, else int8; 8 bits: the int8 kernel")
        print(head)
        for r in rows:
            ms = r["ms_by_threads"][n] if len(threads) > 1 else r["ms"]
            cells = "".join(f"{ms[l]:>10.3f} ({ms['fp32'] / ms[l]:>5.2f}x)    " for l in labels)
            print(f"{r['layer']:<26}{cells}  other load {load[r['layer']]} CPUs")
    for n in threads[1:]:
        print(f"\n== x86-64 speed-up from {threads[0]} to {n} threads (ms at {threads[0]} / ms at {n}), same run ==")
        print(head)
        for r in rows:
            t0, t1 = r["ms_by_threads"][threads[0]], r["ms_by_threads"][n]
            print(f"{r['layer']:<26}" + "".join(f"{t0[l] / t1[l]:>21.2f}x" for l in labels))
    for r in rows:
        print(f"kernels, {r['layer']}: " + "; ".join(f"{l}: {'+'.join(r['kernels'][l])}" for l in labels))


def bench_arm(layers, size: int, say, show=lambda row: None, cnn: bool = True) -> list[dict]:
    """Executed instructions of one call per variant, layers at size x size; ``show`` gets
    each row as soon as it is measured."""
    from sliver.tools.emulator import icount

    rows = []
    measure = _arm_measure()
    variants = [("fp32", "fp32", None), ("fp32 direct", "fp32", "direct"), ("int8 (W8A8)", "W8A8", None),
                ("W2A2 bitserial", "W2A2", "bitserial")]
    for hw in layers:
        c = LAYERS[hw]
        size_hw = size or hw
        row = {"counts": {}, "cycles": {}, "outside": {}, "breakdown": None}
        for label, kind, kernel in variants:
            module, inputs = conv_layer(kind, size_hw, c)
            say(f"counting conv {size_hw}x{size_hw}x{c} {label} on the emulated Pi")
            lib, k = _compile(module, "arm64", kernel)
            counted = measure(row, label, lib, inputs)
            if label == "fp32":
                say(f"fp32 conv: {k.get('fp32 convs', 'direct')}")
            if kernel == "bitserial":
                row["breakdown"] = counted
        where = f"{hw}x{hw}x{c}" if size_hw == hw else f"{size_hw}x{size_hw}x{c} (stage {hw}x{hw}, reduced)"
        rows.append({"layer": f"conv 3x3 {where}", **row})
        show(rows[-1])
    if not cnn:
        return rows
    row = {"counts": {}, "cycles": {}, "outside": {}}
    for label, kind, kernel in variants:
        module, inputs = small_cnn(kind)
        say(f"counting the small CNN {label} on the emulated Pi")
        lib, _ = _compile(module, "arm64", kernel)
        measure(row, label, lib, inputs)
    rows.append({"layer": "small CNN end to end", **row})
    show(rows[-1])
    return rows


def _arm_measure():
    """``measure(row, label, lib, inputs)``: count one call of ``lib`` on the emulated Pi
    into ``row`` (instructions per call; the library code's modeled Cortex-A72 cycles and
    the instructions outside the library, which the model does not cover) and return the
    count."""
    from sliver.tools.emulator import cycles, icount

    cycles.ensure_ready()

    def measure(row, label, lib, inputs):
        counted = icount.count_library(lib, inputs)
        est = cycles.estimate(counted, lib)
        row["counts"][label] = counted.per_call
        row["cycles"][label] = est.cycles
        row["outside"][label] = sum(est.outside.values())
        return counted

    return measure


#: the bit-serial kernel's functions (kernels/lowbit.c) by phase, for the breakdown
PHASES = {"pack_input": "1 bit-pack input", "pack_pixels": "1 bit-pack input", "pixel_sums": "Sx: pixel sums",
          "im2col_row": "2 im2col", "window_sums": "Sx: window sums", "conv_row_2_2": "3 dot products",
          "apply_epilogue": "4 epilogue", "sliver_lowbit_bitserial": "setup", "bitserial_slice": "setup"}


def print_arm_row(r) -> None:
    """Instructions per call, then modeled cycles (library code), each with its ratio to
    W2A2's, then the instructions outside the library that the cycles leave out."""
    print(r["layer"], flush=True)
    for what, values in (("instructions", r["counts"]), ("modeled cycles", r["cycles"])):
        w2 = values["W2A2 bitserial"]
        cells = "  ".join(f"{k}: {v / 1e6:8.2f}M ({v / w2:4.2f}x)" for k, v in values.items())
        print(f"  {what:<16}{cells}", flush=True)
    print("  not modeled: " + "  ".join(f"{k} {v / 1e6:.2f}M instructions outside the library"
                                       for k, v in r["outside"].items()), flush=True)
    if r.get("breakdown") is not None:
        print_breakdown(r["breakdown"])


def print_breakdown(counted, hot: int = 3) -> None:
    """Where a W2A2 call's instructions go: per function of the kernel (its phases), and
    the hottest blocks (a loop body executed many times: instructions x executions)."""
    total = counted.per_call
    parts = [f"{PHASES.get(name, name)} ({name}) {n / 1e6:.2f}M {100 * n / total:.1f}%"
             for name, n in counted.functions.items() if n >= 0.001 * total]
    rest = total - sum(counted.functions.values())
    parts.append(f"outside the library {rest / 1e6:.2f}M")
    print("    W2A2 by function: " + "; ".join(parts), flush=True)
    blocks = [f"{b.function}+{b.offset:#x} {b.insns} insns x {b.times} = {b.total / 1e6:.2f}M"
              for b in counted.blocks[:hot]]
    print("    hottest blocks: " + "; ".join(blocks), flush=True)


def sizes(say) -> list[dict]:
    """Artifact bytes and weight bytes of the small CNN at fp32 / W8 / W4 / W2 (arm64
    libraries).  Weight bytes are what the library embeds for the conv and linear
    weights: f32 for float layers, the bit-packed planes for bit-serial layers, int8
    rows for layers on the int8 kernel (8-bit ones, like the RGB stem)."""
    from sliver.backends.tvm import lowbit

    out = []
    for kind in ("fp32", "W8A8", "W4A4", "W2A2"):
        module, _ = small_cnn(kind)
        say(f"compiling small CNN {kind} for arm64 (sizes)")
        lib, kernels = _compile(module, "arm64", None)
        layer_of = {op.operands[1].name: op.result.name for op in module.ops if op.kind in ("qconv2d", "qdense")}
        wbytes = 0
        for op in module.ops:
            name = op.result.name
            if op.kind != "param" or not name.startswith(("w", "fc")):
                continue
            a = module.params[name]
            t = op.result.type.dtype
            if name not in layer_of:  # a float layer
                wbytes += a.nbytes
            elif kernels.get(layer_of[name]) == "bitserial":
                bits = lowbit.code_bits(t)[0]
                wbytes += lowbit.pack_weights(a, bits, -(-a.shape[1] // 8))[0].nbytes
            elif kernels.get(layer_of[name]) == "int8":
                wbytes += lowbit.pack_weights_int8(a.astype(np.int64))[0].nbytes
            else:
                wbytes += a.size * np.dtype(lowbit.WIDE).itemsize
        out.append({"kind": kind, "artifact": len(lib), "weights": wbytes})
    return out


def print_sizes(rows) -> None:
    print("\n== sizes, small CNN (arm64 library) ==")
    base = rows[0]
    for r in rows:
        print(f"{r['kind']:<6} library {r['artifact']:>9} B ({base['artifact'] / r['artifact']:5.2f}x smaller)   "
              f"weights {r['weights']:>8} B ({base['weights'] / r['weights']:5.2f}x smaller)")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m sliver.benchmarks.bench_lowbit", description=__doc__.split("\n")[0])
    p.add_argument("--layers", default="56,28,14", help="ResNet-18 stages by spatial size (56, 28, 14)")
    p.add_argument("--repeat", type=int, default=20)
    p.add_argument("--arm-size", type=int, default=0,
                   help="count the arm64 layers at this spatial size instead of full size (faster)")
    p.add_argument("--no-arm", action="store_true", help="skip the emulated arm64 instruction counts")
    p.add_argument("--no-x86", action="store_true", help="skip the x86 timings")
    p.add_argument("--no-cnn", action="store_true", help="skip the small CNN's arm64 count")
    p.add_argument("--no-sizes", action="store_true", help="skip the artifact sizes")
    p.add_argument("--threads", default="1",
                   help="TVM_NUM_THREADS for the x86 timings (default 1; the arm64 counts always run one thread); "
                        "several, e.g. 1,2: one run with TVM's pool resized between rounds, and the speed-ups "
                        "(the C kernels keep the largest count's slices, run by fewer threads)")
    p.add_argument("-q", "--quiet", action="store_true")
    args = p.parse_args(argv)
    try:
        threads = tuple(int(t) for t in args.threads.split(","))
    except ValueError:
        threads = ()
    if not threads or min(threads) < 1:
        p.error(f"--threads takes thread counts of at least 1, comma-separated, not {args.threads!r}")
    from sliver.tools.profile import set_tvm_threads

    set_tvm_threads(max(threads))  # before TVM's pool starts
    layers = [int(s) for s in args.layers.split(",")]
    say = (lambda m: None) if args.quiet else (lambda m: print(f"[bench_lowbit] {m}", file=sys.stderr, flush=True))
    if not args.no_x86:
        print_x86(bench_x86(layers, args.repeat, say, threads), threads)
    if not args.no_arm:
        print("\n== arm64 (Cortex-A72, emulated): executed instructions per call, and the library code's cycles "
              "modeled by llvm-mca (sliver.tools.emulator.cycles); ratio = variant / W2A2 ==", flush=True)
        bench_arm(layers, args.arm_size, say, show=print_arm_row, cnn=not args.no_cnn)
    if not args.no_sizes:
        print_sizes(sizes(say))
    return 0


if __name__ == "__main__":
    sys.exit(main())
