"""Packages: pack and inspect, minisign verifies the manifest, and every altered, foreign or unsafe
archive is refused by install with nothing under the root changed (full tree snapshot)."""

from __future__ import annotations

import json
import shutil
import subprocess
import tarfile

import pytest

from deploy_util import cli, info, keypair, other_keypair, pkgs, read_members, sign_manifest, snapshot, write_raw  # noqa: F401  (fixtures)
from edgesdk.deploy.archive import Limits
from edgesdk.deploy.slots import InstallOptions, install
from edgesdk.errors import EdgesdkError


@pytest.fixture(scope="module")
def installed(pkgs, keypair, tmp_path_factory):
    """A root with 1.0.0 installed (current), the package under attack being 2.0.0."""
    root = tmp_path_factory.mktemp("device") / "root"
    assert install(pkgs["1.0.0"], keypair[1], root, InstallOptions()).ok
    return root


def refused(pkg, pub, root, match: str | None, limits: Limits = Limits()) -> None:
    before = snapshot(root.parent)
    with pytest.raises(EdgesdkError, match=match):
        install(pkg, pub, root, InstallOptions(limits=limits))
    assert snapshot(root.parent) == before


def test_pack_inspect_and_minisign(bundle, keypair, tmp_path):
    pkg = tmp_path / "brick.tgz"
    r = cli("pack", bundle, "--key", keypair[0], "--version", "3.1.4", "--out", pkg, "--json", check=True)
    out = json.loads(r.stdout)
    assert out["manifest"]["version"] == "3.1.4" and out["manifest"]["devices"] == []
    assert len(out["manifest"]["health"]["reference_scores"]) > 0
    r = cli("inspect", pkg, "--pubkey", keypair[1], "--json", check=True)
    info_ = json.loads(r.stdout)
    assert info_["verified"] and {m["member"] for m in info_["members"]} == set(out["manifest"]["members"])
    names = [ti.name for ti, _ in read_members(pkg)]
    assert names[:2] == ["package.json", "package.json.minisig"] and "bundle/model.onnx" in names
    assert cli("pack", bundle, "--key", keypair[0], "--version", "3.1.4", "--out", pkg).returncode == 2  # no overwrite
    minisign = shutil.which("minisign")
    if minisign is None:
        pytest.skip("the minisign tool is not installed")
    with tarfile.open(pkg) as tar:
        tar.extractall(tmp_path / "x", members=[tar.getmember("package.json"), tar.getmember("package.json.minisig")])
    meta = tmp_path / "x" / "package.json"
    r = subprocess.run([minisign, "-Vm", meta, "-p", keypair[1]], capture_output=True, text=True)
    assert r.returncode == 0 and "edgesdk package brick 3.1.4" in r.stdout, r.stderr
    meta.write_text(meta.read_text().replace('"3.1.4"', '"9.9.9"'))
    assert subprocess.run([minisign, "-Vm", meta, "-p", keypair[1]], capture_output=True).returncode != 0


def test_pack_never_replaces_a_package_that_appeared_while_it_ran(bundle, keypair, tmp_path, monkeypatch):
    """pack refuses an existing OUT at its start, and again at the moment it names its package: a file
    another pack (or a copy) put there meanwhile is kept, and nothing of this pack is left beside it."""
    from edgesdk.deploy import package

    out = tmp_path / "brick-1.0.0.tgz"
    real = package.write_archive

    def meanwhile(path, entries, mtime):
        out.write_bytes(b"someone else's package")
        return real(path, entries, mtime)

    monkeypatch.setattr(package, "write_archive", meanwhile)
    with pytest.raises(EdgesdkError, match="appeared while packing"):
        package.pack(bundle, keypair[0], out, package.PackOptions(version="1.0.0"))
    assert out.read_bytes() == b"someone else's package" and [p.name for p in tmp_path.iterdir()] == [out.name]


def test_inspect_without_a_key_says_the_signature_was_not_checked(pkgs):
    r = cli("inspect", pkgs["1.0.0"], check=True)
    assert "NOT VERIFIED: signature not checked" in r.stdout


def test_pack_refuses_runtime_wheel_options_without_a_runtime(bundle, keypair, tmp_path):
    """find_links and no_index only steer the runtime's pip download: pack() refuses them without a
    runtime, from Python as from the command line, and writes nothing."""
    from edgesdk.deploy.package import PackOptions, pack
    from edgesdk.errors import OptionError

    out = tmp_path / "brick.tgz"
    for opts in (
        PackOptions(version="1.0.0", find_links=(str(tmp_path),)),
        PackOptions(version="1.0.0", no_index=True),
    ):
        with pytest.raises(OptionError, match="--find-links and --no-index are for the runtime's wheels"):
            pack(bundle, keypair[0], out, opts)
        assert not out.exists()


