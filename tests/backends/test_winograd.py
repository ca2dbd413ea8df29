"""Winograd 3x3 convolutions (sliver.backends.tvm.schedules.winograd): which convs
get them, that ``winograd=False`` turns them off, and that the compiled model equals
torch (float64) on awkward shapes — batch 2, 7x7 maps (not a multiple of the 4x4
output tile), no padding (5x5 outputs, F(2x2)), input channels that are not a
multiple of the vector width, bias + residual add + ReLU epilogues."""

from __future__ import annotations

import numpy as np
import pytest

tvm = pytest.importorskip("tvm")
torch = pytest.importorskip("torch")

import precompile  # noqa: E402
from helpers import workspace_allocs_in_parallel_loops  # noqa: E402
import sliver  # noqa: E402
from sliver.backends.tvm import schedules as S  # noqa: E402
from sliver.backends.tvm.schedules import common, winograd  # noqa: E402
from sliver.backends.tvm.targets import resolve, tvm_target  # noqa: E402
from sliver.backends.tvm.tuning import fused_module  # noqa: E402

nn = torch.nn


class Net(nn.Module):
    """Three convs that take Winograd (a, b, e) and two that stay direct (s: 1x1,
    f: 16 input channels)."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(36, 48, 3, padding=1)  # F(4x4) on 7x7; 36 inputs: 4-lane input transform on AVX2
        self.b = nn.Conv2d(48, 48, 3, padding=1)  # F(4x4), + residual + ReLU
        self.e = nn.Conv2d(48, 40, 3)  # no padding: 5x5 outputs, F(2x2) (direct on AVX-512: 40 = 2.5 vectors)
        self.s = nn.Conv2d(40, 16, 1)
        self.f = nn.Conv2d(16, 32, 3, padding=1)  # too few channels: direct

    def forward(self, x):
        a = torch.relu(self.a(x))
        b = torch.relu(self.b(a) + a)
        e = torch.relu(self.e(b))
        return self.f(self.s(e))


def winograd_convs(target) -> dict[str, int]:
    """How many of Net's convs are Winograd ones for ``target``, per tile size: a and b
    (48 output channels, 7x7) take F(4x4) and e (40 output channels, 5x5) F(2x2) when
    their output channels fill whole vectors of the target (4 lanes on NEON, 8 on AVX2:
    all three; 16 on AVX-512: 40 does not, so e stays direct)."""
    lanes = resolve(target).lanes
    return {"winograd4x4": 2 * (48 % lanes == 0), "winograd2x2": int(40 % lanes == 0)}


def n_winograd(target) -> int:
    return sum(winograd_convs(target).values())


#: Net's convs
CONVS = 5


def _net():
    torch.manual_seed(0)
    return Net().eval(), torch.randn(2, 36, 7, 7)


@pytest.fixture(scope="session")
def net():
    model, x = _net()
    with torch.no_grad():
        want = model.double()(x.double()).numpy()
    return model.float(), x, want


def lowered(target, winograd):
    """Net lowered for ``target`` (a precompile job): the saved artifact's path."""
    model, x = _net()
    art = sliver.lower(model, (x,), target=target, tune=False, winograd=winograd)
    return art.save(precompile.out(f"winograd-{target}-{winograd}.sliver"))


def _lowered(target, winograd):
    from sliver.runtime.artifact import read

    return read(precompile.get(("call", "test_winograd", "lowered", target, winograd)))


@pytest.fixture(scope="session")
def traced(net):
    model, x, _ = net
    return sliver.trace(model, (x,))


def _kernels(module, target="x86_64", **kw):
    from tvm import tirx

    mod = fused_module(module, target, **kw)
    return {gv.name_hint: f for gv, f in mod.functions_items() if isinstance(f, tirx.PrimFunc)}


@pytest.mark.parametrize("target", ["x86-64-v3", "x86-64-v4", "arm64"])  # 8, 16 and 4 lanes, on any host
def test_dispatch_picks_winograd_only_for_wide_3x3_stride1_convs(traced, target):
    names = list(_kernels(traced, target))
    wino = [n for n in names if "winograd" in n]
    direct = [n for n in names if "conv2d" in n and "winograd" not in n]
    want = winograd_convs(target)
    assert len(wino) == n_winograd(target) and len(direct) == CONVS - n_winograd(target), names
    assert {m: sum(m in n for n in wino) for m in want} == want, wino
    if resolve(target).lanes == 8:  # AVX2: all three wide 3x3 stride-1 convs
        assert want == {"winograd4x4": 2, "winograd2x2": 1}
    # the epilogues fuse into the Winograd function like into a direct conv
    assert any("add" in n and "relu" in n for n in wino), wino


