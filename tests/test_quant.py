"""sliver.quant: Hutchinson traces against the exact Hessian, the perturbation Ω with
sliver.qat's own quantizer, the Pareto front against brute force, the allocation at a
budget, its report/plot/PTQ config, `sliver allocate` and bad input."""

import copy
import itertools
import json

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import sliver.qat
import sliver.quant as Q
from sliver.common.errors import SliverError


def _mlp():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 5), nn.Tanh(), nn.Linear(5, 3))
    x = torch.randn(64, 6)
    y = torch.randint(0, 3, (64,))
    return m, x, y


def _exact_traces(m, x, y):
    out = []
    for name, layer in Q.quant_layers(m):
        w0 = layer.weight.detach().clone()

        def f(w, name=name):
            return F.cross_entropy(torch.func.functional_call(m, {f"{name}.weight": w}, (x,)), y)

        h = torch.autograd.functional.hessian(f, w0)
        out.append(float(h.reshape(w0.numel(), w0.numel()).diagonal().sum()))
    return out


def test_hutchinson_trace_of_a_small_mlp_within_5_percent_of_the_full_hessian():
    m, x, y = _mlp()
    before = copy.deepcopy(m.state_dict())
    s = Q.sensitivity(m, (x, y), F.cross_entropy, rtol=0.02, max_iters=20000)
    exact = _exact_traces(m, x, y)
    assert s.converged and s.iterations < 20000
    for ls, e in zip(s.layers, exact):
        assert e > 0
        assert abs(ls.trace - e) <= 0.05 * e, (ls.name, ls.trace, e)
        assert ls.trace_se <= 0.02 * abs(ls.trace)
    # the caller's model is untouched (weights, requires_grad, mode)
    assert all(torch.equal(v, m.state_dict()[k]) for k, v in before.items())
    assert all(p.requires_grad for p in m.parameters()) and m.training


def _exact_activation_traces(m, x, y):
    """Tr of the Hessian of the loss with respect to each layer's input (all samples)."""
    out = []
    for _, layer in Q.quant_layers(m):
        seen = []
        h = layer.register_forward_pre_hook(lambda mod, a: seen.append(a[0].detach()))
        m(x)
        h.remove()

        def f(probe, layer=layer):
            hook = layer.register_forward_pre_hook(lambda mod, a: (a[0] + probe,))
            try:
                return F.cross_entropy(m(x), y)
            finally:
                hook.remove()

        z = torch.zeros_like(seen[0])
        out.append(float(torch.autograd.functional.hessian(f, z).reshape(z.numel(), z.numel()).diagonal().sum()))
    return out


def test_activation_traces_within_5_percent_of_the_full_hessian_and_omega_adds_them():
    m, x, y = _mlp()
    s = Q.sensitivity(m.eval(), (x, y), F.cross_entropy, rtol=0.02, max_iters=20000)
    exact = _exact_activation_traces(m, x, y)
    assert s.converged and s.a_iterations > 0
    for ls, e, numel in zip(s.layers, exact, (64 * 6, 64 * 8, 64 * 5)):
        assert e > 0 and ls.a_numel == numel
        assert abs(ls.a_trace - e) <= 0.05 * e, (ls.name, ls.a_trace, e)
        # Ω_X(a) = Tr(H_X)/m · ‖Q_a(X) − X‖², decreasing in a, added to the weight term
        assert all(ls.a_omega[a] > ls.a_omega[a + 1] for a in range(1, 8))
        assert ls.total_omega(4, 2) == pytest.approx(ls.omega[4] + ls.a_omega[2])
    assert s.omega({2: 2, 8: 8})[s.layers[0].name][2] == pytest.approx(s.layers[0].total_omega(2, 2))
    weights_only = Q.sensitivity(m, (x, y), F.cross_entropy, max_iters=50, activations=False)
    assert all(not ls.a_omega and ls.total_omega(2, 2) == ls.omega[2] for ls in weights_only.layers)


def test_hutchinson_over_batches_equals_one_batch_of_them_all():
    m, x, y = _mlp()
    one = Q.sensitivity(m, (x, y), F.cross_entropy, min_iters=20, max_iters=20)
    many = Q.sensitivity(m, [(x[:40], y[:40]), (x[40:], y[40:])], F.cross_entropy, min_iters=20, max_iters=20)
    for a, b in zip(one.layers, many.layers):  # same Rademacher draws, the loss split by batch size
        assert a.trace == pytest.approx(b.trace, rel=1e-4)


