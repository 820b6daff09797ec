"""Transport-wide congestion control feedback, the FCI of an RTPFB FMT=15 packet.

draft-holmer-rmcat-transport-wide-cc-extensions-01 §3.1::

    |      base sequence number     |      packet status count      |
    |                 reference time                | fb pkt. count |
    |          packet chunk         |         packet chunk          |  ...
    |  recv delta   |  recv delta   |  ... (1 or 2 bytes each)  | zero padding |

Packet chunks (16 bits, most significant bit first):

* run length: ``0 SS LLLLLLLLLLLLL``, ``L`` packets (13 bits) all with status ``S``;
* 1-bit status vector: ``1 0`` then 14 symbols, 0 = not received, 1 = small delta;
* 2-bit status vector: ``1 1`` then 7 symbols, 0 = not received, 1 = small delta,
  2 = large delta, 3 = reserved.

A small receive delta is one unsigned byte, a large one two bytes signed, both in 250 µs
ticks; the first is relative to the reference time (a signed 24-bit count of 64 ms), each
next one to the previous received packet. Vector chunks may cover more symbols than the
packet status count needs (the excess is ignored), and up to 3 bytes of zero padding may
follow the deltas when the sender pads inside the FCI instead of with the RTCP P bit.

:class:`TransportCcFeedback` expands all of this into one :class:`PacketResult` per
reported sequence number, with absolute arrival times in microseconds. The writer picks
chunks as libwebrtc does: run length for runs of 7 or more, otherwise 1-bit vectors when
no large delta is involved, else 2-bit vectors.
"""

from __future__ import annotations

import itertools
import struct
from dataclasses import dataclass, field

from sfu.rtp import rtcp

DELTA_TICK_US = 250
"""Receive delta resolution."""
REFERENCE_TIME_TICK_US = 64_000
"""Reference time resolution."""
REFERENCE_TIME_BITS = 24
REFERENCE_TIME_MIN = -(1 << (REFERENCE_TIME_BITS - 1))
REFERENCE_TIME_MAX = (1 << (REFERENCE_TIME_BITS - 1)) - 1
MAX_STATUS_COUNT = 0xFFFF
"""The 16-bit packet status count field."""
MAX_RUN_LENGTH = 0x1FFF
"""The 13-bit run length of a run length chunk."""
ONE_BIT_VECTOR_CAPACITY = 14
TWO_BIT_VECTOR_CAPACITY = 7
SMALL_DELTA_MAX = 0xFF
"""Largest delta (in ticks) a 1-byte small delta carries; small deltas are never negative."""
LARGE_DELTA_MIN = -0x8000
LARGE_DELTA_MAX = 0x7FFF
MAX_FEEDBACK_PACKET_SIZE = 1200
"""Default bound on the size of one RTCP transport-cc packet written by
:func:`build_feedback_packets`, headers included."""

STATUS_NOT_RECEIVED = 0
STATUS_SMALL_DELTA = 1
STATUS_LARGE_DELTA = 2
STATUS_RESERVED = 3

_FIXED = struct.Struct("!HHI")
_CHUNK = struct.Struct("!H")
_LARGE_DELTA = struct.Struct("!h")
FIXED_SIZE = _FIXED.size
RTCP_OVERHEAD = 12
"""RTCP header plus sender and media SSRC, in front of the FCI."""
_HALF_TICK_US = DELTA_TICK_US // 2


def _to_signed_reference_time(value: int) -> int:
    """Read the low 24 bits of ``value`` as a signed reference time."""
    value &= (1 << REFERENCE_TIME_BITS) - 1
    if value > REFERENCE_TIME_MAX:
        value -= 1 << REFERENCE_TIME_BITS
    return value


def _ticks(arrival_time_us: int, origin_us: int) -> int:
    """Delta ticks from ``origin_us`` to ``arrival_time_us``, rounded half up."""
    return (arrival_time_us - origin_us + _HALF_TICK_US) // DELTA_TICK_US


def _delta_status(delta: int) -> int:
    if 0 <= delta <= SMALL_DELTA_MAX:
        return STATUS_SMALL_DELTA
    if LARGE_DELTA_MIN <= delta <= LARGE_DELTA_MAX:
        return STATUS_LARGE_DELTA
    raise ValueError(
        f"receive delta of {delta * DELTA_TICK_US} µs does not fit in a 16-bit large delta"
    )


