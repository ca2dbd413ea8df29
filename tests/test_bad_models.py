"""Bad models and bad example inputs: each ends in a named sliver error whose message says
what to do, or in a correct result; and ``lower()`` never changes the caller's model or
tensors (it compiles inference: a training-mode model is traced *and* evaluated in eval
mode, with a SliverWarning).  The table prints its counts
(``pytest -s tests/test_bad_models.py -k table``)."""

import collections
import copy
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import sliver
from sliver.common.errors import InputError, SliverError, SliverWarning, UnsupportedOpError
from sliver.ir.interp import run


class Fn(nn.Module):
    """A module whose forward is ``fn`` (and whose layers are ``layers``)."""

    def __init__(self, fn, *layers):
        super().__init__()
        self.fn, self.layers = fn, nn.ModuleList(layers)

    def forward(self, *xs):
        return self.fn(self, *xs)


def conv_bn_drop():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.5), nn.Flatten(),
                          nn.Linear(4 * 6 * 6, 5))
    with torch.no_grad():
        model[1].running_mean.uniform_(-1, 1)
        model[1].running_var.uniform_(0.5, 2)
    return model.train()


def _x(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _meta_linear():
    with torch.device("meta"):
        return nn.Linear(4, 2)


class CountsCalls(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("calls", torch.zeros(()))

    def forward(self, x):
        self.calls += 1
        return x * 2


class NoForward(nn.Module):
    pass


class Recurses(nn.Module):
    def forward(self, x):
        return self(x)


OK = "ok"
#: (name, model factory, example inputs factory, expected: OK or (error class, message pattern))
CASES = [
    ("returns a Python float", lambda: Fn(lambda m, x: 3.0), lambda: (_x(3),),
     (SliverError, r"returns a non-tensor output \(float 3.0 as output 0\).*torch.tensor")),
    ("returns None", lambda: Fn(lambda m, x: None), lambda: (_x(3),), (SliverError, "returns no tensor")),
    ("returns an empty tuple", lambda: Fn(lambda m, x: ()), lambda: (_x(3),), (SliverError, "returns no tensor")),
    ("returns a tensor and an int", lambda: Fn(lambda m, x: (x * 2, 3)), lambda: (_x(3),),
     (SliverError, "non-tensor output")),
    ("returns a dict", lambda: Fn(lambda m, x: {"a": x.relu(), "b": -x}), lambda: (_x(3),), OK),
    ("returns a nested tuple", lambda: Fn(lambda m, x: (x * 2, (x + 1, [x.exp()]))), lambda: (_x(3),), OK),
    ("returns its input unchanged", lambda: Fn(lambda m, x: x), lambda: (_x(3),), OK),
    ("a plain function", lambda: (lambda x: x * 2), lambda: (_x(3),), (SliverError, "got a plain function.*Wrap")),
    ("a string instead of a model", lambda: "resnet18", lambda: (_x(3),), (SliverError, "got a str")),
    ("a Module without forward", NoForward, lambda: (_x(3),), (SliverError, "forward")),
    ("data-dependent control flow", lambda: Fn(lambda m, x: x if x.sum() > 0 else -x), lambda: (_x(3),),
     (SliverError, "torch.export could not capture.*no data-dependent control flow")),
    ("infinite recursion", Recurses, lambda: (_x(3),), (SliverError, "torch.export could not capture")),
    ("an unsupported op (cumprod)", lambda: Fn(lambda m, x: torch.cumprod(x, -1)), lambda: (_x(3),),
     (UnsupportedOpError, "aten.cumprod")),
    ("a run-time comparison", lambda: Fn(lambda m, x: (x > 0).float() * x), lambda: (_x(3),), OK),
    ("forward raises", lambda: Fn(lambda m, x: (_ for _ in ()).throw(ValueError("bad shape for this model"))),
     lambda: (_x(3),), (SliverError, "bad shape for this model")),
    ("wrong number of inputs", lambda: Fn(lambda m, x, y: x + y), lambda: (_x(3),), (SliverError, "")),
    ("example input: list of lists", lambda: nn.Linear(2, 2), lambda: ([[1.0, 2.0], [3.0, 4.0]],),
     (InputError, "example input 0 is a list; pass a torch.Tensor or a numpy array")),
    ("example input: numpy object array", lambda: nn.Linear(2, 2), lambda: (np.array([1.0, "a"], dtype=object),),
     (InputError, "holds object, which sliver has no element type for")),
    ("example input: complex", lambda: nn.Identity(), lambda: (torch.ones(2, dtype=torch.complex64),),
     (InputError, "no element type")),
    ("example input: a string", lambda: nn.Identity(), lambda: ("x",), (InputError, "is a str")),
    ("example input: None", lambda: nn.Linear(2, 2), lambda: (None,), (InputError, "is a NoneType")),
    ("example input: int64 where float is needed", lambda: nn.Linear(2, 2),
     lambda: (torch.ones(1, 2, dtype=torch.int64),),
     (SliverError, r"operand element types differ \(f32, i64\); insert a cast")),
    ("example input: zero-size", lambda: nn.Linear(2, 2), lambda: (torch.ones(0, 2),),
     (InputError, r"shape \[0, 2\], which holds no elements")),
    ("parameters on the meta device", _meta_linear, lambda: (_x(1, 4),),
     (SliverError, r"weight is on the meta device.*to_empty")),
    ("in-place update of its input", lambda: Fn(lambda m, x: x.add_(1) * 2), lambda: (_x(3),), OK),
    ("in-place relu of its input", lambda: Fn(lambda m, x: torch.relu_(x)), lambda: (_x(3),), OK),
    ("a buffer counting calls", CountsCalls, lambda: (_x(3),), (UnsupportedOpError, r"copy_.*self.calls \+= 1")),
    ("train-mode BatchNorm and Dropout", conv_bn_drop, lambda: (_x(2, 3, 8, 8),), OK),
    ("train-mode Dropout only", lambda: nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.9)).train(),
     lambda: (_x(2, 4),), OK),
    ("eval model with one BatchNorm left training", lambda: _mixed_modes(), lambda: (_x(2, 3, 8, 8),), OK),
]


