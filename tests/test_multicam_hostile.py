"""A careless or hostile user against the multi-camera features: a camera's password in its URI never
reaches a source's name, the run's summary or the logs."""

from __future__ import annotations

import logging

import pytest

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
