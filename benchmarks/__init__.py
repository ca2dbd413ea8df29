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


def zoo():
    """The test model zoo (``tests/zoo.py`` of the checkout), imported as ``zoo``, the
    name the tests import it by, so both share one module."""
    from sliver.common.errors import SliverError

    loaded = sys.modules.get("zoo")
    if loaded is not None and Path(getattr(loaded, "__file__", "") or "").resolve() == ZOO:
        return loaded
    if not ZOO.is_file():
        raise SliverError(f"the benchmarks build their models with the test model zoo, {ZOO}, which is not "
                          "there: run them from a source checkout (git clone, then pip install -e .)")
    name = "zoo" if loaded is None else "sliver_benchmarks_zoo"
    spec = importlib.util.spec_from_file_location(name, ZOO)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # before running it: dataclasses look their module up
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module
