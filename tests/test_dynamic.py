"""Dynamic shapes end to end: torch.export Dims stay symbolic through the trace, the
passes, the Relax lowering and the artifact; one artifact runs every size in range and
refuses others with an InputError (x86 here, the emulated Pi under ``-m emulated``)."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest
import torch
from torch.export import Dim

import precompile
import sliver
from helpers import assert_close
from sliver.common.errors import InputError, SliverError
from sliver.ir.dims import DimVar
from sliver.ir.interp import run
from sliver.tools.emulator import emulate


def emulated(test):
    """A test on the emulated Pi: slow, and skipped where the emulator is not installed."""
    skip = pytest.mark.skipif(not emulate.is_ready(), reason="emulated Raspberry Pi not installed")
    return pytest.mark.slow(pytest.mark.emulated(skip(test)))

BATCHES = (1, 3, 7, 16)
TEXT_SIZES = ((1, 1), (2, 7), (3, 33), (1, 512))


def cnn():
    """A small CNN (conv, batch norm, pools, linear) with a dynamic batch 1..16."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
            torch.nn.Conv2d(8, 16, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
            torch.nn.Linear(16, 10)).eval()
        with torch.no_grad():
            model[1].running_mean.normal_(0, 0.1)
            model[1].running_var.uniform_(0.5, 1.5)
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    return model, (x,), ({0: Dim("batch", min=1, max=16)},)


def _text(kind: str):
    """BERT or GPT-2 from transformers (random weights, small config, 512 positions)
    with a dynamic batch 1..16 and sequence length 1..512."""
    import transformers as t

    import realzoo

    transformers_logging = t.logging.get_verbosity()
    t.logging.set_verbosity_error()
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            if kind == "bert":
                model = t.BertModel(t.BertConfig(**{**realzoo._encoder_kwargs(), "max_position_embeddings": 512}))
            else:
                model = t.GPT2Model(t.GPT2Config(vocab_size=96, n_embd=32, n_layer=2, n_head=2, n_positions=512))
    finally:
        t.logging.set_verbosity(transformers_logging)
    ids = torch.randint(0, 96, (2, 12), generator=torch.Generator().manual_seed(2))
    dims = {0: Dim("batch", min=1, max=16), 1: Dim("seq", min=1, max=512)}
    return realzoo.Output(model).eval(), (ids,), ((dims,),)  # Output.forward(*args): a tuple per argument


BUILDERS = {"cnn": cnn, "bert": lambda: _text("bert"), "gpt2": lambda: _text("gpt2")}


def lowered(name: str, target: str) -> str:
    """The artifact of a dynamic model, lowered once (a precompile job)."""
    model, inputs, dynamic = BUILDERS[name]()
    path = precompile.out(f"dynamic-{name}-{target}.sliver")
    sliver.lower(model, inputs, target=target, dynamic_shapes=dynamic).save(path)
    return str(path)


def _inputs(name: str, size) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(hash(size) % 1000)
    if name == "cnn":
        return (torch.randn(size, 3, 16, 16, generator=g),)
    batch, seq = size
    return (torch.randint(0, 96, (batch, seq), generator=g),)


SIZES = {"cnn": BATCHES, "bert": TEXT_SIZES, "gpt2": TEXT_SIZES}
#: the models the end-to-end tests lower
MODELS = ["cnn", "bert", "gpt2"]


def _job(target):
    return pytest.mark.precompiled.with_args(lambda params: [("call", "test_dynamic", "lowered", params["name"],
                                                             target)])


@_job("x86_64")
@pytest.mark.parametrize("name", MODELS)
def test_lowered_once_runs_every_size_in_range(name):
    path = precompile.get(("call", "test_dynamic", "lowered", name, "x86_64"))
    model = BUILDERS[name]()[0]
    compiled = sliver.load(path)
    for size in SIZES[name]:
        inputs = _inputs(name, size)
        with torch.no_grad():
            want = model(*inputs).numpy()
        got = compiled.run(*[x.numpy() for x in inputs])[0]
        assert got.shape == want.shape
        assert_close(got, want, rtol=1e-4, what=f"{name} at size {size}")
    # the manifest records each dynamic dimension's name and range
    with zipfile.ZipFile(path) as z:
        manifest = json.loads(z.read("manifest.json"))
    want_dims = [{"name": "batch", "min": 1, "max": 16}]
    if name != "cnn":
        want_dims.append({"name": "seq", "min": 1, "max": 512})
    assert manifest["format_version"] == 3 and manifest["dims"] == want_dims
    assert manifest["inputs"][0]["shape"][0] == "batch"
    # sizes outside the range: a clear InputError, before anything runs
    bad = (17, 3, 16, 16) if name == "cnn" else (2, 513)
    dtype = np.float32 if name == "cnn" else np.int64
    with pytest.raises(InputError, match=r"must be in \[1, (16|512)\], got (17|513)"):
        compiled.run(np.zeros(bad, dtype))
    with pytest.raises(InputError, match=r"dimension 0 \(batch\) must be in \[1, 16\], got 0"):
        compiled.run(np.zeros((0,) + bad[1:], dtype))


