"""The signaling socket ``/ws``: one WebSocket is one participant.

A single reader loop parses and handles client requests in order; every message to
the client (replies and the worker's events alike) goes through one bounded queue
drained by a writer task, so the worker's :data:`EventSink` never blocks.

What one client can make the server hold is bounded here: sockets per process and per
client address (refused with HTTP 503 before the handshake), the time before a
successful join, the message rate of a socket, and one session per identity and room.
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

from fastapi import APIRouter, Depends, Response, WebSocket, WebSocketDisconnect
from pydantic import ValidationError
from pydantic_core import PydanticSerializationError
from starlette.types import Message

from sfu.access_token import verify_token
from sfu.config import Settings
from sfu.metrics import signaling as metrics
from sfu.protocol import (
    CLIENT_MESSAGE_TYPES,
    CLOSE_DUPLICATE_IDENTITY,
    CLOSE_REMOVED,
    CLOSE_SESSION_FAILED,
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
from signaling.turn import turn_ice_servers

logger = logging.getLogger(__name__)

INVALID_UTF8 = "sfu.invalid_utf8"
"""Key of a ``websocket.receive`` event whose text frame was not UTF-8 (the HTTP
server's WebSocket protocol, :mod:`sfu.app.http_server`, marks it): its value is the
decoder's message and ``bytes`` holds the frame."""

SEND_QUEUE_LIMIT = 1024
"""Messages waiting for a slow client before its socket is closed with 1011."""
CLOSE_SEND_OVERFLOW = 1011
CLOSE_INTERNAL_ERROR = 1011
CLOSE_POLICY_VIOLATION = 1008
"""After a fatal ``rate_limited``: the client kept sending far above its rate."""
RETRY_AFTER_SECONDS = 5
"""``Retry-After`` of the 503 that refuses a socket beyond the connection limits."""
_MAX_REPORTED_ERRORS = 3
_CLOSE_CODES = {
    ErrorCode.WORKER_LOST: CLOSE_WORKER_LOST,
    ErrorCode.REMOVED: CLOSE_REMOVED,
    ErrorCode.DUPLICATE_IDENTITY: CLOSE_DUPLICATE_IDENTITY,
    ErrorCode.RATE_LIMITED: CLOSE_POLICY_VIOLATION,
}
"""The close code after a fatal error; :data:`CLOSE_SESSION_FAILED` for the others
(``transport_failed``, ``renegotiation_timeout``, ``join_timeout``)."""
_RELEASED_BY_WORKER = frozenset({ErrorCode.WORKER_LOST, ErrorCode.REMOVED})
"""Fatal errors after which the worker has already let the participant go; after the
others the session leaves (which is harmless if the worker has)."""

_endings: set[asyncio.Task[None]] = set()
"""Session endings in progress (the event loop keeps only weak references to tasks)."""


def get_worker(websocket: WebSocket) -> MediaWorker:
    """The media worker the lifespan handler put into the application state."""
    worker: MediaWorker = websocket.state.worker
    return worker


WorkerDep = Annotated[MediaWorker, Depends(get_worker)]


class Sessions:
    """The signaling sockets of one application: counted against the connection
    limits, and indexed by room and identity (one session per identity)."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._total = 0
        self._per_address: dict[str, int] = {}
        self._by_identity: dict[tuple[str, str], Session] = {}

    def admit(self, address: str) -> str | None:
        """Count a socket from ``address``; or why it is refused (nothing counted)."""
        if self._total >= self._settings.max_connections:
            return f"this server holds {self._total} sockets, its limit"
        held = self._per_address.get(address, 0)
        if held >= self._settings.max_connections_per_ip:
            return f"{held} sockets from {address}, the limit per address"
        self._total += 1
        self._per_address[address] = held + 1
        return None

    def release(self, address: str) -> None:
        self._total -= 1
        held = self._per_address.pop(address) - 1
        if held:
            self._per_address[address] = held

    def claim(self, room: str, identity: str, session: Session) -> Session | None:
        """Make ``session`` the one of ``identity`` in ``room``; return the previous one."""
        previous = self._by_identity.get((room, identity))
        self._by_identity[room, identity] = session
        return previous if previous is not session else None

    def forget(self, room: str, identity: str, session: Session) -> None:
        if self._by_identity.get((room, identity)) is session:
            del self._by_identity[room, identity]


def get_sessions(websocket: WebSocket) -> Sessions:
    """The application's :class:`Sessions` (made by :func:`signaling.app.create_app`)."""
    sessions: Sessions = websocket.app.state.sessions
    return sessions


SessionsDep = Annotated[Sessions, Depends(get_sessions)]

router = APIRouter()


@router.websocket("/ws")
async def signaling_socket(
    websocket: WebSocket, settings: SettingsDep, worker: WorkerDep, sessions: SessionsDep
) -> None:
    address = websocket.client.host if websocket.client is not None else ""
    refused = sessions.admit(address)
    if refused is not None:
        await websocket.send_denial_response(
            Response(
                f"too many connections: {refused}; try again later\n",
                status_code=503,
                headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
                media_type="text/plain",
            )
        )
        return
    try:
        await websocket.accept()
        metrics.WEBSOCKET_ACCEPTED.inc()
        with metrics.WEBSOCKET_CONNECTIONS.track_inprogress():
            await Session(websocket, worker, settings, sessions).run()
    finally:
        sessions.release(address)


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


class _Verdict(enum.Enum):
    ACCEPT = "accept"
    REFUSE = "refuse"
    DISCONNECT = "disconnect"


class MessageBudget:
    """The message rate of one socket: a token bucket of ``rate`` messages per second
    and ``burst`` at once. Refused messages draw on a second bucket of the same size,
    so a client that keeps sending at more than twice the rate (whose refusals alone
    would cost an error each) empties it and is disconnected."""

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._tokens = self._burst
        self._patience = self._burst
        self._updated = now

    def take(self, now: float) -> _Verdict:
        refill = (now - self._updated) * self._rate
        self._updated = now
        self._tokens = min(self._burst, self._tokens + refill)
        self._patience = min(self._burst, self._patience + refill)
        if self._tokens >= 1:
            self._tokens -= 1
            return _Verdict.ACCEPT
        if self._patience >= 1:
            self._patience -= 1
            return _Verdict.REFUSE
        return _Verdict.DISCONNECT


class Session:
    """The state of one signaling socket."""

    def __init__(
        self,
        websocket: WebSocket,
        worker: MediaWorker,
        settings: Settings,
        sessions: Sessions,
    ) -> None:
        self._websocket = websocket
        self._worker = worker
        self._settings = settings
        self._sessions = sessions
        self._queue: asyncio.Queue[ServerMessage | None] = asyncio.Queue()
        self._closing = False
        self._aborted = asyncio.Event()
        self._abort_close: tuple[int, str] | None = None
        """Set with ``_aborted``: the socket closes at once, nothing queued is sent."""
        self._terminated = asyncio.Event()
        self._terminal_close: tuple[int, str] | None = None
        self._participant_id: str | None = None
        self._grant: Grant | None = None
        self._claimed: tuple[str, str] | None = None
        """The room and identity this session holds in :class:`Sessions`."""
        loop = asyncio.get_running_loop()
        self._budget = MessageBudget(settings.message_rate, settings.message_burst, loop.time())

    async def run(self) -> None:
        writer = asyncio.create_task(self._write_loop())
        reader = asyncio.create_task(self._read_loop())
        aborted = asyncio.create_task(self._aborted.wait())
        terminated = asyncio.create_task(self._terminated.wait())
        join_deadline = asyncio.get_running_loop().call_later(
            self._settings.join_timeout, self._join_timed_out
        )
        try:
            await asyncio.wait((reader, aborted, terminated), return_when=asyncio.FIRST_COMPLETED)
        finally:
            join_deadline.cancel()
            reader.cancel()
            aborted.cancel()
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
        aborted = self._abort_close
        # A dropped socket, or this node shutting down, keeps a resumable session.
        dropped = (
            reader.result() is _End.DISCONNECTED
            if not reader.cancelled() and reader.exception() is None
            else reader.cancelled() and terminal is None and aborted is None
        )
        await self._leave(detach=dropped)
        if self._claimed is not None:
            self._sessions.forget(*self._claimed, self)
        if (left or terminal is not None) and aborted is None:
            self._queue.put_nowait(None)  # flush what is queued, then stop
            await writer
        else:
            writer.cancel()
            await asyncio.wait((writer,))

        if aborted is not None:
            await self._close(*aborted)
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
            logger.warning(
                "participant %s: %d messages queued, closing its socket",
                self._participant_id,
                SEND_QUEUE_LIMIT,
            )
            self._abort(CLOSE_SEND_OVERFLOW, "client does not read fast enough")
            return
        if isinstance(message, ErrorMessage):
            metrics.count_error(message.code)
        elif isinstance(message, JoinedMessage):
            turn = turn_ice_servers(self._settings, message.identity)
            if turn:
                message = message.model_copy(update={"ice_servers": [*message.ice_servers, *turn]})
        self._queue.put_nowait(message)
        if isinstance(message, ErrorMessage) and message.fatal:
            # Every fatal error ends the session: send it, then close.
            self._closing = True
            if message.code in _RELEASED_BY_WORKER:
                self._participant_id = None
            close_code = _CLOSE_CODES.get(message.code, CLOSE_SESSION_FAILED)
            self._terminal_close = (close_code, message.code.value)
            self._terminated.set()

    def _error(
        self,
        code: ErrorCode,
        message: str,
        request_type: str | None,
        track_id: str | None = None,
    ) -> None:
        self.deliver(
            ErrorMessage(code=code, message=message, request_type=request_type, track_id=track_id)
        )

    def _fail(self, code: ErrorCode, message: str) -> None:
        """End the session with a fatal error (sent, then the socket closes)."""
        self.deliver(ErrorMessage(code=code, message=message, fatal=True))

    def _abort(self, code: int, reason: str) -> None:
        """Close the socket at once, without sending what is queued."""
        self._closing = True
        if self._abort_close is None:
            self._abort_close = (code, reason)
        self._aborted.set()

    def _join_timed_out(self) -> None:
        if self._participant_id is None and self._grant is None:
            self._fail(
                ErrorCode.JOIN_TIMEOUT,
                f"no successful join within {self._settings.join_timeout:g} s",
            )

    async def supersede(self, resumed: str | None = None) -> None:
        """A newer session of the same identity took this one's place: tell this one
        and close it; its participant leaves, unless it is the one ``resumed``."""
        if self._participant_id == resumed:
            self._participant_id = None  # the newer socket holds it now
        else:
            await self._leave()
        self._fail(
            ErrorCode.DUPLICATE_IDENTITY,
            "another session joined with the same identity and room; this one ended",
        )

    async def _write_loop(self) -> None:
        while (message := await self._queue.get()) is not None:
            try:
                text = message.model_dump_json(exclude_none=True)
            except PydanticSerializationError:
                # Never die silently: every later message would wait for ever.
                logger.exception(
                    "participant %s: a %s message cannot be encoded; closing its socket",
                    self._participant_id,
                    message.type,
                )
                self._abort(CLOSE_INTERNAL_ERROR, "internal error")
                return
            try:
                await self._websocket.send_text(text)
            except (WebSocketDisconnect, RuntimeError):
                return  # the reader sees the disconnect and ends the session

    async def _read_loop(self) -> _End:
        loop = asyncio.get_running_loop()
        while True:
            frame = await self._websocket.receive()
            if frame["type"] == "websocket.disconnect":
                return _End.CLOSED if frame.get("code") in (1000, 1001) else _End.DISCONNECTED
            verdict = self._budget.take(loop.time())
            if verdict is _Verdict.REFUSE:
                self._error(ErrorCode.RATE_LIMITED, self._rate_message(), None)
                continue
            if verdict is _Verdict.DISCONNECT:
                self._fail(ErrorCode.RATE_LIMITED, self._rate_message() + "; disconnected")
                return _End.LEFT
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
                self._error(exc.code, exc.message, request.type, exc.track_id)
            except Exception:
                logger.exception(
                    "participant %s: %s request failed", self._participant_id, request.type
                )
                self._error(ErrorCode.INTERNAL, "internal server error", request.type)

    def _rate_message(self) -> str:
        return (
            f"more than {self._settings.message_rate:g} messages/s (bursts of "
            f"{self._settings.message_burst}); this one was dropped"
        )

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
        if not self._settings.has_secret:
            raise ProtocolError(
                ErrorCode.BAD_TOKEN, "this server has no API secret configured (not in dev mode)"
            )
        grant = verify_token(
            request.token,
            self._settings.api_key,
            self._settings.api_secret,
            max_lifetime=self._settings.token_max_lifetime,
        )
        grant = dataclasses.replace(grant, name=request.name or grant.name)
        if request.resume is not None:
            await self._resume(request.resume, grant)
            return
        await self._claim(grant)
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
            self._sessions.forget(grant.room, grant.identity, self)
            self._claimed = None
            raise
        self._grant = grant

    async def _resume(self, resume_token: str, grant: Grant) -> None:
        if not isinstance(self._worker, ResumableWorker):
            raise ProtocolError(ErrorCode.RESUME_FAILED, "this server does not resume sessions")
        self._participant_id = await self._worker.resume(resume_token, grant, self.deliver)
        self._grant = grant
        await self._claim(grant, resumed=self._participant_id)

    async def _claim(self, grant: Grant, resumed: str | None = None) -> None:
        """One session per identity and room: a newer one replaces the older (as
        LiveKit does), which gets a fatal ``duplicate_identity``."""
        if self._claimed is not None:
            self._sessions.forget(*self._claimed, self)
        self._claimed = (grant.room, grant.identity)
        previous = self._sessions.claim(grant.room, grant.identity, self)
        if previous is not None:
            await previous.supersede(resumed)

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
    if (invalid := frame.get(INVALID_UTF8)) is not None:
        raise _BadFrame(ErrorCode.BAD_JSON, f"a text frame must be UTF-8: {invalid}")
    if text is None:
        raise _BadFrame(ErrorCode.BAD_MESSAGE, "binary frames are not accepted; send JSON text")
    try:
        document = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise _BadFrame(ErrorCode.BAD_JSON, f"invalid JSON: {exc}") from None
    if not isinstance(document, dict):
        raise _BadFrame(ErrorCode.BAD_MESSAGE, "a message must be a JSON object")
    request_type = document.get("type")
    if request_type is not None and not isinstance(request_type, str):
        raise _BadFrame(ErrorCode.BAD_MESSAGE, "'type' must be a string")
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
    summary = f"invalid {request_type} message: " + "; ".join(problems)
    # A field name may be anything the client wrote, a lone surrogate included.
    return summary.encode("utf-8", "backslashreplace").decode()
