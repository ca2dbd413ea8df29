"""The ARM instruction-count benchmark's bookkeeping (the emulated runs themselves are
exercised by tests/runtime/test_icount.py; the benchmark is run by hand, see benchmarks/README.md)."""

from sliver.benchmarks import bench_arm


def test_per_op_splits_shared_functions_and_keeps_the_rest_apart():
    functions = {"fused_conv_a": 900, "conv_shared": 600, "bias_add": 30, "relu": 70, "max_pool2d": 50}
    primfuncs = {"fused_conv_a": ["c1", "add"], "conv_shared": ["c2", "c3"], "bias_add": ["c2", "c3"],
                 "relu": ["r1"], "max_pool2d": ["pool"]}
    per, other = bench_arm.per_op(functions, primfuncs, {"c1", "c2", "c3", "c4"})
    assert per == {"c1": 900, "c2": 315, "c3": 315, "c4": 0}
    assert other == 120
    assert sum(per.values()) + other == sum(functions.values())


def test_report_ratios():
    convs = [{"op": "c1", "layer": "stem", "input": [1, 3, 8, 8], "weight": [4, 3, 3, 3], "stride": [1, 1]}]
    report = {"config": {"resolution": 8, "num_classes": 10, "cpu": "cortex-a72"}, "convs": convs, "builds": {
        "sliver": {"instructions": 1000, "per_conv": {"c1": 800}, "max_rel_err": 1e-6},
        "tvm_naive": {"instructions": 4000, "per_conv": {"c1": 3200}, "max_rel_err": 1e-6},
        "onnxruntime": {"instructions": 1500, "per_conv": {"c1": 400}, "max_rel_err": 1e-6, "version": "1",
                        "session_overhead": 10}}}
    text = bench_arm.format_report(report)
    assert "4.00x" in text and "1.50x" in text  # whole model: naive and onnxruntime vs sliver
    assert "4.0x" in text and "0.50x" in text  # the conv: naive/sliver, ort/sliver
    del report["builds"]["onnxruntime"]
    report["builds"]["onnxruntime"] = {"error": "SIGSEGV"}
    assert "onnxruntime could not run: SIGSEGV" in bench_arm.format_report(report)
