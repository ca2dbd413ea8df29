"""The emulated Raspberry Pi (sliver.tools.emulator.emulate) behaves like the device.

Tests marked ``emulated`` need ``tools/emulator/setup_pi_emulator.sh`` to have run (CI runs it
before the tests); without it they skip and say how to install it.  Each qemu start
costs a second or two, so the environment checks share one probe run.
"""

import json
import textwrap

import numpy as np
import pytest

from sliver.common.errors import SliverError
from sliver.tools.emulator import emulate

needs_pi = pytest.mark.skipif(
    not emulate.is_ready(),
    reason=f"emulated Raspberry Pi not installed; run: {emulate.install_command()}",
)


def emulated(test):
    """Mark a test that runs the emulated Pi (skipped when it is not installed)."""
    return pytest.mark.emulated(pytest.mark.slow(needs_pi(test)))


PROBE = textwrap.dedent(
    """
    import importlib.util, json, platform, sys
    info = {"machine": platform.machine(), "python": platform.python_version(),
            "sys_path": sys.path}
    import numpy, tvm, tvm.runtime
    info.update(numpy=numpy.__version__, tvm=tvm.__version__,
                runtime_only=tvm.base._RUNTIME_ONLY, libs=sorted(tvm.base._LOADED_LIBS))
    try:
        import tvm.relax
        info["relax"] = True
    except Exception:  # runtime-only mode: AttributeError from missing compiler FFI
        info["relax"] = False
    import sliver, sliver.common.errors, sliver.runtime
    info["sliver"] = [sliver.__file__, sliver.runtime.__file__]
    info["torch"] = importlib.util.find_spec("torch") is not None
    print(json.dumps(info))
    """
)


def _check(proc):
    """The completed process, after failing the test with its output if it failed."""
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.fixture(scope="module")
def probe(tmp_path_factory):
    """What the emulated Python reports about itself, with a host PYTHONPATH set."""
    decoy = str(tmp_path_factory.mktemp("host-pythonpath"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PYTHONPATH", decoy)
        proc = _check(emulate.run_python(["-c", PROBE]))
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    info["decoy"] = decoy
    return info


@emulated
def test_emulated_python_is_aarch64_python311(probe):
    assert probe["machine"] == "aarch64"
    assert probe["python"].startswith("3.11.")


@emulated
def test_tvm_is_runtime_only_and_numpy_imports(probe):
    assert probe["runtime_only"] is True
    assert probe["libs"] == ["tvm_runtime"]
    assert probe["relax"] is False
    assert probe["numpy"]
    assert probe["torch"] is False


@emulated
def test_host_python_env_does_not_leak_and_sliver_is_staged(probe):
    assert probe["decoy"] not in probe["sys_path"]
    sliver_init, runtime_init = probe["sliver"]
    assert "sliver-pi-stage-" in sliver_init
    assert runtime_init.endswith("sliver/runtime/__init__.py")


def test_ensure_ready_names_the_install_command(tmp_path, monkeypatch):
    monkeypatch.setenv("SLIVER_PI_ROOT", str(tmp_path))
    assert not emulate.is_ready()
    with pytest.raises(SliverError) as err:
        emulate.ensure_ready()
    msg = str(err.value)
    assert "not installed" in msg
    assert str(emulate.setup_script()) in msg
    assert f"SLIVER_PI_ROOT={tmp_path}" in msg
    with pytest.raises(SliverError):
        emulate.run_python(["-c", "pass"])


def test_setup_script_is_shipped():
    assert emulate.setup_script().is_file()


RUN_ADD_ONE = textwrap.dedent(
    """
    import sys
    import numpy as np
    import tvm
    from tvm.runtime.vm import VirtualMachine
    vm = VirtualMachine(tvm.runtime.load_module(sys.argv[1]), tvm.cpu())
    x = np.array([1.5, -2.0, 0.0, 41.0], dtype="float32")
    y = vm["main"](tvm.runtime.tensor(x)).numpy()
    np.testing.assert_array_equal(y, x + 1)
    print("OK", y.tolist())
    """
)


@emulated
def test_cross_compiled_relax_module_runs(tmp_path):
    tvm = pytest.importorskip("tvm")
    from tvm import relax
    from tvm.support import cc

    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((4,), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit_output(relax.op.add(x, relax.const(1.0, "float32")))
        bb.emit_func_output(y)
    target = tvm.target.Target(
        {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a72", "mattr": ["+neon"]}
    )
    lib = tmp_path / "add_one.so"
    tvm.compile(bb.get(), target=target).export_library(
        str(lib), fcompile=cc.cross_compiler("aarch64-linux-gnu-gcc")
    )
    script = tmp_path / "run_add_one.py"
    script.write_text(RUN_ADD_ONE)

    proc = _check(emulate.run_python([str(script), str(lib)], cwd=tmp_path))
    assert proc.stdout.strip() == f"OK {(np.array([1.5, -2.0, 0.0, 41.0]) + 1).tolist()}"
