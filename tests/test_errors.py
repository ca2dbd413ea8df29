"""Bad input gets a clear sliver error, never a crash inside TVM."""

import json
import shutil
import zipfile

import numpy as np
import pytest
import torch
from torch import nn

import sliver
from sliver.common.errors import ArtifactError, InputError, SliverError, SliverWarning, TargetError, UnsupportedOpError


class UsesUnsupported(nn.Module):
    def forward(self, x):
        y = torch.relu(x)
        y = torch.cumprod(y, dim=1)  # not in sliver's op set
        return torch.fft.rfft(y).real  # neither is this


def test_unsupported_ops_are_all_named_with_source_lines_before_compiling(monkeypatch):
    import sliver.backends.tvm.build as build

    def no_compile(*a, **k):
        raise AssertionError("nothing may be compiled")

    monkeypatch.setattr(build, "compile_module", no_compile)
    with pytest.raises(UnsupportedOpError) as e:
        sliver.lower(UsesUnsupported(), (torch.randn(2, 8),), target="x86_64")
    msg = str(e.value)
    assert "aten.cumprod.default" in msg and "test_errors.py:19" in msg and "torch.cumprod(y, dim=1)" in msg
    assert "aten.fft_rfft.default" in msg and "test_errors.py:20" in msg
    assert "Nothing was compiled" in msg
    assert {p[0] for p in e.value.problems} == {"aten.cumprod.default", "aten.fft_rfft.default", "aten.real.default"}


@pytest.mark.parametrize("target, match", [
    ("riscv", "unknown target 'riscv'; choose one of x86_64, arm64"),
    ({"kind": "cuda"}, "kind.*llvm"),
    ({"kind": "llvm", "mtriple": "riscv64-linux-gnu"}, "unsupported mtriple"),
    ({"kind": "llvm", "mcpu": "native"}, "native"),
    (42, "a target is a name"),
])
def test_bad_targets(target, match):
    with pytest.raises(TargetError, match=match):
        sliver.lower(nn.ReLU(), (torch.randn(2),), target=target)


def test_truncated_artifact(example_x86, tmp_path):
    data = example_x86.read_bytes()
    bad = tmp_path / "truncated.sliver"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(ArtifactError, match="corrupt or truncated"):
        sliver.load(bad)


def test_not_an_artifact(tmp_path):
    bad = tmp_path / "junk.sliver"
    bad.write_bytes(b"hello" * 100)
    with pytest.raises(ArtifactError, match="corrupt or truncated"):
        sliver.load(bad)
    with pytest.raises(ArtifactError, match="no such artifact"):
        sliver.load(tmp_path / "missing.sliver")


def _rewrite(src, dst, **replace):
    with zipfile.ZipFile(src) as z:
        files = {n: z.read(n) for n in z.namelist()}
    files.update(replace)
    with zipfile.ZipFile(dst, "w") as z:
        for n, d in files.items():
            z.writestr(n, d)


def test_tampered_library_is_refused_before_loading(example_x86, tmp_path):
    with zipfile.ZipFile(example_x86) as z:
        lib = bytearray(z.read("lib.so"))
    lib[-100] ^= 0xFF
    bad = tmp_path / "tampered.sliver"
    _rewrite(example_x86, bad, **{"lib.so": bytes(lib)})
    with pytest.raises(ArtifactError, match="sha256.*modified or damaged"):
        sliver.load(bad)


def test_wrong_architecture_is_refused(example_arm64):
    with pytest.raises(ArtifactError, match="compiled for aarch64 .*this machine is x86_64.*--emulate"):
        sliver.load(example_arm64)


def test_manifest_lying_about_architecture(example_x86, tmp_path):
    with zipfile.ZipFile(example_x86) as z:
        manifest = json.loads(z.read("manifest.json"))
    manifest["target"]["arch"] = "aarch64"
    bad = tmp_path / "lying.sliver"
    _rewrite(example_x86, bad, **{"manifest.json": json.dumps(manifest)})
    with pytest.raises(ArtifactError, match="built for x86_64, the manifest says aarch64"):
        sliver.load(bad)


def test_wrong_input_shape_dtype_and_count(example_x86):
    m = sliver.load(example_x86)
    good = np.zeros((1, 3, 32, 32), np.float32)
    with pytest.raises(InputError, match=r"must have shape \[1, 3, 32, 32\], got \[1, 3, 28, 28\]"):
        m(np.zeros((1, 3, 28, 28), np.float32))
    with pytest.raises(InputError, match="must be float32, got float64"):
        m(good.astype(np.float64))
    with pytest.raises(InputError, match="takes 1 input"):
        m(good, good)
    assert m(good).shape == (1, 10)


def test_save_is_atomic(example_x86, tmp_path, monkeypatch):
    from sliver.runtime.artifact import read

    art = read(example_x86)
    dest = tmp_path / "model.sliver"
    shutil.copy(example_x86, dest)
    before = dest.read_bytes()

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(zipfile.ZipFile, "writestr", boom)
    with pytest.raises(OSError):
        art.save(dest)
    assert dest.read_bytes() == before  # the old file is intact
    assert [p.name for p in tmp_path.iterdir()] == ["model.sliver"]  # no temp files left


def test_training_mode_batchnorm_is_evaluated_in_eval_mode():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).train()
    with pytest.warns(SliverWarning, match="training mode"):
        module = sliver.trace(model, (torch.randn(1, 3, 8, 8),))
    assert model.training  # left as the user had it
    assert any(op.kind == "batch_norm" for op in module.ops)


def test_export_failure_is_a_sliver_error():
    class DataDependent(nn.Module):
        def forward(self, x):
            if x.sum() > 0:
                return x
            return -x

    with pytest.raises(SliverError, match="torch.export could not capture the model"):
        sliver.trace(DataDependent(), (torch.randn(3),))


def test_dict_outputs_become_golden_arrays(tmp_path):
    class DictOut(nn.Module):
        def forward(self, x):
            return {"relu": torch.relu(x), "neg": -x}

    x = torch.randn(2, 3)
    path = sliver.lower(DictOut(), (x,), target="x86_64").save(tmp_path / "d.sliver")
    m = sliver.load(path)
    assert all(r["ok"] for r in m.verify())
    relu, neg = m(x.numpy())
    np.testing.assert_allclose(relu, torch.relu(x).numpy())
    np.testing.assert_allclose(neg, -x.numpy())
