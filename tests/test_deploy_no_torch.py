"""The deployment side runs where torch is not installed: every edgesdk.deploy module imports, and
keygen / pack / install / status / rollback run through the CLI, with torch (and the export-only
packages) blocked as tests/test_device_no_torch.py blocks them."""

import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import edgesdk.deploy

ROOT = Path(__file__).resolve().parents[1]
BLOCKED = """
import sys
sys.modules["torch"] = None
for name in ("torchvision", "onnx", "onnxscript", "skimage"):
    sys.modules[name] = None
"""
MODULES = sorted(f"edgesdk.deploy.{m.name}" for m in pkgutil.iter_modules(edgesdk.deploy.__path__))


def run(code: str, *args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", BLOCKED + code, *map(str, args)], capture_output=True, text=True, cwd=ROOT
    )


def test_every_deploy_module_imports_without_torch():
    assert {"edgesdk.deploy.keys", "edgesdk.deploy.slots", "edgesdk.deploy.stage"} <= set(MODULES)
    code = (
        "import importlib\n"
        + "".join(f"importlib.import_module({m!r})\n" for m in [*MODULES, "edgesdk.cli.deploy"])
        + "print(sys.modules.get('torch'))"
    )
    r = run(code)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "None"


def test_keygen_pack_install_status_rollback_without_torch(bundle, tmp_path):
    cli = "from edgesdk.cli import main; sys.exit(main(sys.argv[1:]))"
    r = run(cli, "keygen", "--out", tmp_path / "keys")
    assert r.returncode == 0, r.stderr
    key, pub, root = tmp_path / "keys/edgesdk.key", tmp_path / "keys/edgesdk.pub", tmp_path / "root"
    for v in ("1.0.0", "1.0.1"):
        r = run(cli, "pack", bundle, "--key", key, "--version", v, "--out", tmp_path / f"{v}.tgz")
        assert r.returncode == 0, r.stderr
        r = run(cli, "install", tmp_path / f"{v}.tgz", "--pubkey", pub, "--root", root, "--json")
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["health"]["passed"]
    r = run(cli, "rollback", "--root", root)
    assert r.returncode == 0, r.stderr
    r = run(cli, "status", "--root", root, "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["current"].startswith("1.0.0-")
