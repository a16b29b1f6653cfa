"""Every script in samples/ runs as a user would run it (here with torch blocked: device-side)."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_score_folder_sample(bundle, tiny_data, tmp_path):
    code = ("import sys, runpy; sys.modules['torch'] = None; sys.argv = sys.argv[1:]; "
            "runpy.run_path(sys.argv[0], run_name='__main__')")
    r = subprocess.run([sys.executable, "-c", code, str(ROOT / "samples/score_folder.py"), str(bundle),
                        str(tiny_data / "brick/test/hole"), "--save", str(tmp_path)],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert "DEFECT" in r.stdout and "latency p50" in r.stdout
    assert list(tmp_path.glob("*.png"))


def test_every_sample_is_tested():
    tested = {"score_folder.py"}
    assert {p.name for p in (ROOT / "samples").glob("*.py")} == tested
