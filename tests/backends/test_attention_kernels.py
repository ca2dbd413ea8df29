"""What transformer layers spend their time in, at the sizes real models have:

- matrix products whose register tile does not divide the rows or the columns
  (:func:`sliver.backends.tvm.schedules.dense.padded_tile`): ViT's 197 tokens are prime,
  the attention scores have 197 (ViT) or 1500 (Whisper) columns.  The product is computed
  over rows and columns padded to the tile's multiple and sliced; padded rows read A's
  last row again, padded columns a zero-padded copy of B;
- the softmax over the last axis (:func:`.elementwise.schedule_softmax`): one parallel loop
  over rows, partial max and sum per vector lane, whatever the row length;
- ``x ** 3`` of GPT-2's GELU as products, not a libm ``pow`` per element.

Each scheduled PrimFunc must equal the unscheduled one, for the AVX2 (x86-64-v3) and
AVX-512 (x86-64-v4) decisions alike, and the arm64 build must match torch on the
emulated Pi."""

from __future__ import annotations

import numpy as np
import pytest

tvm = pytest.importorskip("tvm")

from tvm import relax  # noqa: E402

from sliver.backends.tvm.schedules import common, dense  # noqa: E402
from sliver.backends.tvm.targets import resolve, tvm_target  # noqa: E402
from helpers import front_primfuncs, workspace_allocs_in_parallel_loops  # noqa: E402
from test_fast_float import LEVELS, check  # noqa: E402

TARGETS = LEVELS + ["arm64"]


@pytest.mark.parametrize("target", TARGETS)
def test_padded_tile_pads_prime_rows_and_keeps_good_exact_tiles(target):
    cpu = common.cpu_of(tvm_target(resolve(target)))
    rt, nv, rows, cols = dense.padded_tile(197, 768, cpu)
    assert rows % rt == 0 and 197 <= rows < 197 + rt and rt > 1 and cols == 768
    assert dense.dense_tile_cost(rt, nv, cpu) is not None  # fits the registers and the stack buffer
    assert dense.padded_tile(1, 768, cpu)[2] == 1  # a GEMV is never padded
    rt, nv, rows, cols = dense.padded_tile(128, 768, cpu)  # BERT's 128 rows: an exact tile is as good
    assert (rows, cols) == (128, 768) and (rt, nv) == dense.dense_tile(128, 768, cpu)
    with pytest.raises(common.NotApplicable):
        dense.padded_tile(197, 23, cpu)  # a packed weight needs whole vectors of columns
    rt, nv, rows, cols = dense.padded_tile(197, 197, cpu, pad_columns=True)
    assert cols % (nv * cpu.lanes) == 0 and 197 <= cols < 197 + nv * cpu.lanes and rows % rt == 0


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("m,k,n", [(197, 37, 96), (7, 64, 48), (1, 40, 32), (13, 33, 23)])
def test_linear_with_rows_the_tile_does_not_divide(level, m, k, n):
    """Rows padded to the tile (197, 7, 13), one row (never padded), K not a vector multiple,
    N not one (23: TVM's own matmul); bias + GELU stay fused into the product."""
    target = tvm_target(resolve(level))
    rng = np.random.default_rng(1)
    w = relax.const(rng.standard_normal((n, k)).astype("float32"))
    b = relax.const(rng.standard_normal((n,)).astype("float32"))
    funcs = front_primfuncs(lambda bb, x: bb.emit(relax.op.nn.gelu(bb.emit(relax.op.linear(x, w, b)))), [(1, m, k)],
                            target)
    (name,) = [nm for nm in funcs if "matmul" in nm]
    if n % common.cpu_of(target).lanes == 0:
        assert "gelu" in name and "add" in name, list(funcs)
        rows = dense.padded_tile(m, n, common.cpu_of(target))[2]
        assert (rows != m) == ("T_matmul_unpad" in funcs[name].script())
    used = check(funcs, target, level)
    assert used[name] == "dense", used
    assert workspace_allocs_in_parallel_loops(S_sched(funcs[name], target), target) == []


def S_sched(func, target):
    from sliver.backends.tvm import schedules as S

    return S.schedule_primfunc(func, target)[0]


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("a,c", [((1, 3, 197, 64), (1, 3, 64, 197)),  # ViT's QKᵀ (3 heads)
                                 ((1, 3, 197, 197), (1, 3, 197, 64)),  # its ·V: rows only
                                 ((2, 7, 33), (2, 33, 23)),
                                 ((1, 1, 9), (1, 9, 20))])
