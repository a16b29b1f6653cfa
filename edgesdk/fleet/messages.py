"""Signed fleet messages: a release for a group, a command for one device.

On the wire (JSON):   {"signed": "<the message, canonical JSON text>", "minisig": "<minisign signature>"}
The signature is deploy/keys.py's (Ed25519, minisign's format, the same fleet key that signs
packages) over the exact bytes of "signed"; only after it verifies is that text parsed, so what is
checked is what is read. Every field is then validated; a device acts only on a message for its group
(and, for a command, its device id) that has not expired.

release:  schema, kind "release", group, release (id), issued, expires (unix seconds), wave, devices
          (every device targeted so far), package {name, version, manifest_sha256 (names the slot),
          sha256 + bytes (of the file), url (file://, http(s)://, or "mqtt:chunks"), chunks
          (null, or {size, sha256: [one per chunk]})}, allow_downgrade (optional, default false: install
          refuses an older version than the one running, as `edgesdk install` does)
rollback: schema, kind "rollback", group, device, command (id), release, slot (roll back only when
          this slot is current), issued, expires"""

from __future__ import annotations

import json
import re
import time

from edgesdk.deploy import keys
from edgesdk.errors import EdgesdkError, no_nonfinite
from edgesdk.fleet.topics import check_name

SCHEMA = "edgesdk.fleet/1"
SHA256 = re.compile(r"[0-9a-f]{64}")
MAX_MESSAGE = 4 << 20  # a release lists devices and chunk hashes: far below this
URL_SCHEMES = ("file://", "http://", "https://", "mqtt:chunks")


class MessageError(EdgesdkError):
    """A fleet message is malformed, not signed by the fleet key, for someone else, or expired."""


def canonical(body: dict) -> bytes:
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def seal(body: dict, private) -> bytes:
    """The wire form of BODY, signed with PRIVATE (an Ed25519 private key)."""
    text = canonical(body)
    ident = body.get("release") if body.get("kind") == "release" else body.get("command")
    sig = keys.sign(text, private, f"timestamp:{int(time.time())}\tedgesdk fleet {body.get('kind')} {ident}")
    return json.dumps({"signed": text.decode(), "minisig": sig}).encode()


def _field(body: dict, name: str, kind, where: str):
    v = body.get(name)
    if not isinstance(v, kind) or isinstance(v, bool):
        raise MessageError(f"{where}: field {name!r} must be {getattr(kind, '__name__', kind)}, got {v!r}")
    return v


def open_signed(payload: bytes, pub: keys.PublicKey, where: str) -> dict:
    """The message inside PAYLOAD, after its signature verified with PUB; MessageError (or
    keys.SignatureError) naming WHERE (the topic) otherwise."""
    if len(payload) > MAX_MESSAGE:
        raise MessageError(f"{where}: {len(payload)} bytes, over the limit of {MAX_MESSAGE}")
    try:
        env = json.loads(payload)
    except ValueError:
        raise MessageError(f"{where}: not JSON; not a fleet message") from None
    if not isinstance(env, dict) or not isinstance(env.get("signed"), str) or not isinstance(env.get("minisig"), str):
        raise MessageError(f"{where}: not a signed fleet message (expected 'signed' and 'minisig')")
    text = env["signed"].encode()
    keys.verify(text, env["minisig"], pub, f"{where} (minisig)")
    try:
        body = json.loads(text)
    except ValueError:
        raise MessageError(f"{where}: the signed text is not JSON") from None
    if not isinstance(body, dict) or body.get("schema") != SCHEMA:
        raise MessageError(
            f"{where}: schema {body.get('schema') if isinstance(body, dict) else None!r}, expected {SCHEMA!r}"
        )
    no_nonfinite(body, where)
    for name in ("issued", "expires"):
        _field(body, name, int, where)
    return body


def check_release(body: dict, where: str) -> dict:
    if body.get("kind") != "release":
        raise MessageError(f"{where}: kind {body.get('kind')!r}, expected 'release'")
    check_name(body.get("group"), "group", where)
    check_name(body.get("release"), "release", where)
    if _field(body, "wave", int, where) < 1:
        raise MessageError(f"{where}: wave {body['wave']} must be at least 1")
    if not isinstance(body.get("allow_downgrade", False), bool):
        raise MessageError(f"{where}: field 'allow_downgrade' must be true or false")
    devices = _field(body, "devices", list, where)
    for d in devices:
        check_name(d, "device", where)
    pkg = _field(body, "package", dict, where)
    w = f"{where}: package"
    check_name(pkg.get("name"), "package name", w)
    for name in ("version", "url"):
        _field(pkg, name, str, w)
    for name in ("sha256", "manifest_sha256"):
        if not isinstance(pkg.get(name), str) or not SHA256.fullmatch(pkg[name]):
            raise MessageError(f"{w}: {name} must be 64 lowercase hex digits, got {pkg.get(name)!r}")
    if _field(pkg, "bytes", int, w) <= 0:
        raise MessageError(f"{w}: bytes {pkg['bytes']} must be positive")
    if not pkg["url"].startswith(URL_SCHEMES):
        raise MessageError(f"{w}: url {pkg['url']!r}: file://, http://, https:// or mqtt:chunks")
    ch = pkg.get("chunks")
    if pkg["url"] == "mqtt:chunks":
        if not isinstance(ch, dict) or _field(ch, "size", int, w + " chunks") <= 0:
            raise MessageError(f"{w}: url mqtt:chunks needs chunks {{size, sha256: [...]}}")
        hashes = _field(ch, "sha256", list, w + " chunks")
        if len(hashes) != -(-pkg["bytes"] // ch["size"]) or not all(
            isinstance(h, str) and SHA256.fullmatch(h) for h in hashes
        ):
            raise MessageError(f"{w}: chunks: one sha256 per {ch['size']}-byte chunk of {pkg['bytes']} bytes")
    elif ch is not None:
        raise MessageError(f"{w}: chunks given for url {pkg['url']!r}")
    return body


def check_command(body: dict, where: str) -> dict:
    if body.get("kind") != "rollback":
        raise MessageError(f"{where}: kind {body.get('kind')!r}, expected 'rollback'")
    for name in ("group", "device", "command", "release"):
        check_name(body.get(name), name, where)
    _field(body, "slot", str, where)
    return body


def open_release(payload: bytes, pub: keys.PublicKey, where: str, group: str) -> dict:
    body = check_release(open_signed(payload, pub, where), where)
    if body["group"] != group:
        raise MessageError(f"{where}: a release for group {body['group']!r}, not {group!r}")
    return body


def open_command(payload: bytes, pub: keys.PublicKey, where: str, group: str, device: str) -> dict:
    body = check_command(open_signed(payload, pub, where), where)
    if (body["group"], body["device"]) != (group, device):
        raise MessageError(f"{where}: a command for {body['group']}/{body['device']}, not {group}/{device}")
    return body


def expired(body: dict, now: float | None = None) -> bool:
    return (time.time() if now is None else now) > body["expires"]
