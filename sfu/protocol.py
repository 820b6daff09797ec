"""The signaling protocol: one typed message per JSON object over one WebSocket.

Every message carries a ``type`` and may carry ``v`` (protocol version, default
:data:`PROTOCOL_VERSION`). Client → server messages are validated with
:data:`ClientMessage`; server → client messages are the ``Server*`` models below.
The media worker produces server messages too (events about a room), which is why
this module lives in ``sfu`` and is shared by both tiers; it depends on pydantic only.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, TypeAdapter

PROTOCOL_VERSION = 1
MAX_MESSAGE_BYTES = 64 * 1024
"""Largest WebSocket text frame accepted from a client (an SDP offer is ~10 kB)."""
MAX_FRAME_BYTES = 2 * MAX_MESSAGE_BYTES
"""Largest frame the server reads at all: up to it a frame too large gets a
``too_large`` error; above it the socket closes with 1009 (message too big), so that
no socket makes the server buffer more than this."""
CLOSE_WORKER_LOST = 4001
"""Socket close code after a ``worker_lost`` error: join again (the room moved)."""
CLOSE_REMOVED = 4002
"""Socket close code after a ``removed`` error: do not rejoin."""
CLOSE_DUPLICATE_IDENTITY = 4003
"""Socket close code after a ``duplicate_identity`` error: a newer session took over."""
CLOSE_SESSION_FAILED = 4004
"""Socket close code after a fatal session error (``transport_failed``,
``renegotiation_timeout``, ``join_timeout``): join again."""


class ErrorCode(StrEnum):
    """Stable error codes sent in :class:`ErrorMessage`."""

    BAD_JSON = "bad_json"
    BAD_MESSAGE = "bad_message"
    UNKNOWN_TYPE = "unknown_type"
    UNSUPPORTED_VERSION = "unsupported_version"
    TOO_LARGE = "too_large"
    BAD_TOKEN = "bad_token"
    TOKEN_EXPIRED = "token_expired"
    NOT_JOINED = "not_joined"
    ALREADY_JOINED = "already_joined"
    NOT_ALLOWED = "not_allowed"
    BAD_SDP = "bad_sdp"
    BAD_CANDIDATE = "bad_candidate"
    UNKNOWN_TRACK = "unknown_track"
    OUT_OF_ORDER = "out_of_order"
    TRANSPORT_FAILED = "transport_failed"
    WORKER_UNAVAILABLE = "worker_unavailable"
    WORKER_LOST = "worker_lost"
    REMOVED = "removed"
    RESUME_FAILED = "resume_failed"
    RATE_LIMITED = "rate_limited"
    ROOM_FULL = "room_full"
    TOO_MANY_TRACKS = "too_many_tracks"
    RENEGOTIATION_TIMEOUT = "renegotiation_timeout"
    JOIN_TIMEOUT = "join_timeout"
    DUPLICATE_IDENTITY = "duplicate_identity"
    CODEC_UNSUPPORTED = "codec_unsupported"
    UNKNOWN_SESSION = "unknown_session"
    """WHIP/WHEP: no HTTP session with that id (never created, or ended)."""
    PRECONDITION_FAILED = "precondition_failed"
    """WHIP/WHEP: a PATCH whose If-Match names another ICE session."""
    UNSUPPORTED = "unsupported"
    """WHIP/WHEP: a request the server understands but does not implement (ICE restart)."""
    UNKNOWN_RECORDING = "unknown_recording"
    ALREADY_RECORDING = "already_recording"
    RECORDING_LIMIT = "recording_limit"
    STORAGE_UNAVAILABLE = "storage_unavailable"
    INTERNAL = "internal"


def _unicode(value: str) -> str:
    """Refuse a lone surrogate ("\\ud800" in JSON): it is no character, and no reply
    or event that repeats the string could be encoded."""
    try:
        value.encode()
    except UnicodeEncodeError:
        raise ValueError("contains a lone surrogate (not Unicode text)") from None
    return value


def _display_name(value: str) -> str:
    # Surrogates are not printable: this refuses them too.
    if not value.isprintable():
        raise ValueError("contains non-printable characters")
    return value


Text = Annotated[str, AfterValidator(_unicode)]
"""A string from a client that the server may repeat: valid Unicode."""
DisplayName = Annotated[str, AfterValidator(_display_name), Field(max_length=64)]
"""A name shown to other participants: printable Unicode."""


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid")
    v: int = PROTOCOL_VERSION


# --- client → server ---------------------------------------------------------------


class JoinMessage(_Message):
    """First message on a socket: enter the room named in the access token."""

    type: Literal["join"] = "join"
    token: str
    name: DisplayName | None = Field(default=None, description="display name")
    resume: Text | None = Field(
        default=None,
        max_length=256,
        description="the resume_token of a session whose socket dropped: take it over",
    )


class PublishOfferMessage(_Message):
    """SDP offer for the publish transport (client offers, server answers)."""

    type: Literal["publish_offer"] = "publish_offer"
    sdp: Text = Field(max_length=MAX_MESSAGE_BYTES)
    tracks: dict[Text, TrackInfo] = Field(
        default_factory=dict, description="per offered MID: what the track is (source, name)"
    )


class SubscribeAnswerMessage(_Message):
    """SDP answer to the server's latest :class:`SubscribeOfferMessage`."""

    type: Literal["subscribe_answer"] = "subscribe_answer"
    sdp: Text = Field(max_length=MAX_MESSAGE_BYTES)
    revision: int


