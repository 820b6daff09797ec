"""NackGenerator: which packets of a publisher's stream to NACK, and when to re-NACK.

Follows mediasoup's ``RTC::NackGenerator``: a gap in the received sequence numbers puts
the missing ones on the NACK list and they are requested at once; a periodic timer
requests them again, at most once per round-trip time and :data:`MAX_NACK_RETRIES`
times; a packet that arrives late (reordered, or retransmitted) leaves the list. The
list is bounded: when a loss burst would overflow it, entries older than the newest key
frame are given up (the decoder can restart from that key frame); when that is not
enough the list is cleared and the caller must request a key frame (PLI), because
retransmission can no longer repair the stream.

Sequence numbers are extended to unbounded integers internally, so the 16-bit wrap
needs no special case.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from sfu.rtp.seqnum import SEQUENCE_NUMBER_BITS, WrapAroundExtender, diff

MAX_PACKET_AGE = 10_000
"""Missing packets this far behind the newest one are no longer requested."""
MAX_NACK_PACKETS = 1000
"""Bound of the NACK list (several hundred ms of a lossy high-bitrate stream)."""
MAX_NACK_RETRIES = 10
"""NACKs sent for one packet before it is given up."""
DEFAULT_RTT = 0.1
"""Spacing of NACK retries, in seconds, until the caller knows the round-trip time."""
TIMER_INTERVAL = 0.04
"""How often the caller should run :meth:`NackGenerator.timer`, in seconds."""

_SEQ_MASK = (1 << SEQUENCE_NUMBER_BITS) - 1


@dataclass(frozen=True, slots=True)
class NackResult:
    """What :meth:`NackGenerator.received` asks of the caller."""

    nack: list[int] = field(default_factory=list)
    """Sequence numbers to NACK now (newly detected losses), ascending."""
    key_frame_required: bool = False
    """The NACK list overflowed and was cleared: request a key frame."""


NOTHING_TO_DO = NackResult()
"""The result of most packets (shared: callers must not modify its list)."""


@dataclass(slots=True)
class NackInfo:
    """A missing packet: when it was last NACKed and how often (it is NACKed as soon as
    it is found missing)."""

    sent_at: float
    retries: int = 1


class NackGenerator:
    """Loss detection and NACK scheduling for one received RTP stream."""

    __slots__ = ("_extender", "_key_frames", "_last", "_nack_list")

    def __init__(self) -> None:
        self._extender = WrapAroundExtender(SEQUENCE_NUMBER_BITS)
        self._last: int | None = None
        """Highest extended sequence number received (retransmissions aside)."""
        self._nack_list: dict[int, NackInfo] = {}
        """Missing packets by extended sequence number, in ascending insertion order."""
        self._key_frames: deque[int] = deque()
        """Extended sequence numbers of recent key frames' first packets, ascending."""

    @property
    def missing(self) -> list[int]:
        """Sequence numbers currently on the NACK list, oldest first."""
        return [seq & _SEQ_MASK for seq in self._nack_list]

    def received(self, seq: int, now: float, key_frame: bool = False) -> NackResult:
        """A packet of the stream arrived (media, or a retransmission on RTX).

        Returns the newly missing sequence numbers to NACK at once, and whether the
        list overflowed so that only a key frame can repair the stream.
        """
        ext = self._extender.update(seq)
        last = self._last
        if last is None:
            self._last = ext
            if key_frame:
                self._key_frames.append(ext)
            return NOTHING_TO_DO
        if ext <= last:
            self._nack_list.pop(ext, None)
            return NOTHING_TO_DO
        if key_frame:
            self._key_frames.append(ext)
        key_frames = self._key_frames
        while key_frames and key_frames[0] < ext - MAX_PACKET_AGE:
            key_frames.popleft()
        if ext == last + 1:  # in order, nothing lost: the common case
            self._last = ext
            if self._nack_list:
                self._expire(ext)
            return NOTHING_TO_DO
        added = self._add_to_nack_list(last + 1, ext, now)
        self._last = ext
        if added is None:
            return NackResult(key_frame_required=True)
        return NackResult([seq & _SEQ_MASK for seq in added])

    def awaits(self, seq: int) -> bool:
        """Whether ``seq`` is on the NACK list: a retransmission of it repairs a loss, one
        of any other packet is a duplicate (libwebrtc's payload padding: RTX copies of
        packets already sent, as bandwidth probes). Changes nothing."""
        last = self._last
        if last is None or not self._nack_list:
            return False
        return last + diff(seq, last & _SEQ_MASK, SEQUENCE_NUMBER_BITS) in self._nack_list

    def timer(self, now: float, rtt: float) -> list[int]:
        """Sequence numbers to NACK again: last NACKed at least ``rtt`` seconds ago.

        A packet NACKed :data:`MAX_NACK_RETRIES` times leaves the list.
        """
        return self._nack_batch(now, rtt if rtt > 0 else DEFAULT_RTT)

    def _add_to_nack_list(self, start: int, end: int, now: float) -> list[int] | None:
        """Put ``start`` .. ``end - 1`` on the list as NACKed now and return them; None
        when the list overflowed and was cleared."""
        nack_list = self._nack_list
        self._expire(end)
        count = end - start
        if len(nack_list) + count > MAX_NACK_PACKETS:
            while self._remove_until_key_frame() and len(nack_list) + count > MAX_NACK_PACKETS:
                pass
            if len(nack_list) + count > MAX_NACK_PACKETS:
                nack_list.clear()
                return None
        added = list(range(start, end))
        for seq in added:
            nack_list[seq] = NackInfo(now)
        return added

    def _expire(self, newest: int) -> None:
        """Forget entries more than :data:`MAX_PACKET_AGE` behind ``newest``."""
        nack_list = self._nack_list
        oldest = newest - MAX_PACKET_AGE
        while nack_list:
            first = next(iter(nack_list))
            if first >= oldest:
                break
            del nack_list[first]

    def _remove_until_key_frame(self) -> bool:
        """Give up the entries older than the oldest key frame that has any; False when
        no key frame helps."""
        nack_list = self._nack_list
        key_frames = self._key_frames
        while key_frames:
            older = [seq for seq in nack_list if seq < key_frames[0]]
            if older:
                for seq in older:
                    del nack_list[seq]
                return True
            key_frames.popleft()
        return False

    def _nack_batch(self, now: float, spacing: float) -> list[int]:
        """Entries last NACKed at least ``spacing`` seconds ago."""
        batch: list[int] = []
        given_up: list[int] = []
        for seq, info in self._nack_list.items():
            if now - info.sent_at < spacing:
                continue
            batch.append(seq & _SEQ_MASK)
            info.sent_at = now
            info.retries += 1
            if info.retries >= MAX_NACK_RETRIES:
                given_up.append(seq)
        for seq in given_up:
            del self._nack_list[seq]
        return batch
