"""Run sliver's deploy side on an emulated Raspberry Pi.

There is no Arm hardware in development or CI, yet what sliver ships must load and
run on a 64-bit Raspberry Pi with nothing but the TVM runtime, numpy and sliver's
deploy-side packages.  ``tools/emulator/setup_pi_emulator.sh`` installs the closest thing we can
run anywhere: Debian bookworm's arm64 userland (what Raspberry Pi OS bookworm is
built on, with the same Python 3.11) plus aarch64 wheels of TVM and numpy, executed
by ``qemu-aarch64-static`` in user mode.  This module runs that Python:

    from sliver.tools.emulator import emulate
    emulate.ensure_ready()
    proc = emulate.run_module(["run", "model.sliver", ...])   # python -m sliver.runtime
    proc = emulate.run_python(["check.py"])

Every call stages a fresh copy of the ``sliver``, ``sliver.common`` and ``sliver.runtime`` packages, so
the emulated side always runs the current source tree and sees nothing else of
sliver (no compiler, no torch): an accidental compiler-side import fails here just as
it would on a real Pi.

The emulated CPU is a Cortex-A72 (Raspberry Pi 4), not qemu's default "max" CPU, so
code that uses instructions a Pi 4 lacks (SVE, dot products) dies with SIGILL here
instead of on the device.  Timings under qemu mean nothing; this tests plumbing and
numerical correctness.

This module imports nothing heavy (no torch, no tvm): it is importable on the host
and on the device alike.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import pathlib
import shlex
import shutil
import subprocess
import sys
import tempfile
from typing import Sequence

from sliver.common.errors import SliverError

QEMU = "qemu-aarch64-static"
#: The CPU qemu emulates by default: the Raspberry Pi 4's.  The Pi 5 is "cortex-a76".
PI_CPU = "cortex-a72"
#: Relative to the sysroot; matches Raspberry Pi OS bookworm's interpreter.
PI_PYTHON = "usr/bin/python3.11"

# Host variables that would steer the emulated interpreter or its dynamic loader
# towards host (x86-64, other-Python) files.
_HOST_ONLY_ENV = (
    "PYTHONPATH",
    "PYTHONHOME",
    "PYTHONSTARTUP",
    "PYTHONUSERBASE",
    "PYTHONEXECUTABLE",
    "PYTHONPLATLIBDIR",
    "LD_LIBRARY_PATH",
    "LD_PRELOAD",
)


def pi_root() -> pathlib.Path:
    """The folder the emulated Pi lives in: ``$SLIVER_PI_ROOT`` or ``~/.cache/sliver/pi``.

    The setup script uses the same rule, so both agree without configuration.
    """
    override = os.environ.get("SLIVER_PI_ROOT")
    if override:
        return pathlib.Path(override).expanduser()
    return pathlib.Path.home() / ".cache" / "sliver" / "pi"


def is_ready() -> bool:
    """Whether the emulated Pi is fully installed and qemu is on PATH.

    The setup script writes ``READY`` only after a successful smoke test, so its
    presence is what separates a finished root from an interrupted build.
    """
    root = pi_root()
    return (
        (root / "READY").is_file()
        and (root / "sysroot" / PI_PYTHON).is_file()
        and (root / "site").is_dir()
        and shutil.which(QEMU) is not None
    )


def _package_dir(name: str) -> pathlib.Path:
    """The folder of an installed sliver package.

    Found through the import system rather than relative to this file because
    pyproject maps packages onto unrelated folders (``sliver.runtime`` is
    ``runtime/``, ``sliver.common`` is ``common/``), and an editable install keeps that
    mapping while a wheel install nests them.
    """
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise SliverError(f"cannot locate the installed package {name!r}; reinstall sliver")
    return pathlib.Path(list(spec.submodule_search_locations)[0])


def setup_script() -> pathlib.Path:
    """Path of ``setup_pi_emulator.sh``, shipped beside this module (package data)."""
    return pathlib.Path(__file__).resolve().with_name("setup_pi_emulator.sh")


def install_command() -> str:
    """The shell command that installs the emulated Pi at :func:`pi_root`."""
    cmd = f"bash {shlex.quote(str(setup_script()))}"
    if os.environ.get("SLIVER_PI_ROOT"):
        cmd = f"SLIVER_PI_ROOT={shlex.quote(str(pi_root()))} {cmd}"
    return cmd


def ensure_ready(install: bool = False) -> None:
    """Make sure the emulated Pi can run, installing it first if ``install`` is true.

    Installing downloads ~130 MB and takes about half a minute, so it happens only on
    request; otherwise the error names the exact command to run.
    """
    if is_ready():
        return
    if install:
        env = dict(os.environ)
        env.setdefault("PYTHON", sys.executable)  # the script uses its pip for the wheels
        proc = subprocess.run(["bash", str(setup_script())], env=env)
        if proc.returncode != 0:
            raise SliverError(
                f"installing the emulated Raspberry Pi failed (exit {proc.returncode}); "
                f"its output is above. Retry with: {install_command()}"
            )
        if is_ready():
            return
    raise SliverError(
        f"the emulated Raspberry Pi is not installed (looked in {pi_root()}). "
        f"Install it with: {install_command()}"
    )


def _stage_deploy_packages(dest: pathlib.Path, emulator: bool = False) -> None:
    """Copy what a Pi would have of sliver into ``dest``: ``sliver/``, ``sliver/common/``
    and ``sliver/runtime/``; with ``emulator``, also this package's Python modules
    (``sliver/tools/emulator/``: the instruction counter's guest side and markers).

    Only the top-level modules of ``sliver`` are copied (``__init__`` is light and
    lazy); of its subpackages only the ground floor (``common``) and the device runtime
    come along: the rest are compiler-side and stay behind, whatever the install layout.
    """
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    pkg = dest / "sliver"
    pkg.mkdir()
    for entry in _package_dir("sliver").iterdir():
        if entry.is_file() and entry.suffix == ".py":
            shutil.copy2(entry, pkg / entry.name)
    shutil.copytree(_package_dir("sliver.common"), pkg / "common", ignore=ignore)
    shutil.copytree(_package_dir("sliver.runtime"), pkg / "runtime", ignore=ignore)
    if emulator:
        (pkg / "tools" / "emulator").mkdir(parents=True)
        (pkg / "tools" / "__init__.py").write_text("")
        for entry in pathlib.Path(__file__).resolve().parent.glob("*.py"):
            shutil.copy2(entry, pkg / "tools" / "emulator" / entry.name)


def _emulated_env(stage: pathlib.Path, extra: dict | None) -> dict:
    """The environment of the emulated Python: the host's, minus what points at host files.

    ``TVM_USE_RUNTIME_LIB=1`` makes ``import tvm`` load only ``libtvm_runtime.so``, as
    on a Pi where the compiler is useless.  The interpreter needs no PYTHONHOME: it
    finds its stdlib from its own path inside the sysroot.
    """
    env = {k: v for k, v in os.environ.items() if k not in _HOST_ONLY_ENV}
    env.update(
        TVM_USE_RUNTIME_LIB="1",
        PYTHONPATH=os.pathsep.join([str(stage), str(pi_root() / "site")]),
        PYTHONNOUSERSITE="1",
        PYTHONDONTWRITEBYTECODE="1",  # keep the shared root pristine
        # No current folder (or script folder) in front of sys.path: run from the
        # repository root, `-m sliver.runtime` would otherwise import ./sliver, the
        # source folder of the top-level package, which lacks runtime/.
        PYTHONSAFEPATH="1",
    )
    if extra:
        env.update(extra)
    return env


def run_python(
    argv: list[str],
    *,
    env: dict | None = None,
    timeout: float | None = 600,
    cwd=None,
    cpu: str = PI_CPU,
    qemu: str = QEMU,
    qemu_args: Sequence[str] = (),
    extra_path: Sequence[str] = (),
    pi_cpuinfo: bool = False,
    stage_emulator: bool = False,
) -> subprocess.CompletedProcess:
    """Run the emulated Pi's ``python3.11 *argv`` and return its result (text, captured).

    ``env`` adds to (or overrides) the prepared environment.  The emulated process
    sees the host's file system, so paths can be passed unchanged.  A script's own
    folder is not put on ``sys.path`` (PYTHONSAFEPATH), so it cannot import siblings.  A non-zero exit
    is returned, not raised; a timeout raises :class:`subprocess.TimeoutExpired`.
    binfmt_misc is not assumed: qemu is invoked explicitly.  ``qemu`` and
    ``qemu_args`` pick another qemu binary and add options before the program (the
    instruction counter, :mod:`sliver.tools.emulator.icount`, loads a plugin this way).
    ``extra_path`` adds folders (e.g. of other aarch64 wheels) to ``sys.path``.
    ``pi_cpuinfo`` shows the program a Raspberry Pi 4's ``/proc/cpuinfo`` and CPU
    list instead of the host's (:func:`_pi_view`): qemu 7.2 passes the host's through,
    and code that parses them, such as onnxruntime's cpuinfo, crashes on x86 text.
    ``stage_emulator`` also stages this package for the program (the instruction
    counter's guest side imports :mod:`sliver.tools.emulator.icount`).
    """
    ensure_ready()
    sysroot = pi_root() / "sysroot"
    with tempfile.TemporaryDirectory(prefix="sliver-pi-stage-") as tmp:
        stage = pathlib.Path(tmp)
        _stage_deploy_packages(stage, emulator=stage_emulator)
        prefix = _pi_view(sysroot, stage / "root") if pi_cpuinfo else sysroot
        cmd = [qemu, "-cpu", cpu, *qemu_args, "-L", str(prefix), str(sysroot / PI_PYTHON), *argv]
        environ = _emulated_env(stage, env)
        if extra_path:
            environ["PYTHONPATH"] = os.pathsep.join([environ["PYTHONPATH"], *map(str, extra_path)])
        return subprocess.run(
            cmd,
            env=environ,
            cwd=cwd,
            timeout=timeout,
            capture_output=True,
            text=True,
        )


#: /proc/cpuinfo of a Raspberry Pi 4 (4 Cortex-A72 cores: implementer 0x41, part 0xd08)
_PI4_CPUINFO = "".join(
    f"processor\t: {i}\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm crc32 cpuid\n"
    "CPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: 0xd08\nCPU revision\t: 3\n\n"
    for i in range(4)
) + "Hardware\t: BCM2835\nModel\t\t: Raspberry Pi 4 Model B\n"


def _pi_view(sysroot: pathlib.Path, dest: pathlib.Path) -> pathlib.Path:
    """A qemu ``-L`` prefix that is ``sysroot`` (symlinks to its top-level entries)
    plus a Pi 4's ``/proc/cpuinfo`` and ``/sys/devices/system/cpu/{possible,present,online}``:
    qemu-user looks a guest's absolute paths up under the prefix first."""
    dest.mkdir()
    for entry in sysroot.iterdir():
        if entry.name not in ("proc", "sys"):
            (dest / entry.name).symlink_to(entry)
    (dest / "proc").mkdir()
    (dest / "proc" / "cpuinfo").write_text(_PI4_CPUINFO)
    cpu = dest / "sys" / "devices" / "system" / "cpu"
    cpu.mkdir(parents=True)
    for name in ("possible", "present", "online"):
        (cpu / name).write_text("0-3\n")
    return dest


@contextlib.contextmanager
def background(argv: list[str], *, env: dict | None = None, cpu: str = PI_CPU):
    """Start the emulated Pi's ``python3.11 *argv`` in the background (output to a
    log file, ``proc.log_path``); yields the ``Popen``, killed on exit.  For servers:
    ``background(["-m", "sliver.runtime", "serve", ...])``."""
    ensure_ready()
    sysroot = pi_root() / "sysroot"
    with tempfile.TemporaryDirectory(prefix="sliver-pi-stage-") as tmp:
        stage = pathlib.Path(tmp)
        _stage_deploy_packages(stage)
        log_path = stage / "output.log"
        with open(log_path, "wb") as log:
            cmd = [QEMU, "-cpu", cpu, "-L", str(sysroot), str(sysroot / PI_PYTHON), *argv]
            proc = subprocess.Popen(cmd, env=_emulated_env(stage, env), stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)
            proc.log_path = log_path
            try:
                yield proc
            finally:
                if proc.poll() is None:
                    os.killpg(proc.pid, 9)  # the server forks a child per session
                proc.wait()


def device_root() -> pathlib.Path:
    """The device view of the emulated Pi: its sysroot plus Debian's python3-numpy and
    nothing of TVM (built by the setup script), where a device bundle must run."""
    return pi_root() / "device"


def device_ready() -> bool:
    """Whether the device view is built (its stamp is written after its smoke test)."""
    root = device_root()
    return (root / "READY").is_file() and (root / PI_PYTHON).is_file() and shutil.which(QEMU) is not None


def run_device(
    argv: list[str],
    *,
    env: dict | None = None,
    timeout: float | None = 600,
    cwd=None,
    cpu: str = PI_CPU,
    python: bool = True,
) -> subprocess.CompletedProcess:
    """Run ``python3.11 *argv`` (or, with ``python=False``, the aarch64 program ``argv[0]``)
    on the device view (:func:`device_root`): Debian's Python and numpy only, no sliver
    and no TVM staged, no ``PYTHONPATH``: what a bundle finds on a freshly installed Pi.
    Output is captured as text; a non-zero exit is returned, not raised."""
    root = device_root()
    if not device_ready():
        raise SliverError(f"the emulated Pi's device view is not built (looked in {root}). "
                          f"Build it with: {install_command()}")
    environ = {k: v for k, v in os.environ.items() if k not in _HOST_ONLY_ENV and not k.startswith("SLIVER_TVM")}
    environ.update(PYTHONNOUSERSITE="1", PYTHONDONTWRITEBYTECODE="1", PYTHONSAFEPATH="1")
    if env:
        environ.update(env)
    program = [str(root / PI_PYTHON)] if python else []
    cmd = [QEMU, "-cpu", cpu, "-L", str(root), *program, *map(str, argv)]
    return subprocess.run(cmd, env=environ, cwd=cwd, timeout=timeout, capture_output=True, text=True)


def run_module(args: list[str], **kw) -> subprocess.CompletedProcess:
    """Run ``python -m sliver.runtime *args`` on the emulated Pi (see :func:`run_python`)."""
    return run_python(["-m", "sliver.runtime", *args], **kw)
