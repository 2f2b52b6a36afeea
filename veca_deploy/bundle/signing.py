"""Signed bundles: an ed25519 signature of ``manifest.json``, for over-the-air delivery.

The manifest records the sha256 and size of every artifact and golden file, so a signature of
its bytes covers the whole bundle: a device that trusts a public key refuses a bundle that is
unsigned, signed by another key, or whose manifest changed after signing (and the hashes then
catch any changed file). The signature lives beside the manifest in ``manifest.sig`` (JSON:
algorithm, key id, base64 signature). Profiles are not signed: they are latency measurements the
device makes itself, and a profile can only choose among signed artifacts.

A device is configured with trusted keys through ``$VECA_PUBLIC_KEY`` (one or more public-key
files, separated by ``os.pathsep``) or the ``public_key`` argument of ``Bundle.open`` /
``Runtime.open`` / ``validate --public-key``. Keys are PEM files as ``veca-deploy keygen``
writes them (the private key PKCS#8, mode 0600; the public key SubjectPublicKeyInfo). The
``cryptography`` package (extra ``sign``) does the ed25519 work; it is imported only when a
bundle is signed or verified.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from ..errors import BackendUnavailable, BundleError, UsageError

SIGNATURE_NAME = "manifest.sig"
ALGORITHM = "ed25519"
#: environment variable naming the public key file(s) a device trusts
PUBLIC_KEY_ENV = "VECA_PUBLIC_KEY"


def _crypto():
    try:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError:
        raise BackendUnavailable("signing and verifying bundles needs the 'cryptography' package "
                                 "(pip install 'veca-deploy[sign]')") from None
    return serialization, ed25519


@dataclass(frozen=True)
class PublicKey:
    raw: bytes  # 32 bytes
    source: str

    @property
    def key_id(self) -> str:
        return key_id(self.raw)


def key_id(raw_public: bytes) -> str:
    """Short, stable name of a public key (first 16 hex digits of the sha256 of its raw bytes)."""
    return hashlib.sha256(raw_public).hexdigest()[:16]


def generate_keypair(out_dir: str | os.PathLike, name: str = "veca-signing", force: bool = False) -> tuple[Path, Path]:
    """Write ``NAME.key`` (private, PKCS#8 PEM, mode 0600) and ``NAME.pub`` (public PEM) into
    ``out_dir``; refuses to overwrite a key unless ``force``."""
    serialization, ed25519 = _crypto()
    folder = Path(out_dir)
    priv, pub = folder / f"{name}.key", folder / f"{name}.pub"
    if not force and (priv.exists() or pub.exists()):
        raise UsageError(f"{priv if priv.exists() else pub} exists (pass --force to replace the key pair)")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"{folder}: cannot create the key folder ({e.strerror or e})") from None
    key = ed25519.Ed25519PrivateKey.generate()
    priv_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())
    pub_pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)
    _atomic_write(priv, priv_pem, 0o600)
    _atomic_write(pub, pub_pem, 0o644)
    return priv, pub


def _atomic_write(path: Path, data: bytes, mode: int) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _read_key_file(path: str | os.PathLike, what: str) -> bytes:
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise UsageError(f"{p}: no such {what} file") from None
    except OSError as e:
        raise UsageError(f"{p}: cannot read the {what} ({e.strerror or e})") from None
    if len(data) > 64 << 10:
        raise UsageError(f"{p}: not an ed25519 {what} (file too large)")
    return data


def load_private_key(path: str | os.PathLike):
    """The ed25519 private key in a PEM file (as ``keygen`` writes it); one-line UsageError otherwise."""
    serialization, ed25519 = _crypto()
    data = _read_key_file(path, "private key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as e:
        raise UsageError(f"{path}: not an unencrypted PEM private key ({str(e).splitlines()[0][:120]})") from None
    except Exception as e:  # cryptography's UnsupportedAlgorithm and friends
        raise UsageError(f"{path}: unusable private key ({type(e).__name__})") from None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise UsageError(f"{path}: not an ed25519 key (veca-deploy signs with ed25519; see veca-deploy keygen)")
    return key


def load_public_key(path: str | os.PathLike) -> PublicKey:
    """An ed25519 public key from a PEM file (or the base64 of its 32 raw bytes)."""
    serialization, ed25519 = _crypto()
    data = _read_key_file(path, "public key")
    key = None
    if b"-----BEGIN" in data:
        try:
            key = serialization.load_pem_public_key(data)
        except Exception:
            key = None
    else:
        try:
            raw = base64.b64decode(data.strip(), validate=True)
            key = ed25519.Ed25519PublicKey.from_public_bytes(raw) if len(raw) == 32 else None
        except ValueError:
            key = None
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise UsageError(f"{path}: not an ed25519 public key (a .pub file from veca-deploy keygen)")
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return PublicKey(raw=raw, source=str(path))


def trusted_keys(public_key: str | os.PathLike | Sequence[str | os.PathLike] | None = None) -> list[PublicKey]:
    """The keys this device trusts: ``public_key`` when given, else ``$VECA_PUBLIC_KEY``; none
    configured means signatures are not required."""
    if public_key is None:
        env = os.environ.get(PUBLIC_KEY_ENV, "").strip()
        paths: Iterable = [p for p in env.split(os.pathsep) if p.strip()] if env else []
    elif isinstance(public_key, (str, os.PathLike)):
        paths = [public_key]
    else:
        paths = list(public_key)
    return [load_public_key(p) for p in paths]


def sign_manifest_bytes(data: bytes, private_key) -> dict:
    """The signature record of manifest bytes ``data``."""
    serialization, _ = _crypto()
    raw_pub = private_key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return {"algorithm": ALGORITHM, "key_id": key_id(raw_pub), "signed": "manifest.json",
            "manifest_sha256": hashlib.sha256(data).hexdigest(),
            "signature": base64.b64encode(private_key.sign(data)).decode("ascii")}


def sign_bundle(root: str | os.PathLike, private_key_path: str | os.PathLike) -> Path:
    """Sign ``root/manifest.json`` with the key in ``private_key_path``: writes ``manifest.sig``
    atomically (nothing else in the bundle changes). Returns the signature's path."""
    from .manifest import MANIFEST_NAME

    key = load_private_key(private_key_path)
    root = Path(root)
    try:
        data = (root / MANIFEST_NAME).read_bytes()
    except OSError as e:
        raise BundleError(f"{root}: no readable {MANIFEST_NAME} to sign ({e.strerror or e})") from None
    rec = sign_manifest_bytes(data, key)
    out = root / SIGNATURE_NAME
    _atomic_write(out, (json.dumps(rec, indent=1) + "\n").encode("utf-8"), 0o644)
    return out


def signature_of(root: str | os.PathLike) -> dict | None:
    """The bundle's signature record, or None when it is unsigned. A malformed one is a BundleError."""
    path = Path(root) / SIGNATURE_NAME
    if not path.is_file():
        return None
    try:
        rec = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        raise BundleError(f"{path}: unreadable signature file") from None
    if not isinstance(rec, dict) or rec.get("algorithm") != ALGORITHM or not isinstance(rec.get("signature"), str):
        raise BundleError(f"{path}: not an {ALGORITHM} signature record")
    return rec


def verify_manifest(root: str | os.PathLike, data: bytes, keys: Sequence[PublicKey]) -> str | None:
    """Check that ``data`` (the manifest bytes about to be parsed) carries a valid signature by
    one of ``keys``; returns the signing key's id (None when no key is configured: nothing
    required). Unsigned, unreadable or mismatched: a one-line BundleError."""
    if not keys:
        return None
    root = Path(root)
    rec = signature_of(root)
    names = ", ".join(k.key_id for k in keys)
    if rec is None:
        raise BundleError(f"{root}: unsigned bundle, and this device only accepts bundles signed by key {names} "
                          f"({PUBLIC_KEY_ENV} or --public-key); sign it with veca-deploy sign")
    _, ed25519 = _crypto()
    try:
        sig = base64.b64decode(rec["signature"], validate=True)
    except ValueError:
        raise BundleError(f"{root / SIGNATURE_NAME}: signature is not base64") from None
    from cryptography.exceptions import InvalidSignature

    for k in keys:
        try:
            ed25519.Ed25519PublicKey.from_public_bytes(k.raw).verify(sig, data)
            return k.key_id
        except InvalidSignature:
            continue
    other = rec.get("key_id")
    why = (f"signed by key {other}, not a trusted one ({names})" if other and other not in {k.key_id for k in keys}
           else "signature does not match the manifest (changed after signing, or tampered)")
    raise BundleError(f"{root}: bad signature: {why}")
