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
        "        return torch.cumsum(x, 0) + torch.sort(x).values\n"
        "def build():\n"
        "    return M(), (torch.randn(4),)\n"
    )
    assert main(["trace", f"{model}:build", "--check"]) == 1
    out = capsys.readouterr().out
    assert "aten.cumsum.default" in out and "aten.sort.default" in out and "bad.py:4" in out
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
