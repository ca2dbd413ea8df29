"""The typed manifest: written by the compiler, checked field by field on read,
older format versions migrated."""

from __future__ import annotations

import copy
import json
import zipfile

import pytest

import sliver
from sliver.common.errors import ArtifactError, InputError
from sliver.runtime import manifest as mf
from sliver.runtime.artifact import read
from sliver.runtime.manifest import Manifest, parse


@pytest.fixture(scope="module")
def saved(example_x86):
    with zipfile.ZipFile(example_x86) as z:
        return {n: z.read(n) for n in z.namelist()}


@pytest.fixture(scope="module")
def good(saved) -> dict:
    return json.loads(saved["manifest.json"])


def _rewrite(files: dict, dst, manifest) -> None:
    with zipfile.ZipFile(dst, "w") as z:
        for n, d in files.items():
            z.writestr(n, json.dumps(manifest) if n == "manifest.json" else d)


def test_the_compiler_writes_the_current_version_and_it_round_trips(good, example_x86):
    # a fixed-shape artifact is written in the version-2 form (older runtimes read it); read, it is current
    assert good["format"] == "sliver-artifact" and good["format_version"] == 2 and "dims" not in good
    assert mf.FORMAT_VERSION == 4
    m = read(example_x86).manifest
    assert isinstance(m, Manifest) and isinstance(m.inputs[0], mf.TensorSpec)
    assert m.to_json() == good
    assert Manifest.from_json(json.loads(m.dumps())) == m
    assert m.golden.sha256 is not None and len(m.golden.sha256) == 64
    assert m.inputs[0].shape == [1, 3, 32, 32] and m.inputs[0].dtype == "f32"


def test_version_1_is_migrated_on_read(good, saved, tmp_path):
    v1 = copy.deepcopy(good)
    v1["format_version"] = 1
    del v1["golden"]["sha256"]
    del v1["kernels"]
    path = tmp_path / "v1.sliver"
    _rewrite(saved, path, v1)
    art = read(path)
    assert art.manifest.format_version == 4 and art.manifest.kernels == {} and art.manifest.golden.sha256 is None
    assert art.manifest.dims == []
    assert all(r["ok"] for r in art.load().verify())
    # saved again, it is a version-2 artifact with the golden data's hash
    again = tmp_path / "v2.sliver"
    art.save(again)
    assert read(again).manifest.golden.sha256 is not None


def test_a_newer_version_asks_for_an_upgrade(good):
    newer = dict(good, format_version=5)
    with pytest.raises(ArtifactError, match="format_version: version 5 is newer.*upgrade sliver"):
        Manifest.from_json(newer)


def _dynamic(good) -> dict:
    """The example's manifest with a dynamic batch dimension (format version 3)."""
    d = copy.deepcopy(good)
    d["format_version"] = 3
    d["dims"] = [{"name": "batch", "min": 1, "max": 16}]
    d["inputs"][0]["shape"][0] = "batch"
    d["outputs"][0]["shape"][0] = "batch"
    return d


def test_dynamic_dimensions_round_trip_and_bind(good):
    m = Manifest.from_json(_dynamic(good))
    assert m.dims == [mf.DimRange("batch", 1, 16)] and m.inputs[0].shape == ["batch", 3, 32, 32]
    assert m.to_json() == _dynamic(good)
    assert m.bind([(5, 3, 32, 32)]) == {"batch": 5}
    assert m.outputs[0].shape_for({"batch": 5})[0] == 5
    with pytest.raises(InputError, match=r"dimension 0 \(batch\) must be in \[1, 16\], got 17"):
        m.bind([(17, 3, 32, 32)])
    with pytest.raises(InputError, match=r"must have shape \[batch, 3, 32, 32\], got \[2, 3, 32, 31\]"):
        m.bind([(2, 3, 32, 31)])
    # expressions as sliver prints them evaluate
    assert mf.dim_value("12*batch*seq + (seq + -1)//2", {"batch": 2, "seq": 5}) == 122


@pytest.mark.parametrize("edit, match", [
    (lambda d: d["dims"].append({"name": "batch", "min": 1, "max": 4}), "declared twice"),
    (lambda d: d["dims"].__setitem__(0, {"name": "b-1", "min": 1, "max": 4}), "expected an identifier"),
    (lambda d: d["dims"].__setitem__(0, {"name": "batch", "min": 5, "max": 4}), "min ≤ max"),
    (lambda d: d["dims"].__setitem__(0, {"name": "batch", "min": 1, "max": 2**40}), "min ≤ max"),
    (lambda d: d["inputs"][0]["shape"].__setitem__(1, "seq"), "seq, not in dims"),
    (lambda d: d["inputs"][0]["shape"].__setitem__(1, "2*batch"), "an input dimension is a size or a name"),
    (lambda d: d["outputs"][0]["shape"].__setitem__(0, "batch ** 2"), "not a dimension expression"),
    (lambda d: d["outputs"][0]["shape"].__setitem__(0, "(batch)//0"), "not a dimension expression"),
    (lambda d: d["outputs"][0]["shape"].__setitem__(0, "(" * 40 + "batch"), "not a dimension expression"),
    (lambda d: d["outputs"][0]["shape"].__setitem__(0, "batch*" * 60 + "1"), "at most 256"),
    (lambda d: d["outputs"][0]["shape"].__setitem__(0, ""), "expected an integer, got"),
    (lambda d: d["outputs"][0]["shape"].__setitem__(0, 1.5), "expected an integer, got"),
    (lambda d: d["inputs"][0]["shape"].__setitem__(0, 1), "batch is no input's dimension"),
    (lambda d: d.__setitem__("format_version", 2), "dims: not a field of format version 2"),
    (lambda d: d["outputs"][0]["shape"].__setitem__(1, "99999999999*batch"), "may hold more than"),
])
def test_hostile_dynamic_dimensions(good, edit, match):
    d = _dynamic(good)
    edit(d)
    with pytest.raises(ArtifactError, match=match):
        Manifest.from_json(d)


