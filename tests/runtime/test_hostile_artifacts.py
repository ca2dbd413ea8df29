"""An adversarial suite: hundreds of damaged, edited and booby-trapped artifacts, and
dozens of bad run-time inputs.  Every case must end in a named sliver error or a
correct result: no crash, no hang, no other exception type, no silent wrong result.
The counts are printed (run with ``-s`` to see them).

What "correct" means: an artifact that is read without error must carry the original
library (its sha256 is checked, so any other library is a failure, counted before it
could be loaded), and loading and running it must give the original artifact's
outputs, bit for bit.  Run-time inputs are compared with the model's output on the
same values passed as a fresh contiguous float32 array.  The run-time cases run in a
subprocess, so that a crash would be counted rather than kill pytest.
"""

from __future__ import annotations

import collections
import copy
import hashlib
import io
import json
import os
import random
import subprocess
import sys
import time
import traceback
import zipfile
from pathlib import Path

import numpy as np
import pytest

from sliver.common.errors import SliverError
from sliver.runtime.artifact import read
from sliver.runtime.signing import generate_key

ENTRY_NAMES = ("manifest.json", "lib.so", "golden.npz")


def _zip(items, compression=zipfile.ZIP_STORED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as z:
        for name, data in items:
            z.writestr(name, data)
    return buf.getvalue()


class Outcome(collections.Counter):
    """Counts of how the cases ended, with the first few failures kept for the message."""

    def __init__(self):
        super().__init__()
        self.failures: list[str] = []

    def fail(self, kind: str, case: str, detail: str) -> None:
        self[kind] += 1
        if len(self.failures) < 12:
            self.failures.append(f"{kind}: {case}: {detail}")


# --- the artifact mutations --------------------------------------------------------------


def _mutations(original: bytes, entries: dict[str, bytes], rng: random.Random, signature: bytes):
    """(name, bytes of the file, trusted keys or None) for every mutation; ``signature``
    is a valid signature.json of the original manifest."""
    manifest = json.loads(entries["manifest.json"])

    def with_manifest(m, **extra):
        return _zip([("manifest.json", json.dumps(m) if not isinstance(m, bytes) else m),
                     ("lib.so", extra.get("library", entries["lib.so"])),
                     ("golden.npz", extra.get("golden", entries["golden.npz"]))]
                    + ([("signature.json", signature)] if extra.get("signed") else []))

    # truncations, at spread and random lengths (the central directory lives at the end)
    n = len(original)
    cuts = sorted({0, 1, 4, 22, 100, n // 2, n - 1, n - 22, n - 23, n - 100} | {rng.randrange(n) for _ in range(40)})
    for cut in cuts:
        yield f"truncated to {cut}", original[:cut], None
    # byte flips anywhere in the file, no hash updated
    for i in range(80):
        pos = rng.randrange(n)
        data = bytearray(original)
        data[pos] ^= 1 << rng.randrange(8)
        yield f"bit flip at {pos}", bytes(data), None
    # flips in the zip's own structures (headers, central directory), where damage hides best
    with zipfile.ZipFile(io.BytesIO(original)) as z:
        offsets = [i.header_offset for i in z.infolist()]
    cd = original.rfind(b"PK\x01\x02", 0)
    cd_start = original.find(b"PK\x01\x02")
    for i in range(40):
        base = rng.choice(offsets + [cd_start, cd, n - 22])
        pos = min(n - 1, base + rng.randrange(46))
        data = bytearray(original)
        data[pos] = rng.randrange(256)
        yield f"header byte {pos} set", bytes(data), None
    # flips inside golden.npz and lib.so with their sha256 updated (the damage a hash
    # cannot see); a changed library only a signature can refuse, so those run with trusted keys
    for entry, field, keys in (("golden.npz", "golden", None), ("lib.so", "library", "trusted")):
        for i in range(30):
            pos = rng.randrange(len(entries[entry]))
            flipped = bytearray(entries[entry])
            flipped[pos] ^= 1 << rng.randrange(8)
            m = copy.deepcopy(manifest)
            m[field]["sha256"] = hashlib.sha256(flipped).hexdigest()
            yield (f"{entry} flip at {pos}, rehashed", with_manifest(m, signed=keys, **{field: bytes(flipped)}), keys)
    # manifest text flips (there is no hash of the manifest itself)
    text = entries["manifest.json"]
    for i in range(30):
        pos = rng.randrange(len(text))
        t = bytearray(text)
        t[pos] = rng.randrange(256)
        yield f"manifest byte {pos} set", with_manifest(bytes(t)), None
    # structured manifest edits: every field deleted, nulled, or given a value of another type
    junk = [None, 0, -1, 1.5, True, "", "x" * 1000, [], {}, [1, "a", None], {"a": {"b": [{}]}}, 10 ** 30,
            -(10 ** 30)]
    for path in _paths(manifest):
        yield f"delete {path}", with_manifest(_edit(manifest, path, _DELETE)), None
        for v in rng.sample(junk, 3):
            yield f"{path} = {v!r}"[:80], with_manifest(_edit(manifest, path, v)), None
    deep = json.dumps(dict(manifest, passes="DEEP")).replace('"DEEP"', "[" * 5000 + "]" * 5000)
    yield "deeply nested passes", with_manifest(deep.encode()), None
    yield "unknown top-level key", with_manifest(dict(manifest, extra=1)), None
    yield "format version 99", with_manifest(dict(manifest, format_version=99)), None
    yield "format version 0", with_manifest(dict(manifest, format_version=0)), None
    yield "manifest NaN", with_manifest(json.dumps(manifest).replace('"rtol": 0.001', '"rtol": NaN').encode()), None
    yield "manifest is a list", with_manifest(b"[]"), None
    yield "manifest is huge", with_manifest(b" " * (33 << 20) + b"{}"), None
    yield "manifest utf-16", with_manifest(json.dumps(manifest).encode("utf-16")), None
    yield "manifest with BOM", with_manifest(b"\xef\xbb\xbf" + entries["manifest.json"]), None
    yield "manifest with 100k-digit int", with_manifest(json.dumps(manifest).replace(
        '"bytes": ', '"bytes": ' + "9" * 100_000, 1).encode()), None
    # zip tricks
    items = list(entries.items())
    for name in ENTRY_NAMES:
        yield f"duplicate {name}", _zip(items + [(name, entries[name])]), None
        yield f"duplicate {name} first", _zip([(name, b"decoy")] + items), None
        link = zipfile.ZipInfo(name)
        link.external_attr = 0o120777 << 16
        yield f"{name} is a symlink", _zip([(link if k == name else k, "/etc/passwd" if k == name else d)
                                            for k, d in items]), None
        yield f"missing {name}", _zip([(k, d) for k, d in items if k != name]), None
        yield f"{name} as a directory", _zip([(k, d) for k, d in items if k != name] + [(name + "/", b"")]), None
        yield f"{name} upper case", _zip([(k.upper() if k == name else k, d) for k, d in items]), None
        enc = zipfile.ZipInfo(name)
        enc.flag_bits |= 0x1
        yield f"{name} flagged encrypted", _zip([(enc if k == name else k, d) for k, d in items]), None
        yield f"{name} deflated", _zip(items, zipfile.ZIP_DEFLATED), None
    for evil in ("../lib.so", "../../etc/passwd", "/lib.so", "a/../lib.so", "C:\\lib.so", "..\\lib.so", "lib.so\x00x",
                 "./lib.so", "lib.so/", "", "é.so"):
        yield f"entry named {evil!r}", _zip(items + [(zipfile.ZipInfo(evil), b"x")]), None
    yield "empty zip", _zip([]), None
    yield "not a zip", b"hello" * 100, None
    yield "empty file", b"", None
    yield "zip comment", original[:-2] + (20).to_bytes(2, "little") + b"c" * 20, None
    yield "prepended junk", b"#!/bin/sh\nexit 0\n" + original, None
    yield "two archives concatenated", original + original, None
    yield "20 extra entries", _zip(items + [(f"x{i}", b"") for i in range(20)]), None
    yield "outer golden bomb", _bomb(entries, outer=True), None
    yield "inner golden bomb", _bomb(entries, outer=False), None
    for algo in (zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA):
        yield f"compression {algo}", _zip(items, algo), None
    npz_bad = [("pickled object array", {"input_0": np.array([{"a": 1}], dtype=object)}),
               ("big npy header shape", None),
               ("extra array", "extra")]
    for what, arrays in npz_bad:
        yield f"golden: {what}", _golden_variant(entries, manifest, arrays), None


_DELETE = object()


def _paths(manifest) -> list[tuple]:
    """Every field path of the manifest (lists: their first element only)."""
    out = []

    def walk(x, path):
        if isinstance(x, dict):
            for k, v in x.items():
                out.append(path + (k,))
                if path[:1] not in (("passes",),) or len(path) < 3:
                    walk(v, path + (k,))
        elif isinstance(x, list) and x:
            out.append(path + (0,))
            walk(x[0], path + (0,))

    walk(manifest, ())
    return out


def _edit(manifest, path, value):
    m = copy.deepcopy(manifest)
    d = m
    for k in path[:-1]:
        d = d[k]
    if value is _DELETE:
        del d[path[-1]]
    else:
        d[path[-1]] = value
    return m


def _bomb(entries, outer: bool) -> bytes:
    buf = io.BytesIO()
    chunk = bytes(1 << 22)
    if outer:
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as z:
            z.writestr("manifest.json", entries["manifest.json"])
            z.writestr("lib.so", entries["lib.so"])
            with z.open("golden.npz", "w", force_zip64=True) as f:
                for _ in range(64):  # 256 MiB
                    f.write(chunk)
        return buf.getvalue()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as z, \
            z.open("input_0.npy", "w", force_zip64=True) as f:
        for _ in range(16):  # 64 MiB
            f.write(chunk)
    npz = buf.getvalue()
    m = json.loads(entries["manifest.json"])
    m["golden"]["sha256"] = hashlib.sha256(npz).hexdigest()
    return _zip([("manifest.json", json.dumps(m)), ("lib.so", entries["lib.so"]), ("golden.npz", npz)])


def _golden_variant(entries, manifest, arrays) -> bytes:
    with np.load(io.BytesIO(entries["golden.npz"])) as g:
        golden = {k: g[k] for k in g.files}
    buf = io.BytesIO()
    if arrays == "extra":
        np.savez(buf, **golden, extra=np.zeros(3))
    elif arrays is None:  # an .npy header that claims a huge shape over a few bytes
        with zipfile.ZipFile(buf, "w") as z:
            for k, a in golden.items():
                data = io.BytesIO()
                np.lib.format.write_array(data, a)
                raw = data.getvalue()
                if k == "input_0":
                    raw = raw.replace(repr(a.shape).encode(), b"(100000, 100000, 100)")
                z.writestr(k + ".npy", raw)
    else:
        np.savez(buf, **{**golden, **arrays})
    m = copy.deepcopy(manifest)
    m["golden"]["sha256"] = hashlib.sha256(buf.getvalue()).hexdigest()
    return _zip([("manifest.json", json.dumps(m)), ("lib.so", entries["lib.so"]), ("golden.npz", buf.getvalue())])


@pytest.fixture(scope="module")
def signed(example_x86, tmp_path_factory):
    from sliver.runtime.artifact import sign

    d = tmp_path_factory.mktemp("hostile")
    private, public = generate_key(d / "key")
    path = sign(example_x86, private, output=d / "signed.sliver")
    return path, public


def test_artifact_mutations(example_x86, signed, tmp_path):
    original = Path(example_x86).read_bytes()
    with zipfile.ZipFile(example_x86) as z:
        entries = {n: z.read(n) for n in z.namelist()}
    reference = read(example_x86)
    ref_model = reference.load()
    want = ref_model.run(*ref_model.golden_inputs())
    lib_sha = hashlib.sha256(entries["lib.so"]).hexdigest()
    _, public = signed
    outcome = Outcome()
    slowest = (0.0, "")
    path = tmp_path / "case.sliver"
    with zipfile.ZipFile(signed[0]) as z:
        signature = z.read("signature.json")
    cases = list(_mutations(original, entries, random.Random(15), signature))
    for name, data, keys in cases:
        path.write_bytes(data)
        t0 = time.perf_counter()
        # the same bytes given as bytes (sliver.load(data)) must meet exactly the same checks
        try:
            from_bytes = read(data, trusted_keys=[public] if keys else None).library
        except SliverError as e:
            from_bytes = str(e).replace("<bytes>", str(path))
        except Exception as e:  # noqa: BLE001
            from_bytes = None
            outcome.fail("other exception (bytes)", name, f"{type(e).__name__}: {e}"[:200])
        try:
            art = read(path, trusted_keys=[public] if keys else None)
        except SliverError as e:
            outcome["named error"] += 1
            if from_bytes != str(e):
                outcome.fail("bytes checked differently", name, f"{str(e)[:100]} vs {str(from_bytes)[:100]}")
        except Exception as e:  # noqa: BLE001 — exactly what this suite counts
            outcome.fail("other exception", name, f"{type(e).__name__}: {e}"[:200])
        else:
            if from_bytes != art.library:
                outcome.fail("bytes checked differently", name, "read from the file, refused as bytes")
            if hashlib.sha256(art.library).hexdigest() != lib_sha:
                outcome.fail("accepted another library", name, "")
            else:
                try:
                    model = art.load()
                    got = model.run(*[reference.golden[f"input_{i}"] for i in range(len(want))])
                except SliverError:
                    outcome["named error"] += 1
                except Exception as e:  # noqa: BLE001
                    outcome.fail("other exception", name, f"{type(e).__name__}: {e}"[:200])
                else:
                    if all(np.array_equal(g, w) for g, w in zip(got, want)):
                        outcome["correct result"] += 1
                    else:
                        outcome.fail("silent wrong result", name, "")
        took = time.perf_counter() - t0
        if took > slowest[0]:
            slowest = (took, name)
        if took > 5:
            outcome.fail("hang", name, f"{took:.1f} s")
    total = sum(outcome.values())
    print(f"\nartifact mutations: {total} cases: {outcome['named error']} named sliver errors, "
          f"{outcome['correct result']} correct results, {outcome['other exception']} other exceptions, "
          f"{outcome['silent wrong result']} silent wrong results, {outcome['accepted another library']} "
          f"accepted another library, {outcome['hang']} hangs; slowest {slowest[0] * 1e3:.0f} ms ({slowest[1]})")
    assert total >= 300
    assert outcome["named error"] + outcome["correct result"] == total, "\n".join(outcome.failures)


# --- the run-time inputs ------------------------------------------------------------------


def _input_cases(shape, dtype):
    """(name, inputs or a callable giving them, expect) with expect "error" (a named
    error), "same" (the output on the same values as a fresh float32 array)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(dtype)
    big = rng.standard_normal([d * 2 for d in shape]).astype(dtype)
    cases = [
        ("no inputs", [], "error"),
        ("two inputs", [x, x], "error"),
        ("five inputs", [x] * 5, "error"),
        ("None", [None], "error"),
        ("a string", ["hello"], "error"),
        ("a dict naming no input", [{"input": x}], "error"),  # {"x": x} is a call by name (test_api.py)
        ("a dict naming an extra input", [{"x": x, "y": x}], "error"),
        ("a dict of a dict", [{"x": {"x": x}}], "error"),
        ("a scalar", [1.0], "error"),
        ("0-d array", [np.float32(1.0)], "error"),
        ("nested list of floats", [x.tolist()], "error"),
        ("object array of floats", [x.astype(object)], "error"),
        ("structured dtype", [np.zeros(shape, dtype=[("a", "f4")])], "error"),
        ("string array", [np.full(shape, "a")], "error"),
        ("byte-swapped float32", [x.astype(">f4")], "error"),
        ("generator", [(v for v in range(3))], "error"),
        ("huge shape, no data", [np.broadcast_to(np.float32(0), (1 << 20, 1 << 20))], "error"),
        ("ragged list", [[[1.0, 2.0], [3.0]]], "error"),
    ]
    for dt in ("float64", "float16", "int32", "int64", "int8", "uint8", "bool", "complex64", "bfloat16"):
        try:
            cases.append((f"dtype {dt}", [x.astype(dt)], "error"))
        except TypeError:
            pass
    for bad in ([], [1], list(shape[:-1]), list(shape) + [1], [1] + list(shape), [0] + list(shape[1:]),
                list(reversed(shape)), [shape[0], shape[1] + 1, *shape[2:]], [2, *shape[1:]],
                [shape[0], shape[1], shape[2] - 1, shape[3]], [shape[0], shape[1], 0, shape[3]]):
        cases.append((f"shape {bad}", [np.zeros(bad, dtype)], "error"))
    slices = tuple(slice(None, None, 2) for _ in shape)
    cases += [
        ("non-contiguous (strided view)", [big[slices]], "same"),
        ("negative strides", [x[..., ::-1]], "same"),
        ("Fortran order", [np.asfortranarray(x)], "same"),
        ("read-only", [_readonly(x)], "same"),
        ("transposed twice", [x.transpose(3, 2, 1, 0).transpose(3, 2, 1, 0)], "same"),
        ("broadcast view", [np.broadcast_to(x[:, :1], shape)], "same"),
        ("unaligned buffer", [_unaligned(x)], "same"),
        ("memory-mapped", "memmap", "same"),
        ("array subclass", [x.view(np.ma.MaskedArray)], "same"),
        ("zeros", [np.zeros(shape, dtype)], "same"),
        ("large finite values", [x * 1e30], "same"),
        ("tiny values", [x * 1e-40], "same"),
        ("+inf everywhere", [np.full(shape, np.inf, dtype)], "same"),
        ("-inf everywhere", [np.full(shape, -np.inf, dtype)], "same"),
        ("NaN everywhere", [np.full(shape, np.nan, dtype)], "same"),
        ("one NaN", [_with(x, np.nan)], "same"),
        ("one inf", [_with(x, np.inf)], "same"),
        ("max float32", [np.full(shape, np.finfo(np.float32).max, dtype)], "same"),
        ("keyword-free call twice", [x], "same"),
    ]
    return cases


def _readonly(x):
    y = x.copy()
    y.setflags(write=False)
    return y


def _unaligned(x):
    raw = np.zeros(x.nbytes + 1, np.uint8)
    y = raw[1:].view(x.dtype).reshape(x.shape)
    y[...] = x
    return y


def _with(x, v):
    y = x.copy()
    y.flat[len(y.flat) // 3] = v
    return y


def run_input_cases(artifact: str, scratch: str) -> dict:
    """Run every input case against ``artifact`` in this process; returns the counts
    (the test calls this in a subprocess)."""
    from sliver.runtime.artifact import load

    model = load(artifact)
    spec = model.inputs[0]
    shape, dtype = spec.shape, np.dtype(spec.numpy_dtype)
    outcome = Outcome()
    for name, inputs, expect in _input_cases(shape, dtype):
        if inputs == "memmap":
            mm = np.memmap(os.path.join(scratch, "x.dat"), dtype=dtype, mode="w+", shape=tuple(shape))
            mm[...] = np.random.default_rng(1).standard_normal(shape)
            inputs = [mm]
        try:
            got = model.run(*inputs)
        except SliverError:
            if expect == "error":
                outcome["named error"] += 1
            else:
                outcome.fail("error where a result was due", name, "")
            continue
        except Exception as e:  # noqa: BLE001
            outcome.fail("other exception", name, f"{type(e).__name__}: {e}"[:200])
            continue
        if expect == "error":
            outcome.fail("silent wrong result", name, "accepted")
            continue
        plain = [np.array(np.asarray(a), dtype=dtype, order="C", copy=True) for a in inputs]
        want = model.run(*plain)
        if all(np.array_equal(g, w, equal_nan=True) for g, w in zip(got, want)):
            outcome["correct result"] += 1
        else:
            outcome.fail("silent wrong result", name, "differs from the contiguous float32 copy")
    return {"counts": dict(outcome), "failures": outcome.failures}


def test_run_time_inputs(example_x86, tmp_path):
    code = ("import json, sys\n"
            f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
            "from test_hostile_artifacts import run_input_cases\n"
            "print('RESULT', json.dumps(run_input_cases(sys.argv[1], sys.argv[2])))\n")
    try:
        proc = subprocess.run([sys.executable, "-c", code, str(example_x86), str(tmp_path)], capture_output=True,
                              text=True, timeout=120, env={**os.environ, "TVM_USE_RUNTIME_LIB": "1"})
    except subprocess.TimeoutExpired:
        pytest.fail("the run-time input cases hung (120 s)")
    assert proc.returncode == 0, f"the input cases crashed the process (exit {proc.returncode}):\n{proc.stderr[-3000:]}"
    line = next(l for l in proc.stdout.splitlines() if l.startswith("RESULT "))
    result = json.loads(line[len("RESULT "):])
    counts = collections.Counter(result["counts"])
    total = sum(counts.values())
    print(f"\nrun-time inputs: {total} cases: {counts['named error']} named sliver errors, "
          f"{counts['correct result']} correct results, {total - counts['named error'] - counts['correct result']} "
          "other outcomes (crashes: 0)")
    assert total >= 50
    assert counts["named error"] + counts["correct result"] == total, "\n".join(result["failures"])
