"""The torch frontend: a PyTorch model (through torch.export) → a sliver Module.

- :mod:`~sliver.frontend.driver`: export, the unsupported-op scan, the walk over the graph
  and its error reports;
- :mod:`~sliver.frontend.rules`: the table of translation rules, one per aten op;
- :mod:`~sliver.frontend.builder`: the emitter the rules write through, and trace-time
  constant evaluation;
- :mod:`~sliver.frontend.fake_quant`: torch.ao FakeQuantize modules made export-friendly.
"""

from sliver.frontend.driver import export, scan_unsupported, trace
from sliver.frontend.rules import supported_ops

__all__ = ["export", "scan_unsupported", "supported_ops", "trace"]
