"""Ed25519 keys and detached signatures in minisign's file formats, so `minisign -V` checks what we sign.

Public key file (two lines):   untrusted comment: ...
                               base64("Ed" + key id (8 bytes) + public key (32 bytes))
Signature file (four lines):   untrusted comment: ...
                               base64("ED" + key id + Ed25519(BLAKE2b-512(file)))     # prehashed
                               trusted comment: TEXT
                               base64(Ed25519(signature (64 bytes) + TEXT))          # global signature
The key id is the first 8 bytes of BLAKE2b(public key): derived, so the private key alone (PKCS8 PEM,
which has no room for minisign's random id) gives the id back when signing. The cryptography itself
is the `cryptography` package's."""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edgesdk.errors import EdgesdkError

KEY_FILE, PUB_FILE = "edgesdk.key", "edgesdk.pub"
PUB_ALG, PREHASHED, LEGACY = b"Ed", b"ED", b"Ed"  # LEGACY signs the file itself; read, never written
UNTRUSTED, TRUSTED = "untrusted comment: ", "trusted comment: "


class KeyFileError(EdgesdkError):
    """A key file is missing, malformed, encrypted without a passphrase, or would be overwritten."""


class SignatureError(EdgesdkError):
    """A signature is malformed, made by another key, or does not match the signed bytes."""


@dataclass(frozen=True)
class PublicKey:
    key_id: bytes  # 8 bytes, as stored (little-endian; minisign prints it reversed, in hex)
    raw: bytes  # 32-byte Ed25519 public key
    where: str = ""  # the file it came from, for messages

    @property
    def id_hex(self) -> str:
        return self.key_id[::-1].hex().upper()

    def text(self) -> str:
        return (
            f"{UNTRUSTED}minisign public key {self.id_hex}\n"
            + base64.b64encode(PUB_ALG + self.key_id + self.raw).decode()
            + "\n"
        )


def key_id_for(raw_public: bytes) -> bytes:
    return hashlib.blake2b(raw_public, digest_size=8).digest()


def public_of(private: Ed25519PrivateKey) -> PublicKey:
    raw = private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return PublicKey(key_id_for(raw), raw)


def read_passphrase(path: str | os.PathLike | None) -> bytes | None:
    """The first line of PATH (without its newline), or None when no file is given."""
    if path is None:
        return None
    try:
        text = Path(path).read_bytes()
    except OSError as e:
        raise KeyFileError(f"{path}: cannot read the passphrase file ({e.strerror})") from None
    line = text.splitlines()[0] if text.strip() else b""
    if not line:
        raise KeyFileError(f"{path}: the passphrase file is empty")
    return line