@dataclass(slots=True)
class PacketResult:
    """The fate of one transport-wide sequence number.

    ``arrival_time_us`` is set exactly when ``received`` is true: microseconds on the
    receiver's clock, counted from the same origin as ``reference_time * 64 ms``.
    """

    sequence_number: int
    received: bool
    arrival_time_us: int | None = None

    def __post_init__(self) -> None:
        if self.received and self.arrival_time_us is None:
            raise ValueError(f"received packet {self.sequence_number} has no arrival time")
        if not self.received and self.arrival_time_us is not None:
            raise ValueError(f"lost packet {self.sequence_number} has an arrival time")


class _ChunkWriter:
    """Incremental packet chunk encoder (the strategy of libwebrtc's ``LastChunk``).

    Statuses accumulate in a pending list that can always be written as a single chunk:
    a run of one status, up to 7 statuses of any kind, or up to 14 without large deltas.
    When the next status would break that, the pending list is flushed: as a run length
    chunk if it is one, as a full 1-bit vector, or else as a 2-bit vector of its first 7.
    """

    __slots__ = ("_all_same", "_has_large", "_pending", "chunks")

    def __init__(self) -> None:
        self.chunks: list[int] = []
        self._pending: list[int] = []
        self._all_same = True
        self._has_large = False

    @property
    def chunk_count(self) -> int:
        """Chunks written once :meth:`finish` is called."""
        return len(self.chunks) + (1 if self._pending else 0)

    def add(self, status: int) -> None:
        if not self._can_add(status):
            self._flush()
        pending = self._pending
        if pending and status != pending[0]:
            self._all_same = False
        if status == STATUS_LARGE_DELTA:
            self._has_large = True
        pending.append(status)

    def finish(self) -> list[int]:
        pending = self._pending
        if pending:
            if self._all_same:
                self.chunks.append((pending[0] << 13) | len(pending))
            elif len(pending) <= TWO_BIT_VECTOR_CAPACITY:
                self.chunks.append(self._two_bit(pending))
            else:
                self.chunks.append(self._one_bit(pending))
            self._reset([])
        return self.chunks

    def _can_add(self, status: int) -> bool:
        size = len(self._pending)
        if size < TWO_BIT_VECTOR_CAPACITY:
            return True
        if size < ONE_BIT_VECTOR_CAPACITY and not self._has_large and status != STATUS_LARGE_DELTA:
            return True
        return self._all_same and status == self._pending[0] and size < MAX_RUN_LENGTH

    def _flush(self) -> None:
        pending = self._pending
        if self._all_same:
            self.chunks.append((pending[0] << 13) | len(pending))
            self._reset([])
        elif len(pending) == ONE_BIT_VECTOR_CAPACITY:
            self.chunks.append(self._one_bit(pending))
            self._reset([])
        else:
            self.chunks.append(self._two_bit(pending[:TWO_BIT_VECTOR_CAPACITY]))
            self._reset(pending[TWO_BIT_VECTOR_CAPACITY:])

    def _reset(self, pending: list[int]) -> None:
        self._pending = pending
        self._all_same = all(status == pending[0] for status in pending) if pending else True
        self._has_large = STATUS_LARGE_DELTA in pending

    @staticmethod
    def _one_bit(statuses: list[int]) -> int:
        chunk = 0x8000
        for index, status in enumerate(statuses):
            chunk |= status << (13 - index)
        return chunk

    @staticmethod
    def _two_bit(statuses: list[int]) -> int:
        chunk = 0xC000
        for index, status in enumerate(statuses):
            chunk |= status << (12 - 2 * index)
        return chunk


@dataclass(slots=True)
class TransportCcReport:
    """What one transport-cc FCI says, with its losses left implicit.

    ``received`` holds ``(offset, arrival_time_us)`` in FCI order: the packet
    ``(base_sequence + offset) % 65536`` arrived at ``arrival_time_us`` (as in
    :class:`PacketResult`); every other offset below ``status_count`` was reported not
    received. A run length chunk declares up to 8191 statuses in 2 bytes, but every
    received packet costs at least one delta byte: so ``received`` is no longer than
    the FCI, and :func:`parse_transport_cc` runs in time proportional to the FCI's size
    whatever its status count says (expanding a hostile 28-byte FCI of 65,535 statuses
    into one object each cost 33-77 ms).
    """

    base_sequence: int
    status_count: int
    reference_time: int
    """Signed 24-bit, in multiples of 64 ms."""
    feedback_count: int
    received: list[tuple[int, int]]