@pytest.mark.parametrize("where", [0.1, 0.3, 0.5, 0.7, 0.9, "crc", "isize"])
def test_a_flipped_byte_anywhere_is_refused(pkgs, keypair, installed, tmp_path, where):
    data = bytearray(pkgs["2.0.0"].read_bytes())
    # The gzip header's timestamp and the unused bits of the last deflate byte carry no content; every
    # other byte decompresses into a member (sha256 in the signed manifest) or is checked by gzip.
    i = {"crc": len(data) - 8, "isize": len(data) - 2}.get(where) or int(10 + where * (len(data) - 30))
    data[i] ^= 0x01
    (tmp_path / "p.tgz").write_bytes(bytes(data))
    refused(tmp_path / "p.tgz", keypair[1], installed, None)


def _variant(pkgs, tmp_path, edit):
    members = read_members(pkgs["2.0.0"])
    return write_raw(tmp_path / "v.tgz", edit(members))


def _replace(members, name, data):
    return [(info(ti.name, data) if ti.name == name else (ti, d)) for ti, d in members]


def _manifest(members):
    return json.loads(members[0][1])


def test_altered_manifest_signature_or_member_is_refused(pkgs, keypair, other_keypair, installed, tmp_path):
    pub = keypair[1]
    m = lambda ms: _manifest(ms)  # noqa: E731
    dump = lambda d: (json.dumps(d, indent=2) + "\n").encode()  # noqa: E731

    def manifest_edit(ms):
        d = m(ms)
        d["devices"] = ["cpu"]
        return _replace(ms, "package.json", dump(d))

    refused(_variant(pkgs, tmp_path, manifest_edit), pub, installed, "signature does not match")

    def sig_edit(ms):
        lines = ms[1][1].decode().splitlines()
        lines[1] = lines[1][:20] + ("A" if lines[1][20] != "A" else "B") + lines[1][21:]
        return _replace(ms, "package.json.minisig", ("\n".join(lines) + "\n").encode())

    refused(_variant(pkgs, tmp_path, sig_edit), pub, installed, "package.json.minisig")

    def member_edit(ms):
        model = dict((ti.name, d) for ti, d in ms)["bundle/model.onnx"]
        return _replace(ms, "bundle/model.onnx", model[:-1] + bytes([model[-1] ^ 1]))

    refused(_variant(pkgs, tmp_path, member_edit), pub, installed, "bundle/model.onnx.*sha256")

    def member_and_manifest_edit(ms):
        d = m(ms)
        d["members"]["bundle/parity.json"]["bytes"] += 1
        parity = dict((t.name, x) for t, x in ms)["bundle/parity.json"]
        return _replace(_replace(ms, "bundle/parity.json", parity + b" "), "package.json", dump(d))

    refused(_variant(pkgs, tmp_path, member_and_manifest_edit), pub, installed, "signature does not match")

    def resigned_by_other(ms):
        return _replace(ms, "package.json.minisig", sign_manifest(ms[0][1], other_keypair[0]))

    refused(_variant(pkgs, tmp_path, resigned_by_other), pub, installed, "signed by another key")
    r = cli("install", pkgs["2.0.0"], "--pubkey", other_keypair[1], "--root", installed)
    assert r.returncode == 2 and str(pkgs["2.0.0"]) in r.stderr and "signed by another key" in r.stderr

    refused(
        _variant(pkgs, tmp_path, lambda ms: [x for x in ms if x[0].name != "bundle/parity.json"]),
        pub,
        installed,
        "missing from the archive.*bundle/parity.json",
    )
    refused(
        _variant(pkgs, tmp_path, lambda ms: ms + [info("bundle/extra.txt", b"hi")]),
        pub,
        installed,
        "'bundle/extra.txt' is not listed",
    )
    refused(_variant(pkgs, tmp_path, lambda ms: ms + [ms[3]]), pub, installed, "appears twice")
    refused(_variant(pkgs, tmp_path, lambda ms: [ms[1], ms[0]] + ms[2:]), pub, installed, "must come first")
    r = cli("inspect", _variant(pkgs, tmp_path, member_edit), "--pubkey", pub, check=True)
    assert "NOT VERIFIED" in r.stdout and "bundle/model.onnx" in r.stdout and "changed after signing" in r.stdout
    pkg = _variant(pkgs, tmp_path, lambda ms: ms)
    pkg.write_bytes(pkg.read_bytes() + b"trailing")
    refused(pkg, pub, installed, "damaged archive data|not a readable package")