def _set(d, path, value):
    *head, last = path
    for k in head:
        d = d[k]
    if value is _DELETE:
        del d[last]
    else:
        d[last] = value


_DELETE = object()

# (path into the manifest, new value, the field the error must name)
BAD = [
    (("model",), _DELETE, "model: missing"),
    (("target",), _DELETE, "target: missing"),
    (("target", "arch"), _DELETE, "target.arch: missing"),
    (("target", "arch"), "sparc", r"target.arch: expected one of 'x86_64', 'aarch64', 'arm', got 'sparc'"),
    (("target", "arch"), 7, "target.arch: expected one of"),
    (("target", "name"), None, "target.name: expected a string, got null"),
    (("target",), [], "target: expected an object, got a list"),
    (("inputs",), {"x": 1}, "inputs: expected a list, got an object"),
    (("inputs", 0), "x", r"inputs\[0\]: expected an object, got a string"),
    (("inputs", 0, "shape"), "1x3", r"inputs\[0\].shape: expected a list"),
    (("inputs", 0, "shape", 1), -3, r"inputs\[0\].shape\[1\]: expected a size ≥ 0, got -3"),
    (("inputs", 0, "shape", 1), 2.5, r"inputs\[0\].shape\[1\]: expected an integer, got a number"),
    (("inputs", 0, "shape", 1), True, r"inputs\[0\].shape\[1\]: expected an integer, got a boolean"),
    (("inputs", 0, "shape"), [99999999999, 99999], r"inputs\[0\].shape: .* more than"),
    (("inputs", 0, "dtype"), "f128", r"inputs\[0\].dtype: expected one of"),
    (("inputs", 0, "junk"), {"deep": [1, 2]}, r"inputs\[0\].junk: not a field"),
    (("outputs", 0, "name"), ["y"], r"outputs\[0\].name: expected a string, got a list"),
    (("library", "sha256"), "abc", "library.sha256: expected 64 lowercase hex digits"),
    (("library", "sha256"), 12, "library.sha256: expected a string, got an integer"),
    (("library", "file"), "../evil.so", "library.file: expected one of 'lib.so'"),
    (("golden", "rtol"), 1e9, r"golden.rtol: expected a tolerance in \[0, 0.1\], got 1000000000.0"),
    (("golden", "atol"), -1, r"golden.atol: expected a tolerance in \[0, 0.1\]"),
    (("golden", "rtol"), "0.1", "golden.rtol: expected a finite number, got a string"),
    (("params", "count"), "many", "params.count: expected an integer"),
    (("passes", 0, "notes"), [1], r"passes\[0\].notes: expected an object"),
    (("passes", 0, "changed"), "yes", r"passes\[0\].changed: expected a boolean"),
    (("ops", 0, "params"), "w", r"ops\[0\].params: expected a list"),
    (("primfuncs",), {"f": "conv"}, r"primfuncs\['f'\]: expected a list"),
    (("tuning", "kernels"), None, "tuning.kernels: expected an integer, got null"),
    (("kernels",), {"w4": 4}, r"kernels\['w4'\]: expected a string"),
    (("format",), "zip", "format: expected 'sliver-artifact'"),
    (("format_version",), "2", "format_version: expected an integer, got a string"),
    (("surprise",), 1, "surprise: not a field"),
]


@pytest.mark.parametrize("path,value,message", BAD, ids=[".".join(map(str, b[0])) + f"={b[1]!r}"[:30] for b in BAD])
def test_every_malformed_field_is_an_artifact_error_naming_it(good, path, value, message):
    bad = copy.deepcopy(good)
    if path[0] in ("passes", "ops") and not bad[path[0]]:
        pytest.skip("the example has no such record")
    _set(bad, path, value)
    with pytest.raises(ArtifactError, match=message):
        Manifest.from_json(bad)


def test_documents_that_are_not_manifests(good):
    for raw, message in [
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply|not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
        (b"[1, 2]", "expected a JSON object, got a list"),
        (b"null", "expected a JSON object, got null"),
        (json.dumps(dict(good, golden=dict(good["golden"], rtol=float("nan")))).encode(), "NaN is not a JSON number"),
        (b"{" + b'"a": 1, ' * 10 + b'"format": "x"}', "format: expected 'sliver-artifact'"),
        (b"9" * 5000, "not valid JSON"),
        (b" " * (mf.MAX_MANIFEST_BYTES + 1), "more than"),
    ]:
        with pytest.raises(ArtifactError, match=message):
            parse(raw)
    deep = copy.deepcopy(good)
    deep["passes"][0]["notes"] = {"x": json.loads("[" * 200 + "]" * 200)}
    with pytest.raises(ArtifactError, match=r"passes\[0\].notes\['x'\].*nested more than 32"):
        Manifest.from_json(deep)


def test_a_malformed_manifest_in_a_file_is_refused_before_the_library_loads(good, saved, tmp_path):
    bad = copy.deepcopy(good)
    bad["inputs"][0]["dtype"] = "complex"
    path = tmp_path / "bad.sliver"
    _rewrite(saved, path, bad)
    with pytest.raises(ArtifactError, match=r"bad.sliver: manifest field inputs\[0\].dtype"):
        sliver.load(path)


def test_lower_refuses_tolerances_the_runtime_would_refuse():
    import torch

    with pytest.raises(sliver.SliverError, match=r"rtol=5: the golden tolerances must be numbers in \[0, 0.1\]"):
        sliver.lower(torch.nn.ReLU(), (torch.zeros(2),), rtol=5)
