"""The media worker: rooms, participants and their transports in one event loop.

:class:`Worker` implements :class:`sfu.worker_api.MediaWorker`; the embedded server
calls it in-process.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from aiortc.rtcdtlstransport import RTCCertificate
from pydantic import BaseModel

from sfu.aiortc_adapter import (
    SharedPorts,
    default_host_addresses,
    use_host_addresses,
    use_port_range,
)
from sfu.config import Settings
from sfu.http_session import HttpSessions
from sfu.ice_tcp import IceTcpServer
from sfu.participant import Participant
from sfu.protocol import (
    CandidateMessage,
    ErrorCode,
    ErrorMessage,
    IceServer,
    JoinedMessage,
    MuteMessage,
    PublishAnswerMessage,
    PublishOfferMessage,
    SubscribeAnswerMessage,
    TrackSettingsMessage,
)
from sfu.recording.manager import RecordingManager
from sfu.room import Room
from sfu.send_batch import flush_scheduler
from sfu.udp_mux import UdpMux
from sfu.webhooks import RoomFinished, RoomStarted, WebhookDispatcher
from sfu.worker_api import EventSink, Grant, HttpSession, HttpSessionOffer, ProtocolError

logger = logging.getLogger(__name__)

TICK_INTERVAL = 0.05
"""Least seconds between two runs of the periodic work (feedback, NACK retries,
allocation, RTCP reports, active speakers, dynacast) of every room and participant."""
TICK_SLACK = 0.05
"""Seconds a due tick may wait for media to wake the worker before a timer of its own
does: while media flows, the ticks ride on the loop iterations that handle it."""

RoomListener = Callable[[str, BaseModel], None]
"""Told every room event (room name, a message with a ``type``): what the room
broadcasts to its participants, and ``room_started``/``room_finished``. It must not
block: it runs inside the room's code."""


@dataclass
class WorkerContext:
    """What every participant of a worker shares."""

    settings: Settings
    certificate: RTCCertificate
    ports: SharedPorts | None = None
    """The single UDP port and the ICE-TCP port, when the worker has them."""


