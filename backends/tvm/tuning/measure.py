"""Measuring candidates: the in-process builder, and the runner on this machine or
on a device behind a TVM RPC tracker (retried while the device is away)."""

from __future__ import annotations

import dataclasses
import functools
import os
import re
import tempfile
import time
from typing import Callable

from sliver.common.rpcauth import client_option, load_secret
from sliver.backends.tvm.targets import Target
from sliver.backends.tvm.tuning.budget import TuningError


@dataclasses.dataclass(frozen=True)
class RPC:
    """Measure on a device registered with a TVM RPC tracker under ``key``; sessions
    prove they hold the device's shared ``secret`` (default ``$SLIVER_RPC_SECRET``,
    see :mod:`sliver.common.rpcauth`)."""

    tracker: str  # "host:port"
    key: str
    session_timeout_s: int = 120
    retries: int = 3
    backoff_s: float = 2.0
    secret: bytes | str | None = dataclasses.field(default=None, repr=False, compare=False)

    def __post_init__(self):
        host, _, port = str(self.tracker).rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise TuningError(f"--rpc {self.tracker!r}: give the tracker as HOST:PORT, e.g. 127.0.0.1:9190")
        if not self.key:
            raise TuningError("--rpc needs --key: the key the device registered with (sliver device serve --key pi)")
        object.__setattr__(self, "secret", load_secret(value=self.secret))

    @property
    def host(self) -> str:
        return self.tracker.rpartition(":")[0]

    @property
    def port(self) -> int:
        return int(self.tracker.rpartition(":")[2])


def _builder(target: Target):
    """Builds candidates in this process with ``tvm.tirx.build`` (TVM's LocalBuilder
    imports ``tvm.s_tir.tensor_intrin`` in every worker, ~40 s on 2 busy cores, and
    times out) and exports a ``.so``, cross-linked for a device."""
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.builder import BuilderResult, PyBuilder

    cross = target.cross_compiler

    @derived_object
    class InProcessBuilder(PyBuilder):
        def build(self, build_inputs):
            import tvm

            results = []
            for bi in build_inputs:
                try:
                    lib = tvm.tirx.build(bi.mod, target=bi.target)  # what tvm.driver.build calls
                    path = os.path.join(tempfile.mkdtemp(prefix="sliver-tune-"), "candidate.so")
                    if cross:
                        from tvm.support import cc

                        lib.export_library(path, fcompile=cc.cross_compiler(cross))
                    else:
                        lib.export_library(path)
                    results.append(BuilderResult(path, None))
                except Exception as e:  # noqa: BLE001 - a candidate that does not build is a failed trial
                    results.append(BuilderResult(None, f"{type(e).__name__}: {str(e).strip()[-2000:]}"))
            return results

    return InProcessBuilder()


class DeviceLost(TuningError):
    """The RPC device stopped answering and did not come back."""


_CONNECTION_ERROR = re.compile(r"connect|socket|tracker|timeout|timed out|broken pipe|reset by peer|RPCSession|"
                               r"RPCError|closed|refused|EOF", re.IGNORECASE)


def _listed(summary: dict, key: str) -> bool:
    return any(str(s.get("key", "")).split(":", 1)[-1] == key for s in summary.get("server_info", []))


def device_present(rpc: RPC) -> bool:
    """Whether the tracker lists a server under ``rpc.key`` right now."""
    from tvm import rpc as tvm_rpc

    try:
        return _listed(tvm_rpc.connect_tracker(rpc.host, rpc.port).summary(), rpc.key)
    except Exception:  # noqa: BLE001 - no tracker: no device
        return False


def connect(host: str, port: int, key: str, secret: bytes, session_timeout: float = 0):
    """A TVM RPC session with the sliver RPC server at ``host:port`` (``key``: its
    device key, or the match key a tracker handed out), after proving ``secret``."""
    from tvm import rpc as tvm_rpc

    return tvm_rpc.connect(host, port, f"{key} {client_option(host, port, key, secret)}", session_timeout)


def _create_session(rpc_config, secret: bytes):
    """The RPC runner's session factory (runs in its worker process): like TVM's
    tracker request, but fails at once when no server is registered under the key
    (TVM's waits for one forever), and proves the secret before the session."""
    from tvm import rpc as tvm_rpc
    from tvm.rpc import base

    tracker = tvm_rpc.connect_tracker(rpc_config.tracker_host, rpc_config.tracker_port)
    if not _listed(tracker.summary(), rpc_config.tracker_key):
        raise ConnectionError(f"no RPC server is registered with the tracker under {rpc_config.tracker_key!r}")
    base.sendjson(tracker._sock, [base.TrackerCode.REQUEST, rpc_config.tracker_key, "", rpc_config.session_priority])
    value = base.recvjson(tracker._sock)
    if value[0] != base.TrackerCode.SUCCESS:
        raise ConnectionError(f"the tracker answered {value!r} to a request for {rpc_config.tracker_key!r}")
    host, port, matchkey = value[1]
    return connect(host, port, matchkey, secret, rpc_config.session_timeout_sec)


