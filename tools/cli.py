"""The ``sliver`` command line.

    sliver trace MODEL [--check] [-o model.sir]
    sliver opt MODEL --passes fold-batchnorm,dce [--print-after-all] [--dump-dir D] [--timing] [--drift]
    sliver lower MODEL --target arm64 -o model.sliver
    sliver tune MODEL --target x86_64 (--trials N | --time-budget 10m) [--rpc HOST:PORT --key pi] [-o model.sliver]
    sliver device serve [--tracker HOST:PORT] --key pi | sliver device tracker
    sliver run model.sliver [--verify] [--emulate]
    sliver lower file.py:function --generate [--max-len N] -o llm.sliver; sliver generate llm.sliver --prompt TEXT
    sliver inspect model.sliver
    sliver bench model.sliver [--per-layer] [--emulate]
    sliver explain model.sliver [-o report.md] [--html report.html] [--emulate]
    sliver passes | sliver ops | sliver demo

MODEL is ``file.py:function`` (the function returns ``(model, example_inputs)``),
an exported program ``file.pt2`` (``torch.export.save``), or sliver IR ``file.sir``
(with its params in ``file.npz``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sliver.common.errors import SliverError, UsageError
from sliver.runtime import cli as runtime_cli
from sliver.tools.shared import Parser, load_model, say


def _trace(spec: str):
    from sliver.api import trace
    from sliver.ir.core import Module

    model, inputs = load_model(spec)
    if isinstance(model, Module):
        return model, inputs, model
    return trace(model, inputs), inputs, model


def cmd_trace(args) -> int:
    from sliver.ir.io import save_module

    if args.check:
        from sliver.api import unsupported_ops

        model, inputs = load_model(args.model)
        if args.model.endswith(".sir"):
            raise UsageError(f"--check lists the operators of a torch model sliver cannot trace; {args.model} "
                             "is sliver IR already")
        problems = unsupported_ops(model, inputs)
        if not problems:
            print(f"{args.model}: every operator is supported")
            return 0
        print(f"{args.model}: {len(problems)} unsupported operator use(s):")
        for op, where, src in problems:
            print(f"  {op}" + (f"  at {where}" if where else "") + (f"\n      {src}" if src else ""))
        return 1
    module, _, _ = _trace(args.model)
    if args.output:
        save_module(module, args.output)
        say(f"wrote {args.output} and its params {Path(args.output).with_suffix('.npz')}")
    else:
        sys.stdout.write(str(module))
    return 0


def _check_print_after(args) -> None:
    """--print-after names passes of the pipeline: anything else would print nothing."""
    from sliver.passes.manager import all_passes, parse_pipeline

    known = all_passes()
    in_pipeline = [p.name for p in parse_pipeline(args.passes)]
    for name in args.print_after or ():
        if name not in known:
            raise UsageError(f"--print-after {name}: no such pass; the passes are {', '.join(known)} "
                             "(`sliver passes` describes them)")
        if name not in in_pipeline:
            raise UsageError(f"--print-after {name}: {name} is not in the pipeline "
                             f"({', '.join(in_pipeline) or 'empty'}); add it to --passes")


def _instruments(args, inputs):
    from sliver.common.numerics import as_numpy
    from sliver.passes.manager import DumpDir, NumericDrift, PrintIR

    _check_print_after(args)
    out = []
    if args.print_after_all or args.print_after or args.print_after_change:
        out.append(PrintIR(after_all=args.print_after_all, after=args.print_after or (),
                           after_change=args.print_after_change))
    if args.dump_dir:
        out.append(DumpDir(args.dump_dir))
    if args.drift:
        out.append(NumericDrift([as_numpy(x) for x in inputs]))
    return out


def _pass_reports(records) -> None:
    """Print the per-layer reports passes leave in their notes (fold-fake-quant's
    layer table when the model has quantized layers)."""
    for r in records:
        layers = r.notes.get("layers") if r.name == "fold-fake-quant" else None
        if layers and any(row["folded"] or row["reason"] != "not quantized" for row in layers):
            sys.stderr.write(r.notes["text"])
        if r.name == "quantize-static":
            sys.stderr.write(r.notes["text"])


def cmd_opt(args) -> int:
    from sliver.api import optimize
    from sliver.ir.io import save_module
    from sliver.passes.manager import format_records

    module, inputs, _ = _trace(args.model)
    records = optimize(module, args.passes, verify=not args.no_verify, instruments=_instruments(args, inputs))
    _pass_reports(records)
    if args.timing or args.drift:
        sys.stderr.write(format_records(records))
    if args.output:
        save_module(module, args.output)
        say(f"wrote {args.output}")
    elif not (args.print_after_all or args.print_after or args.print_after_change):
        sys.stdout.write(str(module))
    return 0


def _target(text: str):
    """--target: a name or a TVM target dict as JSON; checked before any model is loaded."""
    from sliver.backends.tvm.targets import resolve

    target = text
    if target.strip().startswith("{"):
        import json

        try:
            target = json.loads(target)
        except json.JSONDecodeError as e:
            raise SliverError(f"--target {text!r} is not valid JSON: {e}") from None
    resolve(target)
    return target


def cmd_lower(args) -> int:
    from sliver.api import lower
    from sliver.passes.manager import format_records

    from sliver.progress import Display

    target = _target(args.target)
    if args.generate:
        return _lower_generate(args, target)
    if args.max_len is not None:
        raise UsageError("--max-len applies to generating artifacts: add --generate")
    names = [n.strip() for n in args.output_names.split(",")] if args.output_names else None
    model, inputs = load_model(args.model)
    if args.calibration and not args.quantize:
        raise UsageError("--calibration needs --quantize int8")
    if args.quantize and not args.calibration:
        raise UsageError("--quantize int8 needs --calibration data.npz (one array per input, stacked) or a folder "
                         "of .npy files (one sample each)")
    with Display() as display:
        display(f"lowering {args.model} for {args.target}")
        art = lower(model, inputs, target, passes=args.passes, verify=not args.no_verify,
                    instruments=_instruments(args, inputs), progress=display, winograd=not args.no_winograd,
                    output_names=names, quantize=args.quantize, calibration=args.calibration)
    _pass_reports(art.records)
    if args.timing or args.drift:
        sys.stderr.write(format_records(art.records))
    path = art.save(args.output)
    say(f"wrote {path} ({path.stat().st_size:,} bytes, target {art.target})")
    return 0


def _lower_generate(args, target) -> int:
    """``sliver lower file.py:function --generate``: the function returns a transformers
    causal LM and its tokenizer, ``(model, tokenizer)``."""
    from sliver.common.errors import ModelError
    from sliver.llm import lower_llm
    from sliver.progress import Display
    from sliver.tools.shared import load_callable, quiet_torch

    for flag, value in (("--output-names", args.output_names), ("--quantize", args.quantize)):
        if value:
            raise UsageError(f"{flag} does not apply to --generate (a generating artifact's inputs and outputs are "
                             "fixed; weight quantization goes in --passes)")
    builder = load_callable(args.model)
    try:
        result = builder()
    except Exception as e:
        raise ModelError(f"{args.model} raised {type(e).__name__}: {e}") from None
    quiet_torch()
    if not (isinstance(result, tuple) and len(result) == 2):
        raise ModelError(f"with --generate, {args.model} must return (model, tokenizer): a transformers causal LM "
                         f"and its tokenizer (or None), got {type(result).__name__}")
    model, tokenizer = result
    with Display() as display:
        display(f"lowering {args.model} for {args.target} as a generating artifact")
        art = lower_llm(model, tokenizer, max_len=args.max_len or 512, target=target, passes=args.passes,
                        verify=not args.no_verify, progress=display, winograd=not args.no_winograd)
    _pass_reports(art.records)
    path = art.save(args.output)
    say(f"wrote {path} ({path.stat().st_size:,} bytes, target {art.target}; `sliver generate {path} --prompt ...`)")
    return 0


def cmd_generate(args) -> int:
    if not args.emulate:
        return runtime_cli.generate(args)
    import json

    from sliver.runtime.artifact import read
    from sliver.runtime.generate import Tokenizer
    from sliver.tools.emulator import emulate

    emulate.ensure_ready()
    art = read(args.artifact, trusted_keys=args.trusted_key)
    tokenizer = Tokenizer(art.tokenizer, args.artifact)
    # the emulated Pi has no tokenizers library: the text is tokenized and detokenized here
    ids = tokenizer.encode(args.prompt) if args.prompt is not None else runtime_cli._prompt_ids(args.prompt_ids)
    argv = ["generate", str(Path(args.artifact).resolve()), "--prompt-ids", ",".join(map(str, ids)), "--json",
            "--max-new-tokens", str(args.max_new_tokens), "--temperature", repr(args.temperature)]
    for flag in ("top_k", "top_p", "seed", "threads"):
        if getattr(args, flag) is not None:
            argv += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
    if args.no_stop:
        argv.append("--no-stop")
    for key in args.trusted_key or ():
        argv += ["--trusted-key", str(Path(key).resolve())]
    say("generating on the emulated Raspberry Pi (qemu-aarch64, Cortex-A72; times under qemu mean nothing)")
    proc = emulate.run_module(argv, timeout=None)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        return proc.returncode
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    if args.json:
        result["text"] = tokenizer.decode(result["tokens"]) if tokenizer.available else None
        print(json.dumps(result))
        return 0
    print(tokenizer.decode(result["tokens"]) if tokenizer.available else " ".join(map(str, result["tokens"])))
    steps = result["step_seconds"]
    print(f"{len(ids)} prompt tokens, {len(result['tokens'])} generated ({result['stopped']}); under qemu: time to "
          f"first token {result['time_to_first_token'] * 1e3:.0f} ms, decode "
          f"{len(steps) / max(sum(steps), 1e-9):.3f} tokens/s", file=sys.stderr)
    return 0


def cmd_run(args) -> int:
    if args.emulate:
        from sliver.tools.emulator import emulate

        emulate.ensure_ready()
        argv = ["run", str(Path(args.artifact).resolve())]
        if args.verify:
            argv.append("--verify")
        if args.inputs:
            argv += ["--inputs", str(Path(args.inputs).resolve())]
        if args.output:
            argv += ["--output", str(Path(args.output).resolve())]
        if args.repeat:
            argv += ["--repeat", str(args.repeat)]
        if args.threads is not None:
            argv += ["--threads", str(args.threads)]
        for key in args.trusted_key or ():
            argv += ["--trusted-key", str(Path(key).resolve())]
        for tol in ("rtol", "atol"):
            if getattr(args, tol) is not None:
                argv += [f"--{tol}", repr(getattr(args, tol))]
        say("running on the emulated Raspberry Pi (qemu-aarch64, Cortex-A72)")
        proc = emulate.run_module(argv)
        sys.stdout.write(proc.stdout)
        sys.stderr.write(proc.stderr)
        return proc.returncode
    return runtime_cli.run(args)


def cmd_prune(args) -> int:
    import json

    from sliver.api import optimize
    from sliver.ir.io import save_module
    from sliver.passes.manager import make_pass

    masks = None
    if args.masks:
        try:
            masks = json.loads(Path(args.masks).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise SliverError(f"--masks {args.masks}: cannot read a JSON object of layer -> kept channels ({e})")
    module, inputs, _ = _trace(args.model)
    optimize(module, "fold-batchnorm,const-fold,cse,dce")
    prune = make_pass("prune", method=args.method, amount=args.amount, scope=args.scope, side=args.side,
                      constrained=args.constrained, reorder=not args.no_reorder, holes=args.holes, masks=masks)
    (record,) = optimize(module, [prune])
    sys.stdout.write(record.notes["text"])
    if args.report:
        from sliver.common.files import atomic_write

        data = {k: v for k, v in record.notes.items() if k not in ("report", "text")} | record.notes["report"]
        atomic_write(args.report, lambda f: f.write(json.dumps(data, indent=2).encode()))
        say(f"wrote {args.report}")
    if args.output:
        save_module(module, args.output)
        say(f"wrote {args.output}")
    if args.torch:
        _save_torch(module, inputs, args.torch)
    return 0


def _save_torch(module, inputs, path: str) -> None:
    """``sliver prune --torch``: the pruned module as a torch module, to fine-tune.  A
    ``.pt2`` file is a ``torch.export.save``d program (``sliver lower FILE.pt2`` reads it);
    anything else is ``torch.save`` of the ``nn.Module`` (``torch.load(path,
    weights_only=False)`` with sliver installed)."""
    import torch

    from sliver.common.files import atomic_write
    from sliver.passes.prune import to_torch

    model = to_torch(module)
    if path.endswith(".pt2"):
        program = torch.export.export(model.eval(), tuple(torch.as_tensor(x) for x in inputs))
        atomic_write(path, lambda f: torch.export.save(program, f))
    else:
        atomic_write(path, lambda f: torch.save(model, f))
    say(f"wrote {path} (a torch module with the pruned weights: fine-tune it, then `sliver lower` it)")


def cmd_tune(args) -> int:
    import json

    from sliver.backends.tvm import tuning

    target = _target(args.target)
    if not (args.model or args.import_file or args.export):
        raise SliverError("sliver tune needs a MODEL to tune, or --import FILE / --export FILE")
    if args.import_file:
        db, added = tuning.import_file(args.import_file)
        say(f"imported {added} new record(s) from {args.import_file} into {db.dir}")
    if args.model:
        budget = tuning.Budget.parse(args.trials, args.time_budget)  # bad budgets fail before any work
        rpc = None
        if args.rpc:
            from sliver.common.rpcauth import load_secret

            secret = load_secret(args.secret_file) if args.secret_file else None
            rpc = tuning.RPC(args.rpc, args.key, secret=secret)
        if args.key and not args.rpc:
            raise SliverError("--key names a device behind an RPC tracker: give --rpc HOST:PORT as well")
        tuning.check_measurable(target, rpc)
        from sliver.api import optimize

        module, inputs, model = _trace(args.model)
        optimize(module, args.passes)
        report = tuning.tune(module, target, budget, rpc=rpc, progress=tuning.Progress(say=say))
        if args.json:
            Path(args.json).write_text(json.dumps(dataclasses_asdict(report), indent=2))
            say(f"wrote {args.json}")
        if args.output:
            from sliver.api import lower

            art = lower(model, inputs, target, passes=args.passes, progress=say)
            path = art.save(args.output)
            tuned = art.manifest.tuning.tuned
            say(f"wrote {path} (target {art.target}; {len(tuned)} of {art.manifest.tuning.kernels} "
                 "kernels use tuned schedules)")
    elif args.trials is not None or args.time_budget is not None or args.output:
        raise SliverError("--trials, --time-budget and -o need a MODEL to tune")
    if args.export:
        path = tuning.TuningDatabase(target).export(args.export)
        say(f"wrote {path}")
    return 0


def dataclasses_asdict(obj):
    import dataclasses

    return dataclasses.asdict(obj)


def cmd_device_tracker(args) -> int:
    import time

    from sliver.backends.tvm.tuning import start_tracker

    from sliver.runtime.serve import listen_host

    host = listen_host(args.host, "RPC tracker", "anyone who reaches it can list and register devices (the "
                       "devices' servers still refuse sessions without the shared secret)")
    tracker = start_tracker(host, args.port, args.port + 9, silent=False)
    say(f"RPC tracker on {tracker.host}:{tracker.port}; devices register with "
         f"`sliver device serve --tracker HOST:{tracker.port} --key pi`; Ctrl-C stops it")
    try:
        while True:
            time.sleep(3600)
    finally:
        tracker.terminate()


#: commands with a parser of their own: `sliver outliers ...` is `python -m sliver.tools.outliers ...`
PASSTHROUGH = {"outliers": "sliver.tools.outliers"}


def cmd_passes(args) -> int:
    import dataclasses

    from sliver.passes.manager import all_passes

    passes = all_passes()
    width = max(map(len, passes)) + 1
    for name, cls in passes.items():
        opts = ", ".join(f"{f.name}={f.default}" for f in dataclasses.fields(cls) if f.repr)  # repr=False: API data
        doc = (cls.__doc__ or "").strip().splitlines()[0]
        print(f"{name:<{width}} {doc}" + (f"  [options: {opts}]" if opts else ""))
    return 0


def cmd_ops(args) -> int:
    from sliver.ir.ops import all_ops
    from sliver.frontend import supported_ops

    for name, decl in all_ops().items():
        print(f"{name:<20} ({', '.join(decl.operands)})  {decl.doc}")
    if args.aten:
        print("\naten operators the tracer translates:")
        for name in supported_ops():
            print(f"  {name}")
    return 0


def cmd_demo(args) -> int:
    from sliver.tools.demo import main as demo

    return demo(emulate=not args.no_emulate, out_dir=args.out)


def _add_ir_debug_flags(p):
    from sliver.api import DEFAULT_PIPELINE

    p.add_argument("--passes", default=DEFAULT_PIPELINE,
                   help=f"pass pipeline (default {DEFAULT_PIPELINE}; see `sliver passes`)")
    p.add_argument("--print-after-all", action="store_true", help="print the IR after every pass")
    p.add_argument("--print-after", action="append", metavar="PASS", help="print the IR after this pass")
    p.add_argument("--print-after-change", action="store_true", help="print the IR after passes that change it")
    p.add_argument("--dump-dir", metavar="DIR", help="write the IR before and after each pass to numbered files")
    p.add_argument("--timing", action="store_true", help="print a table of pass times and op counts")
    p.add_argument("--drift", action="store_true", help="measure output drift vs the input after each pass")
    p.add_argument("--no-verify", action="store_true", help="skip the IR verifier between passes")


DESCRIPTION = "sliver compiles a trained PyTorch model into one .sliver file that runs on a Raspberry Pi."
EPILOG = """\
examples:
  sliver lower model.py:build --target arm64 -o model.sliver
  sliver run model.sliver --verify [--emulate]
  sliver inspect model.sliver

