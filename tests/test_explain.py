"""`sliver explain`: the per-layer report agrees with the pass records it is built from.

One TVM compile (the bundled example, pruned and its linear layer quantized to
4 bits) for the end-to-end test; the generic
reading of other passes' notes is tested on a hand-written manifest."""

import json

import pytest

from sliver.runtime.artifact import Artifact
from sliver.tools import explain

PIPELINE = "fold-batchnorm,prune{amount=0.5},quantize-weights{bits=4},const-fold,cse,dce"


def table(markdown: str, title: str) -> list[dict]:
    """The rows of the first Markdown table after heading ``## title``, as dicts."""
    lines = markdown.split(f"## {title}\n", 1)[1].splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("|"))
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    rows = lines[start:end]
    cells = [[c.strip() for c in r.strip("|").split(" | ")] for r in rows]
    head = cells[0]
    return [dict(zip(head, c)) for c in cells[2:]]


@pytest.fixture(scope="module")
def pruned(example, tmp_path_factory):
    """The example lowered with pruning and output drift measured, and its report."""
    from sliver.api import lower
    from sliver.common.numerics import as_numpy
    from sliver.passes.manager import NumericDrift

    model, inputs = example
    art = lower(model, inputs, "x86_64", passes=PIPELINE, instruments=[NumericDrift([as_numpy(x) for x in inputs])])
    path = art.save(tmp_path_factory.mktemp("explain") / "pruned.sliver")
    from sliver.runtime.artifact import read

    saved = read(path)  # what the report reads: the manifest as written to disk
    doc = explain.explain(saved, source=str(path), repeat=3)
    return art, saved, doc


@pytest.mark.slow
def test_report_channels_equal_the_prune_report(pruned):
    art, saved, doc = pruned
    md = doc.markdown()
    (prune_record,) = [r for r in art.records if r.name == "prune"]
    layers = {r["layer"]: r for r in table(md, "Layers")}
    report_layers = prune_record.notes["report"]["layers"]
    assert report_layers
    for want in report_layers:
        row = layers[want["name"]]
        assert row["channels in"] == f"{want['in_before']} → {want['in_after']}"
        assert row["channels out"] == f"{want['out_before']} → {want['out_after']}"
    # the pass table is the records: ops and params before/after and the measured drift
    passes = table(md, "Passes")
    assert [p["pass"] for p in passes] == [r.spec for r in art.records]
    for row, rec in zip(passes, art.records):
        assert row["ops"] == f"{rec.ops_before} → {rec.ops_after}"
        assert row["params"] == f"{rec.params_before} → {rec.params_after}"
        assert row["output drift"] == f"{rec.drift:.3g}"
    # the quantized layer: its bits and what the quantizer recorded (error, kept weights)
    (quant,) = [r for r in art.records if r.name == "quantize-weights"]
    (qlayer,) = quant.notes["layers"]
    head = layers[qlayer["layer"].removesuffix(".weight")]
    assert head["bits"] == f"bits={quant.notes['bits']}" == "bits=4"
    assert f"rel_error={qlayer['rel_error']:.4g}" in head["notes"]
    assert head["outliers kept"] == (str(len(qlayer["kept"])) if qlayer["kept"] else "")
    # every conv and linear layer has a compiled function and a measured latency
    for name, row in layers.items():
        if row["op"] in ("conv2d", "wq_linear"):
            assert row["compiled function"]
            assert set(row["compiled function"].split(" + ")) <= set(saved.manifest.primfuncs)
            assert row["latency ms (share)"].endswith("%)")
    # the prune pass's own text report is included verbatim, and the HTML has the same rows
    assert prune_record.notes["text"].strip() in md
    page = doc.html("t")
    for want in report_layers:
        assert f"<td>{want['name']}</td>" in page


def _manifest(notes_by_pass: list[tuple[str, dict]]) -> dict:
    ops = [
        {"name": "conv2d", "kind": "conv2d", "layer": "stem.0", "params": ["stem.0.weight"], "shape": [1, 8, 4, 4]},
        {"name": "relu", "kind": "relu", "layer": None, "params": [], "shape": [1, 8, 4, 4]},
        {"name": "linear", "kind": "linear", "layer": "head", "params": ["head.weight"], "shape": [1, 2]},
    ]
    passes = [{"name": name, "spec": name, "seconds": 0.001, "changed": True, "ops_before": 3, "ops_after": 3,
               "params_before": 2, "params_after": 2, "drift": None, "notes": notes} for name, notes in notes_by_pass]
    return {"format": "sliver-artifact", "format_version": 2, "model": "M",
            "target": {"name": "x86_64", "arch": "x86_64", "tvm": {}}, "created": "now", "sliver_version": "0",
            "tvm_version": "0", "python": "3", "pipeline": ",".join(n for n, _ in notes_by_pass),
            "inputs": [{"name": "x", "shape": [1, 3, 4, 4], "dtype": "f32"}],
            "outputs": [{"name": "y", "shape": [1, 2], "dtype": "f32"}],
            "golden": {"file": "golden.npz", "rtol": 1e-3, "atol": 1e-4},
            "params": {"count": 2, "bytes": 8}, "library": {"file": "lib.so", "sha256": "0" * 64, "bytes": 0},
            "ops": ops, "passes": passes,
            "primfuncs": {"fused_conv2d_relu": ["conv2d", "relu"], "fused_matmul": ["linear"]}}


