"""A load-generator process: many benchmark participants on one event loop.

The runner starts one or more of these with :func:`run_load_generator` and talks to
each over a :mod:`multiprocessing` pipe: ``"stats"`` is answered with a
:class:`LoadStats` of cumulative counters, ``"stop"`` ends the process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import traceback
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Literal, NamedTuple

import uvloop
from aiortc.rtcdtlstransport import RTCCertificate

from sfu.aiortc_adapter import use_host_addresses
from sfu.bench.media import VideoSource, load_video, synthetic_audio
from sfu.bench.participants import BenchPublisher, BenchSubscriber, BenchViewer

CLOSE_TIMEOUT = 5.0
"""Seconds to wait for the participants' sessions to close on stop."""


@dataclass(frozen=True)
class ParticipantSpec:
    role: Literal["publisher", "subscriber", "viewer"]
    """A viewer receives one publisher's tracks over WHEP, on a transport of its own."""
    token: str
    max_spatial_layer: int | None = None
    """A subscriber's cap on the spatial (simulcast or SVC) layer of every video track
    it receives."""
    publisher: str | None = None
    """The identity of the publisher a viewer receives."""


@dataclass(frozen=True)
class LoadSpec:
    """What one load-generator process runs."""

    ws_url: str
    participants: list[ParticipantSpec]
    clips: tuple[VideoSource, ...]
    """The video clip of every publisher, or one per simulcast layer (lowest first)."""
    audio: bool
    ice_address: str
    transport_cc: bool = False
    """Subscribers negotiate transport-cc and send its feedback (as browsers do)."""
    whep_url: str = ""
    """The room's WHEP endpoint, which viewers post their offers to."""


class SubscriberCounters(NamedTuple):
    """What one subscriber received so far, over all its tracks."""

    max_spatial_layer: int | None
    packets_received: int
    bytes_received: int


@dataclass
class LoadStats:
    """Cumulative counters of one load generator at ``time`` (monotonic seconds)."""

    time: float
    cpu_seconds: float
    publishers: int = 0
    publishers_connected: int = 0
    subscribers: int = 0
    """Subscribers and viewers."""
    tracks_receiving: int = 0
    """Sum over subscribers of the offered tracks that media arrived on."""
    packets_sent: int = 0
    octets_sent: int = 0
    packets_received: int = 0
    bytes_received: int = 0
    packets_expected: int = 0
    """Sum over the received SSRCs of (highest - first sequence number + 1)."""
    key_frame_requests: int = 0
    subscriber_counters: list[SubscriberCounters] = field(default_factory=list)
    """One per subscriber, in the same order in every sample."""
    errors: list[str] = field(default_factory=list)
    join_latencies: list[float] = field(default_factory=list)
    """Seconds from socket open to ``joined``, one per participant that joined."""
    media_latencies: list[float] = field(default_factory=list)
    """Seconds from socket open to media flowing, one per participant that got there."""


def run_load_generator(spec: LoadSpec, conn: Connection) -> None:
    """Process entry point."""
    logging.basicConfig(level=logging.WARNING, format="loadgen %(levelname)s %(name)s: %(message)s")
    use_host_addresses([spec.ice_address])
    uvloop.run(_LoadGenerator(spec, conn).run())


def _describe(error: BaseException) -> str:
    if isinstance(error, BaseExceptionGroup):
        return "; ".join(_describe(e) for e in error.exceptions)
    if str(error):
        return f"{type(error).__name__}: {error}"
    return "".join(traceback.format_exception(error)).strip()


class _LoadGenerator:
    def __init__(self, spec: LoadSpec, conn: Connection) -> None:
        self.spec = spec
        self.conn = conn
        self.publishers: list[BenchPublisher] = []
        self.subscribers: list[BenchSubscriber] = []
        self.errors: list[str] = []
        self._stop = asyncio.Event()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        certificate = RTCCertificate.generateCertificate()
        video = [load_video(source) for source in self.spec.clips]
        audio = synthetic_audio() if self.spec.audio else None
        for participant in self.spec.participants:
            if participant.role == "publisher":
                self.publishers.append(
                    BenchPublisher(self.spec.ws_url, participant.token, certificate, video, audio)
                )
            elif participant.role == "viewer":
                assert participant.publisher is not None
                self.subscribers.append(
                    BenchViewer(
                        self.spec.whep_url,
                        participant.token,
                        certificate,
                        participant.publisher,
                        self.spec.audio,
                        self.spec.transport_cc,
                    )
                )
            else:
                self.subscribers.append(
                    BenchSubscriber(
                        self.spec.ws_url,
                        participant.token,
                        certificate,
                        participant.max_spatial_layer,
                        self.spec.transport_cc,
                    )
                )
        everyone = [*self.publishers, *self.subscribers]
        tasks = [asyncio.create_task(p.run()) for p in everyone]
        for task in tasks:
            task.add_done_callback(self._on_done)
        loop.add_reader(self.conn.fileno(), self._on_command)
        try:
            await self._stop.wait()
        finally:
            loop.remove_reader(self.conn.fileno())
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            # Best effort: the server ends sessions whose peer went quiet.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    asyncio.gather(*(p.close() for p in everyone), return_exceptions=True),
                    CLOSE_TIMEOUT,
                )

    def _on_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        error = task.exception()
        self.errors.append("a participant left" if error is None else _describe(error))

    def _on_command(self) -> None:
        try:
            command = self.conn.recv()
        except EOFError:
            self._stop.set()
            return
        if command == "stats":
            self.conn.send(self.stats())
        elif command == "stop":
            self._stop.set()

    def stats(self) -> LoadStats:
        stats = LoadStats(time=time.monotonic(), cpu_seconds=time.process_time())
        stats.publishers = len(self.publishers)
        stats.subscribers = len(self.subscribers)
        stats.errors = list(self.errors)
        for participant in [*self.publishers, *self.subscribers]:
            if participant.join_latency is not None:
                stats.join_latencies.append(participant.join_latency)
            if participant.media_latency is not None:
                stats.media_latencies.append(participant.media_latency)
        for publisher in self.publishers:
            stats.publishers_connected += publisher.connected
            stats.packets_sent += publisher.packets_sent
            stats.octets_sent += publisher.octets_sent
            stats.key_frame_requests += publisher.key_frame_requests
        for subscriber in self.subscribers:
            stats.tracks_receiving += subscriber.tracks_receiving
            # Padding-only probes are not forwarded media: they count neither as
            # received nor as expected.
            packets = -subscriber.padding_received
            octets = -subscriber.padding_bytes
            stats.packets_expected -= subscriber.padding_received
            for stream in subscriber.streams.values():
                packets += stream.packets_received
                octets += stream.bytes_received
                stats.packets_expected += stream.packets_expected
            stats.packets_received += packets
            stats.bytes_received += octets
            stats.subscriber_counters.append(
                SubscriberCounters(subscriber.max_spatial_layer, packets, octets)
            )
        return stats