def _mixed_modes():
    model = conv_bn_drop().eval()
    model[1].train()
    return model


def _snapshot(model, inputs):
    tensors = {}
    if isinstance(model, nn.Module):
        tensors = {k: v.clone() for k, v in model.state_dict().items() if v.device.type != "meta"}
    flags = [m.training for m in model.modules()] if isinstance(model, nn.Module) else []
    data = [x.clone() if isinstance(x, torch.Tensor) else copy.deepcopy(x) for x in inputs]
    return tensors, flags, data


def _assert_untouched(before, model, inputs, name):
    tensors, flags, data = before
    if isinstance(model, nn.Module):
        now = {k: v for k, v in model.state_dict().items() if v.device.type != "meta"}
        changed = [k for k in tensors if not torch.equal(tensors[k], now[k])]
        assert not changed, f"{name}: trace changed the model's {changed}"
        assert [m.training for m in model.modules()] == flags, f"{name}: trace changed training flags"
    for x, y in zip(data, inputs):
        if isinstance(x, torch.Tensor):
            assert torch.equal(x, y), f"{name}: trace changed the caller's example input"
        elif isinstance(x, np.ndarray) and x.dtype != object:
            assert np.array_equal(x, y), f"{name}: trace changed the caller's example input"


def _torch_reference(model, inputs):
    """What the model computes in eval mode, on copies (flattened like torch.export's outputs)."""
    from torch.utils._pytree import tree_flatten

    model = copy.deepcopy(model).eval()
    with torch.no_grad():
        out = model(*[x.clone() for x in inputs])
    return [o.numpy() for o in tree_flatten(out)[0] if isinstance(o, torch.Tensor)]


