"""Serve this machine to a tuner: TVM's RPC server, with the runtime only.

    export SLIVER_RPC_SECRET=...                                              # the same on both sides
    python -m sliver.runtime serve --host 0.0.0.0 --tracker 192.168.1.10:9190 --key pi   # on the Pi
    sliver device serve --tracker 127.0.0.1:9190 --key pi                     # the same, via the CLI

**An RPC server runs the code it is sent**: the tuner (``sliver tune --rpc HOST:PORT
--key pi``) uploads each candidate kernel as a shared library, and this server
loads it, fills its arguments and times it.  So the server is safe by default:

- it listens on 127.0.0.1 unless ``--host`` names another address (it warns then);
- every session needs the shared secret (``$SLIVER_RPC_SECRET`` or
  ``--secret-file``), proven by a challenge-response before TVM sees the socket
  (:mod:`sliver.common.rpcauth`); TVM's ``--key`` only matches devices to tuners;
- uploads, downloads, listings and removals stay inside a per-session
  work folder (absolute paths and ``..`` are refused), and linking uploaded objects on
  the device is not served;
- a connection that does not finish its handshake within ``handshake_timeout`` is
  dropped, handshakes run beside each other (an idle connection blocks nobody), every
  session socket has TCP keep-alive (a vanished peer is noticed) and no session
  runs longer than ``session_timeout``.

It needs what the deploy side has (the TVM runtime, numpy): no compiler, no torch.
TVM's ``rpc.Server`` starts itself in a fresh ``sys.executable`` process, which a
Pi does not need and an emulated one cannot do without binfmt_misc, so the listen
loop runs in this process, and each session gets its own forked child (a kernel
that crashes takes down one session, not the server).  The runtime-only library
lacks ``random_fill_for_measure``, which lives in ``libtvm_runtime_extra.so`` next
to it, so that is loaded first.
"""

from __future__ import annotations

import ctypes
import ipaddress
import logging
import os
import queue
import select
import shutil
import socket
import struct
import sys
import tempfile
import threading
import time
from pathlib import Path, PurePosixPath

from sliver.common.errors import SliverError
from sliver.common.rpcauth import AUTH_MAGIC, Gate, load_secret

log = logging.getLogger("sliver.rpc")

#: seconds a new connection has to finish its handshake
HANDSHAKE_TIMEOUT_S = 10.0
#: the longest session, whatever the client asks for
SESSION_TIMEOUT_S = 600.0
#: handshakes in progress at once (more connections are closed at once)
MAX_HANDSHAKES = 32
#: TCP keep-alive of each session socket: a peer that vanished is noticed after ~IDLE + INTVL * CNT s
KEEPALIVE = {"TCP_KEEPIDLE": 30, "TCP_KEEPINTVL": 10, "TCP_KEEPCNT": 3}
WARNING = ("an RPC server runs the code its clients send; only clients that hold the shared secret get a "
           "session")


def _split_addr(text: str, what: str) -> tuple[str, int]:
    host, _, port = str(text).rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise SliverError(f"{what} {text!r}: give it as HOST:PORT, e.g. 127.0.0.1:9190")
    return host, int(port)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def listen_host(host: str | None, what: str = "RPC server", why: str = WARNING) -> str:
    """``host`` or 127.0.0.1; warns on stderr when ``host`` is not a loopback address."""
    if host is None:
        return "127.0.0.1"
    if not is_loopback(host):
        print(f"[sliver] warning: the {what} listens on {host}, reachable from other machines; {why}",
              file=sys.stderr, flush=True)
    return host


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
            sock.listen(16)
            return sock, p
        except OSError as e:
            sock.close()
            last = e
    raise SliverError(f"cannot listen on {host}:{port}-{port_end} ({last}); pick another --port")


# ------------------------------------------------------------------ a session (in its own process)


def confine(work: str, name) -> str:
    """``name`` inside the work folder ``work`` (``""``: the folder itself, which TVM's
    runner removes when it is done), or PermissionError for an absolute path, a ``..``
    component or a symbolic link out of it."""
    if not isinstance(name, str) or "\0" in name:
        raise PermissionError(f"{name!r}: give a file name inside the RPC server's work folder")
    if name in ("", "."):
        return work
    parts = PurePosixPath(name.replace("\\", "/"))
    if parts.is_absolute() or ".." in parts.parts:
        raise PermissionError(f"{name!r}: the RPC server reads and writes only inside its work folder; give a "
                              "relative path without '..'")
    path = os.path.join(work, name)
    root = os.path.realpath(work)
    if os.path.commonpath([root, os.path.realpath(path)]) != root:
        raise PermissionError(f"{name!r} leads out of the RPC server's work folder")
    return path