def test_omega_uses_the_quantizer_sliver_qat_trains_from():
    m, x, y = _mlp()
    s = Q.sensitivity(m, (x, y), F.cross_entropy, widths=(2, 4), max_iters=50)
    for b in (2, 4):
        q = sliver.qat.prepare(m, layers={"0": (b, 8), "2": (b, 8), "4": (b, 8)})
        q.train()
        with torch.no_grad():
            q(x)  # the first training batch initialises the scales
        q.eval()
        for ls in s.layers:
            layer = q.get_submodule(ls.name)
            qw = layer.weight_quant(layer.weight).detach()
            assert torch.equal(qw, Q.quantize_weight(layer.weight, b))
            sq = float(((qw - layer.weight.detach()) ** 2).sum())
            assert ls.sq_err[b] == pytest.approx(sq, rel=1e-6)
            assert ls.omega[b] == pytest.approx(ls.trace / ls.numel * sq, rel=1e-6)
    # coarser widths perturb more
    assert all(ls.omega[2] > ls.omega[4] for ls in s.layers)


def test_pareto_front_is_the_brute_force_front():
    rng = np.random.default_rng(0)
    names = [f"l{i}" for i in range(5)]
    widths = (2, 3, 4, 8)
    omega = {n: dict(zip(widths, sorted(rng.random(4), reverse=True))) for n in names}
    cost = {n: dict(zip(widths, rng.random(4) * 10)) for n in names}  # not monotone in the width
    front = Q.pareto_front(omega, cost)
    pts = [(sum(cost[n][b] for n, b in zip(names, ws)), sum(omega[n][b] for n, b in zip(names, ws)), ws)
           for ws in itertools.product(widths, repeat=len(names))]
    brute = {p[2] for p in pts if not any(q[0] <= p[0] and q[1] <= p[1] and (q[0] < p[0] or q[1] < p[1])
                                          for q in pts)}
    assert {p.widths for p in front} == brute
    costs = [p.cost for p in front]
    assert costs == sorted(costs) and all(a.omega > b.omega for a, b in zip(front, front[1:]))


def _sens(omegas: dict, numel: dict) -> Q.Sensitivity:
    layers = [Q.LayerSensitivity(n, "Linear", numel[n], 1.0, 0.0, {}, dict(o)) for n, o in omegas.items()]
    return Q.Sensitivity(layers, 10, True, 0.05, 1)


