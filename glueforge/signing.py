"""Signed manifests: Ed25519 (``cryptography``) over the exact bytes of ``manifest.json``.

The manifest holds every file's sha256, so a valid signature over its bytes vouches for every file
(``glueforge.verify`` checks those). A signed bundle carries ``manifest.sig`` beside its manifest:

    {"algorithm": "ed25519", "key_id": "ed25519:<16 hex>", "signature": "<base64>"}

and its manifest records the key id (``signed_by``). The key id is the start of the sha256 of the
raw public key. Keys are PEM files: ``glueforge keygen --out DIR`` writes ``glueforge.key``
(PKCS#8, mode 0600) and ``glueforge.pub``. A trust list is one or more public key files.

Why not the OpenSSF model-signing format: its library (1.1) depends on sigstore, in-toto and blake3,
which the pull-only install on a Jetson should not carry; the offline key mode it offers is what
this is, over one manifest instead of a DSSE envelope. ``cryptography`` does the cryptography.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

from glueforge import GlueforgeError
from glueforge.store import SIGNATURE

ALGORITHM = "ed25519"
PRIVATE, PUBLIC = "glueforge.key", "glueforge.pub"


class SignatureError(GlueforgeError):
    """A manifest that is unsigned where trust is required, signed by an untrusted key, or whose signature fails."""


def _serialization():
    from cryptography.hazmat.primitives import serialization

    return serialization


def key_id(public_key) -> str:
    s = _serialization()
    raw = public_key.public_bytes(s.Encoding.Raw, s.PublicFormat.Raw)
    return f"{ALGORITHM}:{hashlib.sha256(raw).hexdigest()[:16]}"


def keygen(out: Path) -> tuple[Path, Path]:
    """Write a new key pair into directory ``out`` (refusing to overwrite one); return (private, public) paths."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    s = _serialization()
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise GlueforgeError(f"--out {out} exists and is not a directory")
    private, public = out / PRIVATE, out / PUBLIC
    for path in (private, public):
        if path.exists():
            raise GlueforgeError(f"{path} exists; refusing to overwrite a key")
    out.mkdir(parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.private_bytes(s.Encoding.PEM, s.PrivateFormat.PKCS8, s.NoEncryption()))
    public.write_bytes(key.public_key().public_bytes(s.Encoding.PEM, s.PublicFormat.SubjectPublicKeyInfo))
    return private, public


def load_private(path: Path):
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    try:
        key = _serialization().load_pem_private_key(Path(path).read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as e:
        raise GlueforgeError(f"signing key {path}: not a readable unencrypted PEM private key ({e})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise GlueforgeError(f"signing key {path}: not an Ed25519 key")
    return key


def load_public(path: Path):
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        key = _serialization().load_pem_public_key(Path(path).read_bytes())
    except (OSError, ValueError) as e:
        raise GlueforgeError(f"trusted key {path}: not a readable PEM public key ({e})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise GlueforgeError(f"trusted key {path}: not an Ed25519 key")
    return key


def trusted(paths: Iterable[Path | str]) -> dict[str, Any]:
    """key id -> public key, of the trusted public key files ``paths``."""
    keys = [load_public(Path(p)) for p in paths]
    return {key_id(k): k for k in keys}


def signed_manifest(manifest: dict[str, Any], private_key) -> tuple[bytes, bytes]:
    """(manifest bytes recording the signer's key id, the ``manifest.sig`` bytes over them)."""
    kid = key_id(private_key.public_key())
    body = json.dumps({**manifest, "signed_by": kid}, indent=1).encode()
    signature = {"algorithm": ALGORITHM, "key_id": kid, "signature": base64.b64encode(private_key.sign(body)).decode()}
    return body, json.dumps(signature).encode()


def check(manifest_bytes: bytes, signature_bytes: bytes | None, keys: dict[str, Any], where: str) -> str:
    """The key id that signed ``manifest_bytes``; :class:`SignatureError` unless one of ``keys`` did."""
    from cryptography.exceptions import InvalidSignature

    if signature_bytes is None:
        raise SignatureError(f"{where}: unsigned (no {SIGNATURE}), and a trusted key is required; refusing it")
    try:
        record = json.loads(signature_bytes)
        kid, algorithm, signature = record["key_id"], record["algorithm"], base64.b64decode(record["signature"], validate=True)
    except (ValueError, KeyError, TypeError):
        raise SignatureError(f"{where}: {SIGNATURE} is not a readable signature record") from None
    if algorithm != ALGORITHM:
        raise SignatureError(f"{where}: signed with {algorithm!r}; only {ALGORITHM} is accepted")
    if kid not in keys:
        raise SignatureError(f"{where}: signed by key {kid}, which is not among the trusted keys ({', '.join(keys) or 'none'})")
    try:
        keys[kid].verify(signature, manifest_bytes)
    except InvalidSignature:
        raise SignatureError(f"{where}: the signature of key {kid} does not match the manifest; it was altered") from None
    try:
        recorded = json.loads(manifest_bytes).get("signed_by")
    except ValueError:
        recorded = None
    if recorded != kid:
        raise SignatureError(f"{where}: the manifest records signer {recorded!r}, the signature is {kid}'s")
    return kid


def trust_paths(explicit: Sequence[Path | str] | None) -> list[Path]:
    """The trusted key files: ``explicit`` where given, else ``$GLUEFORGE_TRUSTED_KEYS`` (os.pathsep-separated)."""
    if explicit:
        return [Path(p) for p in explicit]
    return [Path(p) for p in os.environ.get("GLUEFORGE_TRUSTED_KEYS", "").split(os.pathsep) if p]
