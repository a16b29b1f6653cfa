"""A real RTSP server on loopback for tests: GStreamer's gst-rtsp-server (Debian's
gir1.2-gst-rtsp-server-1.0, installed by .ci/run), the server jetson-inference and DeepStream use.

It runs under the system Python (the venv cannot import PyGObject) as a child process that serves one
video file, looped, at rtsp://127.0.0.1:PORT/line. MPEG-4 part 2 (mp4v) in an .mp4 is sent as RTP
(RFC 3016) without re-encoding, so the frames the test reads are the file's frames.

    python3 rtsp_server.py VIDEO.mp4 PORT        (prints "ready" when it listens)
"""

from __future__ import annotations

import select
import subprocess
import sys
from pathlib import Path

SYSTEM_PYTHON = "/usr/bin/python3"
PROBE = (
    "import gi; gi.require_version('Gst', '1.0'); gi.require_version('GstRtspServer', '1.0'); "
    "from gi.repository import Gst, GstRtspServer; Gst.init(None); "
    "assert Gst.ElementFactory.find('qtdemux') and Gst.ElementFactory.find('rtpmp4vpay')"
)


def available() -> str | None:
    """None when the server can run here, else why not (for a skip reason)."""
    if not Path(SYSTEM_PYTHON).is_file():
        return f"{SYSTEM_PYTHON} not found"
    r = subprocess.run([SYSTEM_PYTHON, "-c", PROBE], capture_output=True, text=True)
    if r.returncode:
        return (
            "GStreamer's RTSP server is not installed (apt-get install python3-gi gir1.2-gst-rtsp-server-1.0 "
            "gstreamer1.0-plugins-good): " + (r.stderr.strip().splitlines() or ["?"])[-1]
        )
    return None


class RtspServer:
    def __init__(self, video: str | Path, port: int):
        self.video, self.port = Path(video), port
        self.url = f"rtsp://127.0.0.1:{port}/line"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 30) -> "RtspServer":
        self.proc = subprocess.Popen(
            [SYSTEM_PYTHON, __file__, str(self.video), str(self.port)],
            # stderr is never read: a full pipe would stall the child
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        # "ready" once it listens; a first GStreamer run may scan its plugins for a few seconds.
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline() if ready else ""
        if line.strip() != "ready":
            self.stop()
            raise RuntimeError(f"RTSP server did not start within {timeout} s: {line!r}")
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()  # a cut: the stream vanishes mid-frame
            self.proc.wait(10)


def serve(video: str, port: int) -> None:
    import gi

    gi.require_version("Gst", "1.0")
    gi.require_version("GstRtspServer", "1.0")
    from gi.repository import GLib, Gst, GstRtspServer

    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(port))
    factory = GstRtspServer.RTSPMediaFactory()
    # Played at the file's own rate (the sink paces it), shared by every client.
    factory.set_launch(f"( filesrc location={video} ! qtdemux ! queue ! rtpmp4vpay name=pay0 pt=96 config-interval=1 )")
    factory.set_shared(True)
    server.get_mount_points().add_factory("/line", factory)
    if server.attach(None) == 0:
        raise SystemExit(f"cannot listen on 127.0.0.1:{port}")
    print("ready", flush=True)
    GLib.MainLoop().run()


if __name__ == "__main__":
    serve(sys.argv[1], int(sys.argv[2]))
