"""Frames into a container file with PyAV, in a thread of its own.

The event loop hands frames over with :meth:`Muxer.write`, which never blocks: the
queue holds :data:`QUEUE_FRAMES`, and a frame that does not fit is refused (the
recorder then waits for a key frame). The thread opens the file at the first frame
(the stream parameters come from it), writes the frames, checks the free disk space
every :data:`DISK_CHECK_INTERVAL` seconds, and on :meth:`finish` (or an error, or a
full disk) closes the file and reports a :class:`MuxResult` on the event loop.

Audio frames get their durations from the next frame's timestamp (the thread holds
one frame back). Video frames have none: the stream declares the highest frame rate
the recorder lets through instead (see :meth:`Muxer._open`).

No codec runs: VP8 and H.264 streams are added with ``add_mux_stream``, which has no
codec context. For H.264 the Matroska muxer builds the ``avcC`` header from the
first frame's SPS and PPS and turns the Annex B frames into length-prefixed ones.
An Opus stream needs an ``OpusHead`` header, and PyAV sets stream headers only
through a codec context, so Opus gets a libopus encoder context whose opening
writes that header (48 kHz, the channels given); it never encodes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av

logger = logging.getLogger(__name__)

QUEUE_FRAMES = 512
"""Frames waiting for the disk per file (about 10 s of 30 fps video and 50 Hz audio)."""
DISK_CHECK_INTERVAL = 5.0
"""Seconds between two checks of the free space while writing."""
MAX_VIDEO_FRAME_RATE = 500
"""Frames per second declared for video: the recorder keeps video frames at least
1/500 s apart (Matroska stamps them to the millisecond)."""
CONTAINERS = {"webm": "webm", "mkv": "matroska"}
"""File extension → PyAV (FFmpeg) format name."""


@dataclass(frozen=True)
class StreamFormat:
    """What the container's one stream carries."""

    codec: str
    """``vp8``, ``h264`` or ``opus``."""
    clock_rate: int
    """Units of the frames' timestamps per second."""
    width: int = 0
    height: int = 0
    channels: int = 0


@dataclass(frozen=True)
class MuxResult:
    """A closed file."""

    path: Path
    frames: int
    bytes: int
    duration: float
    """Seconds from media time 0 to the end of the last frame, as the file says."""
    error: str | None
    """Why writing stopped early, or None."""
    disk_full: bool


class Muxer:
    """One file; see the module docstring. ``on_done`` runs on ``loop``."""

    def __init__(
        self,
        path: Path,
        stream: StreamFormat,
        min_free_bytes: int,
        on_done: Callable[[MuxResult], None],
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.path = path
        self.stream = stream
        self._min_free_bytes = min_free_bytes
        self._on_done = on_done
        self._loop = loop
        self._queue: queue.Queue[tuple[bytes, int, bool] | None] = queue.Queue(QUEUE_FRAMES)
        self._stopped = threading.Event()
        """Set by the thread when it stops taking frames (an error, a full disk)."""
        self.frames_refused = 0
        self._finishing = False
        self._thread = threading.Thread(target=self._run, name=f"mux {path.name}", daemon=True)
        self._thread.start()

    def write(self, data: bytes, pts: int, key: bool) -> bool:
        """Queue a frame (``pts`` in ``clock_rate`` units); False if it was refused."""
        if self._finishing or self._stopped.is_set():
            return False
        try:
            self._queue.put_nowait((data, pts, key))
        except queue.Full:
            self.frames_refused += 1
            return False
        return True

    def finish(self) -> None:
        """Close the file once the queued frames are written (``on_done`` follows)."""
        if not self._finishing:
            self._finishing = True
            # A sentinel the full queue cannot take is still seen: the thread also
            # stops when it finds the queue empty after _finishing.
            with contextlib.suppress(queue.Full):
                self._queue.put_nowait(None)

    # --- the thread -----------------------------------------------------------------

    def _run(self) -> None:
        container: Any = None
        frames = 0
        end = 0
        error: str | None = None
        disk_full = False
        try:
            pending: tuple[bytes, int, bool] | None = None
            last_duration = 0
            next_check = time.monotonic() + DISK_CHECK_INTERVAL
            av_stream: Any = None
            time_base = Fraction(1, self.stream.clock_rate)
            while True:
                try:
                    item = self._queue.get(timeout=0.5)
                except queue.Empty:
                    if self._finishing:
                        break
                    continue
                if item is None:
                    break
                if container is None:
                    container, av_stream = self._open()
                if pending is not None:
                    last_duration = max(item[1] - pending[1], 1)
                    self._mux(container, av_stream, pending, last_duration, time_base)
                    frames += 1
                    end = pending[1] + self._duration(last_duration)
                pending = item
                now = time.monotonic()
                if now >= next_check:
                    next_check = now + DISK_CHECK_INTERVAL
                    free = shutil.disk_usage(self.path.parent).free
                    if free < self._min_free_bytes:
                        disk_full = True
                        error = f"{free} bytes free on the recording disk, below the minimum"
                        break
            if pending is not None and not disk_full:
                self._mux(container, av_stream, pending, last_duration or 1, time_base)
                frames += 1
                end = pending[1] + self._duration(last_duration or 1)
        except Exception as exc:
            logger.exception("recording %s failed", self.path)
            error = f"{type(exc).__name__}: {exc}"
        finally:
            self._stopped.set()
            if container is not None:
                try:
                    container.close()
                except Exception as exc:
                    logger.exception("closing recording %s failed", self.path)
                    error = error or f"{type(exc).__name__}: {exc}"
            size = self.path.stat().st_size if self.path.exists() else 0
            result = MuxResult(
                self.path, frames, size, end / self.stream.clock_rate, error, disk_full
            )
            with contextlib.suppress(RuntimeError):  # the loop closed: nobody to tell
                self._loop.call_soon_threadsafe(self._on_done, result)

    def _open(self) -> tuple[Any, Any]:
        format_name = CONTAINERS[self.path.suffix.lstrip(".")]
        container = av.open(str(self.path), "w", format=format_name)
        stream = self.stream
        if stream.codec == "opus":
            av_stream = container.add_stream("libopus", rate=48000)
            av_stream.layout = "stereo" if stream.channels == 2 else "mono"
        else:
            # The frame rate varies (capture times): declare the highest the recorder
            # lets through (DefaultDuration 2 ms, and no durations of frames). Without
            # it FFmpeg guesses a constant rate from the first frames, and its tools
            # then find frames that come a little early "non monotonically increasing".
            av_stream = container.add_mux_stream(
                stream.codec, rate=MAX_VIDEO_FRAME_RATE, width=stream.width, height=stream.height
            )
        av_stream.time_base = Fraction(1, stream.clock_rate)
        return container, av_stream

    def _duration(self, measured: int) -> int:
        """How long the file says a frame lasts: audio frames their own duration, video
        frames the declared 2 ms (see :meth:`_open`)."""
        if self.stream.codec == "opus":
            return measured
        return self.stream.clock_rate // MAX_VIDEO_FRAME_RATE

    def _mux(
        self,
        container: Any,
        av_stream: Any,
        frame: tuple[bytes, int, bool],
        duration: int,
        time_base: Fraction,
    ) -> None:
        data, pts, key = frame
        packet = av.Packet(data)
        packet.stream = av_stream
        packet.time_base = time_base
        packet.pts = packet.dts = pts
        if self.stream.codec == "opus":
            packet.duration = duration
        packet.is_keyframe = key
        container.mux(packet)
