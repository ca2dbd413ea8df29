"""`sliver device serve` is safe by default (runtime/serve.py, common/rpcauth.py):
loopback unless told otherwise, sessions only for clients holding the shared secret,
files confined to its own work folder, idle connections blocking nobody.

Every server here is a `python -m sliver.runtime serve` process on 127.0.0.1.
"""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sliver.common.rpcauth import ENV, RPCAuthError, client_option, load_secret
from sliver.runtime.serve import confine, is_loopback, listen_host

SECRET = "test-secret-0123456789abcdef"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Served:
    def __init__(self, proc, port, lines):
        self.proc, self.port, self.lines = proc, port, lines


def _start(*extra, secret=SECRET):
    env = {k: v for k, v in os.environ.items() if k != ENV}
    if secret is not None:
        env[ENV] = secret
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "sliver.runtime", "serve", "--port", str(port), "--key", "pi",
                             *extra], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    lines = []
    deadline = time.time() + 120
    while time.time() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        lines.append(line)
        if "RPC server on" in line:
            bound = int(line.split("RPC server on ", 1)[1].split(",", 1)[0].rpartition(":")[2])
            return Served(proc, bound, lines)
    proc.wait(timeout=30)
    return Served(proc, None, lines + [proc.stderr.read()])


def _stop(served):
    if served.proc.poll() is None:
        os.killpg(served.proc.pid, signal.SIGKILL)
    served.proc.wait()


@pytest.fixture(scope="module")
def server():
    served = _start("--session-timeout", "20")
    assert served.port, "".join(served.lines)
    yield served
    _stop(served)


def _connect(port, secret=SECRET, key="pi", timeout=0):
    from sliver.backends.tvm.tuning.measure import connect

    return connect("127.0.0.1", port, key, load_secret(value=secret), timeout)


def _listening_addresses(port: int) -> set[str]:
    """Local addresses of the listening TCP sockets on ``port`` (from /proc/net/tcp{,6})."""
    out = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for row in Path(table).read_text().splitlines()[1:]:
            local, _remote, state = row.split()[1:4]
            addr, _, hexport = local.rpartition(":")
            if state == "0A" and int(hexport, 16) == port:  # 0A: LISTEN
                out.add(addr)
    return out


def test_the_default_bind_is_loopback(server):
    assert _listening_addresses(server.port) == {"0100007F"}  # 127.0.0.1, little-endian hex


def test_an_explicit_other_host_warns(capsys):
    assert listen_host(None) == "127.0.0.1"
    assert listen_host("127.0.0.1") == "127.0.0.1" and "warning" not in capsys.readouterr().err
    assert listen_host("0.0.0.0") == "0.0.0.0"
    err = capsys.readouterr().err
    assert "warning" in err and "runs the code" in err
    assert is_loopback("::1") and is_loopback("localhost") and not is_loopback("192.168.1.10")


def test_no_server_without_a_secret():
    served = _start(secret=None)
    try:
        assert served.port is None and served.proc.returncode == 2
        assert "SLIVER_RPC_SECRET" in "".join(served.lines) and "runs code" in "".join(served.lines)
    finally:
        _stop(served)
    with pytest.raises(RPCAuthError, match="at least 16"):
        load_secret(value="short")


def test_help_says_the_server_runs_code_it_is_sent():
    out = subprocess.run([sys.executable, "-m", "sliver.tools.cli", "device", "serve", "--help"],
                         capture_output=True, text=True).stdout
    assert "runs the code" in out and "SLIVER_RPC_SECRET" in out and "127.0.0.1" in out


def test_a_session_without_the_secret_is_refused(server):
    from tvm import rpc

    with pytest.raises(Exception, match="(?i)mismatch|key|connect"):
        rpc.connect("127.0.0.1", server.port, "pi")  # TVM's own client: the key alone opens nothing
    with pytest.raises(RPCAuthError, match="does not share this secret"):
        _connect(server.port, secret="another-secret-0123456789")
    # a token is good once: replaying a recorded handshake is refused
    option = client_option("127.0.0.1", server.port, "pi", load_secret(value=SECRET))
    sess = rpc.connect("127.0.0.1", server.port, f"pi {option}")
    sess.upload(bytearray(b"ok"), "ok.txt")
    del sess
    with pytest.raises(Exception, match="(?i)mismatch|key|connect"):
        rpc.connect("127.0.0.1", server.port, f"pi {option}")
    assert server.proc.poll() is None
    sess = _connect(server.port)  # and the server still serves the right client, in a fresh work folder
    with pytest.raises(Exception):
        sess.download("ok.txt")
    sess.upload(bytearray(b"hello"), "a.txt")
    assert bytes(sess.download("a.txt")) == b"hello"


@pytest.mark.parametrize("path", ["/etc/hostname", "../a.txt", "sub/../../a.txt", "/tmp/sliver-rpc-evil"])
def test_paths_outside_the_work_folder_are_refused(server, path):
    sess = _connect(server.port)
    with pytest.raises(Exception, match="work folder"):
        sess.download(path)
    with pytest.raises(Exception, match="work folder"):
        sess.upload(bytearray(b"evil"), path)
    with pytest.raises(Exception, match="work folder"):
        sess.remove(path)
    assert not Path("/tmp/sliver-rpc-evil").exists()
    with pytest.raises(Exception, match="work folder"):
        sess.load_module(path)


def test_confine_refuses_links_out(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    (work / "out").symlink_to("/etc")
    assert confine(str(work), "lib.so") == str(work / "lib.so")
    assert confine(str(work), "") == str(work)  # TVM's runner removes the folder when it is done
    for bad in ("out/hostname", "/etc/hostname", "..", "a/../../b", "/"):
        with pytest.raises(PermissionError):
            confine(str(work), bad)


def test_an_idle_connection_does_not_block_a_real_client(server):
    idle = socket.create_connection(("127.0.0.1", server.port))  # says nothing
    half = socket.create_connection(("127.0.0.1", server.port))
    half.sendall(b"\x71\xf2\x0f\x00")  # TVM's magic, then silence
    try:
        t0 = time.monotonic()
        sess = _connect(server.port)
        sess.upload(bytearray(b"x"), "x.txt")
        assert bytes(sess.download("x.txt")) == b"x"
        assert time.monotonic() - t0 < 8, "the client waited for the idle connections"
    finally:
        idle.close()
        half.close()


def test_a_session_that_idles_ends_at_the_session_timeout():
    served = _start("--session-timeout", "3")
    try:
        first = _connect(served.port)  # takes the server, then does nothing
        first.upload(bytearray(b"1"), "1.txt")
        t0 = time.monotonic()
        second = _connect(served.port)
        second.upload(bytearray(b"2"), "2.txt")
        assert bytes(second.download("2.txt")) == b"2"
        assert time.monotonic() - t0 < 15
        del first
    finally:
        _stop(served)
