"""Frame sources and result sinks, opened by URI (after jetson-utils' videoSource/videoOutput)."""

from edgesdk.video.base import Frame, Sink, Source
from edgesdk.video.sinks import SINKS, open_sink
from edgesdk.video.sources import SOURCES, open_source

__all__ = ["SINKS", "SOURCES", "Frame", "Sink", "Source", "open_sink", "open_source"]
