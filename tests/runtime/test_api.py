"""The runtime's calling conventions: inputs by position, by keyword or as one dict;
outputs named by ``lower(output_names=...)`` or after the model's returned structure;
one return rule per method; artifacts to and from bytes and file objects."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from torch import nn

import precompile
import sliver
from sliver.common.errors import ArtifactError, InputError


class TwoInTwoOut(nn.Module):
    """Inputs ``image`` and ``scale``; returns a dict (``logits``, ``features``)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.head = nn.Linear(4, 5)

    def forward(self, image, scale):
        features = torch.relu(self.conv(image)).mean(dim=(2, 3))
        return {"logits": self.head(features) * scale, "features": features}


def _example():
    g = torch.Generator().manual_seed(1)
    return TwoInTwoOut().eval(), (torch.randn(1, 3, 8, 8, generator=g), torch.randn(1, 5, generator=g))


def lowered(kind):
    """A tests/precompile.py job: the example lowered for x86_64 with default output
    names (``"dict"``) or with ``output_names`` given (``"named"``); the saved path."""
    model, inputs = _example()
    names = {"dict": None, "named": ["scores", "embedding"]}[kind]
    art = sliver.lower(model, inputs, target="x86_64", output_names=names)
    return art.save(precompile.out(f"api-{kind}.sliver"))


def _path(kind):
    return precompile.get(("call", "test_api", "lowered", kind))


def _torch_outputs():
    model, inputs = _example()
    with torch.no_grad():
        out = model(*inputs)
    return [x.numpy() for x in inputs], {k: v.numpy() for k, v in out.items()}


pytestmark = [pytest.mark.slow, pytest.mark.precompiled.with_args(
    lambda params: [("call", "test_api", "lowered", "dict"), ("call", "test_api", "lowered", "named")])]


def test_input_names_come_from_forward_and_outputs_from_the_returned_dict():
    m = sliver.load(_path("dict"))
    assert m.input_names == ["image", "scale"]
    assert m.output_names == ["logits", "features"]


def test_positional_keyword_and_dict_inputs_give_the_same_outputs():
    (image, scale), want = _torch_outputs()
    m = sliver.load(_path("dict"))
    calls = [m.run(image, scale), m.run(image=image, scale=scale), m.run(scale=scale, image=image),
             m.run(image, scale=scale), m.run({"image": image, "scale": scale})]
    for got in calls:
        assert len(got) == 2
        np.testing.assert_allclose(got[0], want["logits"], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(got[1], want["features"], rtol=1e-4, atol=1e-5)
        np.testing.assert_array_equal(got[0], calls[0][0])


def test_return_rules():
    (image, scale), want = _torch_outputs()
    m = sliver.load(_path("dict"))
    called = m(image, scale)  # several outputs: a tuple, like a torch model's tuple
    assert isinstance(called, tuple) and len(called) == 2
    ran = m.run(image, scale)  # always a list
    assert isinstance(ran, list)
    by_name = m.run_dict(image=image, scale=scale)  # always a dict, in output order
    assert list(by_name) == ["logits", "features"]
    np.testing.assert_array_equal(by_name["logits"], ran[0])
    np.testing.assert_array_equal(called[1], ran[1])


def test_output_names_given_at_lower():
    (image, scale), _ = _torch_outputs()
    m = sliver.load(_path("named"))
    assert m.output_names == ["scores", "embedding"]
    assert list(m.run_dict(image, scale)) == ["scores", "embedding"]
    assert [s.name for s in sliver.runtime.artifact.read(_path("named")).manifest.outputs] == ["scores", "embedding"]


@pytest.mark.parametrize("call, message", [
    (lambda m, a, b: m(a), "takes 2 input"),
    (lambda m, a, b: m(a, b, b), "takes 2 input"),
    (lambda m, a, b: m(a, image=a), "given twice"),
    (lambda m, a, b: m(image=a, scael=b), "no input 'scael'"),
    (lambda m, a, b: m({"image": a}), "scale missing"),
    (lambda m, a, b: m(image=a, scale=b.astype(np.float64)), "must be float32"),
])
def test_bad_calls_are_input_errors(call, message):
    (image, scale), _ = _torch_outputs()
    m = sliver.load(_path("dict"))
    with pytest.raises(InputError, match=message):
        call(m, image, scale)


def test_bytes_and_file_objects_round_trip(tmp_path):
    (image, scale), _ = _torch_outputs()
    path = _path("dict")
    art = sliver.runtime.artifact.read(path)
    data = art.to_bytes()
    back = sliver.runtime.artifact.read(data)  # what save() writes, checked as a file is
    assert back.library == art.library and back.manifest == art.manifest
    assert all(np.array_equal(back.golden[k], v) for k, v in art.golden.items())
    want = sliver.load(path).run(image, scale)
    with open(path, "rb") as f:
        sources = [data, bytearray(data), memoryview(data), io.BytesIO(data), f]
        for source in sources:
            got = sliver.load(source, threads=1).run(image, scale)
            for g, w in zip(got, want):
                np.testing.assert_array_equal(g, w)


class _Pipe(io.RawIOBase):
    """A file object that cannot seek (a pipe or socket)."""

    def __init__(self, data):
        self._data = io.BytesIO(data)

    def readable(self):
        return True

    def readinto(self, b):
        return self._data.readinto(b)


def test_unseekable_files_and_damaged_bytes():
    (image, scale), _ = _torch_outputs()
    data = sliver.runtime.artifact.read(_path("dict")).to_bytes()
    assert len(sliver.load(_Pipe(data)).run(image, scale)) == 2
    with pytest.raises(ArtifactError, match="<bytes>: .*corrupt or truncated"):
        sliver.load(data[: len(data) // 2])
    flipped = bytearray(data)
    lib = data.index(b"\x7fELF")
    flipped[lib + 5000] ^= 0xFF
    with pytest.raises(ArtifactError, match="<bytes>"):
        sliver.load(bytes(flipped))
    with pytest.raises(ArtifactError, match="text mode"):
        sliver.load(io.StringIO("not an artifact"))
    with pytest.raises(ArtifactError, match="path, bytes or a binary file object"):
        sliver.load(42)
