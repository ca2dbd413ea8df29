"""The int8 kernel benchmark's layers: every kernel and weight layout the host can run is
exact against numpy on real model shapes (odd widths, strides, depthwise, 1x1)."""

import shutil

import pytest

from sliver.backends.tvm.targets import host_target

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None or host_target().arch != "x86_64",
                                reason="needs gcc on an x86-64 host")


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    from sliver.benchmarks import bench_int8_layers as b

    return b.build_library(str(tmp_path_factory.mktemp("int8")))


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["auto", "tile", "plain"])
def test_kernel_layouts_exact_on_model_layers(layout, library):
    from sliver.benchmarks import bench_int8_layers as b

    lib, target = library
    layers = [("dw/2 odd", 22, 23, 22, 3, 2, 1, 22, 1), ("7x7/2 3->16", 3, 29, 16, 7, 2, 3, 1, 1),
              ("3x3 13->20", 13, 17, 20, 3, 1, 1, 1, 1), ("1x1/2 24->40", 24, 14, 40, 1, 2, 0, 1, 1)]
    rows = [b.run_layer(lib, target, layer, layout, repeat=1) for layer in layers]
    assert all(r["exact"] for r in rows), rows
    if layout == "auto" and target.int8_dot == "avx512-vnni":
        assert {r["layout"] for r in rows} == {"lanes"}