def test_attention_products_padded_to_the_tile(level, a, c):
    """QKᵀ scaled and masked by an additive mask (the epilogue reads the padded scratch
    through the slice), ·V, odd sizes, one row."""
    target = tvm_target(resolve(level))
    mask = relax.const(np.random.default_rng(2).standard_normal((1,) * (len(a) - 2) + (a[-2], c[-1]))
                       .astype("float32"))

    def build(bb, x, y):
        s = bb.emit(relax.op.multiply(bb.emit(relax.op.matmul(x, y)), relax.const(np.float32(0.125))))
        return bb.emit(relax.op.add(s, mask))

    funcs = front_primfuncs(build, [a, c], target)
    (name,) = [nm for nm in funcs if "matmul" in nm]
    assert "multiply" in name and "add" in name, list(funcs)
    cpu = common.cpu_of(target)
    _, _, rows, cols = dense.padded_tile(a[-2], c[-1], cpu, pad_columns=True)
    padded = (rows, cols) != (a[-2], c[-1])
    assert (dense.PADDED in funcs[name].script()) == padded
    assert ("T_pad_columns" in funcs[name].script()) == (cols != c[-1])
    assert check(funcs, target, level)[name] == "dense"
    assert workspace_allocs_in_parallel_loops(S_sched(funcs[name], target), target) == []


@pytest.mark.parametrize("target", TARGETS)
def test_arm64_and_x86_pick_padded_kernels_for_vit_shapes(target):
    """The decision for each target (NEON included): ViT-B/16's QKV and QKᵀ are padded."""
    tgt = tvm_target(resolve(target))
    rng = np.random.default_rng(3)
    w = relax.const(rng.standard_normal((96, 32)).astype("float32"))
    funcs = front_primfuncs(lambda bb, x: bb.emit(relax.op.linear(x, w)), [(1, 197, 32)], tgt)
    (f,) = [f for nm, f in funcs.items() if "matmul" in nm]
    assert dense.PACKED in f.script() and "T_matmul_unpad" in f.script()
    funcs = front_primfuncs(lambda bb, x, y: bb.emit(relax.op.matmul(x, y)), [(1, 2, 197, 16), (1, 2, 16, 197)], tgt)
    (f,) = funcs.values()
    assert dense.PADDED in f.script()


class _Attention(__import__("torch").nn.Module):
    """One attention head over 13 tokens of width 24 (nothing divides a vector tile)."""

    def __init__(self):
        import torch

        super().__init__()
        self.qkv = torch.nn.Linear(24, 72)
        self.out = torch.nn.Linear(24, 24)

    def forward(self, x):
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        return self.out(((q @ k.transpose(-1, -2)) * 0.2).softmax(-1) @ v)


@pytest.mark.slow
@pytest.mark.emulated
def test_arm64_padded_products_match_torch_on_the_emulated_pi(tmp_path):
    import torch

    import sliver
    from helpers import emulated_first_output

    torch.manual_seed(0)
    model = _Attention().eval()
    x = torch.randn(1, 13, 24)
    art = sliver.lower(model, (x,), target="arm64", tune=False)
    got = emulated_first_output(art.save(tmp_path / "attn.sliver"), tmp_path)
    with torch.no_grad():
        want = model(x).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("shape", [(2, 3, 37), (5, 16), (4, 1), (2, 200), (3, 7, 5)])
def test_softmax_rows_with_an_epilogue(level, shape):
    """Row lengths under, at and over the partial width and not multiples of it; the
    elementwise ops after the softmax fuse into its output loop."""
    target = tvm_target(resolve(level))
    bias = relax.const(np.random.default_rng(4).standard_normal(shape[-1:]).astype("float32"))

    def build(bb, x):
        y = bb.emit(relax.op.nn.softmax(x, axis=-1))
        return bb.emit(relax.op.add(relax.op.multiply(y, relax.const(np.float32(2.0))), bias))

    funcs = front_primfuncs(build, [shape], target)
    (name,) = [nm for nm in funcs if "softmax" in nm]
    assert "multiply" in name and "add" in name, list(funcs)
    assert check(funcs, target, level)[name] == "softmax"


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("exponent", [2.0, 3.0, 4.0, 2.5])
def test_power_by_a_small_whole_constant_is_products(level, exponent):
    from test_fast_float import run, runs_here

    from sliver.backends.tvm import schedules as S

    target = tvm_target(resolve(level))
    x = np.concatenate([np.linspace(-30, 30, 250, dtype=np.float32),
                        np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-30], np.float32)]).reshape(2, 128)
    (f,) = front_primfuncs(lambda bb, v: bb.emit(relax.op.power(v, relax.const(np.float32(exponent)))), [x.shape],
                           target).values()
    assert ("T.pow(" in f.script()) == (exponent == 2.5)
    if not runs_here(level):
        pytest.skip(f"this host cannot run {level} code")
    got = run(S.schedule_primfunc(f, target)[0], [x, np.zeros_like(x)], target)
    with np.errstate(invalid="ignore"):
        want = np.power(x.astype(np.float64), exponent).astype(np.float32)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_allclose(got[~np.isnan(want)], want[~np.isnan(want)], rtol=1e-6)