def _chunk_symbols(chunk: int, remaining: int, offset: int) -> list[int]:
    """The symbols of a vector chunk at byte ``offset``, at most ``remaining`` of them."""
    if not chunk & 0x4000:
        used = min(ONE_BIT_VECTOR_CAPACITY, remaining)
        return [(chunk >> (13 - index)) & 0x1 for index in range(used)]
    used = min(TWO_BIT_VECTOR_CAPACITY, remaining)
    symbols = [(chunk >> (12 - 2 * index)) & 0x3 for index in range(used)]
    if STATUS_RESERVED in symbols:
        raise ValueError(
            f"transport-cc 2-bit status vector chunk at byte {offset} "
            f"uses the reserved status 3 in symbol {symbols.index(STATUS_RESERVED)}"
        )
    return symbols


def parse_transport_cc(fci: bytes) -> TransportCcReport:
    """Parse a transport-cc FCI in time proportional to its size (see
    :class:`TransportCcReport`); malformed FCIs raise ``ValueError``.

    First pass over the chunks: runs stay ``(symbol, length)``, vectors become their few
    symbols, and the delta bytes they need are added up, so that a truncated FCI is
    rejected before anything is expanded. Second pass: only received packets are
    visited, each reading its delta.
    """
    size = len(fci)
    if size < FIXED_SIZE:
        raise ValueError(f"transport-cc FCI is {size} bytes, its fixed part needs 8")
    base, count, word = _FIXED.unpack_from(fci, 0)
    if count == 0:
        raise ValueError("transport-cc feedback has a packet status count of 0")

    chunks: list[tuple[int, int] | list[int]] = []
    covered = 0
    delta_bytes = 0
    pos = FIXED_SIZE
    while covered < count:
        if pos + 2 > size:
            raise ValueError(
                f"transport-cc packet chunk at byte {pos} is truncated "
                f"after {covered} of {count} statuses"
            )
        chunk = _CHUNK.unpack_from(fci, pos)[0]
        if chunk & 0x8000:
            symbols = _chunk_symbols(chunk, count - covered, pos)
            chunks.append(symbols)
            covered += len(symbols)
            delta_bytes += symbols.count(STATUS_SMALL_DELTA) + 2 * symbols.count(STATUS_LARGE_DELTA)
        else:
            symbol = (chunk >> 13) & 0x3
            if symbol == STATUS_RESERVED:
                raise ValueError(
                    f"transport-cc run length chunk at byte {pos} uses the reserved status 3"
                )
            length = min(chunk & MAX_RUN_LENGTH, count - covered)
            chunks.append((symbol, length))
            covered += length
            delta_bytes += symbol * length  # 0, 1 or 2 bytes per status
        pos += 2
    if pos + delta_bytes > size:
        raise ValueError(
            f"transport-cc receive deltas need {delta_bytes} bytes from byte {pos}, "
            f"the FCI has {size - pos}"
        )
    if size - pos - delta_bytes > 3:
        raise ValueError(
            f"transport-cc FCI has {size - pos - delta_bytes} bytes after its receive deltas, "
            "more than 3 bytes of padding"
        )

    reference_time = _to_signed_reference_time(word >> 8)
    origin_us = reference_time * REFERENCE_TIME_TICK_US
    received: list[tuple[int, int]] = []
    ticks = 0
    offset = 0
    for entry in chunks:
        if isinstance(entry, tuple):
            symbol, length = entry
            if symbol == STATUS_SMALL_DELTA:
                for index in range(offset, offset + length):
                    ticks += fci[pos]
                    pos += 1
                    received.append((index, origin_us + ticks * DELTA_TICK_US))
            elif symbol == STATUS_LARGE_DELTA:
                for index in range(offset, offset + length):
                    ticks += _LARGE_DELTA.unpack_from(fci, pos)[0]
                    pos += 2
                    received.append((index, origin_us + ticks * DELTA_TICK_US))
            offset += length
            continue
        for symbol in entry:
            if symbol == STATUS_SMALL_DELTA:
                ticks += fci[pos]
                pos += 1
                received.append((offset, origin_us + ticks * DELTA_TICK_US))
            elif symbol == STATUS_LARGE_DELTA:
                ticks += _LARGE_DELTA.unpack_from(fci, pos)[0]
                pos += 2
                received.append((offset, origin_us + ticks * DELTA_TICK_US))
            offset += 1
    return TransportCcReport(base, count, reference_time, word & 0xFF, received)