def test_option_turns_winograd_off(traced):
    names = list(_kernels(traced, winograd=False))
    assert not any("winograd" in n for n in names), names
    assert sum("conv2d" in n for n in names) == CONVS, names


@pytest.mark.parametrize("cin,cout,oh,lanes,want", [
    (64, 64, 56, 8, 4), (256, 256, 7, 8, 4), (64, 64, 5, 8, 2), (64, 64, 6, 8, 2),
    (512, 512, 7, 8, 2),  # F(4x4) weights would be 36 MB: F(2x2)'s are 16 MB
    (1024, 1024, 7, 8, None),  # even F(2x2)'s would be 64 MB
    (16, 64, 56, 8, None),  # too few input channels
    (64, 36, 56, 8, None),  # output channels not a multiple of the vector
    (64, 36, 56, 4, 4),  # … which they are on NEON
    (64, 64, 3, 8, None),  # maps smaller than a tile
])
def test_choose(cin, cout, oh, lanes, want):
    cpu = common.CPU(lanes=lanes, registers=16 if lanes == 8 else 32, cores=2)
    assert winograd.choose(cin, cout, oh, oh, cpu) == want


def test_matrices_compute_a_correlation():
    """Aᵀ[(G g) ⊙ (Bᵀ d)] equals the 1-D correlation y[i] = Σ_k d[i + k] g[k]."""
    rng = np.random.default_rng(0)
    for m in (2, 4):
        a, b, g = winograd.matrices(m)
        d, k = rng.standard_normal(m + 2), rng.standard_normal(3)
        want = np.array([d[i:i + 3] @ k for i in range(m)])
        np.testing.assert_allclose(a.T @ ((g @ k) * (b.T @ d)), want, rtol=1e-12, atol=1e-12)


def _runs_here(target) -> bool:
    """Whether this machine can run ``target``'s code (an x86-64-v3 artifact needs AVX2)."""
    from sliver.backends.tvm.targets import X86_LEVELS, host_target

    tgt, host = resolve(target), host_target()
    if tgt.portable and tgt.level is not None:
        return host.level is not None and X86_LEVELS.index(host.level) >= X86_LEVELS.index(tgt.level)
    return tgt.arch == host.arch


#: the host's own CPU and the portable AVX2 level (on an AVX-512 host: the other vector width)
X86_TARGETS = ["x86_64", "x86-64-v3"]


X86_JOBS = pytest.mark.precompiled.with_args(
    lambda params: [("call", "test_winograd", "lowered", params["target"], w) for w in (True, False)
                    if _runs_here(params["target"])])


@X86_JOBS
@pytest.mark.parametrize("target", X86_TARGETS)
def test_compiled_winograd_model_matches_torch(net, target):
    if not _runs_here(target):
        pytest.skip(f"this machine cannot run {target} code")
    _, x, want = net
    art = _lowered(target, True)
    assert len(art.manifest.winograd) == n_winograd(target), art.manifest.winograd
    got = art.load().run(x.numpy())[0]
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()


@X86_JOBS
@pytest.mark.parametrize("target", X86_TARGETS)
def test_compiled_direct_model_matches_torch(net, target):
    if not _runs_here(target):
        pytest.skip(f"this machine cannot run {target} code")
    _, x, want = net
    art = _lowered(target, False)
    assert art.manifest.winograd == []
    got = art.load().run(x.numpy())[0]
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()


def _winograd_func(target):
    """The fused Winograd PrimFunc (conv 32->32 on 8x8 + ReLU) legalized for ``target``."""
    from tvm import relax, tirx

    rng = np.random.default_rng(1)
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 32, 8, 8), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit(relax.op.nn.conv2d(x, relax.const(rng.standard_normal((32, 32, 3, 3)).astype("float32")),
                                           padding=1))
            out = bb.emit_output(bb.emit(relax.op.nn.relu(y)))
        bb.emit_func_output(out)
    with target:
        mod = tvm.transform.Sequential(S.front_passes())(bb.finalize())
    (func,) = [f for gv, f in mod.functions_items() if isinstance(f, tirx.PrimFunc) and "winograd" in gv.name_hint]
    return func


