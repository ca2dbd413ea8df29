"""Serve this machine to a tuner: TVM's RPC server, with the runtime only.

    python -m sliver.runtime serve --tracker 192.168.1.10:9190 --key pi     # on the Pi
    sliver device serve --tracker 127.0.0.1:9190 --key pi                   # the same, via the CLI

The tuner (``sliver tune --rpc HOST:PORT --key pi``) uploads each candidate kernel
as a shared library, and this server loads it, fills its arguments and times it.
It needs what the deploy side has (the TVM runtime, numpy): no compiler, no torch.

Two details make that work (both verified on an emulated Pi): TVM's ``rpc.Server``
starts itself in a fresh ``sys.executable`` process, which a Pi does not need and
an emulated one cannot do without binfmt_misc, so the listen loop runs in this
process (each session still gets its own forked child, so a kernel that crashes
takes down one session, not the server); and the runtime-only library lacks
``random_fill_for_measure``, which lives in ``libtvm_runtime_extra.so`` next to
it, so that is loaded first.
"""

from __future__ import annotations

import ctypes
import logging
import os
import socket
import sys
from pathlib import Path

from sliver.common.errors import SliverError


def _split_addr(text: str, what: str) -> tuple[str, int]:
    host, _, port = str(text).rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise SliverError(f"{what} {text!r}: give it as HOST:PORT, e.g. 127.0.0.1:9190")
    return host, int(port)


def extra_runtime_library() -> str | None:
    """``libtvm_runtime_extra.so`` of the installed TVM (``random_fill_for_measure``)."""
    import tvm

    for folder in (Path(tvm.__file__).parent / "lib", Path(tvm.__file__).parent):
        lib = folder / "libtvm_runtime_extra.so"
        if lib.is_file():
            return str(lib)
    return None


def _bind(host: str, port: int, port_end: int) -> tuple[socket.socket, int]:
    last = None
    for p in range(port, max(port, port_end) + 1):
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, p))
            sock.listen(1)
            return sock, p
        except OSError as e:
            sock.close()
            last = e
    raise SliverError(f"cannot listen on {host}:{port}-{port_end} ({last}); pick another --port")


def serve(host: str = "0.0.0.0", port: int = 9090, key: str = "pi", tracker: str | None = None,
          port_end: int | None = None, custom_addr: str | None = None) -> None:
    """Run the RPC server in this process until interrupted."""
    if not key or any(c.isspace() for c in key):
        raise SliverError(f"--key {key!r}: the device key is one word, e.g. pi")
    tracker_addr = _split_addr(tracker, "--tracker") if tracker else None
    os.environ.setdefault("TVM_USE_RUNTIME_LIB", "1")  # the runtime is all a device needs
    import tvm  # noqa: F401
    from tvm.rpc import server as rpc_server

    extra = extra_runtime_library()
    if extra:
        ctypes.CDLL(extra, ctypes.RTLD_GLOBAL)
    if tvm.get_global_func("tvm.contrib.random.random_fill_for_measure", allow_missing=True) is None:
        raise SliverError("this TVM install lacks random_fill_for_measure (libtvm_runtime_extra.so): "
                          "reinstall apache-tvm==0.27.0.post1")
    sock, bound = _bind(host, port, port_end if port_end is not None else port + 9)
    rpc_server.logger.setLevel(logging.WARNING)
    where = f"registered with tracker {tracker} " if tracker else ""
    print(f"[sliver] RPC server on {host}:{bound}, key {key!r}, {where}(runtime only, pid {os.getpid()}); "
          "Ctrl-C stops it", file=sys.stderr, flush=True)
    try:
        rpc_server._listen_loop(sock, bound, key, tracker_addr, extra or "", custom_addr)
    finally:
        sock.close()
