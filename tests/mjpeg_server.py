"""An MJPEG-over-HTTP camera on loopback (what many IP cameras serve), for live-source tests: frames
from a video file, looped, at a fixed rate. stop() cuts every connection; start() brings it back."""

from __future__ import annotations

import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import cv2


class MjpegCamera:
    def __init__(self, video: str, fps: float = 30.0):
        cap, self.jpegs = cv2.VideoCapture(video), []
        while (r := cap.read())[0]:
            self.jpegs.append(cv2.imencode(".jpg", r[1], [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes())
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.fps, self.server, self.url = fps, None, f"http://127.0.0.1:{self.port}/stream.mjpg"
        self.alive = threading.Event()

    def start(self) -> "MjpegCamera":
        cam = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
                self.end_headers()
                i = 0
                try:
                    while cam.alive.is_set():
                        jpg = cam.jpegs[i % len(cam.jpegs)]
                        self.wfile.write(
                            b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: "
                            + str(len(jpg)).encode()
                            + b"\r\n\r\n"
                            + jpg
                            + b"\r\n"
                        )
                        i += 1
                        time.sleep(1 / cam.fps)
                except OSError:
                    pass

        self.alive.set()
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self.alive.clear()  # streaming handlers return, closing their connections
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None
