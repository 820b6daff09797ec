"""A room participant: signaling, the publish and subscribe transports, room state."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from types import TracebackType
from typing import Literal, Self, TypeVar
from urllib.parse import urlencode

from aiortc.mediastreams import MediaStreamTrack

from sfu.client.data import DataLink
from sfu.client.errors import CONNECTION_CLOSED, HTTP_ERROR, SfuError
from sfu.client.ice import rtc_configuration, use_loopback_ice
from sfu.client.publisher import Publisher, Source
from sfu.client.signaling import SignalingChannel, http_url, websocket_url
from sfu.client.subscriber import Subscriber
from sfu.client.tracks import RemoteTrack
from sfu.protocol import (
    CLOSE_REMOVED,
    CLOSE_WORKER_LOST,
    ErrorCode,
    ErrorMessage,
    JoinedMessage,
    JoinMessage,
    LeaveMessage,
    MuteMessage,
    Participant,
    ParticipantJoinedMessage,
    ParticipantLeftMessage,
    PingMessage,
    PongMessage,
    PublishAnswerMessage,
    ServerCandidateMessage,
    ServerMessage,
    SubscribeOfferMessage,
    TrackMutedMessage,
    TrackPublishedMessage,
    TrackSettingsMessage,
    TrackUnpublishedMessage,
)

logger = logging.getLogger(__name__)

T = TypeVar("T")

MAX_BUFFERED_EVENTS = 1024
"""Events kept for :meth:`RoomClient.next_event`; older ones are dropped."""
REJOIN_SECONDS = 20.0
"""How long a client whose media worker died keeps trying to join its room again."""
RESUME_SECONDS = 10.0
"""How long a client whose socket dropped tries to resume its session (the server
keeps it ``reconnect_grace_seconds``, 10 by default)."""
RECONNECT_RETRY_SECONDS = 0.25


class _Changed:
    """Wakes every waiter whenever :meth:`notify` is called."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def notify(self) -> None:
        self._event.set()
        self._event = asyncio.Event()

    async def wait(self) -> None:
        await self._event.wait()


