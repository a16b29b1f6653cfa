"""samples/deploy_roundtrip.py runs as a user would run it, with torch blocked (device side)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_deploy_roundtrip_sample(bundle, tmp_path):
    code = (
        "import sys, runpy; sys.modules['torch'] = None; sys.argv = sys.argv[1:]; "
        "runpy.run_path(sys.argv[0], run_name='__main__')"
    )
    r = subprocess.run(
        [
            sys.executable,
            "-c",
            code,
            str(ROOT / "samples/deploy_roundtrip.py"),
            str(bundle),
            "--root",
            str(tmp_path / "device"),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert r.returncode == 0, r.stderr
    assert "rolled back: current 1.0.0-" in r.stdout
    assert "history: install 1.0.0, install 1.1.0, rollback 1.0.0" in r.stdout
    assert (tmp_path / "device" / "current").is_symlink()