class IceCandidate(BaseModel):
    """An ICE candidate as the browser's ``RTCIceCandidate.toJSON()`` gives it."""

    candidate: Text = Field(max_length=512)
    sdpMid: Text | None = None  # the W3C names, as browsers send them
    sdpMLineIndex: int | None = None


class CandidateMessage(_Message):
    """A trickled ICE candidate; ``candidate`` null means end of candidates."""

    type: Literal["candidate"] = "candidate"
    target: Literal["publish", "subscribe"]
    candidate: IceCandidate | None


class MuteMessage(_Message):
    """Mute or unmute one of the sender's own published tracks."""

    type: Literal["mute"] = "mute"
    track_id: Text
    muted: bool


class TrackSettingsMessage(_Message):
    """A subscriber's preferences for one remote video track (simulcast layer choice).

    ``max_spatial_layer`` caps the layer (0 = lowest), ``max_temporal_layer`` the
    temporal layer of an SVC stream (AV1 with the dependency descriptor: fewer frames
    per second); ``max_width``/``max_height`` cap
    it by the size the page renders; ``paused`` stops the track (hidden element).
    """

    type: Literal["track_settings"] = "track_settings"
    track_id: Text
    paused: bool = False
    max_spatial_layer: int | None = Field(default=None, ge=0, le=2)
    max_temporal_layer: int | None = Field(default=None, ge=0, le=3)
    max_width: int | None = Field(default=None, ge=0, le=16384)
    max_height: int | None = Field(default=None, ge=0, le=16384)


class LeaveMessage(_Message):
    type: Literal["leave"] = "leave"


class PingMessage(_Message):
    type: Literal["ping"] = "ping"


ClientMessage = Annotated[
    JoinMessage
    | PublishOfferMessage
    | SubscribeAnswerMessage
    | CandidateMessage
    | MuteMessage
    | TrackSettingsMessage
    | LeaveMessage
    | PingMessage,
    Field(discriminator="type"),
]
CLIENT_MESSAGE_TYPES = frozenset(
    {
        "join",
        "publish_offer",
        "subscribe_answer",
        "candidate",
        "mute",
        "track_settings",
        "leave",
        "ping",
    }
)
client_message_adapter: TypeAdapter[ClientMessage] = TypeAdapter(ClientMessage)


# --- shared shapes -------------------------------------------------------------------


class TrackInfo(BaseModel):
    """What a publisher says about a track it offers (optional)."""

    model_config = ConfigDict(extra="forbid")
    source: Literal["camera", "microphone", "screen", "screen_audio", "unknown"] = "unknown"
    name: DisplayName | None = None


class Track(BaseModel):
    """A published track as other participants see it."""

    track_id: str
    participant_id: str
    kind: Literal["audio", "video"]
    source: str = "unknown"
    muted: bool = False
    simulcast: bool = False


class Participant(BaseModel):
    participant_id: str
    identity: str
    name: str
    tracks: list[Track] = Field(default_factory=list)


class IceServer(BaseModel):
    urls: list[str]
    username: str | None = None
    credential: str | None = None


# --- server → client -----------------------------------------------------------------


class JoinedMessage(_Message):
    """Reply to :class:`JoinMessage`: who you are and who is already here."""

    type: Literal["joined"] = "joined"
    room: str
    participant_id: str
    identity: str
    can_publish: bool
    can_subscribe: bool
    participants: list[Participant]
    ice_servers: list[IceServer] = Field(default_factory=list)
    resume_token: str | None = Field(
        default=None, description="send it as join.resume after a dropped socket (cluster mode)"
    )
    resumed: bool = Field(default=False, description="this join took over an existing session")


class PublishAnswerMessage(_Message):
    type: Literal["publish_answer"] = "publish_answer"
    sdp: str
    tracks: dict[str, str] = Field(description="per MID: the track id the server assigned")


class SubscribeTrack(BaseModel):
    """What one m-line of a subscribe offer carries."""

    track_id: str
    participant_id: str
    kind: Literal["audio", "video"]


class SubscribeOfferMessage(_Message):
    """Server offer for the subscribe transport; answer with ``subscribe_answer``."""

    type: Literal["subscribe_offer"] = "subscribe_offer"
    sdp: str
    revision: int
    tracks: dict[str, SubscribeTrack] = Field(description="per MID: the track it carries")