def _session_env(work: str) -> None:
    """The server functions TVM's client calls, confined to ``work`` (TVM's own
    ``_server_env`` joins any path to the folder, so ``/etc/hostname`` is read as is)."""
    import tvm_ffi

    from tvm.runtime.module import load_module

    @tvm_ffi.register_global_func("tvm.rpc.server.workpath", override=True)
    def _workpath(name):  # upload, download, remove and listdir go through this
        return confine(work, name)

    @tvm_ffi.register_global_func("tvm.rpc.server.load_module", override=True)
    def _load_module(name):
        return load_module(confine(work, name))

    @tvm_ffi.register_global_func("tvm.rpc.server.download_linked_module", override=True)
    def _download_linked_module(name):
        raise PermissionError("this RPC server does not link uploaded objects: upload a shared library (.so) "
                              "linked for the device")


def _session(conn: socket.socket, work: str, listening: socket.socket) -> None:
    from tvm.rpc import _ffi_api

    listening.close()  # the port belongs to the server, not to a session that may outlive it
    os.chdir(work)
    _session_env(work)
    _ffi_api.ServerLoop(conn.fileno())


# ------------------------------------------------------------------ the server


class Server:
    """The listen loop: handshakes in threads, sessions one at a time in forked children."""

    def __init__(self, sock: socket.socket, port: int, key: str, secret: bytes, *, tracker=None,
                 custom_addr: str | None = None, session_timeout: float = SESSION_TIMEOUT_S,
                 handshake_timeout: float = HANDSHAKE_TIMEOUT_S, work_root: str | None = None):
        self.sock, self.port, self.key, self.tracker = sock, port, key, tracker
        self.gate = Gate(secret)
        self.custom_addr = custom_addr
        self.session_timeout, self.handshake_timeout = session_timeout, handshake_timeout
        self.work_root = work_root
        self.matchkey = key
        self.admitted: queue.Queue = queue.Queue()
        self.slots = threading.BoundedSemaphore(MAX_HANDSHAKES)
        self.stopped = threading.Event()

    # handshakes ----------------------------------------------------------------
    def _handshake(self, conn: socket.socket, addr) -> None:
        from tvm.rpc import base

        try:
            conn.settimeout(self.handshake_timeout)
            magic = struct.unpack("<i", base.recvall(conn, 4))[0]
            if magic == AUTH_MAGIC:
                self.gate.answer(conn)
                conn.close()
                return
            if magic != base.RPC_MAGIC:
                conn.close()
                return
            keylen = struct.unpack("<i", base.recvall(conn, 4))[0]
            if not 0 < keylen <= 4096:
                conn.close()
                return
            words = base.recvall(conn, keylen).decode("utf-8", "replace").split()
            matchkey = self.matchkey
            if not words or words[0] != "client:" + matchkey:
                conn.sendall(struct.pack("<i", base.RPC_CODE_MISMATCH))
                conn.close()
                return
            if not self.gate.admits(words[1:], matchkey):
                log.warning("refused a session from %s: it did not prove it holds the secret", addr)
                print(f"[sliver] refused a session from {addr[0]}: it did not prove it holds the RPC secret",
                      file=sys.stderr, flush=True)
                conn.sendall(struct.pack("<i", base.RPC_CODE_MISMATCH))
                conn.close()
                return
            server_key = ("server:" + self.key).encode()
            conn.sendall(struct.pack("<i", base.RPC_CODE_SUCCESS) + struct.pack("<i", len(server_key)) + server_key)
            conn.settimeout(None)
            self.admitted.put((conn, addr, _options(words[1:])))
        except (OSError, RuntimeError, struct.error):  # a timeout, a reset, garbage: drop the connection
            conn.close()
        finally:
            self.slots.release()

    def _accept(self) -> None:
        conn, addr = self.sock.accept()
        if not self.slots.acquire(blocking=False):
            conn.close()  # too many handshakes at once
            return
        threading.Thread(target=self._handshake, args=(conn, addr), daemon=True).start()

    # the tracker ---------------------------------------------------------------
    def _register(self):
        from tvm.rpc import base

        conn = base.connect_with_retry(self.tracker)
        conn.sendall(struct.pack("<i", base.RPC_TRACKER_MAGIC))
        if struct.unpack("<i", base.recvall(conn, 4))[0] != base.RPC_TRACKER_MAGIC:
            raise SliverError(f"{self.tracker[0]}:{self.tracker[1]} is not an RPC tracker")
        base.sendjson(conn, [base.TrackerCode.UPDATE_INFO,
                             {"key": "server:" + self.key, "addr": (self.custom_addr, self.port)}])
        if base.recvjson(conn) != base.TrackerCode.SUCCESS:
            raise OSError("the tracker refused the registration")
        return conn

    def _put(self, tracker_conn, old: set) -> None:
        from tvm.rpc import base

        self.matchkey = base.random_key(self.key, cmap=old)
        old.add(self.matchkey)
        base.sendjson(tracker_conn, [base.TrackerCode.PUT, self.key, (self.port, self.matchkey), self.custom_addr])
        if base.recvjson(tracker_conn) != base.TrackerCode.SUCCESS:
            raise OSError("the tracker refused the match key")

    # the loop ------------------------------------------------------------------
    def _next_session(self, tracker_conn, ping_period: float = 2.0, unmatch_timeout: float = 4.0):
        """Accept connections (handshakes in threads) until one is admitted; with a
        tracker, offer a fresh match key and renew it when a tuner took it but never came."""
        from tvm.rpc import base

        old: set = set()
        if tracker_conn is not None:
            self._put(tracker_conn, old)
        unmatched, last_ping = 0, time.monotonic()
        while not self.stopped.is_set():
            try:
                return self.admitted.get_nowait()
            except queue.Empty:
                pass
            ready, _, _ = select.select([self.sock], [], [], 0.2)
            if ready:
                self._accept()
            if tracker_conn is not None and time.monotonic() - last_ping >= ping_period:
                last_ping = time.monotonic()
                base.sendjson(tracker_conn, [base.TrackerCode.GET_PENDING_MATCHKEYS])
                pending = base.recvjson(tracker_conn)
                unmatched = 0 if self.matchkey in pending else unmatched + 1
                if unmatched * ping_period > unmatch_timeout + ping_period:
                    self._put(tracker_conn, old)  # a tuner took the key and did not connect
                    unmatched = 0
        return None

    def _serve_session(self, conn: socket.socket, addr, options: dict) -> None:
        import multiprocessing

        from tvm.rpc import _ffi_api

        conn.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for name, value in KEEPALIVE.items():
            if hasattr(socket, name):
                conn.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)
        timeout = min(options.get("timeout") or self.session_timeout, self.session_timeout)
        work = tempfile.mkdtemp(prefix="sliver-rpc-", dir=self.work_root)
        log.info("session from %s in %s", addr, work)
        proc = multiprocessing.get_context("fork").Process(target=_session, args=(conn, work, self.sock))
        proc.start()
        proc.join(timeout)
        if proc.is_alive():
            try:
                _ffi_api.ReturnException(conn.fileno(), f"RPCSessionTimeoutError: the session ran {timeout:g}s, "
                                                        "the longest this server allows")
            except Exception:  # noqa: BLE001 - the peer may be gone
                pass
            proc.kill()
            proc.join()
        shutil.rmtree(work, ignore_errors=True)
        conn.close()

    def run(self) -> None:
        tracker_conn = None
        while not self.stopped.is_set():
            try:
                if self.tracker and tracker_conn is None:
                    tracker_conn = self._register()
                got = self._next_session(tracker_conn)
            except (OSError, ValueError, struct.error):  # the tracker went away: register again
                if tracker_conn is not None:
                    tracker_conn.close()
                    tracker_conn = None
                time.sleep(0.5)
                continue
            if got is not None:
                self._serve_session(*got)

    def stop(self) -> None:
        self.stopped.set()


