"""RtpMunger: one continuous outgoing RTP stream out of switching simulcast layers.

A subscriber's decoder must see a single stream: sequence numbers that only have gaps
where packets were really lost, and timestamps that advance with wall time. The source
layers of a simulcast track are unrelated streams (own SSRC, random initial sequence
number and timestamp), so every time the forwarder moves to another layer the munger
computes new offsets that continue the outgoing stream where it stopped (mediasoup
``SeqManager`` + ``SimulcastConsumer``'s ``tsOffset``, LiveKit ``RTPMunger``).

Sequence numbers are extended to unbounded integers internally (through
:class:`~sfu.rtp.seqnum.WrapAroundExtender`), so wraparound of the source or of the
outgoing stream is plain arithmetic and only the final values are masked; timestamps
only ever get an offset added modulo 2**32.

Packets intentionally not forwarded (padding-only packets, temporal layers above the
target) are reported with :meth:`RtpMunger.drop`; later packets are shifted down so the
drop leaves no hole the subscriber would NACK.
"""

from __future__ import annotations

from bisect import bisect_left

from sfu.rtp.seqnum import SEQUENCE_NUMBER_BITS, TIMESTAMP_BITS, WrapAroundExtender, expire_drops

REORDER_WINDOW = 3000
"""Packets this far (in sequence numbers) behind the newest one are no longer translated.

About a second of 3 Mbit/s video: a retransmission from the publisher later than that is
useless to the subscriber, and it bounds the list of dropped sequence numbers.
"""

TRIM_STEP = 64
"""The reorder window is trimmed in steps of this many packets, not per packet."""

_SEQ_MASK = (1 << SEQUENCE_NUMBER_BITS) - 1
_TS_MASK = (1 << TIMESTAMP_BITS) - 1


