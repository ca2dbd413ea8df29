"""Signed artifacts: a signed artifact loads with its key; an unsigned, re-signed or
modified one is refused before any of its code is mapped.  The proof that the code
never runs: a library whose constructor writes a marker file."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

import sliver
from sliver.common.errors import ArtifactError, SliverError
from sliver.runtime.artifact import read, sign
from sliver.runtime.signing import generate_key

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    d = tmp_path_factory.mktemp("keys")
    return {who: generate_key(d / who) for who in ("builder", "attacker")}


def _entries(path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as z:
        return {n: z.read(n) for n in z.namelist()}


def _write(path, entries: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        for n, d in entries.items():
            z.writestr(n, d)
    return path


def test_keygen_writes_a_private_key_only_its_owner_reads(keys):
    private, public = keys["builder"]
    assert private.stat().st_mode & 0o777 == 0o600
    assert b"PUBLIC KEY" in public.read_bytes() and b"PRIVATE KEY" in private.read_bytes()
    with pytest.raises(SliverError, match="never overwrites"):
        generate_key(private)


def test_a_signed_artifact_loads_with_its_key(example_x86, keys, tmp_path):
    signed = sign(example_x86, keys["builder"][0], output=tmp_path / "signed.sliver")
    m = sliver.load(signed, trusted_keys=[keys["builder"][1]])
    assert all(r["ok"] for r in m.verify())
    # the private key file serves as a trusted key too (its public half)
    sliver.load(signed, trusted_keys=[keys["builder"][0]])
    # several trusted keys: any of them
    sliver.load(signed, trusted_keys=[keys["attacker"][1], keys["builder"][1]])
    # without trusted keys a signed artifact loads as before
    sliver.load(signed)


def test_unsigned_foreign_resigned_and_modified_artifacts_are_refused(example_x86, keys, tmp_path):
    trusted = [keys["builder"][1]]
    with pytest.raises(ArtifactError, match="is not signed, and trusted keys were given"):
        sliver.load(example_x86, trusted_keys=trusted)
    foreign = sign(example_x86, keys["attacker"][0], output=tmp_path / "foreign.sliver")
    with pytest.raises(ArtifactError, match="signed by key [0-9a-f]{16}, which is not one of the trusted keys"):
        sliver.load(foreign, trusted_keys=trusted)
    # a signed artifact re-signed by someone else
    resigned = sign(sign(example_x86, keys["builder"][0], output=tmp_path / "a.sliver"), keys["attacker"][0],
                    output=tmp_path / "resigned.sliver")
    with pytest.raises(ArtifactError, match="not one of the trusted keys"):
        sliver.load(resigned, trusted_keys=trusted)
    # modified after signing: the manifest (a tolerance), or the golden data with its hash updated
    signed = sign(example_x86, keys["builder"][0], output=tmp_path / "signed.sliver")
    entries = _entries(signed)
    manifest = json.loads(entries["manifest.json"])
    manifest["golden"]["rtol"] = 0.1
    edited = _write(tmp_path / "edited.sliver", {**entries, "manifest.json": json.dumps(manifest).encode()})
    with pytest.raises(ArtifactError, match="signature does not match the manifest"):
        sliver.load(edited, trusted_keys=trusted)
    with pytest.raises(ArtifactError, match="signature.json is malformed"):
        sliver.load(_write(tmp_path / "junk.sliver", {**entries, "signature.json": b"{]"}), trusted_keys=trusted)
    with pytest.raises(ArtifactError, match="trusted_keys is empty"):
        sliver.load(signed, trusted_keys=[])


def test_signing_a_version_1_artifact_records_the_golden_hash(example_x86, keys, tmp_path):
    entries = _entries(example_x86)
    manifest = json.loads(entries["manifest.json"])
    manifest["format_version"] = 1
    del manifest["golden"]["sha256"]
    old = _write(tmp_path / "v1.sliver", {**entries, "manifest.json": json.dumps(manifest).encode()})
    signed = sign(old, keys["builder"][0])
    assert signed == old  # in place by default
    art = read(signed, trusted_keys=[keys["builder"][1]])
    assert art.manifest.format_version == 4 and art.manifest.golden.sha256 is not None  # read: the current format


def test_bad_key_files_are_sliver_errors(example_x86, tmp_path):
    junk = tmp_path / "junk.pem"
    junk.write_text("not a key")
    with pytest.raises(SliverError, match="not an unencrypted PEM private key"):
        sign(example_x86, junk, output=tmp_path / "x.sliver")
    with pytest.raises(SliverError, match="not an unencrypted PEM private key"):
        sliver.load(example_x86, trusted_keys=[junk])
    with pytest.raises(SliverError, match="cannot read the key"):
        sliver.load(example_x86, trusted_keys=[tmp_path / "missing.pub"])


# --- the refused library's code never runs --------------------------------------------

CONSTRUCTOR = r"""
#include <stdio.h>
__attribute__((constructor)) static void planted(void) {
    FILE *f = fopen(MARKER, "w");
    if (f) { fputs("the library's code ran\n", f); fclose(f); }
}
int not_a_model(void) { return 42; }
"""


@pytest.fixture
def planted(example_x86, tmp_path):
    """An artifact whose lib.so is a library with a constructor that writes a marker
    file, the manifest's hash and size updated to match (what an attacker who can
    edit the file does); returns (artifact, marker)."""
    if shutil.which("gcc") is None:
        pytest.skip("needs gcc")
    marker = tmp_path / "marker"
    src = tmp_path / "planted.c"
    src.write_text(CONSTRUCTOR)
    lib = tmp_path / "planted.so"
    subprocess.run(["gcc", "-shared", "-fPIC", f'-DMARKER="{marker}"', "-o", str(lib), str(src)], check=True)
    code = lib.read_bytes()
    entries = _entries(example_x86)
    manifest = json.loads(entries["manifest.json"])
    manifest["library"].update(sha256=hashlib.sha256(code).hexdigest(), bytes=len(code))
    art = _write(tmp_path / "planted.sliver", {**entries, "manifest.json": json.dumps(manifest).encode(),
                                               "lib.so": code})
    return art, marker


def _load_in_subprocess(art, *trusted) -> subprocess.CompletedProcess:
    code = ("import sys, sliver\n"
            "keys = sys.argv[2:] or None\n"
            "try:\n"
            "    sliver.load(sys.argv[1], trusted_keys=keys)\n"
            "except sliver.SliverError as e:\n"
            "    print(type(e).__name__, e)\n")
    return subprocess.run([sys.executable, "-c", code, str(art), *map(str, trusted)], capture_output=True,
                          text=True, timeout=120, env={**os.environ, "TVM_USE_RUNTIME_LIB": "1"})


def test_the_refused_librarys_constructor_never_runs(planted, keys, tmp_path):
    art, marker = planted
    trusted = keys["builder"][1]
    # unsigned
    proc = _load_in_subprocess(art, trusted)
    assert "is not signed" in proc.stdout and not marker.exists(), proc
    # signed by the attacker's key
    foreign = sign(art, keys["attacker"][0], output=tmp_path / "foreign.sliver")
    proc = _load_in_subprocess(foreign, trusted)
    assert "not one of the trusted keys" in proc.stdout and not marker.exists(), proc
    # the CLI refuses it the same way: a sliver error, exit 2, no code run
    for path in (art, foreign):
        proc = subprocess.run([sys.executable, "-m", "sliver.runtime", "run", str(path), "--trusted-key", str(trusted)],
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2 and proc.stderr.startswith("sliver: error:"), proc
        assert not marker.exists()
    # the control: the same file loaded without trusted keys does run the constructor
    # (the hash matches: a sha256 inside the archive is no protection), so the marker
    # above would have shown it
    proc = _load_in_subprocess(art)
    assert marker.exists(), proc