def _options(words: list[str]) -> dict:
    out = {}
    for w in words:
        if w.startswith("-timeout="):
            try:
                out["timeout"] = float(w[len("-timeout="):])
            except ValueError:
                pass
    return out


def serve(host: str | None = None, port: int = 9090, key: str = "pi", tracker: str | None = None,
          port_end: int | None = None, custom_addr: str | None = None, *, secret: str | bytes | None = None,
          secret_file: str | None = None, session_timeout: float = SESSION_TIMEOUT_S,
          handshake_timeout: float = HANDSHAKE_TIMEOUT_S) -> None:
    """Run the RPC server in this process until interrupted (see the module doc).
    ``host`` None: 127.0.0.1.  The secret: ``secret``, ``secret_file`` or ``$SLIVER_RPC_SECRET``."""
    if not key or any(c.isspace() for c in key):
        raise SliverError(f"--key {key!r}: the device key is one word, e.g. pi")
    if not session_timeout > 0 or not handshake_timeout > 0:
        raise SliverError("--session-timeout must be a positive number of seconds")
    secret_bytes = load_secret(secret_file, secret)  # no secret, no server
    tracker_addr = _split_addr(tracker, "--tracker") if tracker else None
    host = listen_host(host)
    os.environ.setdefault("TVM_USE_RUNTIME_LIB", "1")  # the runtime is all a device needs
    import tvm  # noqa: F401

    extra = extra_runtime_library()
    if extra:
        ctypes.CDLL(extra, ctypes.RTLD_GLOBAL)
    if tvm.get_global_func("tvm.contrib.random.random_fill_for_measure", allow_missing=True) is None:
        raise SliverError("this TVM install lacks random_fill_for_measure (libtvm_runtime_extra.so): "
                          "reinstall apache-tvm==0.27.0.post1")
    sock, bound = _bind(host, port, port_end if port_end is not None else port + 9)
    where = f"registered with tracker {tracker} " if tracker else ""
    print(f"[sliver] RPC server on {host}:{bound}, key {key!r}, {where}(runtime only, pid {os.getpid()}); "
          f"sessions need the shared secret; {WARNING.split(';')[0]}. Ctrl-C stops it", file=sys.stderr, flush=True)
    try:
        Server(sock, bound, key, secret_bytes, tracker=tracker_addr, custom_addr=custom_addr,
               session_timeout=session_timeout, handshake_timeout=handshake_timeout).run()
    finally:
        sock.close()
