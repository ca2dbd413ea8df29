"""`run` and `inspect`: the deploy-side commands.

They need only numpy and the TVM runtime, so the same code serves ``sliver run``
on a workstation and ``python -m sliver.runtime run`` on a Raspberry Pi.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import numpy as np

from sliver.common.errors import InputError, SliverError


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("artifact", help="a .sliver file")
    p.add_argument("--verify", action="store_true", help="run the golden inputs and compare with the golden outputs")
    p.add_argument("--inputs", metavar="NPZ", help="inputs as an .npz (arrays in input order, or by input name)")
    p.add_argument("--output", metavar="NPZ", help="write the outputs to this .npz")
    p.add_argument("--repeat", type=int, default=0, metavar="N", help="also time N runs and print the median")
    p.add_argument("--trusted-key", action="append", metavar="PUB",
                   help="refuse the artifact unless it is signed by this public key (`sliver keygen`; repeatable). "
                        "An artifact is executable code: without a trusted key, only run artifacts you built")
    p.add_argument("--threads", type=int, metavar="N", help="TVM worker threads per call (default: TVM's, "
                                                            "TVM_NUM_THREADS or the number of physical cores)")
    p.add_argument("--rtol", type=float, metavar="X", help="--verify's relative tolerance (default: the artifact's, "
                                                           "at most 0.1)")
    p.add_argument("--atol", type=float, metavar="X", help="--verify's absolute tolerance, relative to the largest "
                                                           "output (default: the artifact's, at most 0.1)")


def add_generate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("artifact", help="a generating .sliver file (sliver.lower_llm, `sliver lower --generate`)")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--prompt", help="the prompt text (tokenized with the artifact's tokenizer)")
    what.add_argument("--prompt-ids", metavar="IDS", help="the prompt as token ids, comma-separated (no tokenizer "
                                                          "needed)")
    p.add_argument("--max-new-tokens", type=int, default=64, metavar="N", help="at most N new tokens (default 64)")
    p.add_argument("--temperature", type=float, default=0.0, metavar="T", help="0 (the default): greedy; > 0: sample")
    p.add_argument("--top-k", type=int, metavar="K", help="sample among the K most likely tokens only")
    p.add_argument("--top-p", type=float, metavar="P", help="sample among the most likely tokens whose probability "
                                                            "reaches P only")
    p.add_argument("--seed", type=int, metavar="S", help="the sampling seed (the same seed gives the same text)")
    p.add_argument("--no-stop", action="store_true", help="do not stop at an end-of-sequence token")
    p.add_argument("--json", action="store_true", help="print one JSON object (tokens, text, timings) instead of "
                                                       "streaming the text")
    p.add_argument("--trusted-key", action="append", metavar="PUB",
                   help="refuse the artifact unless it is signed by this public key (repeatable)")
    p.add_argument("--threads", type=int, metavar="N", help="TVM worker threads per step (default: TVM's)")


def _prompt_ids(text: str) -> list[int]:
    try:
        return [int(t) for t in text.replace(" ", "").split(",") if t]
    except ValueError:
        raise InputError(f"--prompt-ids {text!r}: give token ids as comma-separated whole numbers (1,2,3)") from None


def generate(args) -> int:
    """Generate from a prompt, streaming the text, then print the time to first token
    and the decode speed (to stderr, so that stdout is the text alone)."""
    from sliver.runtime.artifact import load

    model = load(args.artifact, trusted_keys=args.trusted_key, threads=args.threads)
    prompt = args.prompt if args.prompt is not None else _prompt_ids(args.prompt_ids)
    kw = dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
              top_p=args.top_p, seed=args.seed, stop_at_eos=not args.no_stop)
    if args.json:
        g = model.generate(prompt, **kw)
        print(json.dumps({"prompt_tokens": g.prompt_tokens, "tokens": g.tokens, "text": g.text,
                          "stopped": g.stopped, "time_to_first_token": g.time_to_first_token,
                          "decode_seconds": g.decode_seconds, "step_seconds": g.step_seconds}))
        return 0

    def show(piece: str) -> None:
        sys.stdout.write(piece)
        sys.stdout.flush()

    g = model.generate(prompt, callback=show, **kw)
    sys.stdout.write("\n")
    speed = g.decode_tokens_per_s
    print(f"{len(g.prompt_tokens)} prompt tokens, {len(g.tokens)} generated ({g.stopped}); time to first token "
          f"{g.time_to_first_token * 1e3:.1f} ms, decode {speed:.2f} tokens/s", file=sys.stderr)
    return 0


def add_sign_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("artifact", help="a .sliver file")
    p.add_argument("--key", required=True, metavar="KEY", help="the ed25519 private key (from `sliver keygen`)")
    p.add_argument("-o", "--output", metavar="FILE", help="write the signed artifact here (default: in place)")


def add_keygen_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("key", help="write the private key here (mode 0600) and the public key to KEY.pub")


def add_inspect_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("artifact", help="a .sliver file")
    p.add_argument("--json", action="store_true", help="print the whole manifest as JSON")


SERVE_HELP = "TVM RPC server for `sliver tune --rpc` (runtime only); it runs the code its clients send"
SERVE_EPILOG = """\
An RPC server runs the code it is sent: a tuner uploads shared libraries and this
server loads and runs them as your user. So it listens on 127.0.0.1 unless --host
names another address (it warns then), and it serves only clients that prove they
hold the shared secret: set SLIVER_RPC_SECRET (or --secret-file FILE) to the same
value here and where you run `sliver tune --rpc`, e.g. from
  python3 -c "import secrets; print(secrets.token_hex(16))"
