"""Helpers of tests/test_deploy_runtime.py and tests/test_deploy_arm64.py: a wheel cache outside the
clone (downloaded once per platform and dependency set, reused by every later run), and packing a
bundle with a runtime from that cache only (--no-index)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from edgesdk.deploy import wheels
from edgesdk.deploy.layout import locked


def cache_root() -> Path:
    """$EDGESDK_TEST_CACHE, else /var/cache/edgesdk-tests when it can be written, else ~/.cache/edgesdk-tests."""
    if os.environ.get("EDGESDK_TEST_CACHE"):
        root = Path(os.environ["EDGESDK_TEST_CACHE"])
    else:
        root = Path("/var/cache/edgesdk-tests")
        try:
            root.mkdir(parents=True, exist_ok=True)
            if not os.access(root, os.W_OK):
                raise PermissionError
        except OSError:
            root = Path.home() / ".cache" / "edgesdk-tests"
    root.mkdir(parents=True, exist_ok=True)
    return root


# One builder of a cache entry at a time (concurrent test runs wait): the install root's own lock.
cache_lock = locked


def wheel_cache(t: wheels.Target) -> Path:
    """A folder of the wheels edgesdk's base dependencies (and pip) need on T, downloaded once; the
    entry is named by T and the dependency list and only ever appears complete (built beside, renamed)."""
    root = cache_root()
    deps = wheels.project()["dependencies"]
    key = hashlib.sha256(json.dumps([t.python, list(t.platforms), deps]).encode()).hexdigest()[:12]
    entry = root / f"wheels-{t.machine}-py{t.python}-{key}"
    if (entry / "complete.json").is_file():
        return entry
    with cache_lock(root):
        if (entry / "complete.json").is_file():
            return entry
        for old in root.glob(f".{entry.name}.tmp-*"):  # left by a killed run (ours by name)
            shutil.rmtree(old, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{entry.name}.tmp-"))
        try:
            work = tmp / "work"
            work.mkdir()
            ours = wheels.edgesdk_wheel(work)
            house = tmp / "house"
            house.mkdir()
            shutil.copy2(ours, house / ours.name)
            wheels.wheelhouse(t, house, [str(house / ours.name), "pip"])
            (house / ours.name).unlink()  # each pack builds its own from the source
            (house / "complete.json").write_text(
                json.dumps({"python": t.python, "platforms": list(t.platforms), "dependencies": deps})
            )
            os.rename(house, entry)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return entry


def pack_with_runtime(bundle: Path, key: Path, out: Path, version: str, t: wheels.Target) -> dict:
    """pack BUNDLE with the runtime for T, its wheels from the test cache only (no index)."""
    from edgesdk.deploy.package import PackOptions, pack

    return pack(
        bundle, key, out, PackOptions(version=version, runtime=t, find_links=(str(wheel_cache(t)),), no_index=True)
    )
