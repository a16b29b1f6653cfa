"""Helpers and fixtures shared by tests/test_deploy_*.py: keys, packages, golden sets, tree snapshots
and hand-made archives (raw tar blocks, so any header can be forged)."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import shutil
import stat
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def cli(*args, env: dict | None = None, check: bool = False) -> subprocess.CompletedProcess:
    """The real `edgesdk` command line in a child process."""
    r = subprocess.run(
        [sys.executable, "-m", "edgesdk", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
    )
    if check:
        assert r.returncode == 0, r.stderr + r.stdout
    return r


def snapshot(top: Path) -> dict:
    """Every path under TOP: type, mode, and content sha256 or link target (a full tree comparison)."""
    out = {}
    if not top.exists():
        return out
    for dirpath, dirs, files in os.walk(top):
        for name in dirs + files:
            p = Path(dirpath) / name
            st = p.lstat()
            rel = str(p.relative_to(top))
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(p))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", stat.S_IMODE(st.st_mode))
            else:
                out[rel] = ("file", stat.S_IMODE(st.st_mode), hashlib.sha256(p.read_bytes()).hexdigest())
    return out


def read_members(pkg: Path) -> list[tuple[tarfile.TarInfo, bytes]]:
    with tarfile.open(pkg, "r:gz") as tar:
        return [(ti, tar.extractfile(ti).read() if ti.isreg() else b"") for ti in tar]


def info(name: str, data: bytes = b"", type_=tarfile.REGTYPE, **kw) -> tuple[tarfile.TarInfo, bytes]:
    ti = tarfile.TarInfo(name)
    ti.type, ti.size, ti.mode = type_, len(data), 0o644
    for k, v in kw.items():
        setattr(ti, k, v)
    return ti, data


def write_raw(out: Path, members: list[tuple[tarfile.TarInfo, bytes]], tail: bytes = b"\0" * 1024) -> Path:
    """A tar in gzip written block by block: each header as given (its size field included, even when
    the data that follows is shorter), then the data padded to 512 bytes."""
    buf = io.BytesIO()
    for ti, data in members:
        buf.write(ti.tobuf(tarfile.PAX_FORMAT))
        buf.write(data + b"\0" * (-len(data) % 512))
    buf.write(tail)
    out.write_bytes(gzip.compress(buf.getvalue(), mtime=0))
    return out


def sign_manifest(meta: bytes, key: Path) -> bytes:
    from edgesdk.deploy import keys

    return keys.sign(meta, keys.load_private(key), "timestamp:0\tfile:package.json\tprehashed").encode()


def golden_set(bundle: Path, category: Path, out: Path) -> Path:
    """OUT/good and OUT/<kind>: the category's test images the bundle gets right (a line's golden set)."""
    from edgesdk.images import list_images, read_image
    from edgesdk.stream.detector import Detector

    with Detector(bundle) as det:
        for kind in sorted(p.name for p in (category / "test").iterdir()):
            for img in list_images(category / "test" / kind):
                if det.predict(read_image(img)).is_anomalous == (kind != "good"):
                    (out / kind).mkdir(parents=True, exist_ok=True)
                    shutil.copy(img, out / kind / img.name)
    assert len(list((out / "good").iterdir())) >= 2 and len(list(out.iterdir())) >= 2
    return out


@pytest.fixture(scope="module")
def keypair(tmp_path_factory) -> tuple[Path, Path]:
    from edgesdk.deploy.keys import keygen

    return keygen(tmp_path_factory.mktemp("keys"))


@pytest.fixture(scope="module")
def other_keypair(tmp_path_factory) -> tuple[Path, Path]:
    from edgesdk.deploy.keys import keygen

    return keygen(tmp_path_factory.mktemp("other_keys"))


@pytest.fixture(scope="module")
def pkgs(bundle, keypair, tmp_path_factory) -> dict[str, Path]:
    """The brick bundle packed as versions 1.0.0, 1.1.0 and 2.0.0 (any device)."""
    from edgesdk.deploy.package import PackOptions, pack

    out = tmp_path_factory.mktemp("pkgs")
    return {
        v: Path(pack(bundle, keypair[0], out / f"brick-{v}.tgz", PackOptions(version=v))["package"])
        for v in ("1.0.0", "1.1.0", "2.0.0")
    }
