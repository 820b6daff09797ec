"""Synthetic media sources: cheap, deterministic tracks for tests, benchmarks and bots.

Both tracks pace themselves in real time like a camera or microphone would, and
stamp frames with a monotonically increasing ``pts`` from 0.
"""

from __future__ import annotations

import asyncio
import math
import time
from array import array
from fractions import Fraction

import av
from aiortc.mediastreams import MediaStreamTrack

VIDEO_CLOCK_RATE = 90_000
AUDIO_SAMPLE_RATE = 48_000
AUDIO_FRAME_SAMPLES = 960
"""20 ms at 48 kHz."""

# The classic SMPTE colour bars (white, yellow, cyan, green, magenta, red, blue), as
# BT.601 limited-range YUV.
_BARS_YUV = (
    (180, 128, 128),
    (162, 44, 142),
    (131, 156, 44),
    (112, 72, 58),
    (84, 184, 198),
    (65, 100, 212),
    (35, 212, 114),
)


class _Pacer:
    """Sleeps until each frame's presentation time, counting from the first frame."""

    def __init__(self, clock_rate: int, step: int) -> None:
        self._clock_rate = clock_rate
        self._step = step
        self._start: float | None = None
        self._pts = -step

    async def next_pts(self) -> int:
        self._pts += self._step
        if self._start is None:
            self._start = time.monotonic()
        else:
            delay = self._start + self._pts / self._clock_rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        return self._pts


class SyntheticVideoTrack(MediaStreamTrack):
    """Colour bars scrolling horizontally, ``yuv420p``, at a fixed frame rate.

    Frame *n* is a pure function of *n*, so two tracks with the same parameters
    produce identical frames. ``width`` and ``height`` must be even.
    """

    kind = "video"

    def __init__(self, width: int = 320, height: int = 240, fps: int = 30) -> None:
        if width <= 0 or height <= 0 or width % 2 or height % 2:
            raise ValueError("width and height must be positive and even")
        if fps <= 0:
            raise ValueError("fps must be positive")
        super().__init__()
        self.width = width
        self.height = height
        self.fps = fps
        self._pacer = _Pacer(VIDEO_CLOCK_RATE, VIDEO_CLOCK_RATE // fps)
        self._time_base = Fraction(1, VIDEO_CLOCK_RATE)
        self._index = 0
        # One row per plane, twice as wide as the frame so a scrolled row is a slice.
        self._rows = [
            self._bar_row(width, component=0),
            self._bar_row(width // 2, component=1),
            self._bar_row(width // 2, component=2),
        ]

    @staticmethod
    def _bar_row(width: int, component: int) -> bytes:
        row = bytes(_BARS_YUV[x * len(_BARS_YUV) // width][component] for x in range(width))
        return row + row

    def frame(self, index: int) -> av.VideoFrame:
        """Build frame number ``index`` (without pacing or timestamps)."""
        frame = av.VideoFrame(self.width, self.height, "yuv420p")
        shift = (index * 4) % self.width  # 4 px per frame, luma coordinates
        for plane, row, plane_shift in zip(
            frame.planes, self._rows, (shift, shift // 2, shift // 2), strict=True
        ):
            line = row[plane_shift : plane_shift + plane.width]
            line += bytes(plane.line_size - plane.width)
            plane.update(line * plane.height)
        return frame

    async def recv(self) -> av.VideoFrame:
        """Wait for the next frame time and return the next frame."""
        pts = await self._pacer.next_pts()
        frame = self.frame(self._index)
        self._index += 1
        frame.pts = pts
        frame.time_base = self._time_base
        return frame


ColorBarsTrack = SyntheticVideoTrack
"""Alias of :class:`SyntheticVideoTrack`."""


class ToneAudioTrack(MediaStreamTrack):
    """A sine tone: 48 kHz mono ``s16``, 20 ms frames.

    ``frequency`` is rounded to a whole number of hertz so one second of samples
    loops seamlessly.
    """

    kind = "audio"

    def __init__(self, frequency: float = 440.0, amplitude: float = 0.3) -> None:
        if not 0.0 <= amplitude <= 1.0:
            raise ValueError("amplitude must be within [0, 1]")
        super().__init__()
        self.frequency = round(frequency)
        peak = amplitude * 32767
        self._samples = array(
            "h",
            (
                round(peak * math.sin(2 * math.pi * self.frequency * n / AUDIO_SAMPLE_RATE))
                for n in range(AUDIO_SAMPLE_RATE)
            ),
        ).tobytes()
        self._pacer = _Pacer(AUDIO_SAMPLE_RATE, AUDIO_FRAME_SAMPLES)
        self._time_base = Fraction(1, AUDIO_SAMPLE_RATE)

    async def recv(self) -> av.AudioFrame:
        """Wait for the next frame time and return the next 20 ms of tone."""
        pts = await self._pacer.next_pts()
        frame = av.AudioFrame(format="s16", layout="mono", samples=AUDIO_FRAME_SAMPLES)
        start = 2 * (pts % AUDIO_SAMPLE_RATE)
        frame.planes[0].update(self._samples[start : start + 2 * AUDIO_FRAME_SAMPLES])
        frame.pts = pts
        frame.sample_rate = AUDIO_SAMPLE_RATE
        frame.time_base = self._time_base
        return frame
