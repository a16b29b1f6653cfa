"""Signing keys and minisign-format signatures: the files keygen writes, passphrases, and that the real
`minisign` tool and our verifier accept each other's signatures and reject tampered ones."""

from __future__ import annotations

import shutil
import stat
import subprocess

import pytest

from deploy_util import cli
from edgesdk.deploy import keys

minisign = shutil.which("minisign")
needs_minisign = pytest.mark.skipif(
    minisign is None, reason="the minisign tool is not installed (apt install minisign)"
)


def test_keygen_writes_a_private_key_only_we_can_read_and_refuses_to_overwrite(tmp_path):
    key, pub = keys.keygen(tmp_path)
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert key.read_text().startswith("-----BEGIN PRIVATE KEY-----")
    lines = pub.read_text().splitlines()
    assert lines[0].startswith("untrusted comment: minisign public key ") and lines[1].startswith("RW")
    before = key.read_bytes(), pub.read_bytes()
    pub.unlink()  # either file existing is enough to refuse
    (tmp_path / keys.PUB_FILE).write_text("mine")
    with pytest.raises(keys.KeyFileError, match="refusing to overwrite"):
        keys.keygen(tmp_path)
    assert key.read_bytes() == before[0] and (tmp_path / keys.PUB_FILE).read_text() == "mine"
    r = cli("keygen", "--out", tmp_path)
    assert r.returncode == 2 and "already exists" in r.stderr


def test_a_passphrase_encrypts_the_key(tmp_path):
    (tmp_path / "pass").write_text("correct horse\n")
    r = cli("keygen", "--out", tmp_path / "k", "--passphrase-file", tmp_path / "pass", "--json", check=True)
    assert '"encrypted": true' in r.stdout
    key = tmp_path / "k" / keys.KEY_FILE
    assert key.read_text().startswith("-----BEGIN ENCRYPTED PRIVATE KEY-----")
    with pytest.raises(keys.KeyFileError, match="passphrase-file"):
        keys.load_private(key)
    with pytest.raises(keys.KeyFileError, match="passphrase is wrong"):
        keys.load_private(key, b"wrong")
    private = keys.load_private(key, keys.read_passphrase(tmp_path / "pass"))
    assert keys.public_of(private).text() == (tmp_path / "k" / keys.PUB_FILE).read_text()


def test_our_verifier_rejects_another_key_a_changed_file_and_a_changed_trusted_comment(tmp_path):
    key, pub = keys.keygen(tmp_path / "a")
    _, other = keys.keygen(tmp_path / "b")
    sig = keys.sign(b"data", keys.load_private(key), "timestamp:1\tfile:x")
    assert keys.verify(b"data", sig, keys.load_public(pub), "x.minisig") == "timestamp:1\tfile:x"
    with pytest.raises(keys.SignatureError, match="signed by another key"):
        keys.verify(b"data", sig, keys.load_public(other), "x.minisig")
    with pytest.raises(keys.SignatureError, match="does not match the signed file"):
        keys.verify(b"datA", sig, keys.load_public(pub), "x.minisig")
    forged = sig.replace("timestamp:1", "timestamp:2")
    with pytest.raises(keys.SignatureError, match="trusted comment was changed"):
        keys.verify(b"data", forged, keys.load_public(pub), "x.minisig")
    with pytest.raises(keys.SignatureError, match="not a minisign signature"):
        keys.verify(b"data", "garbage", keys.load_public(pub), "x.minisig")


@needs_minisign
def test_minisign_verifies_our_signatures_and_rejects_tampered_files(tmp_path):
    key, pub = keys.keygen(tmp_path)
    f = tmp_path / "package.json"
    f.write_bytes(b'{"version": "1.0.0"}\n')
    (tmp_path / "package.json.minisig").write_text(keys.sign(f.read_bytes(), keys.load_private(key), "t:1"))
    r = subprocess.run([minisign, "-Vm", f, "-p", pub], capture_output=True, text=True)
    assert r.returncode == 0 and "Signature and comment signature verified" in r.stdout, r.stderr
    f.write_bytes(b'{"version": "9.0.0"}\n')
    r = subprocess.run([minisign, "-Vm", f, "-p", pub], capture_output=True, text=True)
    assert r.returncode != 0 and "verification failed" in r.stderr


@needs_minisign
def test_we_verify_signatures_made_by_minisign(tmp_path):
    pub, sec, f = tmp_path / "m.pub", tmp_path / "m.key", tmp_path / "file"
    subprocess.run([minisign, "-G", "-W", "-p", pub, "-s", sec], check=True, capture_output=True)
    f.write_bytes(b"payload")
    subprocess.run([minisign, "-Sm", f, "-s", sec, "-t", "made by minisign"], check=True, capture_output=True)
    sig = (tmp_path / "file.minisig").read_text()
    assert keys.verify(b"payload", sig, keys.load_public(pub), "file.minisig") == "made by minisign"
    with pytest.raises(keys.SignatureError):
        keys.verify(b"payloaD", sig, keys.load_public(pub), "file.minisig")
