"""A receiver's jitter buffer for recording: one RTP stream's packets back in sequence
order, cut into frames (sans-I/O: the caller passes the arrival time).

A video frame is the run of packets with one RTP timestamp that ends with the marker
bit (RFC 3550 5.1, RFC 7741 4.1, RFC 6184 5.1); an audio packet is a frame of its own.
A frame is handed to the payload format's :class:`Depacketizer` once every packet
from its first to its last is here. A missing packet is waited for (the NACK
generator asks the publisher for it) for :data:`MAX_DELAY` seconds; then the frame is
given up and reported as a :class:`FrameLoss`, and the buffer starts again at the
next packet known to start a frame. Every packet costs a bounded amount of work and
the buffer holds at most :data:`MAX_PACKETS`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from sfu.rtp.seqnum import SEQUENCE_NUMBER_BITS, WrapAroundExtender

MAX_DELAY = 0.5
"""Seconds a missing packet is waited for once later packets arrived: the NACK
generator's retries (every RTT) fit in it on any usable path."""
MAX_PACKETS = 1024
"""Packets the buffer holds at most (about 2 s of a 3 Mbit/s stream); beyond it the
waiting frame is given up."""


@dataclass(slots=True)
class CodecFrame:
    """One frame as its codec's bitstream, ready for a container."""

    data: bytes
    key: bool
    """A key frame (video), from which decoding can start; every audio frame is one."""
    width: int = 0
    """Picture size, when the frame says it (video key frames)."""
    height: int = 0


class Depacketizer(Protocol):
    """An RTP payload format, receiving side."""

    def starts_frame(self, payload: bytes) -> bool | None:
        """Whether a packet certainly starts a frame (True), certainly does not
        (False), or cannot tell by itself (None)."""
        ...

    def depacketize(self, payloads: list[bytes]) -> CodecFrame | None:
        """The frame carried by ``payloads`` (in sequence order); None when they carry
        nothing to write (parameter sets only); ValueError when they are malformed."""
        ...


@dataclass(slots=True)
class Frame:
    """A complete frame of the stream."""

    timestamp: int
    """RTP timestamp (32 bits, as sent)."""
    arrival: float
    """When its first packet arrived."""
    frame: CodecFrame


@dataclass(slots=True)
class FrameLoss:
    """Packets of the stream were lost (or malformed): a frame is missing here."""

    reason: str
    """``lost`` (a packet never came), ``malformed`` (the payload format refused it)
    or ``overflow`` (the buffer was full)."""


@dataclass(slots=True)
class _Packet:
    timestamp: int
    marker: bool
    payload: bytes
    arrival: float