class Worker:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.rooms: dict[str, Room] = {}
        """Rooms someone is in (what the room API, metrics and placement see)."""
        self._opening: dict[str, Room] = {}
        """Rooms whose first participants' transports are still opening: they join
        :attr:`rooms` when one gets in, and vanish if none does."""
        self.participants: dict[str, Participant] = {}
        self._context: WorkerContext | None = None
        self._tick_timer: asyncio.TimerHandle | None = None
        self._tick_due = 0.0
        """Event-loop time from which the next tick may run."""
        self._closing: set[asyncio.Task[None]] = set()
        """Transports of dropped participants being closed (see :meth:`drop_participant`)."""
        self.ports: SharedPorts | None = None
        self.tick_failures = 0
        """Exceptions raised by rooms' and participants' periodic work."""
        self.http_sessions = HttpSessions(self)
        self.room_listeners: list[RoomListener] = []
        self.webhooks: WebhookDispatcher | None = None
        if settings.webhook_urls:
            self.webhooks = WebhookDispatcher.from_settings(settings)
            self.room_listeners.append(self.webhooks.room_event)
        self.recordings = RecordingManager(self)

    async def start(self) -> None:
        addresses = self.settings.ice_addresses or default_host_addresses()
        use_host_addresses(addresses)
        low, high = self.settings.udp_port_min, self.settings.udp_port_max
        use_port_range((low, high) if low is not None and high is not None else None)
        logger.info("media worker gathers ICE candidates on %s", ", ".join(addresses))
        self.ports = await self._open_ports(addresses)
        self._context = WorkerContext(
            self.settings, RTCCertificate.generateCertificate(), self.ports
        )
        self._schedule_tick()
        flush_scheduler().add_after_flush(self._tick_if_due)
        if self.webhooks is not None:
            self.webhooks.start()

    async def _open_ports(self, addresses: list[str]) -> SharedPorts | None:
        """The single UDP port (unless a per-transport range is set) and the ICE-TCP
        port (when set). Raises OSError when a port is taken."""
        settings = self.settings
        udp = UdpMux(addresses, settings.udp_port) if settings.single_udp_port else None
        tcp = IceTcpServer(addresses, settings.tcp_port) if settings.tcp_port is not None else None
        if udp is None and tcp is None:
            return None
        ports = SharedPorts(udp, tcp)
        try:
            if udp is not None:
                await udp.start()
            if tcp is not None:
                await tcp.start()
        except OSError:
            ports.close()
            raise
        return ports

    def ice_drops(self) -> dict[tuple[str, str], int]:
        """Datagrams the single UDP port dropped and ICE-TCP streams it closed, as
        (counter name, reason) keys for :mod:`sfu.metrics.worker`."""
        counts: dict[tuple[str, str], int] = {}
        ports = self.ports
        if ports is not None and ports.udp is not None:
            for reason, count in ports.udp.drops.items():
                counts[("sfu_ice_dropped_packets", reason)] = count
        if ports is not None and ports.tcp is not None:
            for reason, count in ports.tcp.closes.items():
                counts[("sfu_ice_tcp_closed_connections", reason)] = count
            counts[("sfu_ice_dropped_packets", "tcp_queue_full")] = ports.tcp.dropped_sends
        return counts

    async def stop(self) -> None:
        if self._tick_timer is not None:
            self._tick_timer.cancel()
            self._tick_timer = None
            flush_scheduler().remove_after_flush(self._tick_if_due)
        await self.http_sessions.stop()
        await self.recordings.close()
        for participant_id in list(self.participants):
            await self.remove_participant(participant_id)
        await asyncio.gather(*self._closing)
        if self.ports is not None:
            self.ports.close()
        if self.webhooks is not None:
            await self.webhooks.close()

    def room_event(self, room: str, message: BaseModel) -> None:
        """Tell every :data:`RoomListener`; one that fails is logged, never the room's
        problem."""
        for listener in self.room_listeners:
            try:
                listener(room, message)
            except Exception:
                logger.exception("room listener failed on %s", getattr(message, "type", "?"))

    def _schedule_tick(self) -> None:
        """One timer for the whole worker instead of tasks per participant.

        On a virtual machine an idle process that a timer wakes pays for the wake-up
        far more than for the work (the benchmark's ``wake-ups/s`` column): so the
        timer is set ``TICK_SLACK`` after the tick is due, and while media flows (sent
        or received) the tick runs earlier, at the end of a loop iteration that handled
        it (:meth:`_tick_if_due`, called by the :class:`~sfu.send_batch.FlushScheduler`),
        and the timer is moved.
        """
        loop = asyncio.get_running_loop()
        self._tick_due = loop.time() + TICK_INTERVAL
        self._tick_timer = loop.call_at(self._tick_due + TICK_SLACK, self._tick)

    def _tick_if_due(self) -> None:
        if self._tick_timer is not None and asyncio.get_running_loop().time() >= self._tick_due:
            self._tick()

    def _tick(self) -> None:
        if self._tick_timer is None:
            return
        self._tick_timer.cancel()
        self._schedule_tick()
        now = time.monotonic()
        for room in list(self.rooms.values()):
            try:
                room.tick(now)
            except Exception:
                self.tick_failures += 1
                logger.exception("periodic work of room %s failed", room.name)
            for participant in list(room.participants.values()):
                try:
                    participant.tick(now)
                except Exception as exc:
                    self._tick_failed(participant, exc)

    def _tick_failed(self, participant: Participant, exc: Exception) -> None:
        """A participant's periodic work raised: a bug, and one that would recur every
        tick. The participant is told and removed (it may rejoin); the rest of its room
        goes on, and the traceback is logged once, not 20 times a second."""
        self.tick_failures += 1
        logger.error(
            "periodic work of participant %s in room %s failed; removing it",
            participant.id,
            participant.room.name,
            exc_info=exc,
        )
        participant.send(
            ErrorMessage(code=ErrorCode.INTERNAL, message="the server failed; rejoin", fatal=True)
        )
        self.drop_participant(participant.id)

    def _participant(self, participant_id: str) -> Participant:
        participant = self.participants.get(participant_id)
        if participant is None:
            raise ProtocolError(ErrorCode.NOT_JOINED, "not in a room")
        return participant

    async def join(
        self,
        participant_id: str,
        grant: Grant,
        sink: EventSink,
        prepare: Callable[[Participant], None] | None = None,
    ) -> JoinedMessage:
        """``prepare`` sets up the participant before its transports open (a WHEP
        viewer's subscription, :mod:`sfu.http_session`)."""
        if self._context is None:
            raise ProtocolError(ErrorCode.WORKER_UNAVAILABLE, "media worker not started")
        if participant_id in self.participants:
            raise ProtocolError(ErrorCode.ALREADY_JOINED, "already in a room")
        room = self.rooms.get(grant.room) or self._opening.get(grant.room)
        if room is None:
            room = self._opening[grant.room] = Room(grant.room, self)
        limit = self.settings.max_participants_per_room
        if room.size >= limit:
            raise ProtocolError(
                ErrorCode.ROOM_FULL, f"room {grant.room!r} is full ({limit} participants)"
            )
        participant = Participant(participant_id, grant, room, sink, self._context)
        if prepare is not None:
            prepare(participant)
        room.joining += 1
        try:
            await participant.open()
        except BaseException:
            room.joining -= 1
            self._forget_if_empty(room)
            await participant.close()
            raise
        room.joining -= 1
        if self._opening.get(room.name) is room:
            del self._opening[room.name]
            self.rooms[room.name] = room
        self.participants[participant_id] = participant
        if not room.started:
            room.started = True
            self.room_event(room.name, RoomStarted())
        joined = JoinedMessage(
            room=grant.room,
            participant_id=participant_id,
            identity=grant.identity,
            can_publish=grant.can_publish,
            can_subscribe=grant.can_subscribe,
            participants=[p.info() for p in room.participants.values()],
            ice_servers=[IceServer(urls=[url]) for url in self.settings.ice_servers],
        )
        # The joined reply goes out before any subscribe offer the room triggers.
        sink(joined)
        room.add(participant)
        return joined

    async def publish_offer(
        self, participant_id: str, message: PublishOfferMessage
    ) -> PublishAnswerMessage:
        participant = self._participant(participant_id)
        if not participant.grant.can_publish:
            raise ProtocolError(ErrorCode.NOT_ALLOWED, "this token cannot publish")
        return await participant.publish_offer(message)

    async def subscribe_answer(self, participant_id: str, message: SubscribeAnswerMessage) -> None:
        self._participant(participant_id).subscriber.answer(message)

    async def add_candidate(self, participant_id: str, message: CandidateMessage) -> None:
        await self._participant(participant_id).add_candidate(message)

    async def mute(self, participant_id: str, message: MuteMessage) -> None:
        participant = self._participant(participant_id)
        producer = participant.publisher.mute(message.track_id, message.muted)
        participant.room.track_muted(producer)

    async def track_settings(self, participant_id: str, message: TrackSettingsMessage) -> None:
        self._participant(participant_id).subscriber.track_settings(message)

    async def leave(self, participant_id: str) -> None:
        await self.remove_participant(participant_id)

    async def open_http_session(self, grant: Grant, offer: HttpSessionOffer) -> HttpSession:
        return await self.http_sessions.open(grant, offer)

    async def patch_http_session(
        self, session_id: str, fragment: str, if_match: str | None
    ) -> None:
        await self.http_sessions.patch(session_id, fragment, if_match)

    async def close_http_session(self, session_id: str) -> None:
        await self.http_sessions.close(session_id)

    async def remove_participant(self, participant_id: str) -> None:
        participant = self._detach(participant_id)
        if participant is not None:
            await participant.close()

    def drop_participant(self, participant_id: str) -> None:
        """Remove a participant the worker ends itself (from its own periodic work, or a
        transport callback): out of its room at once, its transports closed in the
        background."""
        participant = self._detach(participant_id)
        if participant is not None:
            closing = asyncio.get_running_loop().create_task(participant.close())
            self._closing.add(closing)
            closing.add_done_callback(self._closing.discard)

    def _detach(self, participant_id: str) -> Participant | None:
        participant = self.participants.pop(participant_id, None)
        if participant is not None:
            participant.room.remove(participant)
            self._forget_if_empty(participant.room)
        return participant

    def _forget_if_empty(self, room: Room) -> None:
        if room.size:
            return
        if self._opening.get(room.name) is room:
            del self._opening[room.name]
        elif self.rooms.get(room.name) is room:
            del self.rooms[room.name]
            if room.started:
                self.room_event(room.name, RoomFinished())
