"""Post-training int8 (quantize-static) on real trained weights: the digits CNN's test
accuracy stays within half a point of fp32 (benchmarks/int8_quality.py)."""

import pytest

pytest.importorskip("sklearn")

from sliver.benchmarks import int8_quality  # noqa: E402


@pytest.mark.slow
def test_digits_int8_accuracy_within_half_a_point_of_fp32():
    rows = int8_quality.digits(epochs=6, compile_x86=False)
    fp32 = rows[0]["accuracy"]
    assert fp32 > 0.9
    for r in rows[1:]:
        assert r["accuracy"] >= fp32 - 0.005, r
