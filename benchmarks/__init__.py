"""Comparison benchmarks and experiments (``python -m sliver.benchmarks.NAME``).

They run from a source checkout installed with ``pip install -e .``: the models they
build come from the test model zoo, ``tests/zoo.py``, which is not part of an installed
package.  :func:`zoo` finds it beside this folder (see ``benchmarks/README.md``).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

#: where the test model zoo lives in a checkout
ZOO = Path(__file__).resolve().parent.parent / "tests" / "zoo.py"
#: the zoo of real architectures (transformers models, torch's own modules)
REALZOO = ZOO.with_name("realzoo.py")


def zoo():
    """The test model zoo (``tests/zoo.py`` of the checkout), imported as ``zoo``, the
    name the tests import it by, so both share one module."""
    return _tests_module("zoo", ZOO)


def realzoo():
    """The real-architecture zoo (``tests/realzoo.py`` of the checkout), imported as
    ``realzoo``, the name the tests import it by."""
    return _tests_module("realzoo", REALZOO)


def _tests_module(name: str, path: Path):
    from sliver.common.errors import SliverError

    loaded = sys.modules.get(name)
    if loaded is not None and Path(getattr(loaded, "__file__", "") or "").resolve() == path:
        return loaded
    if not path.is_file():
        raise SliverError(f"the benchmarks build their models with the test model zoo, {path}, which is not "
                          "there: run them from a source checkout (git clone, then pip install -e .)")
    if loaded is not None:
        name = f"sliver_benchmarks_{name}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # before running it: dataclasses look their module up
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module
