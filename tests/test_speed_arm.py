"""The speed set's ARM table: its bookkeeping (the emulated runs themselves are exercised
by tests/runtime/test_icount.py; the benchmark is run by hand, see docs/results/arm.md)."""

import pytest

from sliver.benchmarks import speed_arm

MAPS = """\
400000-916000 r-xp 00000000 fe:00 1   /pi/sysroot/usr/bin/python3.11
5505960000-5505a42000 r--p 00000000 fe:00 2   /site/onnxruntime/capi/onnxruntime_pybind11_state.cpython-311-aarch64-linux-gnu.so
5505a50000-5506ec2000 r-xp 000f0000 fe:00 2   /site/onnxruntime/capi/onnxruntime_pybind11_state.cpython-311-aarch64-linux-gnu.so
5529570000-5529571000 r-xp 00010000 fe:00 3   /site/onnxruntime/capi/libonnxruntime_providers_shared.so
"""


def test_the_kernel_library_is_the_python_module_onnxruntime_links_into():
    assert speed_arm.ort_library(MAPS).endswith("onnxruntime_pybind11_state.cpython-311-aarch64-linux-gnu.so")
    with pytest.raises(RuntimeError, match="expected one onnxruntime_pybind11_state"):
        speed_arm.ort_library(MAPS.splitlines()[0])


def test_table_ratios_and_failures():
    reports = [
        {"model": "resnet18", "builds": {
            "sliver": {"instructions": 300e6, "cycles": 200e6, "max_rel_err": 1e-6},
            "onnxruntime": {"instructions": 600e6, "cycles": 250e6, "max_rel_err": 2e-6}}},
        {"model": "mobilenet_v2", "builds": {
            "sliver": {"instructions": 150e6, "cycles": 100e6, "max_rel_err": 1e-6},
            "onnxruntime": {"error": "RuntimeError: no session"}}},
    ]
    text = speed_arm.table(reports)
    rows = text.splitlines()[2:]
    assert rows[0].startswith("| ResNet-18 | 300.0M | 600.0M | 0.50× | 200.0M | 250.0M | 0.80× |")
    assert rows[1].startswith("| MobileNetV2 | 150.0M | RuntimeError: no session | — |")
