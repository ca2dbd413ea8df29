"""The shared secret that gates sliver's RPC server (``sliver device serve``).

TVM's RPC protocol has a "key" that matches a client to a server at a tracker; it
is not authentication, and a session may upload a shared library and run it.  So a
sliver RPC server refuses every session whose client does not prove it knows the
server's secret, by a challenge-response that works with TVM's own client:

1. the client opens a connection, sends :data:`AUTH_MAGIC` and a random
   ``client_nonce``; the server answers a fresh ``server_nonce`` and
   ``HMAC(secret, "server" | client_nonce | server_nonce)``, which tells the client
   the server holds the same secret (before it sends anything), and closes;
2. the client opens TVM's connection, its key carrying ``-sliver-auth=<server
   nonce>.<HMAC(secret, "client" | server_nonce | client_nonce | match key)>``;
   the server checks it against the nonce it issued (once: a nonce is spent by
   its first use and expires after :data:`NONCE_TTL_S`) before it hands the
   socket to TVM.

The secret never crosses the network; a recorded exchange cannot be replayed.  The
connection itself is not encrypted (what a session uploads and measures can be
read on the way): on an untrusted network, tunnel it (e.g. ``ssh -L``).

Both sides read the secret from ``$SLIVER_RPC_SECRET`` or a file
(``--secret-file``); it must be at least :data:`MIN_SECRET` characters.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import socket
import struct
import threading
import time
from pathlib import Path

from sliver.common.errors import SliverError

ENV = "SLIVER_RPC_SECRET"
MIN_SECRET = 16
#: the first 4 bytes of a challenge request (TVM's sessions start with 0xff271)
AUTH_MAGIC = 0x51C4A07
OPTION = "-sliver-auth="
NONCE = 32
NONCE_TTL_S = 60.0
MAX_NONCES = 256
GENERATE = 'python3 -c "import secrets; print(secrets.token_hex(16))"'


class RPCAuthError(SliverError):
    """No secret, a too short one, or a peer that does not share it."""


def load_secret(secret_file: str | os.PathLike | None = None, value: str | bytes | None = None) -> bytes:
    """The secret as bytes: ``value``, else the file's first line, else ``$SLIVER_RPC_SECRET``."""
    if value is None and secret_file is not None:
        try:
            value = Path(secret_file).read_text().strip()
        except (OSError, UnicodeDecodeError) as e:
            raise RPCAuthError(f"--secret-file {secret_file}: cannot read it ({e})") from None
    if value is None:
        value = os.environ.get(ENV)
    if not value:
        raise RPCAuthError(f"the RPC server runs code its clients send, so both sides need a shared secret: set "
                           f"{ENV} (the same value on the device and where you tune) or pass --secret-file FILE; "
                           f"make one with {GENERATE}")
    raw = value.encode() if isinstance(value, str) else bytes(value)
    if len(raw.strip()) < MIN_SECRET:
        raise RPCAuthError(f"the RPC secret is {len(raw.strip())} characters; use at least {MIN_SECRET} "
                           f"(make one with {GENERATE})")
    return raw.strip()


def _mac(secret: bytes, *parts: bytes) -> bytes:
    return hmac.new(secret, b"sliver-rpc-v1\0" + b"\0".join(parts), hashlib.sha256).digest()


def _recvall(sock: socket.socket, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        if not chunk:
            raise ConnectionError("the peer closed the connection during the handshake")
        out += chunk
    return out


# ------------------------------------------------------------------ the client side


def client_option(host: str, port: int, match_key: str, secret: bytes, timeout: float = 10.0) -> str:
    """Step 1 against the server at ``host:port``; returns the option to append to
    TVM's connection key (``key + " " + option``) for step 2.  Raises
    :class:`RPCAuthError` when the server does not prove it holds ``secret``."""
    client_nonce = secrets.token_bytes(NONCE)
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(struct.pack("<i", AUTH_MAGIC) + client_nonce)
        try:
            reply = _recvall(sock, 2 * NONCE)
        except (ConnectionError, OSError):
            raise RPCAuthError(f"the RPC server at {host}:{port} gave no challenge: it is not a sliver RPC server "
                               "or an old one without a secret") from None
    server_nonce, proof = reply[:NONCE], reply[NONCE:]
    if not hmac.compare_digest(proof, _mac(secret, b"server", client_nonce, server_nonce)):
        raise RPCAuthError(f"the RPC server at {host}:{port} does not share this secret ({ENV} or --secret-file): "
                           "set the same value on both sides")
    token = _mac(secret, b"client", server_nonce, client_nonce, match_key.encode())
    return f"{OPTION}{server_nonce.hex()}.{token.hex()}"


# ------------------------------------------------------------------ the server side


class Gate:
    """The server's half: answers challenges and checks the tokens TVM's key carries."""

    def __init__(self, secret: bytes):
        self._secret = secret
        self._issued: dict[bytes, tuple[bytes, float]] = {}  # server nonce -> (client nonce, expiry)
        self._lock = threading.Lock()

    def answer(self, sock: socket.socket) -> None:
        """Step 1, after :data:`AUTH_MAGIC` was read from ``sock``."""
        client_nonce = _recvall(sock, NONCE)
        server_nonce = secrets.token_bytes(NONCE)
        now = time.monotonic()
        with self._lock:
            for k in [k for k, (_, t) in self._issued.items() if t < now]:
                del self._issued[k]
            while len(self._issued) >= MAX_NONCES:
                del self._issued[min(self._issued, key=lambda k: self._issued[k][1])]
            self._issued[server_nonce] = (client_nonce, now + NONCE_TTL_S)
        sock.sendall(server_nonce + _mac(self._secret, b"server", client_nonce, server_nonce))

    def admits(self, options: list[str], match_key: str) -> bool:
        """Step 2: whether TVM's key options carry a valid token for ``match_key``
        (the nonce is spent either way)."""
        tokens = [o[len(OPTION):] for o in options if o.startswith(OPTION)]
        if len(tokens) != 1 or tokens[0].count(".") != 1:
            return False
        nonce_hex, mac_hex = tokens[0].split(".")
        try:
            server_nonce, mac = bytes.fromhex(nonce_hex), bytes.fromhex(mac_hex)
        except ValueError:
            return False
        with self._lock:
            issued = self._issued.pop(server_nonce, None)
        if issued is None or issued[1] < time.monotonic():
            return False
        expected = _mac(self._secret, b"client", server_nonce, issued[0], match_key.encode())
        return hmac.compare_digest(mac, expected)


__all__ = ["AUTH_MAGIC", "ENV", "Gate", "RPCAuthError", "client_option", "load_secret"]
