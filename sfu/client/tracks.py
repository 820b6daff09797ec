"""Subscribed tracks as the application sees them."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Literal

import av
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

DEFAULT_QUEUE_FRAMES = 64
"""Decoded frames kept per track for a slow reader (about 2 s of video); older ones
are dropped."""


class RemoteMediaTrack(MediaStreamTrack):
    """The decoded frames of one subscribed track.

    It ends (``recv()`` raises :class:`~aiortc.mediastreams.MediaStreamError` once
    the queued frames are read) when the track is unpublished, its publisher
    leaves, or the client closes.
    """

    def __init__(
        self, kind: Literal["audio", "video"], maxsize: int = DEFAULT_QUEUE_FRAMES
    ) -> None:
        super().__init__()
        self.kind = kind
        self._queue: asyncio.Queue[av.AudioFrame | av.VideoFrame | None] = asyncio.Queue(maxsize)
        self._ended = asyncio.Event()

    async def recv(self) -> av.AudioFrame | av.VideoFrame:
        """The next decoded frame."""
        if self._ended.is_set() and self._queue.empty():
            raise MediaStreamError
        frame = await self._queue.get()
        if frame is None:
            raise MediaStreamError
        return frame

    def stop(self) -> None:
        """End the track; frames already queued can still be read."""
        if not self._ended.is_set():
            self._ended.set()
            self._put(None)  # wakes a pending recv()
        super().stop()

    async def wait_ended(self) -> None:
        """Return once the track has ended."""
        await self._ended.wait()

    def _put(self, frame: av.AudioFrame | av.VideoFrame | None) -> None:
        if self._queue.full():
            self._queue.get_nowait()
        self._queue.put_nowait(frame)

    def deliver(self, frame: av.AudioFrame | av.VideoFrame) -> None:
        """Queue a decoded frame (used by the subscriber; ignored once ended)."""
        if not self._ended.is_set():
            self._put(frame)


@dataclass(eq=False)
class RemoteTrack:
    """A track of another participant that this client receives."""

    track_id: str
    participant_id: str
    kind: Literal["audio", "video"]
    track: RemoteMediaTrack
    """``await track.recv()`` gives decoded ``av`` frames."""
    mid: str
    """The m-line of the subscribe transport carrying it."""
    subscribed_at: float
    """``time.monotonic()`` when the subscribe answer that added it was sent."""
    codec: str = ""
    """The MIME type it arrives in (``video/VP8``, ``video/H264``, ``audio/opus``, …)."""

    @property
    def ended(self) -> bool:
        return self.track.readyState == "ended"

    async def wait_ended(self, timeout: float | None = None) -> None:
        """Wait until the track has ended; raises :class:`TimeoutError`."""
        async with asyncio.timeout(timeout):
            await self.track.wait_ended()