UNSAFE = {
    "../evil": (info("../evil", b"x"), "climbs out"),
    "bundle/../../evil": (info("bundle/../../evil", b"x"), "climbs out"),
    "/etc/evil": (info("/etc/evil", b"x"), "absolute path"),
    ".hidden": (info("bundle/.hidden", b"x"), "not a plain relative name"),
    "symlink": (info("bundle/link", type_=tarfile.SYMTYPE, linkname="/etc/passwd"), "symbolic link"),
    "hardlink": (info("bundle/hard", type_=tarfile.LNKTYPE, linkname="bundle/model.onnx"), "hard link"),
    "char device": (info("bundle/null", type_=tarfile.CHRTYPE, devmajor=1, devminor=3), "device file"),
    "block device": (info("bundle/sda", type_=tarfile.BLKTYPE, devmajor=8, devminor=0), "device file"),
    "fifo": (info("bundle/pipe", type_=tarfile.FIFOTYPE), "FIFO"),
}


@pytest.mark.parametrize("case", sorted(UNSAFE))
def test_unsafe_members_are_refused_before_anything_is_written(pkgs, keypair, installed, tmp_path, case):
    member, match = UNSAFE[case]
    refused(_variant(pkgs, tmp_path, lambda ms: ms[:2] + [member] + ms[2:]), keypair[1], installed, match)


def test_a_signed_manifest_cannot_name_an_unsafe_path(pkgs, keypair, installed, tmp_path):
    def edit(ms):
        d = _manifest(ms)
        d["members"]["../../evil"] = {"sha256": "0" * 64, "bytes": 1}
        meta = (json.dumps(d) + "\n").encode()
        return [info("package.json", meta), info("package.json.minisig", sign_manifest(meta, keypair[0]))] + ms[2:]

    refused(_variant(pkgs, tmp_path, edit), keypair[1], installed, "climbs out")


def test_oversize_members_and_too_many_members_are_refused(pkgs, keypair, installed, tmp_path):
    pub = keypair[1]
    # A header that claims 3 GiB (with no data behind it): refused from the header alone.
    huge = info("bundle/huge.bin")
    huge[0].size = 3 << 30
    refused(_variant(pkgs, tmp_path, lambda ms: ms[:2] + [huge]), pub, installed, "over the member limit")

    def signed_huge(ms):  # the signed manifest itself promises more than a device accepts
        d = _manifest(ms)
        d["members"]["bundle/model.onnx"]["bytes"] = 3 << 30
        meta = (json.dumps(d) + "\n").encode()
        return [info("package.json", meta), info("package.json.minisig", sign_manifest(meta, keypair[0]))] + ms[2:]

    refused(_variant(pkgs, tmp_path, signed_huge), pub, installed, "over the member limit")
    refused(pkgs["2.0.0"], pub, installed, "over the (member|package) limit", Limits(member_bytes=1 << 20))
    with tarfile.open(pkgs["2.0.0"]) as tf:  # the package's members: its bundle's files, whatever the model needs
        n = len(json.loads(tf.extractfile("package.json").read())["members"])  # type: ignore[union-attr]
    refused(pkgs["2.0.0"], pub, installed, f"lists {n} members, over the limit of {n - 1}", Limits(members=n - 1))
    dirs = [info(f"d{i}", type_=tarfile.DIRTYPE) for i in range(4)]  # not in the manifest, still counted
    refused(
        _variant(pkgs, tmp_path, lambda ms: ms[:2] + dirs + ms[2:]),
        pub,
        installed,
        f"more than {n} members",  # the manifest's n pass its own check; the tar's 2 + 4 + n entries do not
        Limits(members=n),
    )
    refused(pkgs["2.0.0"], pub, installed, "over the package limit", Limits(total_bytes=1 << 20))
    big_pax = info("bundle/model.onnx")
    big_pax[0].pax_headers = {"comment": "x" * (1 << 17)}
    refused(_variant(pkgs, tmp_path, lambda ms: ms[:2] + [big_pax]), pub, installed, "meta-header")