def test_allocate_picks_the_least_omega_within_the_budget():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 4))
    numel = {"0": 1024, "2": 2048, "4": 128}
    rng = np.random.default_rng(1)
    om = {n: dict(zip((2, 3, 4, 8), sorted(rng.random(4) * k, reverse=True))) for n, k in zip(numel, (1, 0.1, 5))}
    s = _sens(om, numel)
    for budget in ("2bits", "3bits", "3.5bits", "5bits", "1500B", "2KB"):
        a = Q.allocate(m, budget=budget, sensitivity=s)
        limit = Q.parse_budget(budget)[0] * (3200 / 8 if budget.endswith("bits") else 1)
        feasible = [ws for ws in itertools.product((2, 3, 4, 8), repeat=3)
                    if sum(-(-numel[n] * b // 8) for n, b in zip(numel, ws)) <= limit]
        best = min(feasible, key=lambda ws: sum(om[n][b] for n, b in zip(numel, ws)))
        assert tuple(a.widths[n] for n in numel) == best
        assert a.packed_bytes <= limit and a.cost == a.packed_bytes
        assert a.layers == {n: (b, b) for n, b in a.widths.items()}  # activations at the weight's width
    # a cost table in cycles: the allocation follows cost, not size
    table = Q.CostTable("cycles", "arm64", {"0": {2: 50, 3: 90, 4: 120, 8: 40}, "2": {2: 60, 3: 100, 4: 130, 8: 45},
                                            "4": {2: 5, 3: 6, 4: 7, 8: 3}}, {2: 2, 3: 3, 4: 4, 8: 8})
    a = Q.allocate(m, budget="90cycles", target=table, sensitivity=s)
    assert a.widths == {"0": 8, "2": 8, "4": 8} and a.cost == 88
    with pytest.raises(Q.QuantError, match="cheapest needs 88 cycles"):
        Q.allocate(m, budget="80cycles", target=table, sensitivity=s)


def test_allocation_outputs_prepare_layers_ptq_config_report_and_plot(tmp_path):
    m, x, y = _mlp()
    a = Q.allocate(m, (x, y), F.cross_entropy, budget="4bits", a_widths=8, max_iters=100)
    assert set(a.layers) == {"0", "2", "4"} and all(ab == 8 for _, ab in a.layers.values())
    q = sliver.qat.prepare(m, layers=a.layers)
    assert [(l.w_bits, l.a_bits) for _, l in sliver.qat.qat_layers(q)] == [a.layers[n] for n in ("0", "2", "4")]
    cfg = json.loads(json.dumps(a.ptq_config()))
    p = Q.calibrate(m, cfg, (x, y))
    assert not p.training and all(l.weight_quant.initialised for _, l in sliver.qat.qat_layers(p))
    assert [l.w_bits for _, l in sliver.qat.qat_layers(p)] == [a.widths[n] for n in ("0", "2", "4")]
    text = a.report()
    assert "← chosen" in text and "Tr(H)/n" in text and "sliver.qat.prepare(model, layers=" in text
    j = json.loads(json.dumps(a.to_json()))
    assert j["layers"] == {n: list(v) for n, v in a.layers.items()} and len(j["front"]) == len(a.front)
    pytest.importorskip("matplotlib")
    png = tmp_path / "front.png"
    a.plot(png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("call, match", [
    (lambda m, d: Q.sensitivity("model", d, F.cross_entropy), "must be a torch.nn.Module"),
    (lambda m, d: Q.sensitivity(nn.Sequential(nn.ReLU()), d, F.cross_entropy), "no nn.Conv2d or nn.Linear"),
    (lambda m, d: Q.sensitivity(m, "data", F.cross_entropy), "data must be an"),
    (lambda m, d: Q.sensitivity(m, [], F.cross_entropy), "data must be an"),
    (lambda m, d: Q.sensitivity(m, d, "ce"), "loss_fn must be callable"),
    (lambda m, d: Q.sensitivity(m, d, lambda o, t: 1.0), "must return a scalar tensor"),
    (lambda m, d: Q.sensitivity(m, d, lambda o, t: F.cross_entropy(o, t).detach()), "does not depend"),
    (lambda m, d: Q.sensitivity(m, (torch.randn(4, 7), d[1][:4]), F.cross_entropy), "failed"),
    (lambda m, d: Q.sensitivity(m, d, F.cross_entropy, widths=(1, 2)), "ints in 2..8"),
    (lambda m, d: Q.sensitivity(m, d, F.cross_entropy, rtol=0), "0 < rtol < 1"),
    (lambda m, d: Q.allocate(m, d, F.cross_entropy, budget="3 furlongs"), "not understood"),
    (lambda m, d: Q.allocate(m, d, F.cross_entropy, budget="-3bits"), "not understood"),
    (lambda m, d: Q.allocate(m, d, F.cross_entropy, budget="1bits"), "cheapest needs 2.0"),
    (lambda m, d: Q.allocate(m, d, F.cross_entropy, budget="2ms"), "needs the cost measured on a target"),
    (lambda m, d: Q.allocate(m, d, F.cross_entropy, budget="3bits", target="arm64"), "CostTable"),
    (lambda m, d: Q.allocate(m, d, F.cross_entropy, budget="3bits", a_widths=(2, 3)), "a_widths"),
    (lambda m, d: Q.allocate(m, budget="3bits"), "needs data and loss_fn"),
    (lambda m, d: Q.calibrate(m, "8bits", d), "give an Allocation"),
])
def test_bad_input_is_a_named_error(call, match):
    m, x, y = _mlp()
    with pytest.raises(Q.QuantError, match=match) as e:
        call(m, (x, y))
    assert isinstance(e.value, SliverError)


def test_cost_table_unit_must_match_the_budget():
    m, x, y = _mlp()
    table = Q.CostTable("cycles", "arm64", {n: {b: 1.0 for b in (2, 3, 4, 8)} for n in ("0", "2", "4")},
                        {b: b for b in (2, 3, 4, 8)})
    with pytest.raises(Q.QuantError, match="budget is in ms but the cost table is in cycles"):
        Q.allocate(m, (x, y), F.cross_entropy, budget="2ms", target=table)
    with pytest.raises(Q.QuantError, match="activation widths"):
        Q.allocate(m, (x, y), F.cross_entropy, budget="10cycles", target=table, a_widths=8)
    t2 = Q.CostTable.from_json(json.loads(json.dumps(table.to_json())))
    assert t2 == table
    with pytest.raises(Q.QuantError, match="not a cost table"):
        Q.CostTable.from_json({"unit": "cycles"})


MODEL_FILE = """
import torch, torch.nn as nn
def build():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 8 * 8, 10))
    return m, (torch.randn(1, 1, 8, 8),)
def data():
    g = torch.Generator().manual_seed(0)
    return torch.rand(64, 1, 8, 8, generator=g), torch.randint(0, 10, (64,), generator=g)
def broken():
    raise ValueError("no data today")
"""


def test_cli_allocate_writes_report_json_and_plot(tmp_path, capsys):
    from sliver.tools.cli import main

    (tmp_path / "m.py").write_text(MODEL_FILE)
    model = f"{tmp_path}/m.py:build"
    x, y = torch.rand(64, 1, 8, 8), torch.randint(0, 10, (64,))
    np.savez(tmp_path / "d.npz", x=x.numpy(), y=y.numpy())
    out = tmp_path / "alloc.json"
    assert main(["allocate", model, "--data", str(tmp_path / "d.npz"), "--budget", "3bits", "--json", str(out),
                 "--max-iters", "40", "-o", str(tmp_path / "r.md")]) == 0
    j = json.loads(out.read_text())
    assert set(j["layers"]) == {"0", "3"} and j["mean_bits"] <= 3 and j["ptq"]["layers"]
    assert "← chosen" in (tmp_path / "r.md").read_text()
    assert main(["allocate", model, "--data", f"{tmp_path}/m.py:data", "--budget", "1500B", "--max-iters", "20"]) == 0
    assert "| layer | weights |" in capsys.readouterr().out
    for argv, match in [
        (["--data", f"{tmp_path}/m.py:broken", "--budget", "3bits"], "raised ValueError: no data today"),
        (["--data", str(tmp_path / "none.npz"), "--budget", "3bits"], "no such file"),
        (["--data", str(tmp_path / "d.npz"), "--budget", "3bits", "--widths", "2,x"], "comma-separated"),
        (["--data", str(tmp_path / "d.npz"), "--budget", "3bits", "--target", "arm64"], "does not depend on --target"),
        (["--data", str(tmp_path / "d.npz"), "--budget", "0.5bits"], "cheapest needs"),
        (["--data", str(tmp_path / "d.npz"), "--budget", "3bits", "--loss", "mse"], "outputs are (64, 10)"),
    ]:
        rc = main(["allocate", model, *argv, "--max-iters", "20"])
        err = capsys.readouterr().err
        assert rc == 2 and match in err, err


def _tiny_cnn():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 10))
    return m, torch.rand(32, 1, 4, 4)


@pytest.mark.slow
def test_layer_cost_on_x86_is_measured_per_layer_and_cached(tmp_path, monkeypatch):
    from sliver.tools import layercost

    monkeypatch.setenv("SLIVER_LAYERCOST_DIR", str(tmp_path))
    m, x = _tiny_cnn()
    t = layercost.measure(m, (x[:1],), target="x86_64", widths=(2, 8), calibration=x, repeat=20)
    assert t.unit == "ms" and set(t.costs) == {"0", "3"} and t.a_bits == {2: 2, 8: 8}
    assert all(0 < c < 100 for d in t.costs.values() for c in d.values())
    assert "0 of 4 from the cache" in t.source and len(list(tmp_path.glob("*.json"))) == 4
    again = layercost.measure(m, (x[:1],), target="x86_64", widths=(2, 8), calibration=x, repeat=20)
    assert again.costs == t.costs and "4 of 4 from the cache" in again.source
    with pytest.raises(Q.QuantError, match="emulated Pi"):
        layercost.measure(m, (x[:1],), target="x86_64", metric="cycles")


@pytest.mark.slow
@pytest.mark.emulated
def test_layer_cost_on_the_emulated_pi_counts_each_width(tmp_path, monkeypatch):
    from sliver.tools import layercost
    from sliver.tools.emulator import emulate

    if not emulate.is_ready():
        pytest.skip("no emulated Pi (tools/emulator/setup_pi_emulator.sh)")
    monkeypatch.setenv("SLIVER_LAYERCOST_DIR", str(tmp_path))
    torch.manual_seed(0)
    m, x = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU()), torch.rand(32, 1, 4, 4)
    t = layercost.measure(m, (x[:1],), target="arm64", metric="instructions", widths=(2, 3), calibration=x)
    # bit-serial work grows with the bit planes: W3A3 executes more than W2A2
    assert t.unit == "instructions" and t.costs["0"][3] > t.costs["0"][2] > 0
    a = Q.allocate(m, (x, torch.rand(32, 8, 4, 4)), F.mse_loss, target=t, widths=(2, 3),
                   budget=(t.costs["0"][2], "instructions"), max_iters=20)
    assert a.widths == {"0": 2} and a.cost == t.costs["0"][2]
