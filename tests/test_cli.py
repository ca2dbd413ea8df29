"""The `sliver` command line, as a user runs it."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sliver.tools.cli import main

EXAMPLE = str(Path(__file__).resolve().parents[1] / "tools" / "examples" / "tiny_cnn.py") + ":build"


def test_opt_print_after_all_shows_ir_after_each_pass(capsys):
    assert main(["opt", EXAMPLE, "--passes", "fold-batchnorm,dce", "--print-after-all"]) == 0
    out = capsys.readouterr().out
    assert "// ----- IR after fold-batchnorm" in out and "// ----- IR after dce" in out
    after_fold = out.split("// ----- IR after dce")[0]
    assert "batch_norm" not in after_fold and "conv2d(" in after_fold


def test_opt_print_after_named_pass_and_change(capsys):
    assert main(["opt", EXAMPLE, "--passes", "cse,fold-batchnorm,dce", "--print-after", "fold-batchnorm"]) == 0
    out = capsys.readouterr().out
    assert out.count("// ----- IR after") == 1 and "IR after fold-batchnorm" in out
    assert main(["opt", EXAMPLE, "--passes", "cse,fold-batchnorm,dce", "--print-after-change"]) == 0
    out = capsys.readouterr().out
    assert out.count("// ----- IR after") == 1  # only fold-batchnorm changes the example


def test_opt_dump_dir_timing_and_drift(tmp_path, capsys):
    dump = tmp_path / "dump"
    assert main(["opt", EXAMPLE, "--passes", "fold-batchnorm,const-fold,cse,dce", "--dump-dir", str(dump),
                 "--drift", "-o", str(tmp_path / "opt.sir")]) == 0
    names = sorted(p.name for p in dump.iterdir())
    assert names == ["00-input.sir", "01-fold-batchnorm.sir", "02-const-fold.sir", "03-cse.sir", "04-dce.sir"]
    table = capsys.readouterr().err
    assert "fold-batchnorm" in table and "drift" in table
    drift = float(table.splitlines()[1].split()[-1])
    assert drift < 1e-6
    assert (tmp_path / "opt.sir").is_file() and (tmp_path / "opt.npz").is_file()


def test_trace_writes_ir_that_reloads(tmp_path, capsys):
    out = tmp_path / "tiny.sir"
    assert main(["trace", EXAMPLE, "-o", str(out)]) == 0
    assert main(["opt", str(out), "--passes", "fold-batchnorm"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("func @TinyCNN(") and "batch_norm" not in text


def test_trace_check_lists_unsupported(tmp_path, capsys):
    model = tmp_path / "bad.py"
    model.write_text(
        "import torch\n"
        "class M(torch.nn.Module):\n"
        "    def forward(self, x):\n"
        "        return torch.cumprod(x, 0) + torch.cummax(x, 0).values\n"
        "def build():\n"
        "    return M(), (torch.randn(4),)\n"
    )
    assert main(["trace", f"{model}:build", "--check"]) == 1
    out = capsys.readouterr().out
    assert "aten.cumprod.default" in out and "aten.cummax.default" in out and "bad.py:4" in out
    assert main(["trace", EXAMPLE, "--check"]) == 0


def test_lower_run_verify_and_inspect(tmp_path, capsys):
    art = tmp_path / "tiny.sliver"
    assert main(["lower", EXAMPLE, "--target", "x86_64", "-o", str(art)]) == 0
    assert main(["run", str(art), "--verify"]) == 0
    assert "verify: passed" in capsys.readouterr().out
    x = np.random.default_rng(1).standard_normal((1, 3, 32, 32)).astype(np.float32)
    np.savez(tmp_path / "in.npz", x=x)
    assert main(["run", str(art), "--inputs", str(tmp_path / "in.npz"), "--output", str(tmp_path / "out.npz")]) == 0
    with np.load(tmp_path / "out.npz") as z:
        assert z[z.files[0]].shape == (1, 10)
    assert main(["inspect", str(art)]) == 0
    out = capsys.readouterr().out
    assert "target    x86_64" in out and "pipeline  fold-fake-quant,fold-batchnorm,const-fold,cse,dce" in out


def test_errors_are_one_line_not_tracebacks(tmp_path, capsys):
    assert main(["lower", EXAMPLE, "--target", "mips"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sliver: error: unknown target 'mips'") and "Traceback" not in err
    assert main(["opt", EXAMPLE, "--passes", "fold-batchnorm,nope"]) == 2
    assert "unknown pass 'nope'" in capsys.readouterr().err
    assert main(["run", str(tmp_path / "missing.sliver")]) == 2
    assert "no such artifact" in capsys.readouterr().err


def test_passes_and_ops_listings(capsys):
    assert main(["passes"]) == 0
    out = capsys.readouterr().out
    for name in ("fold-batchnorm", "dce", "cse", "const-fold"):
        assert name in out
    assert main(["ops", "--aten"]) == 0
    out = capsys.readouterr().out
    assert "conv2d" in out and "aten.conv2d.default" in out


def test_console_script_is_installed():
    proc = subprocess.run([sys.executable, "-m", "sliver.tools.cli", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "lower" in proc.stdout


@pytest.mark.emulated
@pytest.mark.slow
def test_run_emulate(example_arm64, capsys):
    assert main(["run", str(example_arm64), "--verify", "--emulate"]) == 0
    assert "verify: passed (arm64 artifact on aarch64)" in capsys.readouterr().out


def test_prune_prints_report_and_writes_ir(tmp_path, capsys):
    out = tmp_path / "pruned.sir"
    assert main(["prune", EXAMPLE, "--method", "l1", "--amount", "0.5", "-o", str(out),
                 "--report", str(tmp_path / "r.json")]) == 0
    text = capsys.readouterr().out
    assert "block1.conv2" in text and "16 -> 8" in text and "params" in text
    import json

    report = json.loads((tmp_path / "r.json").read_text())
    assert report["params_after"] < report["params_before"] and "block2.conv1" in report["masks"]
    assert main(["lower", str(out), "-o", str(tmp_path / "p.sliver"), "--passes", "dce"]) == 0
    assert main(["run", str(tmp_path / "p.sliver"), "--verify"]) == 0


def test_prune_output_side(tmp_path, capsys):
    assert main(["prune", EXAMPLE, "--side", "output", "--amount", "0.5", "--report", str(tmp_path / "r.json")]) == 0
    import json

    report = json.loads((tmp_path / "r.json").read_text())
    assert report["side"] == "output" and report["params_after"] < report["params_before"]
    # the masks name output channels: half of block1.conv1's 16 filters
    assert len(report["masks"]["block1.conv1"]) == 8


# -- user errors: `sliver: error: ...`, exit status 2, never a traceback ----------------------


def _sliver(argv) -> int:
    """The exit status of `sliver *argv` run in this process (argparse exits by SystemExit)."""
    try:
        return main(argv)
    except SystemExit as e:
        return e.code


def _user_error(capsys, argv, *phrases):
    code = _sliver(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and "sliver: error: " in err, err
    message = err.split("sliver: error: ", 1)[1]
    for phrase in phrases:
        assert phrase in message, message
    return message


def test_print_after_names_a_pass_of_the_pipeline(capsys):
    """It printed nothing and exited 0 for a pass that does not exist or does not run."""
    msg = _user_error(capsys, ["opt", EXAMPLE, "--print-after", "nosuch"], "--print-after nosuch", "no such pass")
    assert "fold-batchnorm" in msg  # the passes there are
    _user_error(capsys, ["opt", EXAMPLE, "--passes", "cse,dce", "--print-after", "prune"], "not in the pipeline",
                "cse, dce")
    _user_error(capsys, ["lower", EXAMPLE, "--print-after", "quantize-weights", "-o", "never.sliver"],
                "not in the pipeline")
    assert not Path("never.sliver").exists()


def test_bad_flags_and_values(capsys, tmp_path):
    _user_error(capsys, ["opt"], "required: model")
    _user_error(capsys, ["opt", EXAMPLE, "--no-such-flag"], "unrecognized arguments: --no-such-flag")
    _user_error(capsys, ["prune", EXAMPLE, "--amount", "lots"], "--amount", "invalid float value")
    _user_error(capsys, ["prune", EXAMPLE, "--method", "l7"], "invalid choice: 'l7'")
    _user_error(capsys, ["bench"], "required: artifact")
    _user_error(capsys, ["bench", str(tmp_path / "a.sliver"), "--repeat", "0"], "--repeat")
    _user_error(capsys, ["device", "serve", "--port", "http"], "--port", "not a port number")
    _user_error(capsys, ["opt", EXAMPLE, "--passes", "prune{amount=x}"], "amount")
    for cmd in (["device", "serve"], ["device", "tracker"]):  # the socket's OverflowError, the tracker's crash
        _user_error(capsys, [*cmd, "--port", "99999999"], "--port", "not a port from 1 to")
        _user_error(capsys, [*cmd, "--port", "0"], "not a port from 1 to")
    _user_error(capsys, ["lower", EXAMPLE, "-o", str(tmp_path)], "-o/--output", "is a folder")
    _user_error(capsys, ["prune", EXAMPLE, "--report", str(tmp_path)], "--report", "is a folder")


def test_explain_with_a_bad_repeat(example_x86, capsys):
    _user_error(capsys, ["explain", str(example_x86), "--repeat", "0"], "--repeat 0")


def test_run_with_a_bad_repeat(example_x86, capsys):
    _user_error(capsys, ["run", str(example_x86), "--repeat", "-3"], "--repeat -3")


BAD_MODELS = {
    # what the file holds, the MODEL's function, what the error says
    "plain_function": ("import torch\ndef build():\n    return (lambda x: x + 1), (torch.ones(1, 4),)\n",
                       "build", ["returned a function as the model", "torch.nn.Module"]),
    "none_output": ("import torch\nclass M(torch.nn.Module):\n    def forward(self, x):\n        return None\n"
                    "def build():\n    return M(), (torch.ones(1, 4),)\n", "build", ["returns no tensor"]),
    "scalar_output": ("import torch\nclass M(torch.nn.Module):\n    def forward(self, x):\n        return 3.0\n"
                      "def build():\n    return M(), (torch.ones(1, 4),)\n", "build", ["non-tensor output (float 3.0 as output 0)"]),
    "returns_none": ("def build():\n    return None\n", "build", ["must return (model, example_inputs)", "NoneType"]),
    "raises": ("def build():\n    x = 1\n    raise RuntimeError('no weights here')\n", "build",
               ["line 3", "RuntimeError: no weights here"]),
    "syntax_error": ("def build(:\n    pass\n", "build", ["SyntaxError", "line 1"]),
    "import_error": ("import no_such_package_anywhere\n", "build", ["ModuleNotFoundError"]),
    "not_callable": ("build = 3\n", "build", ["build is a int, not a function"]),
    "no_function": ("def other():\n    pass\n", "build", ["has no function 'build'"]),
}


@pytest.mark.parametrize("case", sorted(BAD_MODELS))
def test_bad_model_files(case, tmp_path, capsys):
    source, func, phrases = BAD_MODELS[case]
    path = tmp_path / f"{case}.py"
    path.write_text(source)
    _user_error(capsys, ["opt", f"{path}:{func}"], *phrases)


def test_bad_model_paths(tmp_path, capsys):
    _user_error(capsys, ["trace", str(tmp_path / "nope.py") + ":build"], "no such file")
    _user_error(capsys, ["trace", str(tmp_path / "model.onnx")], "give file.py:function, file.pt2 or file.sir")
    _user_error(capsys, ["trace", str(tmp_path / "nope.sir")], "no such IR file")
    (tmp_path / "junk.pt2").write_bytes(b"not a zip")
    _user_error(capsys, ["trace", str(tmp_path / "junk.pt2")], "not a program saved with torch.export.save")
    assert main(["trace", EXAMPLE, "-o", str(tmp_path / "ok.sir")]) == 0
    _user_error(capsys, ["trace", str(tmp_path / "ok.sir"), "--check"], "is sliver IR already")
    (tmp_path / "junk.sir").write_text("func @m(")
    _user_error(capsys, ["opt", str(tmp_path / "junk.sir")], "junk.sir: line 1")


def test_bad_inputs_files(example_x86, tmp_path, capsys):
    art = str(example_x86)
    _user_error(capsys, ["run", art, "--inputs", str(tmp_path / "nope.npz")], "--inputs", "no such file")
    (tmp_path / "junk.npz").write_bytes(b"junk")
    _user_error(capsys, ["run", art, "--inputs", str(tmp_path / "junk.npz")], "not an .npz of arrays")
    np.save(tmp_path / "one.npy", np.zeros((1, 3, 32, 32), np.float32))
    _user_error(capsys, ["run", art, "--inputs", str(tmp_path / "one.npy")], "a single .npy array")
    np.savez(tmp_path / "objects.npz", x=np.array([{"a": 1}], dtype=object))
    _user_error(capsys, ["run", art, "--inputs", str(tmp_path / "objects.npz")], "cannot be read")
    np.savez(tmp_path / "two.npz", np.zeros((1, 3, 32, 32), np.float32), np.zeros(3, np.float32))
    _user_error(capsys, ["run", art, "--inputs", str(tmp_path / "two.npz")], "holds 2 array(s)")
    np.savez(tmp_path / "shape.npz", np.zeros((1, 3, 16, 16), np.float32))
    _user_error(capsys, ["run", art, "--inputs", str(tmp_path / "shape.npz")], "shape")
    np.savez(tmp_path / "dtype.npz", np.zeros((1, 3, 32, 32), np.int64))
    _user_error(capsys, ["run", art, "--inputs", str(tmp_path / "dtype.npz")], "float32")


def test_torch_failures_print_no_traceback_either(tmp_path):
    """torch logs a traceback of its own while failing (export's fake tensors, export.load):
    a real process's stderr must hold the one-line error only."""
    model = tmp_path / "m.py"
    model.write_text("import torch\ndef build():\n    return torch.nn.Linear(4, 3), (torch.ones(2, 7),)\n")
    (tmp_path / "junk.pt2").write_bytes(b"not a zip")
    for spec, phrase in ((f"{model}:build", "torch.export could not capture the model"),
                         (str(tmp_path / "junk.pt2"), "not a program saved with torch.export.save")):
        proc = subprocess.run([sys.executable, "-m", "sliver.tools.cli", "trace", spec], capture_output=True,
                              text=True)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.startswith(f"sliver: error: ") and phrase in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr, proc.stderr
