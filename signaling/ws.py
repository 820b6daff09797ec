"""The signaling socket ``/ws``: one WebSocket is one participant.

A single reader loop parses and handles client requests in order; every message to
the client (replies and the worker's events alike) goes through one bounded queue
drained by a writer task, so the worker's :data:`EventSink` never blocks.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import json
import logging
import secrets
from typing import Annotated

from fastapi import APIRouter, Depends, WebSocket, WebSocketDisconnect
from pydantic import ValidationError
from starlette.types import Message

from sfu.config import Settings
from sfu.metrics import signaling as metrics
from sfu.protocol import (
    CLIENT_MESSAGE_TYPES,
    CLOSE_REMOVED,
    CLOSE_WORKER_LOST,
    MAX_MESSAGE_BYTES,
    PROTOCOL_VERSION,
    CandidateMessage,
    ClientMessage,
    ErrorCode,
    ErrorMessage,
    JoinedMessage,
    JoinMessage,
    LeaveMessage,
    MuteMessage,
    PingMessage,
    PongMessage,
    PublishOfferMessage,
    ServerMessage,
    SubscribeAnswerMessage,
    TrackSettingsMessage,
    client_message_adapter,
)
from sfu.worker_api import Grant, MediaWorker, ProtocolError, ResumableWorker
from signaling import SettingsDep
from signaling.auth import verify_token
from signaling.turn import turn_ice_servers

logger = logging.getLogger(__name__)

SEND_QUEUE_LIMIT = 1024
"""Messages waiting for a slow client before its socket is closed with 1011."""
CLOSE_SEND_OVERFLOW = 1011
_MAX_REPORTED_ERRORS = 3
_TERMINAL_ERRORS = {ErrorCode.WORKER_LOST: CLOSE_WORKER_LOST, ErrorCode.REMOVED: CLOSE_REMOVED}
"""Fatal errors that end the session: the socket closes with this code after them."""

_endings: set[asyncio.Task[None]] = set()
"""Session endings in progress (the event loop keeps only weak references to tasks)."""


def get_worker(websocket: WebSocket) -> MediaWorker:
    """The media worker the lifespan handler put into the application state."""
    worker: MediaWorker = websocket.state.worker
    return worker


WorkerDep = Annotated[MediaWorker, Depends(get_worker)]

router = APIRouter()


@router.websocket("/ws")
async def signaling_socket(websocket: WebSocket, settings: SettingsDep, worker: WorkerDep) -> None:
    await websocket.accept()
    metrics.WEBSOCKET_ACCEPTED.inc()
    with metrics.WEBSOCKET_CONNECTIONS.track_inprogress():
        await Session(websocket, worker, settings).run()


class _End(enum.Enum):
    LEFT = "left"
    CLOSED = "closed"
    """The client closed the socket on purpose (1000, or 1001 leaving the page)."""
    DISCONNECTED = "disconnected"


class _BadFrame(Exception):
    def __init__(self, code: ErrorCode, message: str, request_type: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.request_type = request_type


class Session:
    """The state of one signaling socket."""

    def __init__(self, websocket: WebSocket, worker: MediaWorker, settings: Settings) -> None:
        self._websocket = websocket
        self._worker = worker
        self._settings = settings
        self._queue: asyncio.Queue[ServerMessage | None] = asyncio.Queue()
        self._closing = False
        self._overflow = asyncio.Event()
        self._terminated = asyncio.Event()
        self._terminal_close: tuple[int, str] | None = None
        self._participant_id: str | None = None
        self._grant: Grant | None = None

    async def run(self) -> None:
        writer = asyncio.create_task(self._write_loop())
        reader = asyncio.create_task(self._read_loop())
        overflow = asyncio.create_task(self._overflow.wait())
        terminated = asyncio.create_task(self._terminated.wait())
        try:
            await asyncio.wait((reader, overflow, terminated), return_when=asyncio.FIRST_COMPLETED)
        finally:
            reader.cancel()
            overflow.cancel()
            terminated.cancel()
            # Shielded so that a cancelled handler (server shutdown) still leaves.
            ending = asyncio.create_task(self._end(reader, writer))
            _endings.add(ending)
            ending.add_done_callback(_endings.discard)
            await asyncio.shield(ending)

    async def _end(self, reader: asyncio.Task[_End], writer: asyncio.Task[None]) -> None:
        await asyncio.wait((reader,))
        self._closing = True
        left = (
            not reader.cancelled() and reader.exception() is None and reader.result() is _End.LEFT
        )
        terminal = self._terminal_close
        # A dropped socket, or this node shutting down, keeps a resumable session.
        dropped = (
            reader.result() is _End.DISCONNECTED
            if not reader.cancelled() and reader.exception() is None
            else reader.cancelled() and terminal is None and not self._overflow.is_set()
        )
        await self._leave(detach=dropped)
        if (left or terminal is not None) and not self._overflow.is_set():
            self._queue.put_nowait(None)  # flush what is queued, then stop
            await writer
        else:
            writer.cancel()
            await asyncio.wait((writer,))

        if self._overflow.is_set():
            await self._close(CLOSE_SEND_OVERFLOW, "client does not read fast enough")
        elif terminal is not None:
            await self._close(*terminal)
        elif reader.cancelled():
            await self._close(1001, "server shutting down")
        elif (error := reader.exception()) is not None:
            logger.error("signaling session failed", exc_info=error)
            await self._close(1011, "internal error")
        elif left:
            await self._close(1000, "left")

    def deliver(self, message: ServerMessage) -> None:
        """The participant's :data:`EventSink`: queue ``message``; never blocks or raises."""
        if self._closing:
            return
        if self._queue.qsize() >= SEND_QUEUE_LIMIT:
            self._closing = True
            self._overflow.set()
            logger.warning(
                "participant %s: %d messages queued, closing its socket",
                self._participant_id,
                SEND_QUEUE_LIMIT,
            )
            return
        if isinstance(message, ErrorMessage):
            metrics.count_error(message.code)
        elif isinstance(message, JoinedMessage):
            turn = turn_ice_servers(self._settings, message.identity)
            if turn:
                message = message.model_copy(update={"ice_servers": [*message.ice_servers, *turn]})
        self._queue.put_nowait(message)
        if isinstance(message, ErrorMessage) and message.fatal and message.code in _TERMINAL_ERRORS:
            self._closing = True
            self._participant_id = None  # the worker has already let it go
            self._terminal_close = (_TERMINAL_ERRORS[message.code], message.code.value)
            self._terminated.set()

    def _error(self, code: ErrorCode, message: str, request_type: str | None) -> None:
        self.deliver(ErrorMessage(code=code, message=message, request_type=request_type))

    async def _write_loop(self) -> None:
        while (message := await self._queue.get()) is not None:
            try:
                await self._websocket.send_text(message.model_dump_json(exclude_none=True))
            except (WebSocketDisconnect, RuntimeError):
                return  # the reader sees the disconnect and ends the session

    async def _read_loop(self) -> _End:
        while True:
            frame = await self._websocket.receive()
            if frame["type"] == "websocket.disconnect":
                return _End.CLOSED if frame.get("code") in (1000, 1001) else _End.DISCONNECTED
            try:
                request = _parse(frame)
            except _BadFrame as exc:
                self._error(exc.code, exc.message, exc.request_type)
                continue
            if isinstance(request, LeaveMessage) and self._participant_id is not None:
                return _End.LEFT
            try:
                await self._handle(request)
            except ProtocolError as exc:
                self._error(exc.code, exc.message, request.type)
            except Exception:
                logger.exception(
                    "participant %s: %s request failed", self._participant_id, request.type
                )
                self._error(ErrorCode.INTERNAL, "internal server error", request.type)

    async def _handle(self, request: ClientMessage) -> None:
        if isinstance(request, PingMessage):
            self.deliver(PongMessage())
            return
        if isinstance(request, JoinMessage):
            await self._join(request)
            return
        participant_id, grant = self._participant_id, self._grant
        if participant_id is None or grant is None:
            raise ProtocolError(ErrorCode.NOT_JOINED, f"send join before {request.type}")
        match request:
            case PublishOfferMessage():
                if not grant.can_publish:
                    raise ProtocolError(
                        ErrorCode.NOT_ALLOWED, "the token does not allow publishing"
                    )
                self.deliver(await self._worker.publish_offer(participant_id, request))
            case SubscribeAnswerMessage():
                if not grant.can_subscribe:
                    raise ProtocolError(
                        ErrorCode.NOT_ALLOWED, "the token does not allow subscribing"
                    )
                await self._worker.subscribe_answer(participant_id, request)
            case CandidateMessage():
                await self._worker.add_candidate(participant_id, request)
            case MuteMessage():
                await self._worker.mute(participant_id, request)
            case TrackSettingsMessage():
                await self._worker.track_settings(participant_id, request)

    async def _join(self, request: JoinMessage) -> None:
        if self._participant_id is not None:
            raise ProtocolError(
                ErrorCode.ALREADY_JOINED, f"already joined as {self._participant_id}"
            )
        grant = verify_token(request.token, self._settings.api_key, self._settings.api_secret)
        grant = dataclasses.replace(grant, name=request.name or grant.name)
        if request.resume is not None:
            await self._resume(request.resume, grant)
            return
        participant_id = "PA_" + secrets.token_urlsafe(9)
        # Set before the call so that a join cancelled half-way is still left; a join
        # that fails admitted nobody, and the client may try again.
        self._participant_id = participant_id
        try:
            # The worker delivers the joined reply through the sink itself, ahead of
            # the subscribe offers and events that joining triggers.
            await self._worker.join(participant_id, grant, self.deliver)
        except Exception:
            self._participant_id = None
            raise
        self._grant = grant

    async def _resume(self, resume_token: str, grant: Grant) -> None:
        if not isinstance(self._worker, ResumableWorker):
            raise ProtocolError(ErrorCode.RESUME_FAILED, "this server does not resume sessions")
        self._participant_id = await self._worker.resume(resume_token, grant, self.deliver)
        self._grant = grant

    async def _leave(self, detach: bool = False) -> None:
        participant_id, self._participant_id = self._participant_id, None
        if participant_id is None:
            return
        try:
            if detach and isinstance(self._worker, ResumableWorker):
                await self._worker.detach(participant_id)
            else:
                await self._worker.leave(participant_id)
        except Exception:
            logger.exception("participant %s: leave failed", participant_id)

    async def _close(self, code: int, reason: str) -> None:
        with contextlib.suppress(WebSocketDisconnect, RuntimeError):
            await self._websocket.close(code, reason)


