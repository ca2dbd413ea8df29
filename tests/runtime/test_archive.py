"""The archive is checked before it is read: zip bombs are refused from their declared
sizes (fast, without inflating them), duplicate entries, links and paths are refused,
and --verify's tolerances come from the caller or a capped manifest."""

from __future__ import annotations

import hashlib
import io
import json
import resource
import time
import zipfile

import numpy as np
import pytest

import sliver
from sliver.common.errors import ArtifactError, InputError
from sliver.runtime.artifact import read


@pytest.fixture(scope="module")
def entries(example_x86) -> dict[str, bytes]:
    with zipfile.ZipFile(example_x86) as z:
        return {n: z.read(n) for n in z.namelist()}


def _zip(path, items, compression=zipfile.ZIP_STORED):
    """``items``: (name or ZipInfo, data) pairs, written in order (duplicates too)."""
    with zipfile.ZipFile(path, "w", compression) as z:
        for name, data in items:
            z.writestr(name, data)
    return path


def _deflated_zeros(name: str, size: int) -> bytes:
    """A zip holding one entry ``name`` of ``size`` zero bytes, deflated (a bomb)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as z, z.open(name, "w", force_zip64=True) as f:
        chunk = bytes(1 << 24)
        for _ in range(size // len(chunk)):
            f.write(chunk)
    return buf.getvalue()


@pytest.fixture(scope="module")
def bomb_npz():
    return _deflated_zeros("input_0.npy", 1 << 28)  # 256 MiB of zeros in ~260 kB


def test_a_golden_bomb_is_refused_fast_and_cheaply(entries, bomb_npz, tmp_path):
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # the bomb as the golden entry itself (deflated in the artifact)
    outer = tmp_path / "outer.sliver"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as z:
        z.writestr("manifest.json", entries["manifest.json"])
        z.writestr("lib.so", entries["lib.so"])
        with z.open("golden.npz", "w", force_zip64=True) as f:
            chunk = bytes(1 << 24)
            for _ in range(64):
                f.write(chunk)
    outer.write_bytes(buf.getvalue())
    # the bomb inside golden.npz (stored in the artifact), its hash made to match
    manifest = json.loads(entries["manifest.json"])
    manifest["golden"]["sha256"] = hashlib.sha256(bomb_npz).hexdigest()
    inner = _zip(tmp_path / "inner.sliver", [("manifest.json", json.dumps(manifest)), ("lib.so", entries["lib.so"]),
                                             ("golden.npz", bomb_npz)])
    for path, message in ((outer, "golden.npz would unpack to 1,073,741,824 bytes"),
                          (inner, "input_0 would unpack to 268,435,456 bytes")):
        t0 = time.perf_counter()
        with pytest.raises(ArtifactError, match=message):
            read(path)
        assert time.perf_counter() - t0 < 1.0
    grew_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024
    assert grew_mb < 200, f"peak RSS grew {grew_mb:.0f} MB"


def test_an_entry_whose_header_lies_about_its_size_is_refused(entries, tmp_path):
    """A deflated entry that inflates past its declared size: reading stops there."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for n in ("manifest.json", "lib.so", "golden.npz"):
            z.writestr(n, entries[n])
    data = bytearray(buf.getvalue())
    # shrink golden.npz's declared size in the central directory and the local header
    with zipfile.ZipFile(io.BytesIO(bytes(data))) as z:
        info = z.getinfo("golden.npz")
    size = info.file_size.to_bytes(4, "little")
    smaller = (info.file_size // 2).to_bytes(4, "little")
    assert data.count(size) >= 2
    data = data.replace(size, smaller)
    bad = tmp_path / "liar.sliver"
    bad.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="corrupt or truncated|does not match|damaged"):
        read(bad)


def test_duplicate_entries_are_refused(entries, tmp_path):
    items = list(entries.items())
    for name in ("manifest.json", "lib.so", "golden.npz"):
        path = tmp_path / f"dup-{name}.sliver"
        with pytest.warns(UserWarning, match="Duplicate name"):
            _zip(path, items + [(name, entries[name])])
        with pytest.raises(ArtifactError, match=f"the entry {name} occurs twice"):
            read(path)
        # inspect reads the same way: it refuses what load refuses
        from sliver.tools.cli import main

        assert main(["inspect", str(path)]) == 2