def test_notes_of_any_pass_reach_their_layers():
    """Bits, kept outliers and other per-layer notes are found wherever a pass puts
    them (as a list of named entries or a dict keyed by layer); weight names map to
    their layer."""
    notes = [
        ("quantize-weights", {"layers": [{"name": "stem.0", "w_bits": 4, "scale_error": 0.01},
                                         {"name": "head", "w_bits": 8}]}),
        ("keep-outliers", {"super_weights": [{"layer": "head.weight", "row": 1, "column": 0},
                                             {"layer": "head.weight", "row": 0, "column": 3}]}),
        ("fold-fake-quant", {"activation_bits": {"stem.0": 6}}),
    ]
    art = Artifact(b"", _manifest(notes))
    cost = {"fused_conv2d_relu": (0.5, 0.8), "fused_matmul": (0.125, 0.2)}
    doc = explain.build_report(art, source="m.sliver", cost=cost, unit="ms")
    rows = {r["layer"]: r for r in table(doc.markdown(), "Layers")}
    assert set(rows) == {"stem.0", "head"}
    assert rows["stem.0"]["bits"] == "w_bits=4"
    assert "quantize-weights: layers: w_bits=4, scale_error=0.01" in rows["stem.0"]["notes"]
    assert "fold-fake-quant: activation_bits: 6" in rows["stem.0"]["notes"]
    assert rows["head"]["bits"] == "w_bits=8"
    assert rows["head"]["outliers kept"] == "2" and rows["stem.0"]["outliers kept"] == ""
    assert rows["stem.0"]["compiled function"] == "fused_conv2d_relu"
    assert rows["stem.0"]["latency ms (share)"] == "0.500 (80%)"
    # a pass section lists what each pass recorded per layer
    assert "## Pass keep-outliers" in doc.markdown()


def test_mixed_widths_show_per_layer_with_their_kernel():
    """A mixed-width QAT model (e.g. from `sliver allocate`): each layer's W/A widths
    from fold-fake-quant's notes and the low-bit kernel the manifest says it got."""
    notes = [("fold-fake-quant", {"layers": [{"name": "stem.0", "op": "qconv2d", "w_bits": 8, "a_bits": 8},
                                             {"name": "head", "op": "qdense", "w_bits": 3, "a_bits": 2}]})]
    m = _manifest(notes)
    m["kernels"] = {"stem.0": "int8", "head": "bitserial"}
    doc = explain.build_report(Artifact(b"", m), source="m.sliver", cost={}, unit="ms")
    rows = {r["layer"]: r for r in table(doc.markdown(), "Layers")}
    assert rows["stem.0"]["bits"] == "w_bits=8, a_bits=8, kernel=int8"
    assert rows["head"]["bits"] == "w_bits=3, a_bits=2, kernel=bitserial"


def test_artifact_without_pass_records_says_relower():
    m = _manifest([])
    del m["passes"]
    from sliver.common.errors import SliverError

    with pytest.raises(SliverError, match="lower it again"):
        explain.build_report(Artifact(b"", m), source="old.sliver", cost={}, unit="ms")


def test_cli_explain_writes_markdown_and_html(pruned, tmp_path):
    from sliver.tools.cli import main

    _, saved, _ = pruned
    src = tmp_path / "p.sliver"
    Artifact(saved.library, saved.manifest, saved.golden).save(src)
    assert main(["explain", str(src), "-o", str(tmp_path / "r.md"), "--html", str(tmp_path / "r.html"),
                 "--repeat", "2"]) == 0
    md = (tmp_path / "r.md").read_text()
    assert md.startswith("# sliver explain: @TinyCNN for x86_64")
    assert "## Pass prune{amount=0.5}" in md and "## Pass quantize-weights{bits=4}" in md
    assert "<table>" in (tmp_path / "r.html").read_text()
    json.dumps(saved.manifest.to_json()["passes"])  # the records in the manifest are plain JSON
