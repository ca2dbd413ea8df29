"""Signed artifacts: ed25519 signatures over the manifest.

An artifact is native code: loading it runs its library.  A signature says who built
it.  ``sliver sign ART --key KEY`` adds ``signature.json`` to the archive: the
signer's public key and an ed25519 signature over the exact bytes of
``manifest.json``.  The manifest holds the sha256 of ``lib.so`` and of
``golden.npz``, so the signature covers every byte that matters; ``load`` checks
both hashes after the signature.

``sliver.load(path, trusted_keys=[...])`` (``sliver run --trusted-key PUB``) refuses
an artifact that is unsigned, signed by a key not in the list, or whose signature
does not match, before any of its code is written to disk or mapped.

Keys are the standard PEM files of the ``cryptography`` package: ``sliver keygen
NAME`` writes ``NAME`` (the private key, mode 0600) and ``NAME.pub`` (the public key
to copy to devices).  Only this module imports ``cryptography``, and only when a
signature is made or checked.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from sliver.common.errors import ArtifactError, SliverError

SIGNATURE = "signature.json"
ALGORITHM = "ed25519"
#: what is signed: this prefix, then the bytes of manifest.json (domain separation:
#: a signature made for something else is never a valid artifact signature)
CONTEXT = b"sliver-artifact-manifest-v1\0"
MAX_SIGNATURE_BYTES = 4096


def _crypto():
    try:
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError as e:  # a device without the package
        raise ArtifactError(f"signed artifacts need the `cryptography` package: pip install cryptography ({e})") \
            from None
    return serialization, ed25519, InvalidSignature


@dataclass(frozen=True)
class PublicKey:
    """A trusted ed25519 public key (its 32 raw bytes) and where it came from."""

    raw: bytes
    source: str = ""

    @property
    def fingerprint(self) -> str:
        import hashlib

        return hashlib.sha256(self.raw).hexdigest()[:16]


def generate_key(path) -> tuple[Path, Path]:
    """Write a new private key to ``path`` (mode 0600, refused if it exists) and its
    public key to ``path.pub``; returns both paths."""
    serialization, ed25519, _ = _crypto()
    path = Path(path)
    pub = path.with_name(path.name + ".pub")
    for p in (path, pub):
        if p.exists():
            raise SliverError(f"{p} exists: sliver keygen never overwrites a key")
    key = ed25519.Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(private)
    pub.write_bytes(public)
    return path, pub


def _read_key_file(path) -> bytes:
    path = Path(path)
    try:
        if path.stat().st_size > 64 * 1024:
            raise SliverError(f"{path}: {path.stat().st_size:,} bytes is too large for a key file")
        return path.read_bytes()
    except OSError as e:
        raise SliverError(f"{path}: cannot read the key ({e.strerror or e})") from None


def load_private_key(path):
    serialization, ed25519, _ = _crypto()
    from cryptography.exceptions import UnsupportedAlgorithm

    data = _read_key_file(path)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as e:
        raise SliverError(f"{path}: not an unencrypted PEM private key ({e}); make one with `sliver keygen`") from None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise SliverError(f"{path}: a {type(key).__name__}, not an ed25519 key; make one with `sliver keygen`")
    return key


def load_public_key(path) -> PublicKey:
    """The public key in a PEM file (a ``.pub`` from ``sliver keygen``; a private key
    file gives its public half)."""
    serialization, ed25519, _ = _crypto()
    data = _read_key_file(path)
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError):  # not a public key: a private key gives its public half
        key = load_private_key(path).public_key()
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise SliverError(f"{path}: a {type(key).__name__}, not an ed25519 public key")
    return PublicKey(key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw), str(path))


def trusted(keys: Iterable) -> list[PublicKey]:
    """``keys`` (paths of key files, :class:`PublicKey` objects or raw 32-byte keys) as
    public keys."""
    out = []
    for k in keys:
        if isinstance(k, PublicKey):
            out.append(k)
        elif isinstance(k, (bytes, bytearray)) and len(k) == 32:
            out.append(PublicKey(bytes(k), "<bytes>"))
        else:
            out.append(load_public_key(k))
    return out


def signature_entry(manifest_bytes: bytes, key_path) -> bytes:
    """The ``signature.json`` that signs ``manifest_bytes`` with the private key at ``key_path``."""
    serialization, _, _ = _crypto()
    key = load_private_key(key_path)
    public = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    sig = key.sign(CONTEXT + manifest_bytes)
    return json.dumps({"algorithm": ALGORITHM, "public_key": public.hex(), "signature": sig.hex()},
                      indent=2).encode()


def check(source: str, manifest_bytes: bytes, entry: bytes | None, keys: list[PublicKey]) -> PublicKey:
    """Check that ``entry`` (the bytes of ``signature.json``, None if absent) signs
    ``manifest_bytes`` with one of ``keys``; returns that key, else raises
    :class:`ArtifactError`."""
    if entry is None:
        raise ArtifactError(f"{source} is not signed, and trusted keys were given: refusing to run it "
                            "(sign it with `sliver sign ARTIFACT --key KEY`)")
    _, ed25519, InvalidSignature = _crypto()
    try:
        if len(entry) > MAX_SIGNATURE_BYTES:
            raise ValueError(f"{len(entry):,} bytes")
        sig = json.loads(entry)
        if not isinstance(sig, dict) or sig.get("algorithm") != ALGORITHM:
            raise ValueError(f"algorithm {sig.get('algorithm') if isinstance(sig, dict) else sig!r}")
        public, signature = bytes.fromhex(sig["public_key"]), bytes.fromhex(sig["signature"])
        if len(public) != 32 or len(signature) != 64:
            raise ValueError("wrong key or signature length")
    except (ValueError, KeyError, TypeError, RecursionError) as e:
        raise ArtifactError(f"{source}: {SIGNATURE} is malformed ({type(e).__name__}: {e})") from None
    key = next((k for k in keys if k.raw == public), None)
    if key is None:
        fp = PublicKey(public).fingerprint
        raise ArtifactError(f"{source} is signed by key {fp}, which is not one of the trusted keys "
                            f"({', '.join(k.fingerprint for k in keys) or 'none'}): refusing to run it")
    try:
        ed25519.Ed25519PublicKey.from_public_bytes(key.raw).verify(signature, CONTEXT + manifest_bytes)
    except InvalidSignature:
        raise ArtifactError(f"{source}: the signature does not match the manifest: the artifact was modified "
                            "after it was signed; refusing to run it") from None
    return key