class _GroupedAttention(__import__("torch").nn.Module):
    """Grouped key/value heads (6 query heads reading 2 kv heads) under a boolean mask."""

    def forward(self, q, k, v, mask):
        import torch

        return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)


@pytest.mark.parametrize("rows", [1, 3])
def test_grouped_kv_heads_are_read_as_they_are_not_repeated(rows):
    """The queries of a kv head's group are stacked as rows of one product with that head's
    keys and values (no copy of the keys and values per query head), and the result is
    torch's, one decode row or several, with a mask that hides some positions."""
    import torch

    import sliver
    from sliver.backends.tvm.lower import to_relax

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, h, n, 8, generator=g) for h, n in ((6, rows), (2, 7), (2, 7)))
    mask = torch.arange(7)[None, :] <= torch.arange(rows)[:, None] + 3
    inputs = (q, k, v, mask[None, None])
    module = sliver.trace(_GroupedAttention(), inputs)
    assert "repeat" not in str(to_relax(module)), "the grouped heads were repeated"
    art = sliver.lower(module, inputs, target="x86_64", tune=False)
    with torch.no_grad():
        want = _GroupedAttention()(*inputs).numpy()
    np.testing.assert_allclose(art.load().run(*[t.numpy() for t in inputs])[0], want, rtol=1e-5, atol=1e-6)


def _attention_graph(axes, scale_first: bool):
    """``matmul(softmax(matmul(q, permute_dims(k, axes)) * 0.25), v)``, the scale on either side."""
    def build(bb, q, k, v):
        s = bb.emit(relax.op.matmul(q, bb.emit(relax.op.permute_dims(k, axes))))
        c = relax.const(np.float32(0.25))
        s = bb.emit(relax.op.multiply(c, s) if scale_first else relax.op.multiply(s, c))
        return bb.emit(relax.op.matmul(bb.emit(relax.op.nn.softmax(s, axis=-1)), v))

    return build


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("k_shape,axes,scale_first", [((1, 2, 260, 16), [0, 1, 3, 2], False),  # k [B, H, N, D]
                                                      ((1, 260, 2, 16), [0, 2, 3, 1], True)])  # Whisper's [B, N, H, D]