class JitterBuffer:
    """Orders one stream's packets and cuts them into frames; see the module docstring."""

    def __init__(
        self,
        depacketizer: Depacketizer,
        *,
        audio: bool,
        max_delay: float = MAX_DELAY,
        max_packets: int = MAX_PACKETS,
    ) -> None:
        self._depacketizer = depacketizer
        self._audio = audio
        self._max_delay = max_delay
        self._max_packets = max_packets
        self._sequence = WrapAroundExtender(SEQUENCE_NUMBER_BITS)
        self._packets: dict[int, _Packet] = {}
        self._next: int | None = None
        """Extended sequence number of the next frame's first packet; None: not known
        (at the start, and after a loss), the next known frame start sets it."""
        self._floor = 0
        """Packets below this extended sequence number are discarded on arrival."""
        self._highest = -1
        self._scan = (-1, -1)
        """(frame start, first packet not yet looked at) of the frame being assembled."""
        self._hole: tuple[int, float] | None = None
        """(sequence number, since when) of the missing packet the buffer waits for."""
        self.packets_late = 0
        """Packets that arrived after their frame was written or given up."""

    def push(
        self, sequence: int, timestamp: int, marker: bool, payload: bytes, now: float
    ) -> list[Frame | FrameLoss]:
        """One packet (``payload`` empty for padding); returns what it completed."""
        extended = self._sequence.update(sequence)
        if extended < self._floor or extended in self._packets:
            self.packets_late += 1
            return []
        events: list[Frame | FrameLoss] = []
        if self._next is not None and extended - self._next >= self._max_packets:
            # A jump further than the buffer holds: whatever was waiting is lost.
            events.append(self._give_up("overflow", extended))
        elif self._next is None and len(self._packets) >= self._max_packets:
            self._packets.clear()  # no frame start in a full buffer: start afresh
        self._packets[extended] = _Packet(timestamp, marker, payload, now)
        self._highest = max(self._highest, extended)
        if self._next is None:
            self._resync(extended)
        while self._next is not None:
            event = self._take_frame(now)
            if event is None:
                break
            if isinstance(event, Frame | FrameLoss):
                events.append(event)
        return events

    def _is_start(self, extended: int) -> bool:
        packet = self._packets[extended]
        if not packet.payload:
            return False
        if self._audio:
            return True
        before = self._packets.get(extended - 1)
        if before is not None:
            return before.marker or before.timestamp != packet.timestamp
        return self._depacketizer.starts_frame(packet.payload) is True

    def _resync(self, extended: int) -> None:
        """Not synchronised: does the new packet (or its successor) start a frame?"""
        for candidate in (extended, extended + 1):
            if candidate in self._packets and self._is_start(candidate):
                self._start_at(candidate)
                return

    def _start_at(self, extended: int) -> None:
        for old in [seq for seq in self._packets if seq < extended]:
            del self._packets[old]
        self._next = extended
        self._floor = extended
        self._hole = None

    def _give_up(self, reason: str, floor: int) -> FrameLoss:
        """Drop the frame being waited for (and every packet below ``floor``); the next
        known frame start resynchronises."""
        packets = self._packets
        start = self._next
        damaged = packets[start].timestamp if start is not None and start in packets else None
        for extended in [
            seq for seq, packet in packets.items() if seq < floor or packet.timestamp == damaged
        ]:
            del packets[extended]
        self._next = None
        self._hole = None
        self._floor = max(self._floor, floor)
        for extended in sorted(packets):
            if self._is_start(extended):
                self._start_at(extended)
                break
        return FrameLoss(reason)

    def _take_frame(self, now: float) -> Frame | FrameLoss | bool | None:
        """The frame at ``_next`` if it is complete; True after skipping padding; a
        loss if it waited too long; None while it waits."""
        start = self._next
        assert start is not None
        packets = self._packets
        first = packets.get(start)
        if first is not None and not first.payload:
            del packets[start]
            self._next = self._floor = start + 1
            return True
        # The walk resumes where the last one stopped: each packet is looked at once.
        scanned_from, end = self._scan
        if scanned_from != start:
            end = start
        complete = False
        while True:
            packet = packets.get(end)
            if packet is None:
                break
            if first is not None and packet.timestamp != first.timestamp:
                complete = True  # the previous packet ended the frame without a marker
                end -= 1
                break
            if packet.marker or self._audio:
                complete = True
                break
            end += 1
        self._scan = (start, end)
        if not complete:
            return self._wait(end, now)
        assert first is not None
        payloads = [packets.pop(extended).payload for extended in range(start, end + 1)]
        self._next = self._floor = end + 1
        self._hole = None
        try:
            frame = self._depacketizer.depacketize(payloads)
        except ValueError:
            self._next = None
            return self._give_up("malformed", end + 1)
        if frame is None:
            return True
        return Frame(first.timestamp, first.arrival, frame)

    def _wait(self, missing: int, now: float) -> FrameLoss | None:
        """Packet ``missing`` is not here: wait for it, unless later packets have waited
        for it too long or the buffer is full."""
        if len(self._packets) > self._max_packets:
            return self._give_up("overflow", missing + 1)
        if self._highest <= missing:
            return None  # nothing after it yet: the frame is still arriving
        if self._hole is None or self._hole[0] != missing:
            self._hole = (missing, now)
            return None
        if now - self._hole[1] >= self._max_delay:
            return self._give_up("lost", missing + 1)
        return None
