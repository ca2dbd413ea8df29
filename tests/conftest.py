"""Shared fixtures.  Compiled artifacts are built once per session and shared:
a TVM compile takes seconds per model on 2 cores."""

import os
import sys
from pathlib import Path

import numpy as np
import pytest

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))  # `import helpers`

from sliver.runtime import emulate  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def _private_tuning_cache(tmp_path_factory):
    """No test reads or writes the user's tuning database (~/.cache/sliver/tuning):
    ``lower`` applies whatever records it finds there."""
    os.environ["SLIVER_TUNING_DIR"] = str(tmp_path_factory.mktemp("tuning-cache"))
    yield


def pytest_collection_modifyitems(config, items):
    if emulate.is_ready():
        return
    skip = pytest.mark.skip(reason="emulated Pi not installed: run bash tools/setup_pi_emulator.sh")
    for item in items:
        if "emulated" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def example():
    """The bundled example (tools/examples/tiny_cnn.py): (model, inputs)."""
    from sliver.tools.demo import _example

    return _example()[1]


@pytest.fixture(scope="session")
def example_x86(example, tmp_path_factory):
    """The bundled example lowered for x86_64 and saved: path of the .sliver file."""
    import sliver

    model, inputs = example
    return sliver.lower(model, inputs, target="x86_64").save(tmp_path_factory.mktemp("x86") / "tiny.sliver")


@pytest.fixture(scope="session")
def example_arm64(example, tmp_path_factory):
    import sliver

    model, inputs = example
    return sliver.lower(model, inputs, target="arm64").save(tmp_path_factory.mktemp("arm") / "tiny.sliver")


@pytest.fixture
def rng():
    return np.random.default_rng(0)