MODEL is file.py:function (the function returns (model, example_inputs)), a program
saved with torch.export.save (file.pt2), or sliver IR (file.sir, params in file.npz).
`sliver COMMAND --help` describes each command."""


def target_help(default: str | None = "x86_64") -> str:
    """--target's help, from the target table itself (every name and alias it accepts)."""
    from sliver.backends.tvm.targets import ALIASES, NAMES

    what = {"x86_64": "this machine's exact CPU", "arm64": "Raspberry Pi 4, Cortex-A72",
            "rpi4": "the same as arm64", "rpi5": "Raspberry Pi 5, Cortex-A76"}
    parts = []
    levels = [n for n in NAMES if n.startswith("x86-64-v")]
    for name in NAMES:
        if name in levels:
            if name == levels[0]:
                parts.append(f"{', '.join(levels)} (any x86-64 CPU of that level)")
            continue
        aliases = [a for a, n in ALIASES.items() if n == name]
        also = f"also {', '.join(aliases)}" if aliases else ""
        detail = "; ".join(x for x in (what.get(name, ""), also) if x)
        parts.append(f"{name} ({detail})" if detail else name)
    text = ", ".join(parts) + " or a TVM target dict as JSON"
    return text + (f" (default {default})" if default else "")


def build_parser() -> argparse.ArgumentParser:
    import sliver

    parser = Parser(prog="sliver", description=DESCRIPTION, epilog=EPILOG,
                    formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"sliver {sliver.__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("trace", help="trace a model into sliver IR")
    p.add_argument("model", help="file.py:function, file.pt2 or file.sir")
    p.add_argument("--check", action="store_true", help="only list unsupported operators (exit 1 if any)")
    p.add_argument("-o", "--output", help="write IR here (params go beside it as .npz)")
    p.set_defaults(func=cmd_trace)

    p = sub.add_parser("opt", help="run passes over a model's IR")
    p.add_argument("model", help="file.py:function, file.pt2 or file.sir")
    p.add_argument("-o", "--output", help="write the optimized IR here")
    _add_ir_debug_flags(p)
    p.set_defaults(func=cmd_opt)

    p = sub.add_parser("lower", help="compile a model into a .sliver artifact")
    p.add_argument("model", help="file.py:function, file.pt2 or file.sir")
    p.add_argument("-t", "--target", default="x86_64", help=target_help())
    p.add_argument("-o", "--output", default="model.sliver", help="artifact path (default model.sliver)")
    p.add_argument("--output-names", metavar="A,B", help="name the artifact's outputs (default: after the model's "
                   "returned structure: output, or output_0, output_1, ..., or a returned dict's keys)")
    p.add_argument("--no-winograd", action="store_true", help="compile every conv directly (no Winograd 3x3 convs)")
    p.add_argument("--quantize", choices=["int8"], help="post-training int8 (the quantize-static pass; options such "
                   "as method=mse go in --passes '...,quantize-static{method=mse},...')")
    p.add_argument("--calibration", metavar="DATA", help="calibration data for --quantize: an .npz with one array per "
                   "input (a stack [S, ...] of samples) or a folder of .npy files (one sample each)")
    p.add_argument("--generate", action="store_true", help="a generating artifact of a causal LM (prefill and decode "
                   "over a KV cache, tokenizer inside; `sliver generate`): MODEL's function returns (model, tokenizer)")
    p.add_argument("--max-len", type=int, metavar="N", help="with --generate: KV cache positions, prompt plus "
                   "generated tokens (default 512)")
    _add_ir_debug_flags(p)
    p.set_defaults(func=cmd_lower)

    from sliver.api import DEFAULT_PIPELINE

    p = sub.add_parser("tune", help="autotune a model's kernels with MetaSchedule (resumable, cached per target)")
    p.add_argument("model", nargs="?", help="file.py:function, file.pt2 or file.sir")
    p.add_argument("-t", "--target", default="x86_64", help=target_help())
    p.add_argument("--trials", metavar="N", help="search trials over the model's kernels (those already in the "
                   "database count: rerunning resumes)")
    p.add_argument("--time-budget", metavar="T", help="tune for this long instead, e.g. 90s, 10m, 1h30m")
    p.add_argument("--rpc", metavar="HOST:PORT", help="measure on the device registered with this RPC tracker")
    p.add_argument("--key", help="the device's key at the tracker (sliver device serve --key)")
    p.add_argument("--secret-file", metavar="FILE", help="the device's shared RPC secret (default: the "
                   "SLIVER_RPC_SECRET environment variable); needed with --rpc")
    p.add_argument("-o", "--output", help="then lower the model with the tuned schedules into this artifact")
    p.add_argument("--export", metavar="FILE", help="write the target's tuning database to FILE")
    p.add_argument("--import", dest="import_file", metavar="FILE", help="merge an exported database first")
    p.add_argument("--passes", default=DEFAULT_PIPELINE, help=f"pass pipeline (default {DEFAULT_PIPELINE})")
    p.add_argument("--json", metavar="FILE", help="write the tuning report as JSON")
    p.set_defaults(func=cmd_tune)

    p = sub.add_parser("device", help="serve this machine (a Pi) to `sliver tune --rpc`, or run a tracker")
    dsub = p.add_subparsers(dest="device_command", required=True, metavar="COMMAND")
    d = dsub.add_parser("serve", help=runtime_cli.SERVE_HELP)
    runtime_cli.add_serve_arguments(d)
    d.set_defaults(func=runtime_cli.serve)
    d = dsub.add_parser("tracker", help="a TVM RPC tracker that devices register with",
                        description="The tracker only matches tuners to devices by key; it runs no code and "
                        "authenticates nobody (the devices' servers check the shared secret).")
    d.add_argument("--host", default=None, help="address to listen on (default 127.0.0.1; another address, "
                   "e.g. 0.0.0.0 for devices on the network, prints a warning)")
    d.add_argument("--port", type=runtime_cli.port, default=9190,
                   help="port (default 9190; the next free one up to +9)")
    d.set_defaults(func=cmd_device_tracker)

    p = sub.add_parser("prune", help="prune channels and print a per-layer report")
    p.add_argument("model", help="file.py:function, file.pt2 or file.sir")
    p.add_argument("--method", default="l2", choices=["l1", "l2", "fpgm"], help="channel importance (default l2)")
    p.add_argument("--amount", type=float, default=0.3, help="fraction of channels to drop (default 0.3)")
    p.add_argument("--side", default="input", choices=["input", "output"],
                   help="mask each layer's input channels (default) or its output channels")
    p.add_argument("--scope", default="layer", choices=["layer", "global"], help="rank channels per layer or globally")
    p.add_argument("--constrained", action="store_true", help="drop whole coupled channel groups (no gathers)")
    p.add_argument("--no-reorder", action="store_true", help="keep natural channel order (gathers instead of views)")
    p.add_argument("--holes", default="gather", choices=["gather", "zero"],
                   help="a layer whose channels are not one run: gather them (a copy per inference, default) or "
                        "read the run around them with zero weights in between (no copy, more MACs)")
    p.add_argument("--masks", metavar="JSON", help="explicit masks: {layer: [kept input (or --side output) channels]}")
    p.add_argument("--report", metavar="JSON", help="write masks and the report as JSON")
    p.add_argument("-o", "--output", help="write the pruned IR here")
    p.add_argument("--torch", metavar="FILE", help="write the pruned model as a torch module to fine-tune: FILE.pt "
                   "(torch.save of an nn.Module) or FILE.pt2 (torch.export.save; `sliver lower FILE.pt2` reads it)")
    p.set_defaults(func=cmd_prune)

    p = sub.add_parser("generate", help="generate text with a generating artifact, streaming it (here, or on the "
                                        "emulated Pi)")
    runtime_cli.add_generate_arguments(p)
    p.add_argument("--emulate", action="store_true", help="run on the emulated Raspberry Pi (arm64 artifacts)")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("run", help="run an artifact (here, or on the emulated Pi)")
    runtime_cli.add_run_arguments(p)
    p.add_argument("--emulate", action="store_true", help="run on the emulated Raspberry Pi (arm64 artifacts)")
    p.set_defaults(func=cmd_run)

    from sliver.tools import allocate as _allocate
    from sliver.tools import bench as _bench
    from sliver.tools import bundle as _bundle
    from sliver.tools import explain as _explain

    # commands whose arguments and body live in their own module: (name, help, add arguments, run)
    for name, help_, add_arguments, func in (
        ("inspect", "show an artifact's manifest", runtime_cli.add_inspect_arguments, runtime_cli.inspect),
        ("sign", "sign an artifact with an ed25519 key (`sliver run --trusted-key` checks it)",
         runtime_cli.add_sign_arguments, runtime_cli.sign),
        ("keygen", "make an ed25519 key pair for signing artifacts", runtime_cli.add_keygen_arguments,
         runtime_cli.keygen),
        ("explain", "a per-layer report of what each pass did, with latency and drift", _explain.add_arguments,
         _explain.run),
        ("bundle", "a folder with the artifact and exactly what a device needs to run it (Python 3 + numpy)",
         _bundle.add_arguments, _bundle.run),
        ("bench", "an artifact's latency (or executed instructions on the emulated Pi), per layer with --per-layer",
         _bench.add_arguments, _bench.run),
        ("allocate", "mixed-precision bit widths per layer from Hessian sensitivity and size or measured cost",
         _allocate.add_arguments, _allocate.run),
    ):
        p = sub.add_parser(name, help=help_)
        add_arguments(p)
        p.set_defaults(func=func)

    sub.add_parser("outliers", help="find super weights and super activations (see outliers --help)")

    p = sub.add_parser("passes", help="list the passes")
    p.set_defaults(func=cmd_passes)
    p = sub.add_parser("ops", help="list the IR's ops")
    p.add_argument("--aten", action="store_true", help="also list the aten operators the tracer supports")
    p.set_defaults(func=cmd_ops)

    p = sub.add_parser("demo", help="lower the bundled example for x86_64 and arm64 and run both")
    p.add_argument("--no-emulate", action="store_true", help="skip the emulated Raspberry Pi run")
    p.add_argument("--out", default="out", help="where to write the artifacts (default ./out)")
    p.set_defaults(func=cmd_demo)

    return parser


#: the commands that trace, optimize or compile (the rest run artifacts: runtime only)
COMPILER_COMMANDS = {"trace", "opt", "lower", "tune", "prune", "allocate", "passes", "ops", "demo"}


def _needs_compiler(args) -> bool:
    """Whether the command needs torch and the rest of the compiler (``explain`` only
    when given a MODEL rather than an artifact)."""
    if args.command == "explain":
        return not str(args.target_file).endswith(".sliver")
    return args.command in COMPILER_COMMANDS


#: options that name a file a command writes
OUTPUT_FILES = {"output": "-o/--output", "torch": "--torch", "report": "--report", "json": "--json", "html": "--html",
                "artifact_out": "--artifact-out", "export": "--export"}


def _check_output_files(args) -> None:
    """A file to write must not be an existing folder: found before any work is done."""
    for attr, flag in OUTPUT_FILES.items():
        value = getattr(args, attr, None)
        if isinstance(value, str) and Path(value).is_dir():
            raise UsageError(f"{flag} {value} is a folder; give the path of the file to write")


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in PASSTHROUGH:
        import importlib

        try:
            from sliver.api import require_compiler

            require_compiler(f"sliver {argv[0]}")
            return importlib.import_module(PASSTHROUGH[argv[0]]).main(argv[1:])
        except SliverError as e:
            print(f"sliver: error: {e}", file=sys.stderr)
            return 2
    args = build_parser().parse_args(argv)
    try:
        if _needs_compiler(args):
            from sliver.api import require_compiler

            require_compiler(f"sliver {args.command}")
        _check_output_files(args)
        return args.func(args)
    except SliverError as e:
        print(f"sliver: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        if e.filename is None:  # not about a file the user named: a bug, keep its traceback
            raise
        print(f"sliver: error: {e.filename}: {e.strerror or e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("sliver: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