class RoomClient:
    """One participant in one room; create it with :func:`connect`.

    Other participants' tracks are subscribed to as the server offers them and
    appear in :attr:`remote_tracks`. Room events (``participant_joined``,
    ``track_published``, unsolicited ``error`` …) are queued for :meth:`events` /
    :meth:`next_event`. Use as ``async with await connect(...) as room:`` or call
    :meth:`leave` / :meth:`close`.
    """

    def __init__(self) -> None:
        self._signaling: SignalingChannel | None = None
        self._joined: JoinedMessage | None = None
        self._publisher: Publisher | None = None
        self._subscriber: Subscriber | None = None
        self._participants: dict[str, Participant] = {}
        self._remote_tracks: dict[str, RemoteTrack] = {}
        self._events: deque[ServerMessage] = deque(maxlen=MAX_BUFFERED_EVENTS)
        self._changed = _Changed()
        self.relay_only = False
        """ICE through the TURN server of ``joined.ice_servers`` only (see :func:`connect`)."""
        self._closed = False
        self._closing: asyncio.Future[None] | None = None
        self._early: list[ServerMessage] = []
        self._data = DataLink()
        """Messages that arrived between ``joined`` and the transports' creation."""
        self._reconnect = True
        self._reconnecting: asyncio.Future[None] | None = None
        self._replacing_session = False
        """A rejoin is closing a session of its own: that close is not a drop."""
        self._rejoin_tracks: list[tuple[MediaStreamTrack, Source, str | None]] = []
        self._target: tuple[str, str, str | None, bool] = ("", "", None, True)
        self.reconnects = 0
        """Sessions resumed or rejoined after a dropped socket or a lost media worker."""

    async def _join(
        self,
        url: str,
        token: str,
        name: str | None,
        data: bool = True,
        close_on_failure: bool = True,
    ) -> None:
        self._target = (url, token, name, data)
        self._signaling = await SignalingChannel.open(
            websocket_url(url), self._handle, self._signaling_closed
        )
        try:
            joined = await self._signaling.request(
                JoinMessage(token=token, name=name), JoinedMessage
            )
        except BaseException:
            if close_on_failure:
                await self.close()
            else:
                self._replacing_session = True
                try:
                    await self._signaling.close()
                finally:
                    self._replacing_session = False
            raise
        self._joined = joined
        self._participants = {
            p.participant_id: p
            for p in joined.participants
            if p.participant_id != joined.participant_id
        }
        configuration = rtc_configuration(joined.ice_servers, relay_only=self.relay_only)
        self._publisher = Publisher(configuration, self._signaling)
        self._subscriber = Subscriber(
            configuration, self._signaling, self._track_added, self._track_ended
        )
        early, self._early = self._early, []
        for message in early:
            self._handle(message)
        if data and joined.can_publish:
            try:
                await self._publisher.open_data(self._data.attach)
                await self._data.wait_open()
            except BaseException:
                await self.close()
                raise

    # --- state ------------------------------------------------------------------------

    @property
    def joined(self) -> JoinedMessage:
        """The server's ``joined`` reply."""
        if self._joined is None:
            raise RuntimeError("not joined")
        return self._joined

    @property
    def participant_id(self) -> str:
        return self.joined.participant_id

    @property
    def identity(self) -> str:
        return self.joined.identity

    @property
    def room(self) -> str:
        return self.joined.room

    @property
    def participants(self) -> dict[str, Participant]:
        """The other participants in the room, by participant id, with their tracks."""
        return self._participants

    @property
    def remote_tracks(self) -> dict[str, RemoteTrack]:
        """The tracks this client currently receives, by track id."""
        return self._remote_tracks

    @property
    def published_tracks(self) -> dict[str, MediaStreamTrack]:
        """The local tracks this client publishes, by the server's track id."""
        return self._publisher.tracks if self._publisher is not None else {}

    @property
    def data(self) -> DataLink:
        """Data messages: ``await room.data.send(...)``, ``await room.data.recv()``."""
        return self._data

    @property
    def closed(self) -> bool:
        return self._closed

    # --- requests ---------------------------------------------------------------------

    async def publish(
        self, track: MediaStreamTrack, source: Source = "camera", *, codec: str | None = None
    ) -> str:
        """Publish ``track`` and return the track id the server assigned; a video track
        goes out in ``codec`` only when given (``"VP8"`` or ``"H264"``: what aiortc
        encodes; it has no VP9, AV1 or scalability modes).

        Raises :class:`SfuError` (``not_allowed`` without the publish grant,
        ``codec_unavailable``, …).
        """
        (track_id,) = await self.publish_tracks([(track, source)], codec=codec)
        return track_id

    async def publish_tracks(
        self, tracks: Sequence[tuple[MediaStreamTrack, Source]], *, codec: str | None = None
    ) -> list[str]:
        """Publish several tracks in one negotiation; returns their track ids in order."""
        self._raise_if_closed()
        return await _require(self._publisher).publish(tracks, codec)

    async def mute(self, track_id: str, muted: bool = True) -> None:
        """Mark one of this client's published tracks (un)muted for the others.

        Media keeps flowing; the server tells subscribers with ``track_muted``.
        """
        await _require(self._signaling).command(MuteMessage(track_id=track_id, muted=muted))

    async def set_track_settings(
        self,
        track_id: str,
        *,
        paused: bool = False,
        max_spatial_layer: int | None = None,
        max_width: int | None = None,
        max_height: int | None = None,
        max_temporal_layer: int | None = None,
    ) -> None:
        """Preferences for one remote track: ``paused`` stops its forwarding (how to
        subscribe to selected tracks only); the others cap the simulcast layer the
        server picks, by index (0 = lowest) or by the size you render, and the temporal
        layer of an SVC stream (AV1: fewer frames per second)."""
        await _require(self._signaling).command(
            TrackSettingsMessage(
                track_id=track_id,
                paused=paused,
                max_spatial_layer=max_spatial_layer,
                max_temporal_layer=max_temporal_layer,
                max_width=max_width,
                max_height=max_height,
            )
        )

    async def ping(self) -> None:
        """Round-trip to the server."""
        await _require(self._signaling).request(PingMessage(), PongMessage)

    async def wait_for_track(
        self,
        predicate: Callable[[RemoteTrack], bool] | None = None,
        *,
        track_id: str | None = None,
        participant_id: str | None = None,
        kind: Literal["audio", "video"] | None = None,
        timeout: float | None = 10.0,
    ) -> RemoteTrack:
        """Return a remote track matching all the given criteria, waiting for one.

        Raises :class:`TimeoutError`, or :class:`SfuError` if the client closes.
        """

        def matches(remote: RemoteTrack) -> bool:
            return (
                (track_id is None or remote.track_id == track_id)
                and (participant_id is None or remote.participant_id == participant_id)
                and (kind is None or remote.kind == kind)
                and (predicate is None or predicate(remote))
            )

        async with asyncio.timeout(timeout):
            while True:
                found = next((t for t in self._remote_tracks.values() if matches(t)), None)
                if found is not None:
                    return found
                self._raise_if_closed()
                await self._changed.wait()

    async def next_event(
        self, type: str | None = None, *, timeout: float | None = 10.0
    ) -> ServerMessage:
        """Remove and return the oldest queued event (of ``type`` if given).

        Events of other types stay queued. Raises :class:`TimeoutError`, or
        :class:`SfuError` once the client is closed and no matching event is left.
        """
        async with asyncio.timeout(timeout):
            while True:
                for event in self._events:
                    if type is None or event.type == type:
                        self._events.remove(event)
                        return event
                self._raise_if_closed()
                await self._changed.wait()

    async def events(self) -> AsyncIterator[ServerMessage]:
        """Every queued and future event in order, until the client closes."""
        while True:
            try:
                yield await self.next_event(timeout=None)
            except SfuError:
                return

    async def leave(self) -> None:
        """Tell the server this participant leaves, then :meth:`close`."""
        if self._signaling is not None and not self._signaling.closed:
            try:
                await self._signaling.send(LeaveMessage())
            except SfuError:
                logger.debug("the socket closed before leave was sent")
        await self.close()

    async def close(self) -> None:
        """Close both transports and the socket; every remote track ends."""
        if self._closing is None:
            self._closing = asyncio.ensure_future(self._close())
        await asyncio.shield(self._closing)

    async def _close(self) -> None:
        self._closed = True
        self._data.close()
        if self._subscriber is not None:
            await self._subscriber.close()
        if self._publisher is not None:
            await self._publisher.close()
        if self._signaling is not None:
            await self._signaling.close()
        self._changed.notify()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.leave()

    # --- incoming ---------------------------------------------------------------------

    def _handle(self, message: ServerMessage) -> None:
        subscriber, publisher = self._subscriber, self._publisher
        if subscriber is None or publisher is None:
            self._early.append(message)
            return
        match message:
            case SubscribeOfferMessage():
                subscriber.handle_offer(message)
                return
            case ServerCandidateMessage(target="subscribe"):
                subscriber.add_candidate(message.candidate)
                return
            case ServerCandidateMessage(target="publish"):
                publisher.add_candidate(message.candidate)
                return
            case JoinedMessage() | PublishAnswerMessage():
                logger.warning("unexpected %s message", message.type)
                return
            case ParticipantJoinedMessage(participant=participant):
                self._participants[participant.participant_id] = participant
            case ParticipantLeftMessage(participant_id=participant_id):
                self._participants.pop(participant_id, None)
                for remote in list(self._remote_tracks.values()):
                    if remote.participant_id == participant_id:
                        subscriber.end_track(remote.track_id)
            case TrackPublishedMessage(track=track):
                owner = self._participants.get(track.participant_id)
                if owner is not None:
                    owner.tracks = [t for t in owner.tracks if t.track_id != track.track_id]
                    owner.tracks.append(track)
            case TrackUnpublishedMessage(track_id=track_id, participant_id=participant_id):
                owner = self._participants.get(participant_id)
                if owner is not None:
                    owner.tracks = [t for t in owner.tracks if t.track_id != track_id]
                subscriber.end_track(track_id)
            case TrackMutedMessage(track_id=track_id, participant_id=participant_id):
                owner = self._participants.get(participant_id)
                for track in owner.tracks if owner is not None else []:
                    if track.track_id == track_id:
                        track.muted = message.muted
            case ErrorMessage():
                logger.warning("server error %s: %s", message.code, message.message)
        self._events.append(message)
        self._changed.notify()

    def _track_added(self, remote: RemoteTrack) -> None:
        self._remote_tracks[remote.track_id] = remote
        self._changed.notify()

    def _track_ended(self, remote: RemoteTrack) -> None:
        if self._remote_tracks.get(remote.track_id) is remote:
            del self._remote_tracks[remote.track_id]
        self._changed.notify()

    def _signaling_closed(self) -> None:
        if self._replacing_session:
            return  # the rejoin closed its own failed session on purpose
        channel, joined = self._signaling, self._joined
        if (
            self._reconnect
            and self._reconnecting is None
            and self._closing is None
            and channel is not None
            and joined is not None
        ):
            code = channel.close_code
            if code == CLOSE_WORKER_LOST:
                self._reconnecting = asyncio.ensure_future(self._reconnect_with(self._rejoin))
                return
            if code not in (1000, CLOSE_REMOVED) and joined.resume_token is not None:
                self._reconnecting = asyncio.ensure_future(self._reconnect_with(self._resume))
                return
        if self._closing is None and self._joined is not None:
            self._closing = asyncio.ensure_future(self._close())
        self._changed.notify()

    # --- reconnect --------------------------------------------------------------------

    async def _reconnect_with(self, reconnect: Callable[[], Awaitable[None]]) -> None:
        deadline = time.monotonic() + REJOIN_SECONDS
        try:
            while True:
                try:
                    await reconnect()
                    break
                except SfuError as exc:
                    # The room is still moving off a dead worker, or its new worker is
                    # slow to answer under load: start the rejoin over.
                    if (
                        reconnect != self._rejoin
                        or exc.code != ErrorCode.WORKER_UNAVAILABLE
                        or time.monotonic() > deadline
                        or self.closed
                    ):
                        raise
                    logger.info("rejoin failed (%s); trying again", exc)
                    await asyncio.sleep(RECONNECT_RETRY_SECONDS)
            self.reconnects += 1
        except Exception as exc:
            logger.warning("could not reconnect: %s", exc)
            await self.close()
        finally:
            self._reconnecting = None
            self._changed.notify()

    async def _resume(self) -> None:
        """Take the session over on a new socket (any signaling node); the peer
        connections stay as they are. Falls back to a rejoin if the server refuses."""
        url, token, name, _ = self._target
        resume_token = self.joined.resume_token
        deadline = time.monotonic() + RESUME_SECONDS
        while True:
            try:
                channel = await SignalingChannel.open(
                    websocket_url(url), self._handle, self._signaling_closed
                )
            except SfuError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(RECONNECT_RETRY_SECONDS)
                continue
            # Offers replayed right after ``joined`` must be answered on this socket.
            _require(self._publisher).use_signaling(channel)
            _require(self._subscriber).use_signaling(channel)
            try:
                joined = await channel.request(
                    JoinMessage(token=token, name=name, resume=resume_token), JoinedMessage
                )
            except SfuError as exc:
                await channel.close()
                if exc.code == CONNECTION_CLOSED and time.monotonic() < deadline:
                    await asyncio.sleep(RECONNECT_RETRY_SECONDS)
                    continue
                logger.info("resume refused (%s); joining again", exc)
                await self._rejoin()
                return
            break
        self._signaling = channel
        self._joined = joined
        self._participants = {p.participant_id: p for p in joined.participants}

    async def _rejoin(self) -> None:
        """Join again with fresh peer connections (the room moved to another worker)
        and publish the same local tracks; remote tracks end and come back."""
        url, token, name, data = self._target
        publisher, subscriber = self._publisher, self._subscriber
        if publisher is not None:
            self._rejoin_tracks = publisher.published() or self._rejoin_tracks
        tracks = self._rejoin_tracks
        self._publisher = self._subscriber = None
        channel = self._signaling
        if channel is not None and not channel.closed:
            # A previous attempt joined but failed later: leave that session first.
            self._replacing_session = True
            try:
                await channel.send(LeaveMessage())
                await channel.close()
            finally:
                self._replacing_session = False
        if subscriber is not None:
            await subscriber.close()
        if publisher is not None:
            await publisher.close()
        if self._data.enabled:
            self._data = DataLink()
        # The node evicted the dead worker before telling us, so the room is placed
        # on a live one; if this join fails anyway, the client closes.
        await self._join(url, token, name, data, close_on_failure=False)
        for codec in dict.fromkeys(codec for _, _, codec in tracks):
            same = [(track, source) for track, source, asked in tracks if asked == codec]
            await self.publish_tracks(same, codec=codec)

    def _raise_if_closed(self) -> None:
        if self._closed or (
            self._reconnecting is None and self._signaling is not None and self._signaling.closed
        ):
            raise SfuError(CONNECTION_CLOSED, "the client is closed")


