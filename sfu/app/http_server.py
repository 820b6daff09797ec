"""uvicorn's server, waking once a second for its housekeeping instead of ten times,
and the bounds uvicorn lacks on what a client can make a connection hold.

``uvicorn.Server`` runs a main loop that sleeps 0.1 s between checks for an exit
request (and refreshes its ``Date`` header every tenth time). In a process that also
forwards media those ten timer wake-ups per second cost more than the checks: on a
virtual machine the wake-up of an idle process is its most expensive part (the
benchmark's ``wake-ups/s`` column). :class:`Server` checks once a second, and an exit
request (a signal, or :meth:`Server.request_exit`) wakes it at once.

uvicorn closes idle keep-alive connections but never one whose request is still
arriving: a client sending a header line every few seconds (slowloris) holds a
connection, and its memory, for ever. :class:`BoundedHttpProtocol` closes a connection
whose request has not arrived in full within ``http_request_timeout``.
:class:`BoundedWebSocketProtocol` answers a text frame that is not UTF-8 like any
other bad frame, where uvicorn logs a traceback per frame and closes the socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from types import FrameType
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from sfu.config import Settings
from sfu.protocol import MAX_FRAME_BYTES
from signaling.ws import INVALID_UTF8

logger = logging.getLogger(__name__)

PRIVATE_SEAMS: tuple[tuple[type, str], ...] = (
    (uvicorn.Server, "main_loop"),
    (uvicorn.Server, "on_tick"),
    (HttpToolsProtocol, "_should_upgrade"),
    (HttpToolsProtocol, "on_message_begin"),
    (HttpToolsProtocol, "on_headers_complete"),
    (HttpToolsProtocol, "on_message_complete"),
    (WebSocketsSansIOProtocol, "send_receive_event_to_app"),
)
"""uvicorn's undocumented methods the classes below override or call; the instance
attributes they use are in :data:`PRIVATE_ATTRIBUTES` (``tests/test_private_seams.py``
checks both on the installed uvicorn)."""

PRIVATE_ATTRIBUTES: tuple[tuple[type, str], ...] = (
    (HttpToolsProtocol, "parser"),
    (WebSocketsSansIOProtocol, "close_sent"),
    (WebSocketsSansIOProtocol, "queue"),
    (WebSocketsSansIOProtocol, "read_paused"),
)
"""Instance attributes a new protocol object has; ``curr_msg_data_type`` and ``frames``,
which uvicorn sets only once frames arrive, are exercised by the non-UTF-8 frame test
(``tests/test_security.py``)."""

TICK_SECONDS = 1.0
_TICKS_PER_DATE = 10
"""uvicorn refreshes its ``Date`` header when its tick counter is a multiple of 10."""


class Config(uvicorn.Config):
    """uvicorn's configuration plus the request deadline of :class:`BoundedHttpProtocol`."""

    def __init__(self, app: Any, *, http_request_timeout: float, **kwargs: Any) -> None:
        super().__init__(app, http=BoundedHttpProtocol, ws=BoundedWebSocketProtocol, **kwargs)
        self.http_request_timeout = http_request_timeout


def server_config(app: Any, settings: Settings) -> Config:
    """The configuration every HTTP/WebSocket server of the SFU runs with."""
    return Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        http_request_timeout=settings.http_request_timeout,
        forwarded_allow_ips=settings.forwarded_allow_ips,
        # Frames up to this size get a ``too_large`` error; larger ones close the socket
        # (1009) before they are buffered in full.
        ws_max_size=MAX_FRAME_BYTES,
    )


class BoundedHttpProtocol(HttpToolsProtocol):
    """uvicorn's HTTP/1.1 protocol with a deadline for each request to arrive.

    The clock starts with the connection and again with the first byte of each further
    request on it; it stops when the request is complete, or when its headers ask for
    the WebSocket upgrade (the socket then has its own deadline: ``join_timeout``).
    """

    def __init__(self, config: uvicorn.Config, *args: Any, **kwargs: Any) -> None:
        super().__init__(config, *args, **kwargs)
        assert isinstance(config, Config)
        self._request_timeout = config.http_request_timeout
        self._request_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._start_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_deadline()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._start_deadline()

    def on_headers_complete(self) -> None:
        if self.parser.should_upgrade() and self._should_upgrade():
            self._stop_deadline()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._stop_deadline()
        super().on_message_complete()

    def _start_deadline(self) -> None:
        if self._request_deadline is None:
            self._request_deadline = self.loop.call_later(
                self._request_timeout, self._request_timed_out
            )

    def _stop_deadline(self) -> None:
        if self._request_deadline is not None:
            self._request_deadline.cancel()
            self._request_deadline = None

    def _request_timed_out(self) -> None:
        self._request_deadline = None
        if not self.transport.is_closing():
            logger.debug(
                "%s: request incomplete after %.0f s, closing", self.client, self._request_timeout
            )
            self.transport.close()


class BoundedWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's WebSocket protocol, handing a text frame that is not UTF-8 to the
    application (marked with :data:`INVALID_UTF8`) instead of logging a traceback and
    closing the socket; the first one on a connection is logged, without traceback."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._invalid_utf8_logged = False

    def send_receive_event_to_app(self) -> None:
        if self.curr_msg_data_type != "text" or self.close_sent:
            super().send_receive_event_to_app()
            return
        data = self.frames[0] if len(self.frames) == 1 else b"".join(self.frames)
        self.frames = []
        event: dict[str, Any]
        try:
            event = {"type": "websocket.receive", "text": data.decode()}
        except UnicodeDecodeError as exc:
            if not self._invalid_utf8_logged:
                self._invalid_utf8_logged = True
                logger.info(
                    "%s: a text frame is not UTF-8 (%s); not logging more", self.client, exc
                )
            event = {"type": "websocket.receive", "bytes": data, INVALID_UTF8: str(exc)}
        self.queue.put_nowait(event)  # type: ignore[arg-type]
        if not self.read_paused:
            self.read_paused = True
            self.transport.pause_reading()


class Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake = asyncio.Event()

    async def main_loop(self) -> None:
        self._loop = asyncio.get_running_loop()
        counter = 0
        should_exit = await self.on_tick(counter)
        while not should_exit:
            counter = (counter + _TICKS_PER_DATE) % 864000
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), TICK_SECONDS)
            self._wake.clear()
            should_exit = await self.on_tick(counter)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        self._wake_main_loop()

    def request_exit(self) -> None:
        """Stop serving, as a signal would (``should_exit = True`` alone waits up to
        a second for the next tick)."""
        self.should_exit = True
        self._wake_main_loop()

    def _wake_main_loop(self) -> None:
        # A signal handler runs between two bytecodes of whatever the loop runs:
        # only the thread-safe way into the loop is safe there.
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._wake.set)