def check_secret(rpc: RPC) -> None:
    """Before any work: every server the tracker lists under ``rpc.key`` must prove it
    holds ``rpc.secret`` (:class:`~sliver.common.rpcauth.RPCAuthError` otherwise).
    A tracker or server that cannot be reached is left to the runner's retries."""
    from tvm import rpc as tvm_rpc

    try:
        servers = [s for s in tvm_rpc.connect_tracker(rpc.host, rpc.port).summary().get("server_info", [])
                   if str(s.get("key", "")).split(":", 1)[-1] == rpc.key]
    except Exception:  # noqa: BLE001 - no tracker now: the runner reports it
        return
    for s in servers:
        host, port = s["addr"][0], int(s["addr"][1])
        try:
            client_option(host, port, rpc.key, rpc.secret)
        except OSError:
            continue


#: each measurement: ``repeat`` timings of ``number`` runs (at least ``min_repeat_ms``);
#: the database keeps the fastest timing, which a busy machine disturbs least
EVALUATOR = dict(number=2, repeat=3, min_repeat_ms=20)


def _fastest(run_secs):
    """The fastest of a measurement's timings, as the one-element list TVM records
    hold (TVM ranks records by their mean, which one preempted timing ruins)."""
    if run_secs is None:
        return None
    vals = [float(v) for v in run_secs]
    return [min(vals)] if vals else None


def _runner(target: Target, rpc: RPC | None, say: Callable[[str], None], aborted: list):
    from tvm.s_tir import meta_schedule as ms

    if rpc is None:
        return ms.runner.LocalRunner(evaluator_config=ms.runner.EvaluatorConfig(**EVALUATOR))
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.runner import PyRunner, PyRunnerFuture, RunnerResult

    def rpc_runner():
        return ms.runner.RPCRunner(
            rpc_config=ms.runner.RPCConfig(tracker_host=rpc.host, tracker_port=rpc.port, tracker_key=rpc.key,
                                           session_timeout_sec=rpc.session_timeout_s),
            evaluator_config=ms.runner.EvaluatorConfig(**EVALUATOR),
            f_create_session=functools.partial(_create_session, secret=rpc.secret),
            max_workers=1,
        )

    inner = [rpc_runner()]

    def measure(inputs):
        """Run ``inputs`` on the device; a session the device never answers (it died
        after accepting) is cut off after the session timeout: the worker is replaced."""
        futures = inner[0].run(inputs)
        deadline = time.monotonic() + rpc.session_timeout_s * len(inputs) + 30
        while not all(f.done() for f in futures) and time.monotonic() < deadline:
            time.sleep(0.1)
        if all(f.done() for f in futures):
            return [f.result() for f in futures]
        out = [f.result() if f.done() else RunnerResult(None, "RPC session timed out: the device stopped answering")
               for f in futures]
        try:
            inner[0].pool.shutdown(wait=False)  # kills the stuck worker
        except Exception:  # noqa: BLE001
            pass
        inner[0] = rpc_runner()
        return out

    @derived_object
    class Done(PyRunnerFuture):
        def __init__(self, result):
            super().__init__()
            self._result = result

        def done(self):
            return True

        def result(self):
            return self._result

    @derived_object
    class RetryingRPCRunner(PyRunner):
        """Retries connection failures with back-off while the device is away;
        raises :class:`DeviceLost` when it stays away; a candidate that fails again
        on a live device is returned as failed (skipped)."""

        def run(self, runner_inputs):
            results = measure(runner_inputs)

            def unreached():
                return [i for i, r in enumerate(results)
                        if r.error_msg is not None and _CONNECTION_ERROR.search(str(r.error_msg))]

            for attempt in range(rpc.retries):
                bad = unreached()
                if not bad:
                    break
                wait = rpc.backoff_s * 2 ** attempt
                say(f"device {rpc.key!r}: {len(bad)} measurement(s) did not reach it; retry "
                    f"{attempt + 1}/{rpc.retries} in {wait:g}s")
                time.sleep(wait)
                if not device_present(rpc):
                    continue  # still away: do not wait for a session timeout
                for i, r in zip(bad, measure([runner_inputs[i] for i in bad])):
                    results[i] = r
            if unreached() and not device_present(rpc):
                aborted.append(DeviceLost(f"the device {rpc.key!r} at tracker {rpc.tracker} stopped answering"))
                raise aborted[-1]
            # what still fails on a live device is the candidate's fault: recorded as failed (skipped)
            return [Done(RunnerResult(r.run_secs, r.error_msg)) for r in results]

    return RetryingRPCRunner()