@dataclass
class TransportCcFeedback:
    """Transport-cc feedback FCI with one :class:`PacketResult` per reported packet.

    ``packets[i].sequence_number`` is ``(base_sequence + i) % 65536``. ``bytes()`` writes
    the FCI without trailing padding (the RTCP layer pads with the P bit) and rounds
    arrival times to 250 µs steps from ``reference_time``, without accumulating the
    rounding error.
    """

    base_sequence: int
    reference_time: int
    """Signed 24-bit, in multiples of 64 ms."""
    feedback_count: int
    packets: list[PacketResult] = field(default_factory=list)

    @classmethod
    def parse(cls, fci: bytes) -> TransportCcFeedback:
        """Parse an FCI into one :class:`PacketResult` per status: up to 65,535 objects
        from a few bytes, so for feedback the caller trusts (tests, tools); the SFU's
        estimator takes :func:`parse_transport_cc` instead."""
        report = parse_transport_cc(fci)
        arrivals = dict(report.received)
        base = report.base_sequence
        packets = []
        for index in range(report.status_count):
            arrival = arrivals.get(index)
            packets.append(PacketResult((base + index) & 0xFFFF, arrival is not None, arrival))
        return cls(
            base_sequence=base,
            reference_time=report.reference_time,
            feedback_count=report.feedback_count,
            packets=packets,
        )

    def __bytes__(self) -> bytes:
        if not 0 <= self.base_sequence <= 0xFFFF:
            raise ValueError(f"base sequence number {self.base_sequence} is not in 0..65535")
        if not REFERENCE_TIME_MIN <= self.reference_time <= REFERENCE_TIME_MAX:
            raise ValueError(f"reference time {self.reference_time} does not fit 24 bits signed")
        if not 0 <= self.feedback_count <= 0xFF:
            raise ValueError(f"feedback packet count {self.feedback_count} is not in 0..255")
        count = len(self.packets)
        if not 1 <= count <= MAX_STATUS_COUNT:
            raise ValueError(f"transport-cc feedback must report 1..65535 packets, got {count}")

        writer = _ChunkWriter()
        deltas = bytearray()
        origin_us = self.reference_time * REFERENCE_TIME_TICK_US
        previous = 0
        for index, packet in enumerate(self.packets):
            expected = (self.base_sequence + index) & 0xFFFF
            if packet.sequence_number != expected:
                raise ValueError(
                    f"packet {index} has sequence number {packet.sequence_number}, "
                    f"expected {expected}"
                )
            if packet.arrival_time_us is None:
                writer.add(STATUS_NOT_RECEIVED)
                continue
            ticks = _ticks(packet.arrival_time_us, origin_us)
            status = _delta_status(ticks - previous)
            writer.add(status)
            if status == STATUS_SMALL_DELTA:
                deltas.append(ticks - previous)
            else:
                deltas += _LARGE_DELTA.pack(ticks - previous)
            previous = ticks

        header = _FIXED.pack(
            self.base_sequence,
            count,
            ((self.reference_time & 0xFFFFFF) << 8) | self.feedback_count,
        )
        chunks = b"".join(_CHUNK.pack(chunk) for chunk in writer.finish())
        return header + chunks + bytes(deltas)