class ServerCandidateMessage(_Message):
    type: Literal["candidate"] = "candidate"
    target: Literal["publish", "subscribe"]
    candidate: IceCandidate | None


class ParticipantJoinedMessage(_Message):
    type: Literal["participant_joined"] = "participant_joined"
    participant: Participant


class ParticipantLeftMessage(_Message):
    type: Literal["participant_left"] = "participant_left"
    participant_id: str


class TrackPublishedMessage(_Message):
    type: Literal["track_published"] = "track_published"
    track: Track


class TrackUnpublishedMessage(_Message):
    type: Literal["track_unpublished"] = "track_unpublished"
    track_id: str
    participant_id: str


class TrackMutedMessage(_Message):
    type: Literal["track_muted"] = "track_muted"
    track_id: str
    participant_id: str
    muted: bool


class PublisherLayersMessage(_Message):
    """Dynacast: which simulcast layers (by RID) of the receiver's own track some
    subscriber needs; the client pauses the others with ``RTCRtpSender.setParameters``."""

    type: Literal["publisher_layers"] = "publisher_layers"
    track_id: str
    active: dict[str, bool]


class ActiveSpeakersMessage(_Message):
    """Participants speaking now, loudest first (from the audio-level header extension)."""

    type: Literal["active_speakers"] = "active_speakers"
    participant_ids: list[str]


ConnectionQualityLabel = Literal["excellent", "good", "poor"]


class ConnectionQualityMessage(_Message):
    """Every participant's connection quality (:mod:`sfu.connection_quality`), sent to
    the room whenever one of them changed (at most every two seconds)."""

    type: Literal["connection_quality"] = "connection_quality"
    qualities: dict[str, ConnectionQualityLabel]
    """By participant id."""


class RecordingFinishedMessage(_Message):
    """One recorded file is complete (recordings are started and stopped through the
    room API). Every participant of the room gets it."""

    type: Literal["recording_finished"] = "recording_finished"
    recording_id: str
    room: str
    track_id: str
    participant_id: str
    identity: str
    kind: Literal["audio", "video"]
    codec: str = Field(description="MIME type, e.g. video/VP8")
    file: str | None = Field(
        description="the file's path relative to the recording directory; None when no "
        "frame was written (the track sent nothing recordable)"
    )
    segment: int = Field(
        description="1 for a track's first file; a publisher that reconnects continues a "
        "track recording in segment 2, 3, ..."
    )
    started_at: float = Field(description="Unix time of the file's media time 0")
    duration: float = Field(description="seconds from media time 0 to the end of the last frame")
    bytes: int
    frames: int
    frames_lost: int = Field(
        description="video frames not written: a packet lost or malformed, or waiting for "
        "the next key frame after that; audio frames missing"
    )
    reason: Literal["stopped", "track_ended", "room_closed", "disk_full", "error", "shutdown"]
    error: str | None = None


class RecordingTrack(BaseModel):
    """A track being recorded (room API)."""

    track_id: str
    participant_id: str
    identity: str
    kind: Literal["audio", "video"]
    codec: str
    file: str
    segment: int
    layer: int | None = Field(
        default=None, description="the simulcast layer recorded now (video; 0 = lowest)"
    )


class RecordingInfo(BaseModel):
    """A recording (room API): one track, or every track of a room."""

    recording_id: str
    room: str
    track_id: str | None = Field(description="the recorded track; None: every track of the room")
    started_at: float
    tracks: list[RecordingTrack]
    finished: list[RecordingFinishedMessage] = Field(default_factory=list)


class PongMessage(_Message):
    type: Literal["pong"] = "pong"


class ErrorMessage(_Message):
    """Something the client sent could not be handled; the session goes on unless
    ``fatal`` is set (then the server closes the socket)."""

    type: Literal["error"] = "error"
    code: ErrorCode
    message: str
    request_type: str | None = None
    fatal: bool = False
    track_id: str | None = Field(
        default=None,
        description="the track the error is about (codec_unsupported; unknown_track for"
        " track_settings)",
    )
    codec: str | None = Field(
        default=None,
        description="the codec's MIME type, e.g. video/H264 (codec_unsupported: the "
        "subscriber cannot decode it, so the track is not sent to it)",
    )


ServerMessage = (
    JoinedMessage
    | PublishAnswerMessage
    | SubscribeOfferMessage
    | ServerCandidateMessage
    | ParticipantJoinedMessage
    | ParticipantLeftMessage
    | TrackPublishedMessage
    | TrackUnpublishedMessage
    | TrackMutedMessage
    | PublisherLayersMessage
    | ActiveSpeakersMessage
    | ConnectionQualityMessage
    | RecordingFinishedMessage
    | PongMessage
    | ErrorMessage
)

PublishOfferMessage.model_rebuild()
