"""HAWQ bit allocation on scikit-learn's digits: Hessian-aware vs uniform vs random widths.

    python -m sliver.benchmarks.hawq_digits                       # 3 seeds, size and Pi-cycle budgets
    python -m sliver.benchmarks.hawq_digits --seeds 0 --random 3 --no-compile   # a quick look

The digits CNN of :mod:`sliver.benchmarks.train_digits_qat` (3 convs + linear) is trained in
fp32 per seed; ``sliver.quant`` measures its per-layer Hessian traces on the training set
and allocates widths from {2, 3, 4, 8} (activations at the weight's width: W2A2 … W8A8).
Every allocation is then fine-tuned with ``sliver.qat`` exactly like the uniform model
(same epochs, learning rate and seed) and scored on the 360 test digits:

* **equal packed size**: the HAWQ allocation within the uniform W3A3 model's packed weight
  bytes, against uniform W3A3 and against random allocations whose size is within 15%
  below that budget (the same random draws for every seed);
* **equal modeled Pi cycles**: the same with the budget set to uniform W2A2's modeled
  Cortex-A72 cycles per image (per-layer costs from ``sliver.tools.layercost`` on the
  emulated Pi, summed over layers);
* **cost-aware vs size-aware**: the cycle-budget allocation given the size-aware
  allocation's cycles, compared on accuracy and cycles;
* **compiles**: seed 0's chosen mixed-width models lowered for x86_64 (run here) and arm64
  (run on the emulated Pi) predict what the fake-quant torch model predicts.
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import sys
import time

import numpy as np

WIDTHS = (2, 3, 4, 8)


def _cpu() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _accuracy(data, fp32, layers: dict, seed: int, qat_epochs: int) -> float:
    import sliver.qat
    from sliver.benchmarks import train_digits_qat as T

    q = sliver.qat.prepare(fp32, layers=layers)
    q = T.fit(q, data, qat_epochs, 1e-3, seed + 1)
    return T.agreement(T.predict(q, data.x_test), data.y_test.numpy()), q


def _random_allocations(names, table, lo: float, hi: float, k: int, rng) -> list[tuple]:
    ok = [ws for ws in itertools.product(WIDTHS, repeat=len(names))
          if lo <= table.total(dict(zip(names, ws))) <= hi and len(set(ws)) > 1]
    idx = rng.choice(len(ok), size=min(k, len(ok)), replace=False)
    return [ok[i] for i in sorted(idx)], len(ok)


def _modeled_full_cycles(qmodel, x1) -> float:
    """Modeled Cortex-A72 cycles of the whole compiled model on one image."""
    import sliver
    from sliver.tools.emulator import cycles, icount

    art = sliver.lower(qmodel, (x1,), target="arm64")
    counted = icount.count_artifact(art, [x1.numpy()])
    return float(cycles.estimate(counted, art.library).cycles)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m sliver.benchmarks.hawq_digits", description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", default="0,1,2", help="training seeds (default 0,1,2)")
    p.add_argument("--random", type=int, default=10, help="random allocations per budget (default 10)")
    p.add_argument("--epochs", type=int, default=10, help="fp32 epochs")
    p.add_argument("--qat-epochs", type=int, default=10, help="QAT epochs of every allocation")
    p.add_argument("--a-bits", type=int, default=None,
                   help="one activation width for every layer (default: each layer's weight width, W2A2 … W8A8)")
    p.add_argument("--rtol", type=float, default=0.05, help="Hutchinson's stopping standard error (default 0.05)")
    p.add_argument("--max-iters", type=int, default=500, help="Hutchinson samples at most (default 500)")
    p.add_argument("--no-cycles", action="store_true", help="skip the Pi-cycle budget (no emulated Pi needed)")
    p.add_argument("--no-compile", action="store_true", help="skip compiling the chosen models")
    p.add_argument("--json", help="write every number here")
    p.add_argument("--plot", help="write seed 0's size front (PNG) here")
    args = p.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]

    import torch
    import torch.nn.functional as F

    import sliver.quant as Q
    from sliver.benchmarks import train_digits_qat as T

    torch.set_num_threads(1)
    t_start = time.perf_counter()
    data = T.load_digits(0)
    model0 = T.make_cnn()
    names = [n for n, _ in Q.quant_layers(model0)]
    pairs = Q.activation_widths(WIDTHS, args.a_bits)
    size = Q.size_table(model0, WIDTHS, args.a_bits)
    u = {b: {n: b for n in names} for b in WIDTHS}
    size_budget = size.total(u[3])
    rng = np.random.default_rng(1234)
    rand_size, n_size = _random_allocations(names, size, 0.85 * size_budget, size_budget, args.random, rng)
    cyc = None
    if not args.no_cycles:
        from sliver.tools import layercost

        cyc = layercost.measure(model0, (data.x_test[:1],), target="arm64", metric="cycles", widths=WIDTHS,
                                a_widths=args.a_bits,
                                calibration=data.x_train[:256], progress=lambda m: print(f"  [{m}]", flush=True))
        cyc_budget = cyc.total(u[2])
        rand_cyc, n_cyc = _random_allocations(names, cyc, 0.85 * cyc_budget, cyc_budget, args.random, rng)
    res = {"cpu": _cpu(), "seeds": seeds, "a_bits": args.a_bits, "widths": WIDTHS, "layers": names, "size_budget": size_budget,
           "random_size": [list(w) for w in rand_size], "random_size_pool": n_size, "runs": []}
    if cyc is not None:
        res.update(cycle_table=cyc.to_json(), cycle_budget=cyc_budget, random_cycles=[list(w) for w in rand_cyc],
                   random_cycles_pool=n_cyc)
    print(f"layers {names}; size budget {size_budget:.0f} bytes (uniform W3A{pairs[3]}), {len(rand_size)} random "
          f"allocations of {n_size} within 15% below it" + (
              f"; cycle budget {cyc_budget:,.0f} modeled cycles (uniform W2A{pairs[2]}), {len(rand_cyc)} random of {n_cyc}"
              if cyc is not None else ""), flush=True)

    def fmt(ws):
        return "/".join(map(str, ws))

    chosen_models = {}
    for seed in seeds:
        torch.manual_seed(seed)
        fp32 = T.fit(T.make_cnn(), data, args.epochs, 3e-3, seed)
        fp_acc = T.agreement(T.predict(fp32, data.x_test), data.y_test.numpy())
        t0 = time.perf_counter()
        sens = Q.sensitivity(fp32, (data.x_train, data.y_train), F.cross_entropy, widths=WIDTHS, rtol=args.rtol,
                             min_iters=min(10, args.max_iters), max_iters=args.max_iters, seed=seed)
        run = {"seed": seed, "fp32": fp_acc, "hutchinson_s": time.perf_counter() - t0,
               "hutchinson_iters": sens.iterations, "converged": sens.converged,
               "traces": {ls.name: [ls.trace, ls.trace_se] for ls in sens.layers}, "acc": {}}
        print(f"seed {seed}: fp32 {fp_acc:.2%}; Hutchinson {sens.iterations} samples "
              f"({'converged' if sens.converged else 'NOT converged'}) in {run['hutchinson_s']:.0f}s", flush=True)
        print(sens.table(), end="", flush=True)

        def score(label, ws):
            key = fmt(ws)
            if key not in run["acc"]:
                layers = {n: (b, pairs[b]) for n, b in zip(names, ws)}
                run["acc"][key], q = _accuracy(data, fp32, layers, seed, args.qat_epochs)
                if seed == seeds[0]:
                    chosen_models[key] = q
                print(f"  {label:<22} {key:<8} size {size.total(dict(zip(names, ws))):>6.0f} B"
                      + (f"  {cyc.total(dict(zip(names, ws))):>9,.0f} cycles" if cyc is not None else "")
                      + f"  accuracy {run['acc'][key]:.2%}", flush=True)
            return run["acc"][key]

        a_size = Q.allocate(fp32, budget=(size_budget, "bytes"), widths=WIDTHS, a_widths=args.a_bits,
                            sensitivity=sens)
        run["hawq_size"] = fmt(a_size.widths[n] for n in names)
        if seed == seeds[0] and args.plot:
            a_size.plot(args.plot)
        score("HAWQ (size)", [a_size.widths[n] for n in names])
        score(f"uniform W3A{pairs[3]}", [3] * len(names))
        for ws in rand_size:
            score("random (size)", ws)
        if cyc is not None:
            a_cyc = Q.allocate(fp32, budget=(cyc_budget, "cycles"), target=cyc, widths=WIDTHS, a_widths=args.a_bits,
                               sensitivity=sens)
            run["hawq_cycles"] = fmt(a_cyc.widths[n] for n in names)
            score("HAWQ (cycles)", [a_cyc.widths[n] for n in names])
            score(f"uniform W2A{pairs[2]}", [2] * len(names))
            for ws in rand_cyc:
                score("random (cycles)", ws)
            # cost-aware at the size-aware allocation's cycles
            c_s = cyc.total(a_size.widths)
            a_ca = Q.allocate(fp32, budget=(c_s, "cycles"), target=cyc, widths=WIDTHS, a_widths=args.a_bits,
                              sensitivity=sens)
            run["cost_aware_at_size_cycles"] = fmt(a_ca.widths[n] for n in names)
            score("cost-aware @ size's", [a_ca.widths[n] for n in names])
        res["runs"].append(run)

    # -- the tables
    def mean(xs):
        return float(np.mean(xs))

    def acc_of(key):
        return [r["acc"][key] for r in res["runs"]]

    summary = {}
    rows = [("budget", "allocation", "widths (seed 0)", "packed bytes", "modeled cycles/image",
             "accuracy, mean of 3 seeds" if len(seeds) == 3 else f"accuracy, mean of {len(seeds)} seeds")]

    def cyc_of(key):
        return f"{cyc.total(dict(zip(names, map(int, key.split('/'))))):,.0f}" if cyc is not None else "-"

    r0 = res["runs"][0]
    hs = [r["acc"][r["hawq_size"]] for r in res["runs"]]
    us = acc_of("3/3/3/3")
    rs = [mean([r["acc"][fmt(ws)] for ws in rand_size]) for r in res["runs"]]
    summary["size"] = {"hawq": mean(hs), "uniform": mean(us), "random": mean(rs)}
    rows.append((f"{size_budget:.0f} B (= W3A{pairs[3]})", "HAWQ", r0["hawq_size"],
                 f"{size.total(dict(zip(names, map(int, r0['hawq_size'].split('/'))))):.0f}", cyc_of(r0["hawq_size"]),
                 f"{mean(hs):.2%} ({', '.join(f'{a:.2%}' for a in hs)})"))
    rows.append(("", f"uniform W3A{pairs[3]}", "3/3/3/3", f"{size.total(u[3]):.0f}", cyc_of("3/3/3/3"),
                 f"{mean(us):.2%} ({', '.join(f'{a:.2%}' for a in us)})"))
    rows.append(("", f"{len(rand_size)} random", "…", f"{min(size.total(dict(zip(names, w))) for w in rand_size):.0f}–"
                 f"{max(size.total(dict(zip(names, w))) for w in rand_size):.0f}", "…",
                 f"{mean(rs):.2%} ({', '.join(f'{a:.2%}' for a in rs)})"))
    if cyc is not None:
        hc = [r["acc"][r["hawq_cycles"]] for r in res["runs"]]
        uc = acc_of("2/2/2/2")
        rc = [mean([r["acc"][fmt(ws)] for ws in rand_cyc]) for r in res["runs"]]
        ca = [r["acc"][r["cost_aware_at_size_cycles"]] for r in res["runs"]]
        summary["cycles"] = {"hawq": mean(hc), "uniform": mean(uc), "random": mean(rc)}
        rows.append((f"{cyc_budget:,.0f} cycles (= W2A{pairs[2]})", "HAWQ", r0["hawq_cycles"],
                     f"{size.total(dict(zip(names, map(int, r0['hawq_cycles'].split('/'))))):.0f}",
                     cyc_of(r0["hawq_cycles"]), f"{mean(hc):.2%} ({', '.join(f'{a:.2%}' for a in hc)})"))
        rows.append(("", f"uniform W2A{pairs[2]}", "2/2/2/2", f"{size.total(u[2]):.0f}", cyc_of("2/2/2/2"),
                     f"{mean(uc):.2%} ({', '.join(f'{a:.2%}' for a in uc)})"))
        rows.append(("", f"{len(rand_cyc)} random", "…", "…",
                     f"{min(cyc.total(dict(zip(names, w))) for w in rand_cyc):,.0f}–"
                     f"{max(cyc.total(dict(zip(names, w))) for w in rand_cyc):,.0f}",
                     f"{mean(rc):.2%} ({', '.join(f'{a:.2%}' for a in rc)})"))
        size_cyc = [cyc.total(dict(zip(names, map(int, r["hawq_size"].split("/"))))) for r in res["runs"]]
        ca_cyc = [cyc.total(dict(zip(names, map(int, r["cost_aware_at_size_cycles"].split("/"))))) for r in res["runs"]]
        summary["cost_vs_size"] = {"size_aware_acc": mean(hs), "size_aware_cycles": mean(size_cyc),
                                   "cost_aware_acc": mean(ca), "cost_aware_cycles": mean(ca_cyc)}
        rows.append(("size-aware's cycles", "HAWQ cost-aware", r0["cost_aware_at_size_cycles"],
                     f"{size.total(dict(zip(names, map(int, r0['cost_aware_at_size_cycles'].split('/'))))):.0f}",
                     cyc_of(r0["cost_aware_at_size_cycles"]), f"{mean(ca):.2%} ({', '.join(f'{a:.2%}' for a in ca)})"))
    res["summary"] = summary
    from sliver.common.text import table_lines

    print("\n" + "\n".join(table_lines(rows)))
    res["table"] = rows

    # -- the chosen models compile and agree with the fake-quant torch model
    if not args.no_compile:
        import sliver

        compiled = {}
        keys = [r0["hawq_size"]] + ([r0["hawq_cycles"], r0["cost_aware_at_size_cycles"]] if cyc is not None else [])
        for key in dict.fromkeys(keys):
            q = chosen_models[key]
            fq = T.predict(q, data.x_test)
            entry = {}
            for target in ("x86_64", "arm64"):
                art = sliver.lower(q, (data.x_test,), target=target)
                logits = T._run_artifact(art, data.x_test.numpy())
                if logits is None:
                    entry[target] = None
                    print(f"compiled {key} for {target}: not run (no emulated Pi)")
                    continue
                entry[target] = T.agreement(logits.argmax(1), fq)
                print(f"compiled {key} for {target} ({art.manifest.kernels}): same prediction as the "
                      f"fake-quant model on {entry[target]:.2%} of {len(fq)} test digits", flush=True)
            if cyc is not None:
                entry["modeled_cycles_whole_model"] = _modeled_full_cycles(q, data.x_test[:1])
                entry["modeled_cycles_sum_of_layers"] = cyc.total(dict(zip(names, map(int, key.split("/")))))
                print(f"  whole {key} model on the emulated Pi: {entry['modeled_cycles_whole_model']:,.0f} modeled "
                      f"cycles per image; sum of its layers' table entries {entry['modeled_cycles_sum_of_layers']:,.0f}")
            compiled[key] = entry
        res["compiled"] = compiled
    res["seconds"] = time.perf_counter() - t_start
    print(f"done in {res['seconds']:.0f}s on {res['cpu']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1, default=str)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
