"""benchmarks/bench_convs.py: the distinct layer shapes it benchmarks, and its report."""

from __future__ import annotations

from sliver.benchmarks import bench_convs as B


def test_layers_of_resnet18_are_its_distinct_shapes_with_counts():
    layers = {l.name(): l for l in B.layers_of(["resnet18"], 32)}
    # four 64->64 3x3 convs at 8x8 (32 / 4), one stem, one linear 512->1000
    assert layers["64x8x8 -> 64 3x3/1"].count == 4
    assert layers["64x8x8 -> 64 3x3/1"].cls == "3x3 s1"
    assert layers["3x32x32 -> 64 7x7/2"].cls == "stem 7x7 s2"
    assert layers["linear 512->1000"].macs == 512 * 1000
    assert sum(l.count for l in layers.values() if l.kind == "conv") == 20


def test_report_sums_classes_by_layer_count_and_ratios():
    rep = {"rows": [
        {"layer": "a", "class": "3x3 s1", "count": 2, "macs": 10**6,
         "sliver": {"min_ms": 1.0, "median_ms": 1.0, "rel_err": 0.0},
         "onnxruntime": {"min_ms": 0.5, "median_ms": 0.5, "rel_err": 0.0}},
        {"layer": "m (whole model)", "class": "whole model", "count": 0, "macs": 0,
         "sliver": {"min_ms": 9.0, "median_ms": 9.0, "rel_err": 0.0},
         "onnxruntime": {"min_ms": 3.0, "median_ms": 3.0, "rel_err": 0.0}},
    ]}
    text = B.format_report(rep)
    cls_line = next(l for l in text.splitlines() if l.startswith("3x3 s1 "))
    assert "2.00" in cls_line and "1.00" in cls_line and "2.00x" in cls_line  # 2 layers x 1 ms vs 2 x 0.5 ms
    assert "3.00x" in text  # the whole model's own ratio, not added to the classes
    assert next(l for l in text.splitlines() if l.startswith("all ")).split()[2] == "2.00"


def test_report_shows_the_kernel_and_the_direct_comparison():
    rep = {"rows": [
        {"layer": "w", "class": "3x3 s1", "count": 1, "macs": 10**6, "kernel": "wino4x4",
         "sliver": {"min_ms": 1.0, "median_ms": 1.0, "rel_err": 0.0},
         "direct": {"min_ms": 2.0, "median_ms": 2.0, "rel_err": 3e-6}},
        {"layer": "d", "class": "1x1 s1", "count": 1, "macs": 10**6, "kernel": "direct",
         "sliver": {"min_ms": 1.0, "median_ms": 1.0, "rel_err": 0.0}},
    ]}
    lines = B.format_report(rep).splitlines()
    assert "kernel" in lines[0] and "wino/direct" in lines[0]
    w = next(l for l in lines if l.startswith("w "))
    assert "wino4x4" in w and "0.50x" in w and "3.0e-06" in w
    assert "direct" in next(l for l in lines if l.startswith("d "))
