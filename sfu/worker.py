"""The media worker: rooms, participants and their transports in one event loop.

:class:`Worker` implements :class:`sfu.worker_api.MediaWorker`; the embedded server
calls it in-process.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from aiortc.rtcdtlstransport import RTCCertificate

from sfu.aiortc_adapter import default_host_addresses, use_host_addresses, use_port_range
from sfu.config import Settings
from sfu.participant import Participant
from sfu.protocol import (
    CandidateMessage,
    ErrorCode,
    IceServer,
    JoinedMessage,
    MuteMessage,
    PublishAnswerMessage,
    PublishOfferMessage,
    SubscribeAnswerMessage,
    TrackSettingsMessage,
)
from sfu.room import Room
from sfu.send_batch import flush_scheduler
from sfu.worker_api import EventSink, Grant, ProtocolError

logger = logging.getLogger(__name__)

TICK_INTERVAL = 0.05
"""Least seconds between two runs of the periodic work (feedback, NACK retries,
allocation, RTCP reports, active speakers, dynacast) of every room and participant."""
TICK_SLACK = 0.05
"""Seconds a due tick may wait for media to wake the worker before a timer of its own
does: while media flows, the ticks ride on the loop iterations that handle it."""


@dataclass
class WorkerContext:
    """What every participant of a worker shares."""

    settings: Settings
    certificate: RTCCertificate


class Worker:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.rooms: dict[str, Room] = {}
        self.participants: dict[str, Participant] = {}
        self._context: WorkerContext | None = None
        self._tick_timer: asyncio.TimerHandle | None = None
        self._tick_due = 0.0
        """Event-loop time from which the next tick may run."""

    async def start(self) -> None:
        addresses = self.settings.ice_addresses or default_host_addresses()
        use_host_addresses(addresses)
        low, high = self.settings.udp_port_min, self.settings.udp_port_max
        use_port_range((low, high) if low is not None and high is not None else None)
        logger.info("media worker gathers ICE candidates on %s", ", ".join(addresses))
        self._context = WorkerContext(self.settings, RTCCertificate.generateCertificate())
        self._schedule_tick()
        flush_scheduler().add_after_flush(self._tick_if_due)

    async def stop(self) -> None:
        if self._tick_timer is not None:
            self._tick_timer.cancel()
            self._tick_timer = None
            flush_scheduler().remove_after_flush(self._tick_if_due)
        for participant_id in list(self.participants):
            await self.remove_participant(participant_id)

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
        now = time.time()
        for room in list(self.rooms.values()):
            try:
                room.tick(now)
                for participant in list(room.participants.values()):
                    participant.tick(now)
            except Exception:
                logger.exception("periodic work of room %s failed", room.name)

    def _participant(self, participant_id: str) -> Participant:
        participant = self.participants.get(participant_id)
        if participant is None:
            raise ProtocolError(ErrorCode.NOT_JOINED, "not in a room")
        return participant

    async def join(self, participant_id: str, grant: Grant, sink: EventSink) -> JoinedMessage:
        if self._context is None:
            raise ProtocolError(ErrorCode.WORKER_UNAVAILABLE, "media worker not started")
        if participant_id in self.participants:
            raise ProtocolError(ErrorCode.ALREADY_JOINED, "already in a room")
        room = self.rooms.get(grant.room)
        if room is None:
            room = self.rooms[grant.room] = Room(grant.room, self)
        participant = Participant(participant_id, grant, room, sink, self._context)
        await participant.open()
        self.participants[participant_id] = participant
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
        await self._participant(participant_id).subscribe_answer(message)

    async def add_candidate(self, participant_id: str, message: CandidateMessage) -> None:
        await self._participant(participant_id).add_candidate(message)

    async def mute(self, participant_id: str, message: MuteMessage) -> None:
        participant = self._participant(participant_id)
        producer = participant.mute(message.track_id, message.muted)
        participant.room.track_muted(producer)

    async def track_settings(self, participant_id: str, message: TrackSettingsMessage) -> None:
        self._participant(participant_id).track_settings(message)

    async def leave(self, participant_id: str) -> None:
        await self.remove_participant(participant_id)

    async def remove_participant(self, participant_id: str) -> None:
        participant = self.participants.pop(participant_id, None)
        if participant is None:
            return
        room = participant.room
        room.remove(participant)
        await participant.close()
        if not room.participants:
            self.rooms.pop(room.name, None)