Files a session uploads or downloads stay in its own work folder. The connection is
not encrypted: on a network you do not trust, tunnel it (ssh -L)."""


def port(text: str) -> int:
    """An argparse type: a TCP port a server can listen on, with room for the nine after
    it (tried in turn when it is busy)."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 1 <= n <= 65535 - 9:
        raise argparse.ArgumentTypeError(f"{n} is not a port from 1 to {65535 - 9} (the next nine are tried "
                                         "when it is busy)")
    return n


def add_serve_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = SERVE_EPILOG
    p.add_argument("--tracker", metavar="HOST:PORT", help="register with this RPC tracker (else serve directly)")
    p.add_argument("--key", default="pi", help="the key tuners ask the tracker for (default pi); it matches "
                   "devices to tuners, it is not a password")
    p.add_argument("--host", default=None, help="address to listen on (default 127.0.0.1; another address, "
                   "e.g. 0.0.0.0 for a tuner on another machine, prints a warning)")
    p.add_argument("--port", type=port, default=9090, help="port (default 9090; the next free one up to +9)")
    p.add_argument("--custom-addr", help="the address the tracker hands out for this device (behind NAT)")
    p.add_argument("--secret-file", metavar="FILE", help="read the shared secret from FILE (default: the "
                   "SLIVER_RPC_SECRET environment variable); required")
    p.add_argument("--session-timeout", type=float, default=600, metavar="S",
                   help="end any session after S seconds (default 600)")


def serve(args) -> int:
    from sliver.runtime.serve import serve as _serve

    _serve(args.host, args.port, args.key, args.tracker, custom_addr=args.custom_addr, secret_file=args.secret_file,
           session_timeout=args.session_timeout)
    return 0


def _open_npz(path: str):
    """``np.load`` of an .npz the user named, with every way it can be wrong an InputError
    (pickled object arrays are refused: loading them would run code)."""
    import zipfile

    try:
        z = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise InputError(f"--inputs {path}: no such file") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        why = "pickled Python objects, or not a numpy file at all" if "pickle" in str(e) else str(e)
        raise InputError(f"--inputs {path}: not an .npz of arrays ({why}); write one with numpy.savez") from None
    if not isinstance(z, np.lib.npyio.NpzFile):
        raise InputError(f"--inputs {path}: a single .npy array, not an .npz; write the inputs with numpy.savez")
    return z


def _read_inputs(model, path: str) -> list[np.ndarray]:
    import zipfile

    with _open_npz(path) as z:
        names = [spec.name for spec in model.inputs]
        keys = names if all(n in z.files for n in names) else list(z.files)
        if len(keys) != len(names):
            raise InputError(f"{path} holds {len(z.files)} array(s) ({', '.join(z.files)}); the model takes "
                             f"{len(names)} input(s): {', '.join(names)}")
        try:
            return [z[k] for k in keys]
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
            raise InputError(f"--inputs {path}: an array cannot be read ({e})") from None


def sign(args) -> int:
    from sliver.runtime.artifact import sign as _sign

    path = _sign(args.artifact, args.key, output=args.output)
    print(f"signed {path}")
    return 0


def keygen(args) -> int:
    from sliver.runtime.signing import generate_key, load_public_key

    private, public = generate_key(args.key)
    print(f"wrote {private} (private: keep it secret) and {public} (public: copy it to devices; "
          f"fingerprint {load_public_key(public).fingerprint})")
    return 0