def test_long_attention_is_one_kernel_per_block_of_rows(level, k_shape, axes, scale_first):
    """Over ≥ MIN_KEYS keys (260: no multiple of a tile's columns) the scores, softmax and
    product with v are one function reading k through its transpose, the 11 query rows
    padded to the tile's multiple; scheduled == unscheduled == numpy's softmax(q kᵀ / 4) v."""
    from test_fast_float import run, runs_here

    from sliver.backends.tvm import schedules as S
    from sliver.backends.tvm.schedules import attention

    target = tvm_target(resolve(level))
    funcs = front_primfuncs(_attention_graph(axes, scale_first), [(1, 2, 11, 16), k_shape, (1, 2, 260, 32)], target)
    assert list(funcs) == ["attention"], list(funcs)
    assert check(funcs, target, level) == {"attention": "attention"}
    rows = attention.choose_tiles(11, 260, 32, common.cpu_of(target))[3]
    assert rows > 11 and ("attn_out_unpad" in funcs["attention"].script())
    if not runs_here(level):
        pytest.skip(f"this host cannot run {level} code")
    rng = np.random.default_rng(5)
    q, k, v = (rng.standard_normal(s).astype("float32") * 2 for s in [(1, 2, 11, 16), k_shape, (1, 2, 260, 32)])
    got = run(S.schedule_primfunc(funcs["attention"], target)[0], [q, k, v, np.zeros((1, 2, 11, 32), "float32")],
              target)
    s = q.astype(np.float64) @ np.transpose(k, axes).astype(np.float64) * 0.25
    p = np.exp(s - s.max(-1, keepdims=True))
    np.testing.assert_allclose(got, (p / p.sum(-1, keepdims=True)) @ v, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("level", LEVELS)
def test_short_attention_stays_three_functions(level):
    """Under MIN_KEYS keys (ViT's 197) the scores fit the caches: product, softmax, product."""
    target = tvm_target(resolve(level))
    funcs = front_primfuncs(_attention_graph([0, 1, 3, 2], False), [(1, 2, 12, 16), (1, 2, 197, 16), (1, 2, 197, 32)],
                            target)
    assert "attention" not in funcs and any("softmax" in n for n in funcs), list(funcs)


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("shape", [(2, 3, 37), (5, 16), (4, 1), (2, 200), (3, 7, 5)])
def test_layer_norm_rows_with_an_epilogue(level, shape):
    """Row lengths under, at and over the partial width and not multiples of it; a scale
    after it fuses in; scheduled == unscheduled == numpy's."""
    from test_fast_float import run, runs_here

    from sliver.backends.tvm import schedules as S

    target = tvm_target(resolve(level))
    rng = np.random.default_rng(6)
    g, b = (rng.standard_normal(shape[-1:]).astype("float32") for _ in range(2))

    def build(bb, x):
        y = bb.emit(relax.op.nn.layer_norm(x, relax.const(g), relax.const(b), axes=[-1]))
        return bb.emit(relax.op.multiply(y, relax.const(np.float32(2.0))))

    funcs = front_primfuncs(build, [shape], target)
    (name,) = funcs
    assert "layer_norm" in name and "multiply" in name, list(funcs)
    assert check(funcs, target, level)[name] == "layer_norm"
    if not runs_here(level):
        pytest.skip(f"this host cannot run {level} code")
    x = rng.standard_normal(shape).astype("float32") * 3 + 1
    got = run(S.schedule_primfunc(funcs[name], target)[0], [x, g, b, np.zeros(shape, "float32")], target)
    xd = x.astype(np.float64)
    dev = xd - xd.mean(-1, keepdims=True)
    want = (dev / np.sqrt((dev ** 2).mean(-1, keepdims=True) + 1e-5) * g + b) * 2
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


class _ConstantMaskAttention(__import__("torch").nn.Module):
    """Attention under a constant boolean mask (a buffer, broadcast), as ViT-B/16 traces."""

    def __init__(self, keep):
        import torch

        super().__init__()
        self.register_buffer("keep", torch.tensor(keep).reshape(1, 1, 1, -1))

    def forward(self, q, k, v):
        import torch

        mask = self.keep.expand(1, 1, q.shape[2], k.shape[2])
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)


@pytest.mark.parametrize("keep", [[True] * 7, [True] * 6 + [False]])
def test_a_constant_mask_that_hides_nothing_is_left_out(keep):
    """An all-true mask costs no where and no dead-row check; one that hides a key stays;
    the result is torch's either way."""
    import torch

    import sliver
    from sliver.backends.tvm.lower import to_relax

    g = torch.Generator().manual_seed(0)
    inputs = tuple(torch.randn(1, 2, n, 8, generator=g) for n in (5, 7, 7))
    model = _ConstantMaskAttention(keep).eval()
    module = sliver.trace(model, inputs)
    assert ("R.where" in str(to_relax(module))) == (not all(keep))
    art = sliver.lower(module, inputs, target="x86_64", tune=False)
    with torch.no_grad():
        want = model(*inputs).numpy()
    np.testing.assert_allclose(art.load().run(*[t.numpy() for t in inputs])[0], want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("shape,keep", [((2, 3, 37), True), ((5, 16), False), ((3, 200), True)])
@pytest.mark.parametrize("kind", ["max", "min"])
def test_max_and_min_over_the_last_axis_go_over_lanes_first(level, shape, keep, kind):
    """Rows at and over the lane width, not multiples of it; a NaN anywhere in a row (lanes
    or tail) gives NaN, as torch's amax; -inf rows stay -inf."""
    from test_fast_float import run, runs_here

    from sliver.backends.tvm import schedules as S

    target = tvm_target(resolve(level))
    op = relax.op.max if kind == "max" else relax.op.min
    funcs = front_primfuncs(lambda bb, x: bb.emit(op(x, axis=[-1], keepdims=keep)), [shape], target)
    (name,) = funcs
    assert check(funcs, target, level) == {name: "reduction"}
    assert "row_red_part" in funcs[name].script()
    if not runs_here(level):
        pytest.skip(f"this host cannot run {level} code")
    x = np.random.default_rng(7).standard_normal(shape).astype("float32").reshape(-1, shape[-1])
    x[0, 3], x[1, -1], x[-1, :] = np.nan, np.nan, -np.inf
    x = x.reshape(shape)
    want = (np.max if kind == "max" else np.min)(x, axis=-1, keepdims=keep)
    got = run(S.schedule_primfunc(funcs[name], target)[0], [x, np.zeros(want.shape, "float32")], target)
    np.testing.assert_array_equal(got, want)
