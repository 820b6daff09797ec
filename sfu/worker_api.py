"""The interface between the signaling tier and a media worker.

Signaling calls a :class:`MediaWorker` for every client request; the worker pushes
server messages (events, subscribe offers, candidates) to the participant's
:data:`EventSink`. The embedded server passes an in-process worker; the Redis
deployment passes a client that carries the same calls over the bus.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

from sfu.protocol import (
    CandidateMessage,
    ErrorCode,
    JoinedMessage,
    MuteMessage,
    PublishAnswerMessage,
    PublishOfferMessage,
    ServerMessage,
    SubscribeAnswerMessage,
    TrackSettingsMessage,
)

EventSink = Callable[[ServerMessage], None]
"""Delivers one server message to a participant's socket; must not block."""


@dataclass(frozen=True)
class Grant:
    """What a verified access token allows."""

    room: str
    identity: str
    name: str
    can_publish: bool = True
    can_subscribe: bool = True


@dataclass(frozen=True)
class HttpSessionOffer:
    """A WHIP or WHEP client's offer: the body of ``POST /whip/{room}`` or
    ``POST /whep/{room}``."""

    kind: Literal["whip", "whep"]
    """``whip``: the client publishes (RFC 9725); ``whep``: it only receives."""
    sdp: str
    publisher: str | None = None
    """WHEP only: the identity whose tracks the viewer receives (None: the room's)."""


@dataclass(frozen=True)
class HttpSession:
    """A WHIP or WHEP session the worker opened."""

    session_id: str
    """Names the session resource (its URL); unguessable, so knowing it is what allows
    PATCH and DELETE."""
    participant_id: str
    sdp: str
    """The answer."""
    etag: str
    """Names the session's ICE credentials (RFC 9725 section 4.3.1)."""


class ProtocolError(Exception):
    """A request that cannot be served; signaling turns it into an ``error`` message."""

    def __init__(self, code: ErrorCode, message: str, track_id: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.track_id = track_id
        """The track the request named, for an error about it (``unknown_track``)."""


class MediaWorker(Protocol):
    async def join(self, participant_id: str, grant: Grant, sink: EventSink) -> JoinedMessage:
        """Enter the grant's room. The worker sends the returned ``joined`` message
        through ``sink`` itself, before any event or offer the join triggers."""
        ...

    async def publish_offer(
        self, participant_id: str, message: PublishOfferMessage
    ) -> PublishAnswerMessage: ...

    async def subscribe_answer(
        self, participant_id: str, message: SubscribeAnswerMessage
    ) -> None: ...

    async def add_candidate(self, participant_id: str, message: CandidateMessage) -> None: ...

    async def mute(self, participant_id: str, message: MuteMessage) -> None: ...

    async def track_settings(self, participant_id: str, message: TrackSettingsMessage) -> None:
        """A subscriber's layer preferences for one remote track."""
        ...

    async def leave(self, participant_id: str) -> None: ...

    async def open_http_session(self, grant: Grant, offer: HttpSessionOffer) -> HttpSession:
        """Join the grant's room as a participant without a socket (WHIP publisher or
        WHEP viewer) and answer its offer. Its events go nowhere; it ends with
        :meth:`close_http_session`, or when its transport fails or goes silent."""
        ...

    async def patch_http_session(
        self, session_id: str, fragment: str, if_match: str | None
    ) -> None:
        """Trickled candidates (an ``application/trickle-ice-sdpfrag`` body, RFC 8840)
        for the session. Raises ``unknown_session``, ``precondition_failed`` (If-Match
        names other ICE credentials), ``unsupported`` (an ICE restart) or
        ``bad_candidate``."""
        ...

    async def close_http_session(self, session_id: str) -> None:
        """End the session: its participant leaves the room. Raises ``unknown_session``."""
        ...


@runtime_checkable
class ResumableWorker(Protocol):
    """A worker client whose sessions survive a dropped socket (the cluster router):
    signaling detaches instead of leaving, and a later ``join`` with a resume token
    takes the session over, on any node."""

    async def detach(self, participant_id: str) -> None:
        """The socket dropped without ``leave``; keep the session for a grace period."""
        ...

    async def resume(self, resume_token: str, grant: Grant, sink: EventSink) -> str:
        """Attach ``sink`` to the session of ``resume_token``; delivers ``joined`` (with
        ``resumed`` set) through it and returns the participant id."""
        ...
