"""A Room: the participants of one conversation and the producers they publish.

A room lives on exactly one worker (one event loop, no locks). Its
:class:`~sfu.router.Router` connects every producer to a consumer for each other
participant that may subscribe and does the fan-out; the room tells everyone about
arrivals, departures and tracks.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from sfu.active_speaker import ActiveSpeakerDetector
from sfu.allocator import preferred_max_layer
from sfu.connection_quality import (
    ConnectionQualityTracker,
    ParticipantSample,
    ReceivedStream,
    SentStream,
)
from sfu.dynacast import DynacastManager
from sfu.protocol import (
    ActiveSpeakersMessage,
    ConnectionQualityMessage,
    ParticipantJoinedMessage,
    ParticipantLeftMessage,
    PublisherLayersMessage,
    ServerMessage,
    TrackMutedMessage,
    TrackPublishedMessage,
    TrackUnpublishedMessage,
)
from sfu.router import Router

if TYPE_CHECKING:
    from sfu.participant import Participant
    from sfu.producer import Producer
    from sfu.worker import Worker

DYNACAST_INTERVAL = 0.25
"""Seconds between two evaluations of which simulcast layers subscribers want: a layer
asked for again resumes within this, plus the publisher's reaction."""


class Room:
    def __init__(self, name: str, worker: Worker) -> None:
        self.name = name
        self.worker = worker
        self.participants: dict[str, Participant] = {}
        self.joining = 0
        """Joins admitted but not yet in :attr:`participants` (their transports are
        gathering): they count toward the room's size, and keep the room alive."""
        self.started = False
        """Its first participant got in (``room_started`` was told); a room whose
        first joins all failed never started, and finishes silently."""
        self.router = Router()
        self.speakers = ActiveSpeakerDetector()
        self.active_speakers: list[str] = []
        self.quality = ConnectionQualityTracker()
        self._dynacast: dict[str, DynacastManager] = {}
        self._next_dynacast = 0.0

    def broadcast(self, message: ServerMessage, exclude: str | None = None) -> None:
        self.worker.room_event(self.name, message)
        for participant in self.participants.values():
            if participant.id != exclude:
                participant.send(message)

    @property
    def size(self) -> int:
        """Participants in the room and on their way in (see :attr:`joining`)."""
        return len(self.participants) + self.joining

    def add(self, participant: Participant) -> None:
        """A participant entered: announce it and subscribe it to every producer."""
        self.broadcast(ParticipantJoinedMessage(participant=participant.info()))
        self.participants[participant.id] = participant
        participant.update_consumers(
            added=[
                producer
                for other in self.participants.values()
                if other is not participant
                for producer in other.producers.values()
            ]
        )

    def remove(self, participant: Participant) -> None:
        """A participant left: its producers go, and so do its consumers."""
        if self.participants.pop(participant.id, None) is None:
            return
        self.quality.forget(participant.id)
        self.change_tracks(participant, unpublished=list(participant.producers.values()))
        participant.producers.clear()
        for consumer in participant.consumers():
            self.router.remove_consumer(consumer)
        self.broadcast(ParticipantLeftMessage(participant_id=participant.id))

    def change_tracks(
        self,
        owner: Participant,
        published: Sequence[Producer] = (),
        unpublished: Sequence[Producer] = (),
    ) -> None:
        """Tracks of ``owner`` that started and ended (those of one publish offer, or
        all of a leaving participant's): announced, then one renegotiation for each
        other participant."""
        for producer in unpublished:
            self._dynacast.pop(producer.id, None)
            self.broadcast(
                TrackUnpublishedMessage(track_id=producer.id, participant_id=owner.id),
                exclude=owner.id,
            )
        for producer in published:
            self.router.add_producer(producer)
            message = TrackPublishedMessage(track=owner.track_info(producer))
            self.broadcast(message, exclude=owner.id)
        for participant in self.participants.values():
            if participant is not owner:
                participant.update_consumers(added=published, removed=unpublished)
        for producer in unpublished:
            self.router.remove_producer(producer)
        self.worker.recordings.tracks_changed(self, owner, published, unpublished)

    def tick(self, now: float) -> None:
        """Periodic room work: active speakers, connection quality and dynacast."""
        speakers = self.speakers.update(now)
        if speakers is not None:
            self.active_speakers = speakers
            self.broadcast(ActiveSpeakersMessage(participant_ids=speakers))
        if self.quality.due(now):
            samples = {p.id: self._quality_sample(p, now) for p in self.participants.values()}
            if self.quality.update(now, samples) is not None:
                qualities = {pid: q.label for pid, q in self.quality.scores.items()}
                self.broadcast(ConnectionQualityMessage(qualities=qualities))
        if now < self._next_dynacast:
            return
        self._next_dynacast = now + DYNACAST_INTERVAL
        for participant in self.participants.values():
            for producer in participant.producers.values():
                if producer.simulcast:
                    self._update_dynacast(participant, producer, now)

    def _quality_sample(self, participant: Participant, now: float) -> ParticipantSample:
        """What :class:`ConnectionQualityTracker` scores ``participant`` from: the
        streams it publishes, those forwarded to it, its round-trip time."""
        received = tuple(
            ReceivedStream(
                stream.ssrc,
                stream.statistics.packets_expected,
                stream.statistics.packets_received,
                stream.statistics.jitter / stream.statistics.clock_rate,
            )
            for producer in participant.producers.values()
            for stream in producer.streams.values()
        )
        sent = []
        for consumer in participant.consumers():
            if not consumer.active or consumer.paused or consumer.first_forwarded_at is None:
                continue
            route = self.router.route(consumer.producer)
            forwarding = route.forwardings.get(consumer.id)
            if forwarding is None:
                continue
            deficit = 0
            if consumer.producer.simulcast:
                wanted = preferred_max_layer(route.allocation_input(consumer, 0, now))
                flowing = [s.layer for s in consumer.producer.streams.values() if s.flowing(now)]
                if wanted is not None and flowing:
                    current = forwarding.current_layer
                    wanted = min(wanted, max(flowing))
                    deficit = max(0, wanted - (-1 if current is None else current))
            stream = forwarding.stream
            sent.append(
                SentStream(
                    fraction_lost=consumer.fraction_lost / 256,
                    source_key=None if stream is None else stream.ssrc,
                    layer_deficit=deficit,
                    forwarding_since=consumer.first_forwarded_at,
                )
            )
        return ParticipantSample(received, tuple(sent), participant.subscriber.bandwidth.rtt)

    def _update_dynacast(self, owner: Participant, producer: Producer, now: float) -> None:
        """Tell the publisher which layers some subscriber needs (the rest pause)."""
        manager = self._dynacast.get(producer.id)
        if manager is None:
            manager = self._dynacast[producer.id] = DynacastManager(producer.rids)
        # Wanted by preference, not by the allocator's current choice: a layer paused
        # while bandwidth is short could never be chosen again once it stops flowing.
        wanted: set[int] = set()
        route = self.router.route(producer)
        for forwarding in route.forwardings.values():
            consumer = forwarding.consumer
            if consumer.active:
                preferred = preferred_max_layer(route.allocation_input(consumer, 0, now))
                if preferred is not None:
                    wanted.update(range(preferred + 1))
        for observer in producer.observers:
            wanted.update(range(observer.max_layer + 1))
        active = manager.update(wanted, now)
        if active is not None:
            for stream in producer.streams.values():
                stream.paused = stream.rid is not None and not active.get(stream.rid, True)
            owner.send(PublisherLayersMessage(track_id=producer.id, active=active))

    def track_muted(self, producer: Producer) -> None:
        self.broadcast(
            TrackMutedMessage(
                track_id=producer.id,
                participant_id=producer.participant_id,
                muted=producer.muted,
            ),
            exclude=producer.participant_id,
        )