def run(args) -> int:
    from sliver.runtime.artifact import load

    if args.repeat < 0:
        raise InputError(f"--repeat {args.repeat}: give a number of timed runs >= 0")
    model = load(args.artifact, trusted_keys=args.trusted_key, threads=args.threads)
    if args.verify:
        reports = model.verify(rtol=args.rtol, atol=args.atol)
        for r in reports:
            status = "ok" if r["ok"] else "MISMATCH"
            print(f"{r['output']}: max abs err {r['max_abs_err']:.3g}, max rel err {r['max_rel_err']:.3g}  {status}")
        ok = all(r["ok"] for r in reports)
        print(f"verify: {'passed' if ok else 'FAILED'} ({model.manifest.target.name} artifact on "
              f"{_machine()})")
        if not ok:
            return 1
    inputs = _read_inputs(model, args.inputs) if args.inputs else model.golden_inputs()
    outputs = model.run(*inputs)
    if args.output:
        np.savez(args.output, **{spec.name: y for spec, y in zip(model.outputs, outputs)})
        print(f"wrote {len(outputs)} output(s) to {args.output}")
    elif not args.verify:
        for spec, y in zip(model.outputs, outputs):
            flat = y.reshape(-1)
            head = np.array2string(flat[:8], precision=5, separator=", ")
            print(f"{spec.name}: {y.dtype}{list(y.shape)} {head}{' …' if flat.size > 8 else ''}")
    if args.repeat:
        times = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            model.run(*inputs)
            times.append(time.perf_counter() - t0)
        print(f"latency over {args.repeat} runs: median {statistics.median(times) * 1e3:.3f} ms, "
              f"min {min(times) * 1e3:.3f} ms, max {max(times) * 1e3:.3f} ms")
    return 0


def _machine() -> str:
    from sliver.common.platform import host_arch

    return host_arch()


def inspect(args) -> int:
    from sliver.runtime.artifact import read

    art = read(args.artifact)
    m = art.manifest
    if args.json:
        print(m.dumps())
        return 0
    print(f"{args.artifact}: model @{m.model}")
    print(f"  target    {m.target.name} ({m.target.arch}) {json.dumps(m.target.tvm)}")
    print(f"  built by  sliver {m.sliver_version}, TVM {m.tvm_version}, {m.created}")
    print(f"  pipeline  {m.pipeline or '(none)'}")
    for kind in ("inputs", "outputs"):
        for spec in getattr(m, kind):
            print(f"  {kind[:-1]:<9} {spec.name}: {spec.dtype}[{', '.join(map(str, spec.shape))}]")
    for d in m.dims:
        print(f"  dim       {d.name} in [{d.min}, {d.max}] (dynamic: any size in range)")
    if m.llm is not None:
        tok = f"tokenizer.json {m.llm.tokenizer.bytes:,} bytes" if m.llm.tokenizer else "no tokenizer"
        print(f"  generates KV cache of {m.llm.max_len} positions ({m.llm.layers} layers, {m.llm.kv_heads} kv heads "
              f"x {m.llm.head_dim}), vocabulary {m.llm.vocab}, eos {m.llm.eos}, {tok}")
    lib = m.library
    print(f"  library   {lib.bytes:,} bytes, sha256 {lib.sha256[:16]}… (checked)")
    print(f"  params    {m.params.count} tensors, {m.params.bytes:,} bytes")
    return 0


def main(argv=None) -> int:
    from importlib.metadata import PackageNotFoundError, version

    try:
        ours = version("sliver")
    except PackageNotFoundError:  # a source tree on sys.path, not installed
        ours = "(not installed)"
    parser = argparse.ArgumentParser(prog="python -m sliver.runtime", description="run sliver artifacts")
    parser.add_argument("--version", action="version", version=f"sliver {ours}")
    sub = parser.add_subparsers(dest="command", required=True)
    add_run_arguments(sub.add_parser("run", help="run an artifact"))
    add_inspect_arguments(sub.add_parser("inspect", help="show an artifact's manifest"))
    add_serve_arguments(sub.add_parser("serve", help=SERVE_HELP))
    add_sign_arguments(sub.add_parser("sign", help="sign an artifact with an ed25519 key"))
    add_generate_arguments(sub.add_parser("generate", help="generate text with a generating artifact"))
    add_keygen_arguments(sub.add_parser("keygen", help="make an ed25519 key pair for signing artifacts"))
    args = parser.parse_args(argv)
    try:
        return {"run": run, "inspect": inspect, "serve": serve, "sign": sign, "keygen": keygen,
                "generate": generate}[args.command](args)
    except SliverError as e:
        print(f"sliver: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
