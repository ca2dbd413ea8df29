"""The RPC tracker devices register with (``sliver device tracker``)."""

from __future__ import annotations


def start_tracker(host: str = "127.0.0.1", port: int = 9190, port_end: int = 9199, silent: bool = True):
    """A TVM RPC tracker in a helper process: ``.host``, ``.port``, ``.terminate()``."""
    from tvm.rpc.tracker import Tracker

    return Tracker(host, port=port, port_end=port_end, silent=silent)
