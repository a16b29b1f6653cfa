"""A careless or hostile user against the multi-camera features: a camera's password in its URI never
reaches a source's name, the run's summary or the logs, and a source name that cannot be a manifest key
or a clean log/label value is refused before any frame is read, naming the source."""

from __future__ import annotations

import json
import logging
import shutil

import pytest

from edgesdk.errors import OptionError
from edgesdk.stream.calibrate import calibrate
from edgesdk.stream.multi import split_source
from edgesdk.stream.pipeline import run_stream
from mqtt_broker import free_port

LINE = "synth://conveyor?defects=0&rails=1"
SECRET = "s3cr3t-pw"


def test_a_cameras_password_names_nothing(bundle, tmp_path, caplog):
    # Before: public_uri hid only token=, so rtsp://user:PASS@host named the source (records, /metrics
    # labels, the manifest's thresholds_by_source keys) and the live source's logs and open error.
    _, name, _ = split_source(f"rtsp://op:{SECRET}@10.0.0.7:554/live?transport=tcp")
    assert SECRET not in name and name.startswith("rtsp://op:***@10.0.0.7:554/live")
    cam = f"rtsp://op:{SECRET}@127.0.0.1:{free_port()}/live"  # nothing listens: the open fails at once
    caplog.set_level(logging.DEBUG)
    with pytest.raises(OSError) as e:
        run_stream(bundle, [f"{LINE}&seed=1&name=a", cam], [f"jsonl://{tmp_path / 'r.jsonl'}"], max_frames=2)
    assert "cannot open this source" in str(e.value) and "op:***@127.0.0.1" in str(e.value)
    assert SECRET not in str(e.value) and SECRET not in caplog.text


@pytest.mark.parametrize("name", ["a%0Ab", "a%1B%5B31mred", "x" * 300])
def test_a_run_refuses_a_source_name_with_control_characters_or_too_long(bundle, tmp_path, name):
    # Before: the name went as is into every record, log line and /metrics label of the run.
    recs = tmp_path / "r.jsonl"
    with pytest.raises(OptionError, match="source option name"):
        run_stream(bundle, [f"{LINE}&seed=1&name={name}", f"{LINE}&seed=2&name=b"], [f"jsonl://{recs}"], max_frames=2)
    assert not recs.exists()


def test_calibrate_refuses_an_unusable_source_name_before_reading_frames(bundle, tiny_data, tmp_path):
    # Before: every camera was scored, then the staged manifest failed to verify (SpecError) at the end.
    deep = tmp_path / ("d" * 200) / ("e" * 100)  # no ?name=: its path names it, too long for a manifest key
    deep.mkdir(parents=True)
    for img in sorted((tiny_data / "brick" / "train" / "good").iterdir())[:30]:
        shutil.copy(img, deep / img.name)
    with pytest.raises(OptionError, match=r"give it a \?name="):
        calibrate(bundle, [f"{LINE}&seed=1&name=a", str(deep)], tmp_path / "out", frames=30, progress=False)
    assert not (tmp_path / "out").exists()
    out = tmp_path / "out2"
    st = calibrate(bundle, [f"{LINE}&seed=1&name=a", f"{deep}?name=b"], out, frames=30, progress=False)
    assert set(st["sources"]) == {"a", "b"}
    assert set(json.loads((out / "manifest.json").read_text())["thresholds_by_source"]) == {"a", "b"}