def _parse(frame: Message) -> ClientMessage:
    text: str | None = frame.get("text")
    payload: bytes = text.encode() if text is not None else frame.get("bytes") or b""
    if len(payload) > MAX_MESSAGE_BYTES:
        raise _BadFrame(
            ErrorCode.TOO_LARGE,
            f"message is {len(payload)} bytes; the limit is {MAX_MESSAGE_BYTES}",
        )
    if text is None:
        raise _BadFrame(ErrorCode.BAD_MESSAGE, "binary frames are not accepted; send JSON text")
    try:
        document = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise _BadFrame(ErrorCode.BAD_JSON, f"invalid JSON: {exc}") from None
    if not isinstance(document, dict):
        raise _BadFrame(ErrorCode.BAD_MESSAGE, "a message must be a JSON object")
    request_type = document.get("type")
    if request_type not in CLIENT_MESSAGE_TYPES:
        raise _BadFrame(
            ErrorCode.UNKNOWN_TYPE,
            f"unknown message type; expected one of {', '.join(sorted(CLIENT_MESSAGE_TYPES))}",
        )
    version = document.get("v", PROTOCOL_VERSION)
    if isinstance(version, bool) or not isinstance(version, int):
        raise _BadFrame(ErrorCode.BAD_MESSAGE, "'v' must be an integer", request_type)
    if version != PROTOCOL_VERSION:
        raise _BadFrame(
            ErrorCode.UNSUPPORTED_VERSION,
            f"protocol version {version} is not supported; this server speaks {PROTOCOL_VERSION}",
            request_type,
        )
    try:
        return client_message_adapter.validate_python(document)
    except ValidationError as exc:
        summary = _summarise(exc, request_type)
        raise _BadFrame(ErrorCode.BAD_MESSAGE, summary, request_type) from None


def _summarise(exc: ValidationError, request_type: str) -> str:
    problems = []
    for error in exc.errors(include_url=False, include_input=False)[:_MAX_REPORTED_ERRORS]:
        location = list(error["loc"])
        if location[:1] == [request_type]:
            location = location[1:]  # the discriminator pydantic puts first
        where = ".".join(str(part) for part in location)
        problems.append(f"{where}: {error['msg']}" if where else error["msg"])
    hidden = exc.error_count() - len(problems)
    if hidden:
        problems.append(f"and {hidden} more")
    return f"invalid {request_type} message: " + "; ".join(problems)