class _FeedbackBuilder:
    """One feedback packet under construction, with its exact encoded size."""

    __slots__ = (
        "base",
        "delta_bytes",
        "last_sequence",
        "origin_us",
        "previous_ticks",
        "reference_time",
        "results",
        "writer",
    )

    def __init__(self, base: int, first_arrival_us: int) -> None:
        reference = first_arrival_us // REFERENCE_TIME_TICK_US
        self.base = base
        self.reference_time = _to_signed_reference_time(reference)
        self.origin_us = reference * REFERENCE_TIME_TICK_US
        self.results: list[tuple[int, int | None]] = []
        self.writer = _ChunkWriter()
        self.delta_bytes = 0
        self.previous_ticks = 0
        self.last_sequence = base - 1

    def packet_size(self) -> int:
        size = RTCP_OVERHEAD + FIXED_SIZE + 2 * self.writer.chunk_count + self.delta_bytes
        return size + (-size % 4)

    def delta(self, arrival_us: int) -> int:
        return _ticks(arrival_us, self.origin_us) - self.previous_ticks

    def add(self, sequence_number: int, arrival_us: int) -> None:
        for lost in range(self.last_sequence + 1, sequence_number):
            self.writer.add(STATUS_NOT_RECEIVED)
            self.results.append((lost, None))
        delta = self.delta(arrival_us)
        status = _delta_status(delta)
        self.writer.add(status)
        self.delta_bytes += 1 if status == STATUS_SMALL_DELTA else 2
        self.previous_ticks += delta
        self.results.append((sequence_number, arrival_us))
        self.last_sequence = sequence_number

    def feedback(self, feedback_count: int, end: int) -> TransportCcFeedback:
        """The feedback for ``results[:end]``, arrival times shifted to the wrapped origin."""
        shift = self.origin_us - self.reference_time * REFERENCE_TIME_TICK_US
        return TransportCcFeedback(
            base_sequence=self.base & 0xFFFF,
            reference_time=self.reference_time,
            feedback_count=feedback_count & 0xFF,
            packets=[
                PacketResult(
                    sequence & 0xFFFF,
                    arrival is not None,
                    None if arrival is None else arrival - shift,
                )
                for sequence, arrival in self.results[:end]
            ],
        )


def build_feedback_packets(
    sender_ssrc: int,
    media_ssrc: int,
    received: list[tuple[int, int]],
    feedback_count_start: int,
    *,
    base_sequence: int | None = None,
    max_packet_size: int = MAX_FEEDBACK_PACKET_SIZE,
) -> list[rtcp.TransportFeedback]:
    """RTCP transport-cc packets reporting ``received`` ``(sequence_number, arrival_us)``.

    Sequence numbers are *extended* (never wrapping, strictly increasing); they are
    written modulo 2**16. Gaps between them are reported as not received, and so are the
    sequence numbers from ``base_sequence`` (when given) up to the first received one.
    Each packet's reference time is the first arrival rounded down to 64 ms (modulo
    2**24 ticks). A new packet starts when the current one would exceed
    ``max_packet_size`` bytes, when a receive delta does not fit 16 bits, when the status
    count would exceed 65535, or across a gap longer than one run length chunk
    (8191 packets; that gap is then not reported). Feedback packet counts start at
    ``feedback_count_start`` and wrap at 256.
    """
    minimum = RTCP_OVERHEAD + FIXED_SIZE + 8
    if max_packet_size < minimum:
        raise ValueError(f"max_packet_size {max_packet_size} is below {minimum} bytes")
    for (previous, _), (sequence_number, _) in itertools.pairwise(received):
        if sequence_number <= previous:
            raise ValueError(
                f"sequence number {sequence_number} follows {previous}: "
                "received packets must be strictly increasing"
            )

    finished: list[TransportCcFeedback] = []
    builder: _FeedbackBuilder | None = None
    for sequence_number, arrival_us in received:
        if builder is None:
            start = sequence_number
            if base_sequence is not None and 0 <= sequence_number - base_sequence <= MAX_RUN_LENGTH:
                start = base_sequence
            builder = _FeedbackBuilder(start, arrival_us)
            builder.add(sequence_number, arrival_us)
            continue
        gap = sequence_number - builder.last_sequence - 1
        restart = builder.last_sequence + 1 if gap <= MAX_RUN_LENGTH else sequence_number
        delta = builder.delta(arrival_us)
        fits = (
            gap <= MAX_RUN_LENGTH
            and LARGE_DELTA_MIN <= delta <= LARGE_DELTA_MAX
            and len(builder.results) + gap + 1 <= MAX_STATUS_COUNT
        )
        if fits:
            kept = len(builder.results)
            builder.add(sequence_number, arrival_us)
            if builder.packet_size() <= max_packet_size:
                continue
            finished.append(builder.feedback(feedback_count_start + len(finished), kept))
        else:
            finished.append(
                builder.feedback(feedback_count_start + len(finished), len(builder.results))
            )
        builder = _FeedbackBuilder(restart, arrival_us)
        builder.add(sequence_number, arrival_us)
    if builder is not None:
        finished.append(
            builder.feedback(feedback_count_start + len(finished), len(builder.results))
        )
    return [
        rtcp.TransportFeedback(sender_ssrc=sender_ssrc, media_ssrc=media_ssrc, fci=bytes(fb))
        for fb in finished
    ]