@_job("arm64")
@emulated
@pytest.mark.parametrize("name", MODELS)
def test_emulated_pi_runs_every_size_in_range(name, tmp_path):
    path = precompile.get(("call", "test_dynamic", "lowered", name, "arm64"))
    model = BUILDERS[name]()[0]
    sizes = SIZES[name]
    inputs = {f"in_{i}": _inputs(name, s)[0].numpy() for i, s in enumerate(sizes)}
    np.savez(tmp_path / "inputs.npz", **inputs)
    bad = np.zeros((17, 3, 16, 16), np.float32) if name == "cnn" else np.zeros((2, 513), np.int64)
    np.save(tmp_path / "bad.npy", bad)
    script = tmp_path / "run_sizes.py"
    script.write_text(
        "import sys, numpy as np\n"
        "from sliver.runtime.artifact import load\n"
        "from sliver.common.errors import InputError\n"
        "m = load(sys.argv[1])\n"
        "ins = np.load(sys.argv[2])\n"
        "np.savez(sys.argv[3], **{k: m.run(ins[k])[0] for k in ins.files})\n"
        "try:\n"
        "    m.run(np.load(sys.argv[4]))\n"
        "    print('ACCEPTED')\n"
        "except InputError as e:\n"
        "    print('InputError:', e)\n"
    )
    out = tmp_path / "outputs.npz"
    proc = emulate.run_python([str(script), str(path), str(tmp_path / "inputs.npz"), str(out),
                               str(tmp_path / "bad.npy")], timeout=1800)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "InputError:" in proc.stdout and "must be in [1," in proc.stdout, proc.stdout
    got = np.load(out)
    for i, size in enumerate(sizes):
        with torch.no_grad():
            want = model(torch.from_numpy(inputs[f"in_{i}"])).numpy()
        assert_close(got[f"in_{i}"], want, rtol=1e-4, what=f"{name} on the emulated Pi at size {size}")


def test_traced_module_keeps_dims_symbolic():
    model, inputs, dynamic = cnn()
    m = sliver.trace(model, inputs, dynamic_shapes=dynamic)
    assert m.dim_vars() == [DimVar("batch", 1, 16)]
    assert str(m.inputs[0].type) == "f32[batch,3,16,16]" and str(m.outputs[0].type) == "f32[batch,10]"
    # the default pipeline keeps them (batch norm folded into the conv, shapes untouched)
    sliver.api.optimize(m)
    assert str(m.outputs[0].type) == "f32[batch,10]"
    # without dynamic_shapes every dimension is the example's
    assert str(sliver.trace(model, inputs).inputs[0].type) == "f32[2,3,16,16]"


def test_a_pt2_with_a_dynamic_dim_is_never_fixed(tmp_path):
    model, inputs, dynamic = cnn()
    ep = torch.export.export(model, inputs, dynamic_shapes=dynamic)
    torch.export.save(ep, tmp_path / "m.pt2")
    m = sliver.trace(torch.export.load(tmp_path / "m.pt2"))
    (var,) = m.dim_vars()
    assert (var.lo, var.hi) == (1, 16) and str(m.inputs[0].type) == f"f32[{var.name},3,16,16]"


def test_dynamic_dims_need_a_maximum():
    model, inputs, _ = cnn()
    with pytest.raises(SliverError, match=r"dynamic dimension batch has no maximum.*Dim\('batch'"):
        sliver.trace(model, inputs, dynamic_shapes=({0: Dim("batch", min=1)},))


def test_a_dim_the_model_fixes_is_a_clear_error():
    class Fixed(torch.nn.Module):
        def forward(self, x):
            return x.reshape(2, -1)  # the batch must be 2

    with pytest.raises(SliverError, match="could not keep the dimensions dynamic"):
        sliver.trace(Fixed(), (torch.zeros(2, 3),), dynamic_shapes=({0: Dim("batch", min=1, max=8)},))


def test_dynamic_shapes_with_an_exported_program_is_refused():
    model, inputs, dynamic = cnn()
    ep = torch.export.export(model, inputs, dynamic_shapes=dynamic)
    with pytest.raises(SliverError, match="already carries its dynamic dimensions"):
        sliver.trace(ep, inputs, dynamic_shapes=dynamic)


# -- passes that need static shapes: how they treat symbolic dimensions ----------------------


