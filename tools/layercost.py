"""What each Conv2d / Linear layer costs on a target at each bit width, for ``sliver.quant.allocate``.

    from sliver.tools import layercost
    table = layercost.measure(model, (x,), target="arm64", calibration=x_train[:256])   # modeled cycles
    alloc = sliver.quant.allocate(model, data, loss, budget="40kcycles", target=table)

Every layer is compiled on its own, as ``sliver.qat.prepare`` makes it at each candidate
width pair (W, A) — its input activation quantized as in the whole model, the integer
``qconv2d``/``qdense`` kernel the target picks for that width (bit-serial or int8), the
epilogue — with the input shape it sees in the model for ``example_inputs``, and
measured with sliver's own profiling:

* ``ms`` (x86 targets): the layer's compiled functions, timed per call with the Relax VM
  call instrument (:func:`sliver.tools.profile.call_times`), median over ``repeat`` runs;
* ``cycles`` / ``instructions`` (``arm64``, ``rpi5``): one call counted on the emulated
  Pi (:mod:`sliver.tools.emulator.icount`), the library's executed instructions, and
  llvm-mca's modeled Cortex-A72 cycles of them (:mod:`sliver.tools.emulator.cycles`).

Costs add up over layers: what lies between them (pooling, reshapes, the runtime) is
left out.  A measurement depends only on the layer's shape, the widths, the input's sign
and the target, so it is cached on disk (``~/.cache/sliver/layercost``,
``SLIVER_LAYERCOST_DIR`` moves it) and shared by models with the same layers;
``ms`` entries also carry the host CPU.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from pathlib import Path
from typing import Callable, Sequence

from sliver.common.errors import SliverError

METRICS = ("ms", "cycles", "instructions")
#: bump when the way a cost is measured changes: old cache entries are ignored
VERSION = 1


def cache_dir() -> Path:
    return Path(os.environ.get("SLIVER_LAYERCOST_DIR") or Path.home() / ".cache" / "sliver" / "layercost")


def default_metric(target) -> str:
    return "ms" if target.arch == "x86_64" else "cycles"


def _layer_inputs(model, example_inputs, calibration):
    """{layer: (example input of batch as given, calibration input)} from forward hooks."""
    import torch

    from sliver.quant import quant_layers

    work = copy.deepcopy(model).eval()
    layers = quant_layers(work)
    seen: dict[str, list] = {}
    hooks = [m.register_forward_pre_hook(lambda mod, args, n=n: seen.setdefault(n, []).append(args[0].detach()))
             for n, m in layers]
    try:
        with torch.no_grad():
            work(*example_inputs)
            if calibration is not None:
                work(calibration)
    finally:
        for h in hooks:
            h.remove()
    missing = [n for n, _ in layers if n not in seen]
    if missing:
        raise SliverError(f"layer cost: the layers {', '.join(missing)} do not run on the example inputs")
    return layers, {n: (v[0], v[-1]) for n, v in seen.items()}


def _plain(layer):
    """A float copy of a Conv2d/Linear (a sliver.qat layer loses its quantizers)."""
    import torch.nn as nn

    m = copy.deepcopy(layer)
    if type(m) not in (nn.Conv2d, nn.Linear):
        kind = nn.Conv2d if isinstance(m, nn.Conv2d) else nn.Linear
        for attr in ("act_quant", "weight_quant"):
            if attr in m._modules:
                del m._modules[attr]
        m.__class__ = kind
    return m


def _key(layer, x_shape, signed: bool, w: int, a: int, target, metric: str) -> str:
    import torch.nn as nn

    import tvm

    from sliver import __version__

    desc = {"v": VERSION, "sliver": __version__, "tvm": tvm.__version__, "target": target.name,
            "tvm_target": target.spec, "metric": metric, "kind": type(layer).__name__,
            "weight": list(layer.weight.shape), "bias": layer.bias is not None, "input": list(x_shape),
            "signed": signed, "w": w, "a": a}
    if isinstance(layer, nn.Conv2d):
        desc.update(stride=list(layer.stride), padding=list(layer.padding), dilation=list(layer.dilation),
                    groups=layer.groups)
    if metric == "ms":
        desc["cpu"] = getattr(target, "cpu", None)
    return hashlib.sha256(json.dumps(desc, sort_keys=True, default=str).encode()).hexdigest()[:32]


def _measure_one(layer, x, calib, w: int, a: int, target, target_arg, metric: str, repeat: int) -> float:
    import numpy as np
    import torch
    import torch.nn as nn

    import sliver
    import sliver.qat

    one = nn.Sequential(layer)
    q = sliver.qat.prepare(one, layers={"0": (w, a)})
    q.train()
    with torch.no_grad():
        q(calib)  # scales and the activation sign from data, as training would set them
    q.eval()
    art = sliver.lower(q, (x,), target=target_arg)
    if metric == "ms":
        from sliver.common.platform import host_arch
        from sliver.tools.profile import call_times

        if art.manifest.target.arch != host_arch():
            raise SliverError(f"layer latency is measured here: {target.name} artifacts do not run on "
                              f"{host_arch()}; use metric cycles/instructions on the emulated Pi")
        runs = call_times(art.load(), [x.numpy()], repeat=repeat, warmup=5)
        return float(np.median([sum(sum(v) for v in run.values()) for run in runs])) * 1e3
    from sliver.tools.emulator import cycles, icount

    counted = icount.count_artifact(art, [x.numpy()])
    if metric == "instructions":
        return float(sum(counted.functions.values()))
    cycles.ensure_ready()
    return float(cycles.estimate(counted, art.library).cycles)


def measure(model, example_inputs: Sequence, *, target="arm64", metric: str | None = None,
            widths: Sequence[int] = (2, 3, 4, 8), a_widths=None, calibration=None, repeat: int = 200,
            cache: bool = True, progress: Callable[[str], None] | None = None):
    """A :class:`sliver.quant.CostTable` of every Conv2d/Linear layer of ``model`` at every
    width (``a_widths`` as in :func:`sliver.quant.allocate`), for inputs shaped like
    ``example_inputs`` (batch 1 gives the cost per sample).  ``calibration``: a batch of
    real inputs that sets the quantizers' scales and signs (default: the example)."""
    import torch

    from sliver.backends.tvm.targets import resolve
    from sliver.quant import CostTable, QuantError, _check_model, _check_widths, activation_widths

    _check_model(model)
    widths = _check_widths(widths)
    pairs = activation_widths(widths, a_widths)
    tgt = resolve(target)
    metric = metric or default_metric(tgt)
    if metric not in METRICS:
        raise QuantError(f"layer cost: metric must be one of {', '.join(METRICS)}, got {metric!r}")
    if metric != "ms" and tgt.arch != "aarch64":
        raise QuantError(f"layer cost: {metric} are counted on the emulated Pi: use an arm64 target "
                         f"(arm64, rpi5), not {tgt.name}")
    if metric != "ms":
        from sliver.tools.emulator import emulate

        emulate.ensure_ready()
    if repeat < 1:
        raise QuantError(f"layer cost: repeat must be >= 1, got {repeat}")
    if not isinstance(example_inputs, (tuple, list)) or not all(isinstance(x, torch.Tensor) for x in example_inputs):
        raise QuantError("layer cost: example_inputs must be a tuple of tensors")
    layers, inputs = _layer_inputs(model, example_inputs, calibration)
    d = cache_dir()
    costs: dict[str, dict[int, float]] = {}
    hits = 0
    for name, layer in layers:
        plain = _plain(layer)
        x, calib = inputs[name]
        signed = bool((calib < 0).any())
        costs[name] = {}
        for w in widths:
            a = pairs[w]
            key = _key(plain, x.shape, signed, w, a, tgt, metric)
            path = d / f"{key}.json"
            if cache and path.is_file():
                try:
                    costs[name][w] = float(json.loads(path.read_text())["cost"])
                    hits += 1
                    continue
                except (ValueError, KeyError, TypeError):
                    pass  # a damaged entry: measure again
            if progress:
                progress(f"measuring layer {name} at W{w}A{a} on {tgt.name} ({metric})")
            value = _measure_one(plain, x, calib, w, a, tgt, target, metric, repeat)
            costs[name][w] = value
            if cache:
                from sliver.common.files import atomic_write

                d.mkdir(parents=True, exist_ok=True)
                entry = json.dumps({"cost": value, "layer": name, "w": w, "a": a, "metric": metric,
                                    "target": tgt.name}).encode()
                atomic_write(path, lambda f: f.write(entry))
    how = {"ms": "per-call latency of each layer compiled alone (Relax VM call instrument, median)",
           "cycles": "modeled Cortex-A72 cycles (llvm-mca) of each layer compiled alone, counted on the emulated Pi",
           "instructions": "executed library instructions of each layer compiled alone, on the emulated Pi"}[metric]
    total = len(layers) * len(widths)
    return CostTable(metric, tgt.name, costs, dict(pairs), f"{how}; {hits} of {total} from the cache")


__all__ = ["measure", "cache_dir", "METRICS"]