def _require(value: T | None) -> T:
    if value is None:
        raise RuntimeError("not joined")
    return value


async def connect(
    url: str,
    token: str,
    *,
    name: str | None = None,
    loopback_only: bool = False,
    relay_only: bool = False,
    data: bool = True,
    reconnect: bool = True,
) -> RoomClient:
    """Join the room named in ``token`` and return the connected client.

    ``url`` is the server's http(s) base URL or its ws(s) URL. ``loopback_only``
    calls :func:`use_loopback_ice` first (process-wide; for tests on one host).
    ``relay_only`` sets ``iceTransportPolicy=relay``: media goes through the TURN
    server the ``joined`` reply names, never directly (to test a TURN deployment).
    ``data`` opens the data channels (:attr:`RoomClient.data`) when the token may
    publish; they ride on the publish transport. With ``reconnect`` (cluster mode) a
    dropped socket resumes the session through any signaling node, and a lost media
    worker makes the client join again and republish (see :attr:`RoomClient.reconnects`).
    Raises :class:`SfuError` (``bad_token``, ``token_expired``, …) if the join fails.
    """
    if loopback_only:
        use_loopback_ice()
    client = RoomClient()
    client.relay_only = relay_only
    client._reconnect = reconnect
    await client._join(url, token, name, data)
    return client


async def dev_token(
    base_url: str,
    room: str,
    identity: str,
    name: str | None = None,
    *,
    timeout: float = 10.0,
) -> str:
    """Mint a token with the server's development endpoint ``/api/dev-token``.

    Raises :class:`SfuError` with code ``http_error`` if the server refuses.
    """
    query = {"room": room, "identity": identity}
    if name is not None:
        query["name"] = name
    request_url = f"{http_url(base_url)}/api/dev-token?{urlencode(query)}"

    def fetch() -> str:
        try:
            with urllib.request.urlopen(request_url, timeout=timeout) as response:
                return str(json.load(response)["token"])
        except urllib.error.HTTPError as exc:
            body = exc.read(500).decode(errors="replace")
            raise SfuError(HTTP_ERROR, f"{request_url}: {exc.code} {body}") from exc
        except (urllib.error.URLError, OSError, ValueError, KeyError) as exc:
            raise SfuError(HTTP_ERROR, f"{request_url}: {exc}") from exc

    return await asyncio.to_thread(fetch)