def keygen(out: str | os.PathLike, passphrase: bytes | None = None) -> tuple[Path, Path]:
    """Write OUT/edgesdk.key (PKCS8 PEM, mode 0600, encrypted when a passphrase is given) and
    OUT/edgesdk.pub (minisign's format). Refuses to overwrite either file."""
    out = Path(out)
    key_path, pub_path = out / KEY_FILE, out / PUB_FILE
    for p in (key_path, pub_path):
        if p.exists() or p.is_symlink():
            raise KeyFileError(f"{p}: already exists; refusing to overwrite a key (move it away first)")
    private = Ed25519PrivateKey.generate()
    enc = serialization.BestAvailableEncryption(passphrase) if passphrase else serialization.NoEncryption()
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, enc)
    out.mkdir(parents=True, exist_ok=True)
    # O_EXCL: a key that appeared since the check above is not overwritten either; 0600 from birth.
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
        f.flush()
        os.fsync(f.fileno())
    fd = os.open(pub_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    with os.fdopen(fd, "w") as f:
        f.write(public_of(private).text())
    return key_path, pub_path


def load_private(path: str | os.PathLike, passphrase: bytes | None = None) -> Ed25519PrivateKey:
    path = Path(path)
    try:
        pem = path.read_bytes()
    except OSError as e:
        raise KeyFileError(f"{path}: cannot read the private key ({e.strerror})") from None
    try:
        key = serialization.load_pem_private_key(pem, password=passphrase)
    except TypeError as e:  # encrypted without a passphrase, or a passphrase for a plain key
        raise KeyFileError(f"{path}: {e} (use --passphrase-file)") from None
    except ValueError:
        raise KeyFileError(f"{path}: not a PEM private key, or the passphrase is wrong") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{path}: a {type(key).__name__}, not an Ed25519 key (make one with `edgesdk keygen`)")
    return key


def _b64(line: str, n: int, what: str, where: str) -> bytes:
    try:
        raw = base64.b64decode(line.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise SignatureError(f"{where}: {what} is not base64") from None
    if len(raw) != n:
        raise SignatureError(f"{where}: {what} is {len(raw)} bytes, expected {n}")
    return raw


def parse_public(text: str, where: str) -> PublicKey:
    lines = text.splitlines()
    if len(lines) < 2 or not lines[0].startswith(UNTRUSTED):
        raise KeyFileError(f"{where}: not a minisign public key (expected 'untrusted comment:' and one base64 line)")
    try:
        raw = _b64(lines[1], 42, "the public key line", where)
    except SignatureError as e:
        raise KeyFileError(str(e)) from None
    if raw[:2] != PUB_ALG:
        raise KeyFileError(f"{where}: key algorithm {raw[:2]!r} is not Ed25519 ('Ed')")
    return PublicKey(raw[2:10], raw[10:], where)


def load_public(path: str | os.PathLike) -> PublicKey:
    path = Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise KeyFileError(f"{path}: cannot read the public key ({getattr(e, 'strerror', None) or e})") from None
    return parse_public(text, str(path))


def sign(
    data: bytes,
    private: Ed25519PrivateKey,
    trusted_comment: str,
    untrusted_comment: str = "signature from edgesdk secret key",
) -> str:
    """A minisign signature file (prehashed: BLAKE2b-512 of DATA) as text."""
    if "\n" in trusted_comment or "\r" in trusted_comment or "\n" in untrusted_comment:
        raise SignatureError("signature comments are one line each")
    pub = public_of(private)
    sig = private.sign(hashlib.blake2b(data).digest())
    global_sig = private.sign(sig + trusted_comment.encode())
    return (
        f"{UNTRUSTED}{untrusted_comment}\n" + base64.b64encode(PREHASHED + pub.key_id + sig).decode() + "\n"
        f"{TRUSTED}{trusted_comment}\n" + base64.b64encode(global_sig).decode() + "\n"
    )


def verify(data: bytes, sig_text: str, pub: PublicKey, where: str) -> str:
    """Check SIG_TEXT (minisign format) over DATA with PUB; returns the trusted comment.
    SignatureError names WHERE (the signature file) and what failed."""
    lines = sig_text.splitlines()
    if len(lines) != 4 or not lines[0].startswith(UNTRUSTED) or not lines[2].startswith(TRUSTED):
        raise SignatureError(
            f"{where}: not a minisign signature (expected 4 lines: untrusted comment, "
            "signature, trusted comment, global signature)"
        )
    blob = _b64(lines[1], 74, "the signature line", where)
    alg, key_id, sig = blob[:2], blob[2:10], blob[10:]
    if alg not in (PREHASHED, LEGACY):
        raise SignatureError(f"{where}: signature algorithm {alg!r} is not Ed25519 ('ED' or 'Ed')")
    if key_id != pub.key_id:
        raise SignatureError(
            f"{where}: signed by key {key_id[::-1].hex().upper()}, not by the trusted key "
            f"{pub.id_hex} ({pub.where or 'given'}): signed by another key"
        )
    key = Ed25519PublicKey.from_public_bytes(pub.raw)
    try:
        key.verify(sig, hashlib.blake2b(data).digest() if alg == PREHASHED else data)
    except InvalidSignature:
        raise SignatureError(
            f"{where}: the signature does not match the signed file (the file or the signature was changed)"
        ) from None
    comment = lines[2][len(TRUSTED) :]
    global_sig = _b64(lines[3], 64, "the global signature line", where)
    try:
        key.verify(global_sig, sig + comment.encode())
    except InvalidSignature:
        raise SignatureError(f"{where}: the trusted comment was changed (global signature does not match)") from None
    return comment
