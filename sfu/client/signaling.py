"""The WebSocket signaling channel: typed messages, requests and their replies."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Annotated, TypeVar
from urllib.parse import urlsplit, urlunsplit

import pydantic
from pydantic import BaseModel, Field, TypeAdapter
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed

from sfu.client.errors import CONNECTION_CLOSED, PROTOCOL_VIOLATION, REQUEST_TIMEOUT, SfuError
from sfu.protocol import (
    ErrorMessage,
    JoinedMessage,
    PingMessage,
    PongMessage,
    PublishAnswerMessage,
    ServerMessage,
)

logger = logging.getLogger(__name__)

_server_message_adapter: TypeAdapter[ServerMessage] = TypeAdapter(
    Annotated[ServerMessage, Field(discriminator="type")]
)

_REQUEST_OF_REPLY: dict[type[BaseModel], str] = {
    JoinedMessage: "join",
    PublishAnswerMessage: "publish_offer",
    PongMessage: "ping",
}
"""Which request each reply message answers; replies carry no request id, so at most
one request of each type is outstanding at a time."""

ReplyT = TypeVar("ReplyT", bound=BaseModel)


def websocket_url(url: str) -> str:
    """The signaling WebSocket URL for a server's http(s) base URL or ws(s) URL.

    ``http://host:8080`` and ``ws://host:8080`` both give ``ws://host:8080/ws``; a
    ws(s) URL with a path other than ``/`` is used unchanged.
    """
    parts = urlsplit(url)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    if scheme not in ("ws", "wss"):
        raise ValueError(f"not an http(s) or ws(s) URL: {url!r}")
    path = parts.path
    if parts.scheme in ("http", "https") or path in ("", "/"):
        path = path.rstrip("/") + "/ws"
    return urlunsplit((scheme, parts.netloc, path, parts.query, ""))


def http_url(url: str) -> str:
    """The http(s) base URL of a server given its http(s) or ws(s) URL."""
    parts = urlsplit(url)
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    if scheme not in ("http", "https"):
        raise ValueError(f"not an http(s) or ws(s) URL: {url!r}")
    path = parts.path
    if parts.scheme in ("ws", "wss"):
        path = path.removesuffix("/ws")
    return urlunsplit((scheme, parts.netloc, path.rstrip("/"), "", ""))


REQUEST_TIMEOUT_SECONDS = 20.0


class SignalingChannel:
    """One signaling WebSocket.

    Every server message that is not the reply to a pending request (including
    errors without a pending request) goes to ``on_message``; ``on_close`` is called
    once when the socket is gone.
    """

    def __init__(
        self,
        ws: ClientConnection,
        on_message: Callable[[ServerMessage], None],
        on_close: Callable[[], None],
    ) -> None:
        self._ws = ws
        self.request_timeout = REQUEST_TIMEOUT_SECONDS
        """Seconds a request waits for its reply (longer than the server's own waits
        for a worker, so that its error arrives first)."""
        self._on_message = on_message
        self._on_close = on_close
        self._pending: dict[str, asyncio.Future[BaseModel]] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._close_reason = "the signaling connection is closed"
        self._reader = asyncio.create_task(self._read(), name="sfu-client-signaling")

    @classmethod
    async def open(
        cls,
        url: str,
        on_message: Callable[[ServerMessage], None],
        on_close: Callable[[], None],
    ) -> SignalingChannel:
        """Connect to ``url`` (a ws(s) URL) and start reading."""
        try:
            ws = await ws_connect(url, max_size=4 * 1024 * 1024)
        except (OSError, ConnectionClosed) as exc:
            raise SfuError(CONNECTION_CLOSED, f"cannot connect to {url}: {exc}") from exc
        return cls(ws, on_message, on_close)

    @property
    def closed(self) -> bool:
        return self._reader.done()

    @property
    def close_code(self) -> int | None:
        """The WebSocket close code once closed (1006 when the connection just died)."""
        return self._ws.close_code

    async def send(self, message: BaseModel) -> None:
        """Send one client message."""
        try:
            await self._ws.send(message.model_dump_json(exclude_none=True))
        except ConnectionClosed as exc:
            raise SfuError(CONNECTION_CLOSED, self._close_reason) from exc

    async def request(self, message: BaseModel, reply_type: type[ReplyT]) -> ReplyT:
        """Send ``message`` and wait for its reply or its ``error``, at most
        ``request_timeout`` seconds (then :class:`SfuError` ``request_timeout``)."""
        request_type: str = message.type  # type: ignore[attr-defined]
        async with self._lock(request_type):
            future = self._expect(request_type)
            try:
                await self.send(message)
                async with asyncio.timeout(self.request_timeout):
                    reply = await future
            except TimeoutError as exc:
                raise SfuError(
                    REQUEST_TIMEOUT,
                    f"no reply to {request_type} in {self.request_timeout:g} s",
                ) from exc
            finally:
                self._pending.pop(request_type, None)
        if not isinstance(reply, reply_type):
            raise SfuError(PROTOCOL_VIOLATION, f"expected {reply_type.__name__}, got {reply}")
        return reply

    async def command(self, message: BaseModel) -> None:
        """Send a message the server does not reply to, and raise its ``error`` if any.

        A ``ping`` follows the message; an error for it that the server sends before
        the ``pong`` is raised. (The server handles one socket's messages in order.)
        """
        request_type: str = message.type  # type: ignore[attr-defined]
        async with self._lock(request_type):
            future = self._expect(request_type)
            try:
                await self.send(message)
                await self.request(PingMessage(), PongMessage)
            finally:
                self._pending.pop(request_type, None)
                error = future.exception() if future.done() else None
                future.cancel()
        if error is not None:
            raise error

    async def close(self) -> None:
        """Close the socket and wait for the reader to finish."""
        await self._ws.close()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader

    def _lock(self, request_type: str) -> asyncio.Lock:
        return self._locks.setdefault(request_type, asyncio.Lock())

    def _expect(self, request_type: str) -> asyncio.Future[BaseModel]:
        if self.closed:
            raise SfuError(CONNECTION_CLOSED, self._close_reason)
        future: asyncio.Future[BaseModel] = asyncio.get_running_loop().create_future()
        self._pending[request_type] = future
        return future

    async def _read(self) -> None:
        try:
            async for raw in self._ws:
                try:
                    message = _server_message_adapter.validate_json(raw)
                except pydantic.ValidationError as exc:
                    logger.warning("ignoring unparsable server message %.200r: %s", raw, exc)
                    continue
                self._dispatch(message)
        except ConnectionClosed:
            pass
        finally:
            if self._ws.close_reason:
                self._close_reason = f"closed by the server: {self._ws.close_reason}"
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(SfuError(CONNECTION_CLOSED, self._close_reason))
            self._on_close()

    def _dispatch(self, message: ServerMessage) -> None:
        if isinstance(message, ErrorMessage):
            self._dispatch_error(message)
            return
        request_type = _REQUEST_OF_REPLY.get(type(message))
        future = self._pending.get(request_type) if request_type else None
        if future is not None and not future.done():
            future.set_result(message)
        else:
            self._on_message(message)

    def _dispatch_error(self, error: ErrorMessage) -> None:
        exception = SfuError(error.code, error.message)
        if error.request_type is not None:
            targets = [self._pending.get(error.request_type)]
        elif error.fatal:
            targets = list(self._pending.values())
        else:
            targets = []
        delivered = False
        for future in targets:
            if future is not None and not future.done():
                future.set_exception(exception)
                delivered = True
        if not delivered:
            self._on_message(error)