def wide_cnn(dynamic: bool):
    """A CNN whose first conv has 47 output channels (channel padding pads it to 48) and
    whose second is a 3x3 stride-1 32→32 conv (a Winograd candidate when static)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        model = torch.nn.Sequential(
            torch.nn.Conv2d(3, 47, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(47, 32, 1), torch.nn.ReLU(),
            torch.nn.Conv2d(32, 32, 3, padding=1), torch.nn.ReLU()).eval()
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(4))
    return model, (x,), (({0: Dim("batch", min=1, max=8)},) if dynamic else None)


def compiled_wide(dynamic: bool):
    """(artifact path, names of the Winograd functions) of :func:`wide_cnn`, x86_64."""
    from sliver.backends.tvm.build import compile_module
    from sliver.package import package

    model, inputs, dims = wide_cnn(dynamic)
    m = sliver.trace(model, inputs, dynamic_shapes=dims)
    sliver.api.optimize(m)
    result = compile_module(m, "x86_64")
    golden = {"input_0": inputs[0].numpy(), "output_0": model(*inputs).detach().numpy()}
    art = package(m, result.target, "default", result.library, golden, tvm_version="-", rtol=1e-3, atol=1e-4)
    path = precompile.out(f"dynamic-wide-{dynamic}.sliver")
    art.save(path)
    return str(path), result.winograd


def test_a_dynamic_batch_conv_gets_the_packed_kernel_never_winograd():
    """sliver's kernel choice for a 3x3 stride-1 32→32 conv: Winograd when every shape
    is static; the packed-weight kernel with a symbolic batch; TVM's generic conv2d
    when another dimension is symbolic."""
    from tvm import relax, tirx

    from sliver.backends.tvm.schedules.conv2d import kernel_choice
    from sliver.backends.tvm.targets import resolve, tvm_target

    target = tvm_target(resolve("x86_64"))
    w = relax.Var("w", relax.TensorType([3, 3, 32, 32], "float32"))

    def choice(shape):
        x = relax.Var("x", relax.TensorType(shape, "float32"))
        call = relax.BlockBuilder().normalize(
            relax.op.nn.conv2d(x, w, padding=1, data_layout="NHWC", kernel_layout="HWIO"))
        picked = kernel_choice(call, target)
        return picked and picked[0]

    assert choice([2, 16, 16, 32]) == "winograd"
    assert choice([tirx.Var("batch", "int64"), 16, 16, 32]) == "packed"
    assert choice([2, tirx.Var("h", "int64"), 16, 32]) is None


@pytest.mark.precompiled.with_args(lambda params: [("call", "test_dynamic", "compiled_wide", True),
                                                   ("call", "test_dynamic", "compiled_wide", False)])
def test_winograd_and_channel_padding_with_a_dynamic_batch():
    """A conv with a symbolic dimension is never a Winograd conv (a dynamic batch gets the
    packed-weight kernel); channel padding (an axis the conv fixes) still applies."""
    path, winograd = precompile.get(("call", "test_dynamic", "compiled_wide", True))
    _, static_winograd = precompile.get(("call", "test_dynamic", "compiled_wide", False))
    assert static_winograd and not winograd
    model = wide_cnn(True)[0]
    compiled = sliver.load(path)
    for n in (1, 5, 8):
        x = torch.randn(n, 3, 16, 16, generator=torch.Generator().manual_seed(n))
        with torch.no_grad():
            want = model(x).numpy()
        assert_close(compiled.run(x.numpy())[0], want, rtol=1e-4, what=f"batch {n}")


def test_pruning_report_counts_dynamic_dims_at_their_largest():
    from sliver.passes.prune import count_params_and_macs, pruned

    model, inputs, dims = cnn()
    dynamic = sliver.trace(model, inputs, dynamic_shapes=dims)
    at_16 = sliver.trace(model, (torch.zeros(16, 3, 16, 16),))
    assert count_params_and_macs(dynamic) == count_params_and_macs(at_16)
    small, report = pruned(dynamic, amount=0.25)
    assert str(small.inputs[0].type) == "f32[batch,3,16,16]"  # pruning keeps the dims symbolic
    assert report["macs_before"] == count_params_and_macs(at_16)[1] > report["macs_after"] > 0
    x = np.random.default_rng(0).standard_normal((5, 3, 16, 16)).astype(np.float32)
    assert run(small, [x])[0].shape == (5, 10)


def test_cli_keeps_dynamic_dims_of_a_pt2_and_of_a_builder(tmp_path):
    from sliver.tools.cli import main

    model, inputs, dynamic = cnn()
    torch.export.save(torch.export.export(model, inputs, dynamic_shapes=dynamic), tmp_path / "m.pt2")
    assert main(["trace", str(tmp_path / "m.pt2"), "-o", str(tmp_path / "pt2.sir")]) == 0
    text = (tmp_path / "pt2.sir").read_text()
    assert " in [1, 16] {" in text.splitlines()[0] and ",3,16,16]" in text.splitlines()[0]
    builder = tmp_path / "dyn.py"
    builder.write_text(
        "import torch\n"
        "from torch.export import Dim\n"
        "def build():\n"
        "    model = torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.ReLU())\n"
        "    return model, (torch.zeros(2, 8),), ({0: Dim('batch', min=1, max=64)},)\n")
    assert main(["trace", f"{builder}:build", "-o", str(tmp_path / "py.sir")]) == 0
    first = (tmp_path / "py.sir").read_text().splitlines()[0]
    assert first.endswith("(%input: f32[batch,8]) where batch in [1, 64] {"), first


def test_dynamic_shapes_with_a_traced_module_is_refused():
    model, inputs, dynamic = cnn()
    m = sliver.trace(model, inputs)
    with pytest.raises(SliverError, match="a traced Module already has its dimensions"):
        sliver.lower(m, inputs, dynamic_shapes=dynamic)
