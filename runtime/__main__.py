"""``python -m sliver.runtime run model.sliver --verify``: the device-side entry point.

Loads only TVM's runtime library (no compiler, no torch), as on a Raspberry Pi.
"""

import os
import sys

os.environ.setdefault("TVM_USE_RUNTIME_LIB", "1")

from sliver.runtime.cli import main  # noqa: E402

sys.exit(main())