def test_links_paths_directories_and_strangers_are_refused(entries, tmp_path):
    link = zipfile.ZipInfo("lib.so")
    link.external_attr = (0o120777 << 16)
    cases = [
        ([("manifest.json", entries["manifest.json"]), (link, "/etc/passwd"), ("golden.npz", entries["golden.npz"])],
         "entry 'lib.so' is a symbolic link"),
        (list(entries.items()) + [("../evil.so", b"x")], r"entry '../evil.so' is a path outside the archive"),
        (list(entries.items()) + [("/abs.so", b"x")], "is a path outside the archive"),
        (list(entries.items()) + [("dir/", b"")], "unexpected entry 'dir/'"),
        (list(entries.items()) + [("notes.txt", b"hi")], "unexpected entry 'notes.txt'"),
        ([(n, d) for n, d in entries.items() if n != "lib.so"], r"missing lib.so"),
    ]
    for i, (items, message) in enumerate(cases):
        path = _zip(tmp_path / f"case{i}.sliver", items)
        with pytest.raises(ArtifactError, match=message):
            read(path)


def test_golden_arrays_must_match_the_manifest(entries, tmp_path):
    def with_golden(arrays: dict, name: str):
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        manifest = json.loads(entries["manifest.json"])
        manifest["golden"]["sha256"] = hashlib.sha256(buf.getvalue()).hexdigest()
        return _zip(tmp_path / name, [("manifest.json", json.dumps(manifest)), ("lib.so", entries["lib.so"]),
                                      ("golden.npz", buf.getvalue())])

    with np.load(io.BytesIO(entries["golden.npz"])) as g:
        good = {k: g[k] for k in g.files}
    with pytest.raises(ArtifactError, match=r"input_0 is float64\[1, 3, 32, 32\], the manifest says float32"):
        read(with_golden({**good, "input_0": good["input_0"].astype(np.float64)}, "f64.sliver"))
    with pytest.raises(ArtifactError, match=r"input_0 is float32\[3\]"):
        read(with_golden({**good, "input_0": np.zeros(3, np.float32)}, "shape.sliver"))
    with pytest.raises(ArtifactError, match="golden.npz has no output_0"):
        read(with_golden({"input_0": good["input_0"]}, "missing.sliver"))
    with pytest.raises(ArtifactError, match="unexpected or repeated arrays"):
        read(with_golden({**good, "extra": np.zeros(1)}, "extra.sliver"))
    with pytest.raises(ArtifactError, match="is object"):
        read(with_golden({**good, "output_0": np.array([None] * 10, dtype=object).reshape(1, 10)}, "obj.sliver"))


def test_verify_tolerances_come_from_the_caller_or_a_capped_manifest(example_x86, tmp_path):
    m = sliver.load(example_x86)
    assert all(r["ok"] for r in m.verify())
    assert len(m.verify(rtol=0.0, atol=0.0)) == 1  # the caller's tolerances are used (exact: may pass or not)
    with pytest.raises(InputError, match="a tolerance is a finite number"):
        m.verify(rtol=float("nan"))
    with pytest.raises(InputError, match="a tolerance is a finite number"):
        m.verify(atol=-1)
    # a manifest may not widen them past the cap
    with zipfile.ZipFile(example_x86) as z:
        items = {n: z.read(n) for n in z.namelist()}
    manifest = json.loads(items["manifest.json"])
    manifest["golden"]["rtol"] = 1e9
    items["manifest.json"] = json.dumps(manifest).encode()
    with pytest.raises(ArtifactError, match=r"golden.rtol: expected a tolerance in \[0, 0.1\]"):
        read(_zip(tmp_path / "wide.sliver", items.items()))
    # a wrong golden output fails --verify whatever the manifest says
    with np.load(io.BytesIO(items["golden.npz"])) as g:
        golden = {k: g[k] for k in g.files}
    golden["output_0"] = golden["output_0"] + 1.0
    buf = io.BytesIO()
    np.savez(buf, **golden)
    manifest["golden"].update(rtol=0.1, atol=0.1, sha256=hashlib.sha256(buf.getvalue()).hexdigest())
    items.update({"manifest.json": json.dumps(manifest).encode(), "golden.npz": buf.getvalue()})
    wrong = sliver.load(_zip(tmp_path / "wrong.sliver", items.items()))
    assert not any(r["ok"] for r in wrong.verify())
    from sliver.tools.cli import main

    path = tmp_path / "wrong.sliver"
    assert main(["run", str(path), "--verify"]) == 1
    assert main(["run", str(path), "--verify", "--rtol", "10", "--atol", "10"]) == 0  # the caller's choice