class RtpMunger:
    """Rewrites sequence numbers and timestamps of the forwarded source stream.

    ``initial_sequence_number`` and ``initial_timestamp`` are the values the first
    forwarded packet gets (a consumer picks them at random, RFC 3550 §5.1).

    The munger does not look at SSRCs: the caller passes only packets of the stream it
    switched to.
    """

    __slots__ = (
        "_anchor_time",
        "_anchor_ts",
        "_clock_rate",
        "_dropped",
        "_floor",
        "_forwarded",
        "_highest_in",
        "_last_out_seq",
        "_last_out_ts",
        "_seq_ext",
        "_seq_offset",
        "_ts_offset",
    )

    def __init__(self, initial_sequence_number: int, initial_timestamp: int) -> None:
        self._last_out_seq = (initial_sequence_number & _SEQ_MASK) - 1
        self._last_out_ts = initial_timestamp & _TS_MASK
        self._forwarded = False
        self._seq_ext: WrapAroundExtender | None = None
        self._seq_offset = 0
        self._ts_offset = 0
        self._highest_in = 0
        self._floor = 0
        """Lowest extended source sequence number still translated."""
        self._dropped: list[int] = []
        """Extended source sequence numbers dropped since ``_floor``, ascending."""
        self._anchor_time = 0.0
        self._anchor_ts = 0
        """Wall time and outgoing timestamp of the last switch: the media clock from
        there dates the newest forwarded packet."""
        self._clock_rate = 90000

    @property
    def last_sequence_number(self) -> int:
        """Sequence number of the newest forwarded packet (for sender reports)."""
        return self._last_out_seq & _SEQ_MASK

    @property
    def last_timestamp(self) -> int:
        """Timestamp of the newest forwarded packet (for sender reports)."""
        return self._last_out_ts & _TS_MASK

    @property
    def timestamp_offset(self) -> int:
        """Added (mod 2**32) to a source timestamp of the current layer to get the
        outgoing one: translates the publisher's sender reports for lip sync."""
        return self._ts_offset & _TS_MASK

    def switch(self, first_seq: int, first_ts: int, now: float, clock_rate: int) -> None:
        """Start forwarding a new source stream at its packet (``first_seq``, ``first_ts``).

        That packet (a key frame's first) gets the next outgoing sequence number; its
        timestamp is the last outgoing timestamp advanced by the time since the last
        forwarded packet (at least one tick), so the subscriber's jitter buffer sees
        the pause as a pause. The time of the last forwarded packet is inferred from
        the media clock (its timestamp's distance from the previous switch), which
        avoids a clock read per packet.
        """
        self._seq_ext = WrapAroundExtender(SEQUENCE_NUMBER_BITS)
        seq = self._seq_ext.update(first_seq)
        if self._forwarded:
            last_sent_at = self._anchor_time + (
                ((self._last_out_ts - self._anchor_ts) & _TS_MASK) / self._clock_rate
            )
            elapsed_ticks = max(1, round((now - last_sent_at) * clock_rate))
            next_ts = (self._last_out_ts + elapsed_ticks) & _TS_MASK
        else:
            next_ts = self._last_out_ts
        self._seq_offset = self._last_out_seq + 1 - seq
        # Timestamps need no extension: the offset is applied modulo 2**32.
        self._ts_offset = (next_ts - first_ts) & _TS_MASK
        self._highest_in = seq - 1
        self._floor = seq
        self._dropped = []
        self._anchor_time = now
        self._anchor_ts = next_ts
        self._clock_rate = clock_rate

    def translate(self, seq: int, ts: int) -> tuple[int, int] | None:
        """The outgoing (sequence number, timestamp) of a source packet, or None to drop it.

        None for: no stream switched to yet, packets from before the switch point (they
        belong to frames before the key frame the subscriber starts from), dropped
        packets, and packets more than :data:`REORDER_WINDOW` behind.
        """
        extender = self._seq_ext
        if extender is None:
            return None
        ext_seq = extender.update(seq)
        if ext_seq < self._floor or self._highest_in - ext_seq > REORDER_WINDOW:
            return None
        dropped = self._dropped
        index = 0
        if dropped:
            index = bisect_left(dropped, ext_seq)
            if index < len(dropped) and dropped[index] == ext_seq:
                return None
        out_seq = ext_seq + self._seq_offset - index
        out_ts = (ts + self._ts_offset) & _TS_MASK
        if ext_seq > self._highest_in:
            self._highest_in = ext_seq
            self._last_out_seq = out_seq
            self._last_out_ts = out_ts
            self._forwarded = True
            if ext_seq - self._floor > REORDER_WINDOW + TRIM_STEP:
                self._trim(ext_seq)
        return out_seq & _SEQ_MASK, out_ts

    def reserve(self, count: int) -> tuple[int, int] | None:
        """Number ``count`` packets the forwarder inserts itself (padding probes) right
        after the newest forwarded packet: returns the first of their sequence numbers
        and the newest packet's timestamp, and shifts the source packets still to come
        up by ``count``. None before anything was forwarded."""
        if not self._forwarded:
            return None
        first = self._last_out_seq + 1
        self._last_out_seq += count
        self._seq_offset += count
        return first & _SEQ_MASK, self._last_out_ts

    def drop(self, seq: int) -> None:
        """A source packet is intentionally not forwarded: shift later packets down.

        Only a packet newer than every packet seen can be dropped without a trace; an
        older one (reordered) is ignored, because packets after it have already gone
        out with their numbers, and it stays a hole.
        """
        extender = self._seq_ext
        if extender is None:
            return
        ext_seq = extender.update(seq)
        if ext_seq <= self._highest_in:
            return
        self._highest_in = ext_seq
        self._dropped.append(ext_seq)
        self._trim(ext_seq)

    def _trim(self, newest: int) -> None:
        """Forget what falls out of the reorder window, folding old drops into the offset."""
        floor = newest - REORDER_WINDOW
        if floor <= self._floor:
            return
        self._floor = floor
        self._seq_offset -= expire_drops(self._dropped, floor)