def test_neon_schedule_is_vectorized_by_4():
    """The arm64 target's Winograd function: 4-lane NEON vectors in all three stages."""
    arm = tvm_target(resolve("arm64"))
    sched, rule = S.schedule_primfunc(_winograd_func(arm), arm)
    assert rule == "winograd"
    text = sched.script()
    assert text.count("T.vectorized(") >= 3 and "T.parallel(" in text, text


@pytest.mark.parametrize("target", ["arm64", "haswell", "skylake-avx512"])
def test_per_tile_buffers_are_no_runtime_workspace_calls(target, monkeypatch):
    """The per-tile buffers (half-transformed input and output tiles, the GEMM's register
    tile) live in each parallel task's stack frame, not in TVM workspaces allocated and
    freed per tile: "local" ones were (28x28x128 F(4x4) on the emulated Pi: 2.5M of 19.1M
    instructions in the TVM runtime and the dynamic loader's TLS lookup), and so are
    buffers of 1 KB or more, which the transforms avoid by taking a tile's columns in
    groups (AVX2: 6 x 3 x 8 floats instead of 6 x 6 x 8; AVX-512: 6 x 2 x 16)."""
    tgt = tvm_target(resolve(target)) if target == "arm64" else tvm.target.Target(
        {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": target, "num-cores": 2})
    func = _winograd_func(tgt)
    sched, _ = S.schedule_primfunc(func, tgt)
    assert workspace_allocs_in_parallel_loops(sched, tgt) == []
    monkeypatch.setattr(common, "SCRATCH_SCOPE", "local")  # the old schedule: the check sees the calls
    sched, _ = S.schedule_primfunc(func, tgt)
    assert sorted(workspace_allocs_in_parallel_loops(sched, tgt)) == [
        "winograd_gemm_global_local", "winograd_input_rows_local", "winograd_output_rows_local"]


@pytest.mark.slow
@pytest.mark.emulated
@pytest.mark.precompiled.with_args(lambda params: [("call", "test_winograd", "lowered", "arm64", True)])
def test_arm64_winograd_artifact_matches_torch_on_emulated_pi(net, tmp_path):
    from helpers import emulated_first_output

    _, _, want = net
    path = precompile.get(("call", "test_winograd", "lowered", "arm64", True))  # lowered(): compiled ahead
    from sliver.runtime.artifact import read

    assert len(read(path).manifest.winograd) == n_winograd("arm64")
    got = emulated_first_output(path, tmp_path)
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()


def conv_library(hw, c):
    """A lone fp32 3x3 conv c→c (+ bias) on a hw x hw map, compiled for arm64 (a
    precompile job): the saved library's path."""
    from sliver.backends.tvm.build import compile_module
    from sliver.benchmarks.bench_lowbit import conv_layer

    module, _ = conv_layer("fp32", hw, c)
    path = precompile.out(f"winograd-conv{hw}x{c}-arm64.so")
    path.write_bytes(compile_module(module, "arm64").library)
    return path


@pytest.mark.slow
@pytest.mark.emulated
@pytest.mark.skipif(__import__("shutil").which("qemu-aarch64") is None, reason="counting needs Debian's qemu-user")
@pytest.mark.precompiled.with_args(lambda params: [("call", "test_winograd", "conv_library", 16, 64)])
def test_winograd_conv_executes_in_the_library_on_emulated_pi():
    """One call of a 16x16x64 Winograd conv on the emulated Pi: exact, and ~all of its
    instructions are the library's own — with per-tile workspace buffers 22% of them
    were TVM runtime calls (1.82M per call, 0.40M outside; now 1.40M, 0.02M: the VM's
    call and the one-per-call workspaces)."""
    from sliver.tools.emulator import icount
    from sliver.benchmarks.bench_lowbit import conv_layer

    module, (x,) = conv_layer("fp32", 16, 64)
    c = icount.count_library(precompile.get(("call", "test_winograd", "conv_library", 16, 64)), [x])
    assert any("winograd4x4" in f for f in c.functions), c.functions
    w, b = (torch.from_numpy(module.params[k]).double() for k in ("w", "b"))
    want = torch.nn.functional.conv2d(torch.from_numpy(x).double(), w, b, padding=1).numpy()
    assert np.abs(c.results[0] - want).max() <= 1e-5 * np.abs(want).max()
    assert sum(c.outside.values()) < 0.05 * c.per_call, (c.per_call, c.outside)