def _case(name, make_model, make_inputs, expected):
    model, inputs = make_model(), make_inputs()
    before = _snapshot(model, inputs)
    want = _torch_reference(model, inputs) if expected == OK else None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SliverWarning)
            module = sliver.trace(model, inputs)
        got = run(module, [x.numpy() for x in inputs])
        outcome = OK
    except SliverError as e:
        outcome = e
    _assert_untouched(before, model, inputs, name)
    if expected == OK:
        assert outcome == OK, f"{name}: expected a correct result, got {type(outcome).__name__}: {outcome}"
        assert len(got) == len(want), f"{name}: {len(got)} outputs, torch gives {len(want)}"
        for g, w in zip(got, want):
            np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6, err_msg=name)
        return "correct result"
    cls, pattern = expected
    assert outcome != OK, f"{name}: traced, but should have raised {cls.__name__}"
    assert isinstance(outcome, cls), f"{name}: raised {type(outcome).__name__}, expected {cls.__name__}: {outcome}"
    import re

    assert re.search(pattern, str(outcome), re.S), f"{name}: message does not match {pattern!r}:\n{outcome}"
    return type(outcome).__name__


def test_bad_model_table():
    counts = collections.Counter()
    failures = []
    for name, make_model, make_inputs, expected in CASES:
        try:
            counts[_case(name, make_model, make_inputs, expected)] += 1
        except AssertionError as e:
            failures.append(str(e))
        except Exception as e:  # anything but a SliverError is a bug
            failures.append(f"{name}: crashed with {type(e).__name__}: {e}")
    print(f"\nbad models: {len(CASES)} cases: " + ", ".join(f"{k} {n}" for k, n in counts.most_common())
          + f"; failures {len(failures)}")
    assert len(CASES) >= 20
    assert not failures, "\n\n".join(failures)


# -- lower() never changes its arguments ------------------------------------------------


def test_lower_of_a_training_model_is_eval_mode_and_leaves_the_model_bit_identical(tmp_path):
    model = _mixed_modes()
    model.train()  # every module training: BatchNorm would update its statistics, Dropout would drop
    x = _x(2, 3, 8, 8)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x_before = x.clone()
    with pytest.warns(SliverWarning, match=r"training mode.*eval mode.*BatchNorm2d '1'.*Dropout '3'.*model.eval\(\)"):
        art = sliver.lower(model, (x,), target="x86_64")
    assert all(m.training for m in model.modules())
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())  # running stats, num_batches_tracked
    assert torch.equal(x, x_before)
    (want,) = _torch_reference(model, (x,))
    np.testing.assert_array_equal(art.golden["output_0"], want)  # golden data from eval mode, like the trace
    loaded = sliver.load(art.save(tmp_path / "bn.sliver"))
    assert all(r["ok"] for r in loaded.verify()), loaded.verify()


def test_lower_keeps_each_modules_own_training_flag():
    model = _mixed_modes()  # eval, but its BatchNorm alone training
    flags = [m.training for m in model.modules()]
    with pytest.warns(SliverWarning, match="BatchNorm2d '1'"):
        sliver.trace(model, (_x(2, 3, 8, 8),))
    assert [m.training for m in model.modules()] == flags


def test_lower_of_a_model_updating_its_input_in_place_leaves_the_callers_tensor(tmp_path):
    model = Fn(lambda m, x: x.add_(1) * 2)
    x, arr = _x(3), np.arange(3, dtype=np.float32)
    x_before, arr_before = x.clone(), arr.copy()
    art = sliver.lower(model, (x,), target="x86_64")
    assert torch.equal(x, x_before)
    np.testing.assert_array_equal(art.golden["input_0"], x_before.numpy())
    np.testing.assert_array_equal(art.golden["output_0"], ((x_before + 1) * 2).numpy())
    loaded = sliver.load(art.save(tmp_path / "inplace.sliver"))
    assert all(r["ok"] for r in loaded.verify())
    sliver.trace(model, (arr,))
    np.testing.assert_array_equal(arr, arr_before)


def test_an_eval_model_lowers_without_a_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error", SliverWarning)
        sliver.trace(conv_bn_drop().eval(), (_x(2, 3, 8, 8),))
