"""Fast checks of the model zoo (tests/zoo.py): every model builds, runs, exports."""

import pytest
import torch

import zoo

EXPECTED_OUTPUT_SHAPES = {
    "resnet18": (1, 10),
    "mobilenet_v2": (1, 10),
    "densenet": (1, 10),
    "efficientnet": (1, 10),
    "vit": (1, 10),
    "bert": (1, 2),
    "llama": (1, 16, 256),
}


def test_every_model_has_an_expected_shape():
    assert set(zoo.MODELS) == set(EXPECTED_OUTPUT_SHAPES)


@pytest.mark.parametrize("name", sorted(zoo.MODELS))
def test_model_builds_runs_and_exports(name):
    rng_state = torch.get_rng_state()
    model, inputs = zoo.MODELS[name]()
    assert torch.equal(torch.get_rng_state(), rng_state), "builders must not touch the global RNG"
    assert not model.training
    with torch.no_grad():
        out = model(*inputs)
    assert out.shape == EXPECTED_OUTPUT_SHAPES[name]
    assert torch.isfinite(out).all()
    assert 0.05 < out.std().item() < 20, "activations should stay in a sane range"

    exported = torch.export.export(model, inputs)
    assert any(node.op == "call_function" for node in exported.graph.nodes)
    torch.testing.assert_close(exported.module()(*inputs), out, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", sorted(zoo.MODELS))
def test_model_is_deterministic_in_its_seed(name):
    (m1, x1), (m2, x2), (m3, x3) = (zoo.MODELS[name](seed=s) for s in (0, 0, 1))
    for a, b in zip(x1, x2):
        assert torch.equal(a, b)
    with torch.no_grad():
        assert torch.equal(m1(*x1), m2(*x2))
        assert not torch.equal(m1(*x1), m3(*x1))


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2", "densenet", "efficientnet"])
def test_batchnorm_is_not_trivial(name):
    model, _ = zoo.MODELS[name]()
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns
    for bn in bns:
        assert not torch.allclose(bn.running_mean, torch.zeros_like(bn.running_mean))
        assert not torch.allclose(bn.running_var, torch.ones_like(bn.running_var))
        assert not torch.allclose(bn.weight, torch.ones_like(bn.weight))
        assert not torch.allclose(bn.bias, torch.zeros_like(bn.bias))


def _num_params(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    "builder, kwargs, expected",
    [
        (zoo.resnet18, dict(resolution=224, num_classes=1000), 11_689_512),
        (zoo.mobilenet_v2, dict(resolution=224, num_classes=1000), 3_504_872),
        (zoo.densenet, zoo.DENSENET121, 7_978_856),
        (zoo.efficientnet, zoo.EFFICIENTNET_B0, 5_288_548),
    ],
    ids=["resnet18", "mobilenet_v2", "densenet121", "efficientnet_b0"],
)
def test_full_size_parameter_count_matches_torchvision(builder, kwargs, expected):
    model, (x,) = builder(**kwargs)
    assert x.shape == (1, 3, 224, 224)
    assert _num_params(model) == expected


def _run_recording_shapes(model, x):
    """Run like RandomConvNet.forward, checking each value against the recorded shape."""
    values = [x]
    for step in model.steps:
        value = model._run(step, [values[i] for i in step.inputs])
        assert tuple(value.shape[1:]) == step.shape, f"{step}\n{model.describe()}"
        values.append(value)
    return values[-1]


def test_random_convnet_builds_and_runs_for_300_seeds():
    # (tests/test_fuzz.py traces seeds 0..199 with torch.export and checks them against torch)
    ops, acts = set(), set()
    for seed in range(300):
        model, (x,) = zoo.random_convnet(seed)
        assert x.shape[0] == 1 and 3 <= x.shape[1] <= 8 and all(8 <= s <= 16 for s in x.shape[2:])
        with torch.no_grad():
            out = _run_recording_shapes(model, x)
        assert out.dim() == 2 and out.shape[0] == 1
        assert torch.isfinite(out).all(), model.describe()
        ops.update(step.op for step in model.steps)
        acts.update(step.arg for step in model.steps if step.op == "act")
    assert ops == {"conv", "bn", "act", "add", "mul", "cat", "pool", "gap", "flatten", "linear"}
    assert acts == set(zoo.ACTIVATIONS)


def test_random_convnet_is_deterministic_and_described():
    (m1, (x1,)), (m2, (x2,)), (m3, _) = zoo.random_convnet(42), zoo.random_convnet(42), zoo.random_convnet(43)
    assert m1.describe() == m2.describe() != m3.describe()
    assert m1.describe().startswith("random_convnet(seed=42)")
    assert torch.equal(x1, x2)
    with torch.no_grad():
        assert torch.equal(m1(x1), m2(x2))
