"""Throttling of key-frame requests (PLI/FIR) towards one publisher stream.

Many subscribers may ask for a key frame at once (a room full of late joiners, a
layer switch); the publisher must see one request per interval, never a storm.
Sans-I/O, like mediasoup's KeyFrameRequestManager: the caller passes ``now`` and
schedules the retry the manager asks for.
"""

from __future__ import annotations

MIN_REQUEST_INTERVAL = 0.3
"""Seconds between two requests sent to the same stream."""


class KeyFrameRequestManager:
    def __init__(self, min_interval: float = MIN_REQUEST_INTERVAL) -> None:
        self.min_interval = min_interval
        self.requests_sent = 0
        self._last_sent: float | None = None
        self._retry_scheduled = False

    def request(self, now: float) -> float | None:
        """A consumer needs a key frame.

        Returns 0 to send a request now, a delay in seconds after which the caller
        should call :meth:`retry`, or None when a request is already on its way.
        """
        if self._last_sent is None or now - self._last_sent >= self.min_interval:
            self._last_sent = now
            self.requests_sent += 1
            return 0.0
        if self._retry_scheduled:
            return None
        self._retry_scheduled = True
        return self._last_sent + self.min_interval - now

    def retry(self, now: float) -> bool:
        """The delay returned by :meth:`request` elapsed: True to send a request now."""
        if not self._retry_scheduled:
            return False
        self._retry_scheduled = False
        self._last_sent = now
        self.requests_sent += 1
        return True

    def key_frame_received(self) -> None:
        """A key frame arrived: a pending retry is no longer needed."""
        self._retry_scheduled = False
