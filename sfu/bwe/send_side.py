"""Send-side bandwidth estimation towards one subscriber: a simplified Google Congestion
Control (draft-ietf-rmcat-gcc-02, libwebrtc's ``goog_cc``).

The SFU stamps a transport-wide sequence number on every packet it sends on a subscribe
transport and reports it with :meth:`SendSideBandwidthEstimator.on_packet_sent`; the
subscriber's transport-cc feedback comes back through
:meth:`SendSideBandwidthEstimator.on_feedback`. Four parts, each with its constants below:

* **Acknowledged bitrate**: bytes the subscriber received over the last
  :data:`ACKED_WINDOW` seconds of arrival time.
* **Delay-based** (libwebrtc's ``InterArrival`` + ``TrendlineEstimator`` +
  ``AimdRateControl``): packets sent within :data:`GROUP_SPAN` of each other form a group;
  for consecutive groups, the inter-arrival minus the inter-departure time is the one-way
  delay variation. Its running sum, smoothed, is fitted by least squares over the last
  :data:`TRENDLINE_WINDOW` groups; the slope, scaled, is compared with an adaptive
  threshold. Over it for more than :data:`OVERUSE_TIME` (and still rising): *overuse*,
  and the estimate drops to :data:`DECREASE_FACTOR` x the acknowledged bitrate. Under
  minus the threshold: *underuse*, the estimate holds while queues drain. Otherwise it
  increases: by :data:`MULTIPLICATIVE_INCREASE` per second far from the last known link
  capacity, by about one packet per response time near it, and never above
  :data:`ACKED_HEADROOM` x the acknowledged bitrate + :data:`ACKED_HEADROOM_OFFSET`
  (the sender has to actually send more, or probe, to learn that more fits).
* **Loss-based** (libwebrtc's legacy ``SendSideBandwidthEstimation``): every
  :data:`LOSS_INTERVAL` the loss fraction of the packets the feedback resolved (or the
  receiver report's fraction when there is no transport-cc feedback) either caps the
  estimate at ``estimate x (1 - 0.5 x loss)`` above :data:`LOSS_HIGH`, holds that cap
  between :data:`LOSS_LOW` and :data:`LOSS_HIGH`, or raises it by 8 %/s below
  :data:`LOSS_LOW` until it no longer limits anything. Random loss under 10 % never
  lowers the estimate.
* **Probing**: :meth:`SendSideBandwidthEstimator.wants_probe` tells the sender how much
  padding to add so that media + padding reach ``min(target, PROBE_MULTIPLIER x
  estimate)`` for :data:`PROBE_DURATION`. When the feedback shows the subscriber
  received that cluster at (nearly) the rate it was sent, without a decrease meanwhile,
  the estimate jumps to the measured rate and the next probe may start at once;
  otherwise the next probe waits :data:`PROBE_BACKOFF_INITIAL`, doubling per failure up
  to :data:`PROBE_BACKOFF_MAX`. No probe within :data:`PROBE_QUIET_AFTER_DECREASE` of a
  decrease, nor while a fresh REMB is what limits the estimate.

REMB, when fresh (:data:`REMB_TIMEOUT`), caps the estimate; before any transport-cc
feedback it *is* the estimate. Times are seconds on the caller's clock; arrival times in
feedback are on the subscriber's clock and only their differences are used.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Literal

from sfu.rtp.seqnum import SEQUENCE_NUMBER_BITS, WrapAroundExtender
from sfu.rtp.transport_feedback import (
    REFERENCE_TIME_BITS,
    REFERENCE_TIME_TICK_US,
    TransportCcReport,
)

RateControlState = Literal["increase", "hold", "decrease"]

DEFAULT_INITIAL_BITRATE = 600_000
"""bits/s before any feedback (mediasoup's initialAvailableOutgoingBitrate)."""
DEFAULT_MIN_BITRATE = 30_000
DEFAULT_MAX_BITRATE = 30_000_000

SEND_HISTORY_PACKETS = 4096
"""Sent packets remembered for their feedback (seconds of video even at several Mbit/s;
feedback comes every 100 ms or so): a ring indexed by transport sequence number, which
costs no trimming. A power of two."""
_HISTORY_MASK = SEND_HISTORY_PACKETS - 1
_SEQUENCE_MASK = (1 << SEQUENCE_NUMBER_BITS) - 1
_SEQUENCE_HALF = 1 << (SEQUENCE_NUMBER_BITS - 1)
SEND_RATE_WINDOW = 0.5
"""Window (seconds of send time) of the media send rate the probe padding tops up."""

ACKED_WINDOW = 0.5
"""Window (seconds of arrival time) of the acknowledged bitrate."""
ACKED_MIN_WINDOW = 0.1
"""No acknowledged bitrate before this much arrival time has been seen."""

GROUP_SPAN = 0.005
"""Packets sent within 5 ms of a group's first packet belong to that group."""
TRENDLINE_WINDOW = 20
"""Groups in the delay trend's least-squares fit."""
TRENDLINE_MIN_GROUPS = 5
"""The fit starts with this many groups (libwebrtc waits for a full window; a drop-tail
queue can fill up before 20 video frames have gone by)."""
TRENDLINE_SMOOTHING = 0.9
"""Exponential smoothing of the accumulated delay before the fit."""
TRENDLINE_GAIN = 4.0
"""Scale of the slope before comparing it with the threshold (libwebrtc's value)."""
TRENDLINE_MAX_DELTAS = 60
"""The slope is also multiplied by the number of deltas seen, up to this many."""
THRESHOLD_INITIAL = 12.5
THRESHOLD_MIN = 6.0
THRESHOLD_MAX = 600.0
THRESHOLD_K_UP = 0.0087
"""Threshold adaptation speed (per ms) when the scaled trend is above it..."""
THRESHOLD_K_DOWN = 0.039
"""...and below it: the threshold follows the trend down faster than up."""
THRESHOLD_MAX_JUMP = 15.0
"""Trends further than this above the threshold do not move it (sudden spikes)."""
OVERUSE_TIME = 0.010
"""Seconds of send time the trend must stay over the threshold to signal overuse."""

DECREASE_FACTOR = 0.85
"""On overuse the estimate becomes this fraction of the acknowledged bitrate."""
MULTIPLICATIVE_INCREASE = 0.08
"""Relative increase per second far from convergence."""
MIN_INCREASE = 1_000
"""bits/s added at least per increase step."""
ADDITIVE_MIN_INCREASE = 4_000
"""bits/s per second at least near convergence."""
AVERAGE_PACKET_BITS = 1_200 * 8
"""Near convergence the estimate grows by about one such packet per response time."""
RESPONSE_TIME_OFFSET = 0.1
"""Response time = RTT + this, in seconds."""
DEFAULT_RTT = 0.1
ACKED_HEADROOM = 1.5
"""The delay-based estimate never increases above this x the acknowledged bitrate..."""
ACKED_HEADROOM_OFFSET = 10_000
"""...plus this many bits/s."""
CAPACITY_SMOOTHING = 0.05
"""EWMA weight of an acknowledged-bitrate sample taken at overuse (the link capacity)."""
CAPACITY_MIN_DEVIATION = 0.05
"""Relative deviation floor of the link capacity: within 3 deviations is "near"."""
REDUCE_FURTHER_MIN = 0.010
REDUCE_FURTHER_MAX = 0.200
"""Under persistent overuse, decrease again after RTT clamped to these bounds."""

LOSS_INTERVAL = 0.5
"""Seconds between loss-based updates (needs at least :data:`LOSS_MIN_PACKETS`)."""
LOSS_MIN_PACKETS = 20
LOSS_LOW = 0.02
LOSS_HIGH = 0.10
LOSS_ACKED_FLOOR = DECREASE_FACTOR
"""A loss decrease never goes below this x the acknowledged bitrate: when the sender
sends far more than the estimate, loss says little about what the link carries."""
LOSS_DECREASE_INTERVAL = 0.3
"""Loss decreases at most once per this + RTT seconds."""
TRANSPORT_CC_TIMEOUT = 2.0
"""Receiver-report loss is used only when no transport-cc feedback came for this long."""
REMB_TIMEOUT = 5.0
"""Seconds a REMB value keeps capping the estimate."""
RTT_SMOOTHING = 0.5

PROBE_MULTIPLIER = 2.0
"""A probe aims at most at this x the current estimate."""
PROBE_DURATION = 0.5
PROBE_TIMEOUT = 1.0
"""Seconds after a probe's end its result may still wait for feedback."""
PROBE_MIN_PACKETS = 5
PROBE_SUCCESS_RATIO = 0.9
"""A probe succeeds when received at least at this fraction of the rate it was sent."""
PROBE_BACKOFF_INITIAL = 1.0
PROBE_BACKOFF_MAX = 4.0
PROBE_QUIET_AFTER_DECREASE = 1.0

_OVERUSE = "overuse"
_UNDERUSE = "underuse"
_NORMAL = "normal"

_PENDING = 0
_LOST = 1
_RECEIVED = 2


def _first(item: tuple[int, _SentPacket, float]) -> int:
    return item[0]


@dataclass(slots=True)
class _SentPacket:
    sequence: int
    """Extended transport sequence number (tells a ring slot's packet from an older one)."""
    size: int
    send_time: float
    probe_id: int | None
    state: int = _PENDING


@dataclass(slots=True)
class _Probe:
    probe_id: int
    bitrate: int
    start: float
    end: float
    sent_packets: int = 0
    sent_bytes: int = 0
    first_send: float = 0.0
    last_send: float = 0.0
    last_send_size: int = 0
    resolved: int = 0
    received: int = 0
    received_bytes: int = 0
    first_arrival: float = math.inf
    first_arrival_size: int = 0
    last_arrival: float = -math.inf


@dataclass(slots=True)
class _Group:
    first_send: float
    last_send: float
    last_arrival: float


class _TrendlineDetector:
    """One-way delay gradient over packet groups, trendline fit and adaptive threshold."""

    __slots__ = (
        "_accumulated",
        "_current",
        "_first_arrival",
        "_history",
        "_num_deltas",
        "_over_count",
        "_over_time",
        "_previous",
        "_previous_slope",
        "_smoothed",
        "_threshold_updated",
        "signal",
        "threshold",
    )

    def __init__(self) -> None:
        self._current: _Group | None = None
        self._previous: _Group | None = None
        self._first_arrival: float | None = None
        self._accumulated = 0.0
        self._smoothed = 0.0
        self._num_deltas = 0
        self._history: deque[tuple[float, float]] = deque(maxlen=TRENDLINE_WINDOW)
        self._previous_slope = 0.0
        self._over_time = -1.0
        self._over_count = 0
        self._threshold_updated: float | None = None
        self.threshold = THRESHOLD_INITIAL
        self.signal = _NORMAL

    def add(self, received: list[tuple[int, _SentPacket, float]]) -> bool:
        """Feed the packets one feedback reported received, as (sequence, packet,
        arrival) in send order; True when one of them completed an overuse. Packets
        sent within :data:`GROUP_SPAN` of a group's first form one group; each group
        completed by the next one updates the trendline."""
        overuse = False
        current = self._current
        for _, packet, arrival in received:
            send_time = packet.send_time
            if current is None:
                current = self._current = _Group(send_time, send_time, arrival)
                continue
            if send_time - current.first_send <= GROUP_SPAN:
                if send_time > current.last_send:
                    current.last_send = send_time
                if arrival > current.last_arrival:
                    current.last_arrival = arrival
                continue
            previous = self._previous
            self._previous = current
            self._current = _Group(send_time, send_time, arrival)
            if previous is not None and self._update(
                current.last_send - previous.last_send,
                current.last_arrival - previous.last_arrival,
                current.last_arrival,
            ):
                overuse = True
            current = self._current
        return overuse

    def _update(self, send_delta: float, arrival_delta: float, arrival: float) -> bool:
        if self._first_arrival is None:
            self._first_arrival = arrival
        self._num_deltas = min(self._num_deltas + 1, TRENDLINE_MAX_DELTAS)
        self._accumulated += (arrival_delta - send_delta) * 1000.0
        self._smoothed = (
            TRENDLINE_SMOOTHING * self._smoothed + (1 - TRENDLINE_SMOOTHING) * self._accumulated
        )
        self._history.append(((arrival - self._first_arrival) * 1000.0, self._smoothed))
        slope = self._previous_slope
        if len(self._history) >= TRENDLINE_MIN_GROUPS:
            fitted = _linear_fit_slope(self._history)
            if fitted is not None:
                slope = fitted
        return self._detect(slope, send_delta * 1000.0, arrival * 1000.0)

    def _detect(self, slope: float, send_delta_ms: float, now_ms: float) -> bool:
        trend = self._num_deltas * slope * TRENDLINE_GAIN
        overuse = False
        if trend > self.threshold:
            if self._over_time < 0:
                self._over_time = send_delta_ms / 2
            else:
                self._over_time += send_delta_ms
            self._over_count += 1
            if (
                self._over_time > OVERUSE_TIME * 1000.0
                and self._over_count > 1
                and slope >= self._previous_slope
            ):
                self._over_time = 0.0
                self._over_count = 0
                self.signal = _OVERUSE
                overuse = True
        elif trend < -self.threshold:
            self._over_time = -1.0
            self._over_count = 0
            self.signal = _UNDERUSE
        else:
            self._over_time = -1.0
            self._over_count = 0
            self.signal = _NORMAL
        self._previous_slope = slope
        self._adapt_threshold(trend, now_ms)
        return overuse

    def _adapt_threshold(self, trend: float, now_ms: float) -> None:
        last = self._threshold_updated
        self._threshold_updated = now_ms
        if last is None or abs(trend) > self.threshold + THRESHOLD_MAX_JUMP:
            return
        k = THRESHOLD_K_DOWN if abs(trend) < self.threshold else THRESHOLD_K_UP
        elapsed = min(max(now_ms - last, 0.0), 100.0)
        self.threshold += k * (abs(trend) - self.threshold) * elapsed
        self.threshold = min(max(self.threshold, THRESHOLD_MIN), THRESHOLD_MAX)


def _linear_fit_slope(points: deque[tuple[float, float]]) -> float | None:
    """Least-squares slope of ``points`` in one pass (runs once per packet group and
    subscriber); x is taken relative to the first point, so the sums stay small."""
    origin = points[0][0]
    sum_x = sum_y = sum_xx = sum_xy = 0.0
    for x, y in points:
        x -= origin
        sum_x += x
        sum_y += y
        sum_xx += x * x
        sum_xy += x * y
    count = len(points)
    denominator = count * sum_xx - sum_x * sum_x
    return (count * sum_xy - sum_x * sum_y) / denominator if denominator else None


class SendSideBandwidthEstimator:
    """Available bitrate towards one subscriber, from its RTCP feedback (see the module)."""

    def __init__(
        self,
        initial_bitrate: int = DEFAULT_INITIAL_BITRATE,
        *,
        min_bitrate: int = DEFAULT_MIN_BITRATE,
        max_bitrate: int = DEFAULT_MAX_BITRATE,
    ) -> None:
        if not 0 < min_bitrate <= initial_bitrate <= max_bitrate:
            raise ValueError(
                f"bitrates must satisfy 0 < min {min_bitrate} <= initial {initial_bitrate} "
                f"<= max {max_bitrate}"
            )
        self._min_bitrate = min_bitrate
        self._max_bitrate = max_bitrate
        self._now = -math.inf

        self._sequence_extender = WrapAroundExtender(SEQUENCE_NUMBER_BITS)
        self._reference_extender = WrapAroundExtender(REFERENCE_TIME_BITS)
        self._sent: list[_SentPacket | None] = [None] * SEND_HISTORY_PACKETS
        self._reported_through = -1
        """The highest extended sequence number a feedback has covered so far."""
        self._media_sent: deque[tuple[float, int]] = deque()
        self._media_sent_bytes = 0

        self._acked: deque[tuple[float, int]] = deque()
        self._acked_bytes = 0
        self._first_arrival: float | None = None
        self._latest_arrival = -math.inf

        self._detector = _TrendlineDetector()
        self._delay_based = float(initial_bitrate)
        self._state: RateControlState = "hold"
        self._last_change: float | None = None
        self._last_decrease: float | None = None
        self._link_capacity: float | None = None
        self._link_deviation = 0.0
        self._last_feedback: float | None = None

        self._loss_cap: float | None = None
        self._loss_window_start: float | None = None
        self._loss_lost = 0
        self._loss_total = 0
        self._last_loss_update: float | None = None
        self._last_loss_decrease: float | None = None
        self._loss_fraction: float | None = None

        self._rtt: float | None = None
        self._remb: int | None = None
        self._remb_time = -math.inf

        self._probe: _Probe | None = None
        self._next_probe_id = 0
        self._probe_backoff = 0.0
        self._probe_not_before = -math.inf

    # -- results ------------------------------------------------------------------------

    @property
    def estimate(self) -> int:
        """Available bitrate in bits/s: delay-based, capped by loss and a fresh REMB."""
        value = self._delay_based
        if self._loss_cap is not None:
            value = min(value, self._loss_cap)
        if self._remb is not None and self._now - self._remb_time <= REMB_TIMEOUT:
            value = min(value, self._remb)
        return int(min(max(value, self._min_bitrate), self._max_bitrate))

    @property
    def state(self) -> RateControlState:
        """The rate controller's state after the last feedback."""
        return self._state

    @property
    def acknowledged_bitrate(self) -> int | None:
        """bits/s the subscriber received recently, per transport-cc feedback."""
        rate = self._acked_bitrate()
        return None if rate is None else int(rate)

    @property
    def loss_fraction(self) -> float | None:
        """The loss fraction of the last loss-based update."""
        return self._loss_fraction

    @property
    def rtt(self) -> float | None:
        """Smoothed round-trip time in seconds, from receiver reports."""
        return self._rtt

    # -- inputs -------------------------------------------------------------------------

    def on_packet_sent(
        self, transport_sequence_number: int, size: int, now: float, *, is_padding: bool = False
    ) -> None:
        """Record a packet stamped with a 16-bit transport sequence number, ``size`` bytes
        on the wire. ``is_padding`` marks probe padding (not counted as media)."""
        self._now = now
        extended = self._sequence_extender.update(transport_sequence_number)
        probe = self._probe
        probe_id = None
        if probe is not None and probe.start <= now < probe.end:
            probe_id = probe.probe_id
            if probe.sent_packets == 0:
                probe.first_send = now
            probe.sent_packets += 1
            probe.sent_bytes += size
            probe.last_send = now
            probe.last_send_size = size
        # This runs for every packet to every subscriber: the history is a ring, and the
        # media send rate is expired where it is read.
        self._sent[extended & _HISTORY_MASK] = _SentPacket(extended, size, now, probe_id)
        if not is_padding:
            self._media_sent.append((now, size))
            self._media_sent_bytes += size

    def on_feedback(self, feedback: TransportCcReport, now: float) -> None:
        """Process one transport-cc feedback received at ``now``.

        It costs time in proportion to what was sent, not to what the feedback claims:
        its received packets are bounded by its size (:class:`TransportCcReport`), and
        its losses are applied only to packets in the send history that no earlier
        feedback covered (above :attr:`_reported_through`), so however many feedback
        packets declare the whole history lost, each sent packet is visited once. A
        loss reported out of order, behind a later feedback, is not counted (libwebrtc
        reports each packet once, in order)."""
        self._now = now
        self._last_feedback = now
        reference = self._reference_extender.update(feedback.reference_time & 0xFFFFFF)
        offset_us = (reference - feedback.reference_time) * REFERENCE_TIME_TICK_US
        highest = self._sequence_extender.highest
        if highest is None:
            return
        delta = (feedback.base_sequence - highest) & _SEQUENCE_MASK  # seqnum.diff
        if delta >= _SEQUENCE_HALF:
            delta -= _SEQUENCE_MASK + 1
        base = highest + delta
        received: list[tuple[int, _SentPacket, float]] = []
        sent = self._sent
        probe = self._probe
        probe_id = probe.probe_id if probe is not None else None
        resolved = probe_resolved = 0
        # Per reported packet (every packet to every subscriber): calls inlined, counts
        # applied after the loops.
        for offset, arrival_us in feedback.received:
            extended = base + offset
            packet = sent[extended & _HISTORY_MASK]
            if packet is None or packet.sequence != extended:
                continue
            state = packet.state
            if state == _RECEIVED:
                continue
            packet.state = _RECEIVED
            received.append((extended, packet, (arrival_us + offset_us) / 1_000_000))
            if state == _LOST:  # reported lost before, resolved then
                self._loss_lost = max(self._loss_lost - 1, 0)
                continue
            resolved += 1
            if packet.probe_id is not None and packet.probe_id == probe_id:
                probe_resolved += 1
        first = max(base, self._reported_through + 1, highest - SEND_HISTORY_PACKETS + 1)
        last = min(base + feedback.status_count - 1, highest)
        lost = 0
        for extended in range(first, last + 1):
            packet = sent[extended & _HISTORY_MASK]
            if packet is None or packet.sequence != extended or packet.state != _PENDING:
                continue  # received (above), or resolved by an earlier feedback
            packet.state = _LOST
            lost += 1
            if packet.probe_id is not None and packet.probe_id == probe_id:
                probe_resolved += 1
        if last > self._reported_through:
            self._reported_through = last
        self._loss_lost += lost
        resolved += lost
        received.sort(key=_first)
        if resolved:
            if self._loss_window_start is None:
                self._loss_window_start = now
            self._loss_total += resolved
            if probe is not None:
                probe.resolved += probe_resolved

        probing = probe is not None
        acked = self._acked
        latest = self._latest_arrival
        for _, packet, arrival in received:
            acked.append((arrival, packet.size))
            self._acked_bytes += packet.size
            if arrival > latest:
                latest = arrival
            if probing:
                self._add_to_probe(packet, arrival)
        if received:
            overuse = self._detector.add(received)
            self._slide_acked_window(received[0][2], latest)
            self._update_delay_based(_OVERUSE if overuse else self._detector.signal, now)
        self._maybe_update_loss(now)
        self._maybe_finish_probe(now)

    def on_remb(self, bitrate: int, now: float) -> None:
        """A REMB from the subscriber: caps the estimate for :data:`REMB_TIMEOUT`."""
        if bitrate < 0:
            raise ValueError(f"REMB bitrate {bitrate} is negative")
        self._now = now
        self._remb = bitrate
        self._remb_time = now
        if self._last_feedback is None:
            self._delay_based = float(min(max(bitrate, self._min_bitrate), self._max_bitrate))

    def on_receiver_report(self, fraction_lost: int, rtt: float | None, now: float) -> None:
        """A report block: RFC 3550 8-bit ``fraction_lost``, RTT in seconds if known."""
        if not 0 <= fraction_lost <= 255:
            raise ValueError(f"fraction lost {fraction_lost} is not in 0..255")
        if rtt is not None and rtt < 0:
            raise ValueError(f"RTT {rtt} is negative")
        self._now = now
        if rtt is not None:
            self._rtt = (
                rtt
                if self._rtt is None
                else (RTT_SMOOTHING * self._rtt + (1 - RTT_SMOOTHING) * rtt)
            )
        if self._last_feedback is None or now - self._last_feedback > TRANSPORT_CC_TIMEOUT:
            self._apply_loss(fraction_lost / 256, now)

    def wants_probe(self, now: float, target: int) -> int:
        """Padding in bytes/s to send now to learn whether ``target`` bits/s fits; 0 if none.

        Call it periodically (every frame or pacing interval) while the sender would use
        ``target`` if the estimate allowed it; mark the padding with ``is_padding``.
        """
        self._now = now
        self._maybe_finish_probe(now)
        probe = self._probe
        if probe is None:
            estimate = self.estimate
            if target <= estimate or now < self._probe_not_before or self._remb_limits():
                return 0
            if (
                self._last_decrease is not None
                and now - self._last_decrease < PROBE_QUIET_AFTER_DECREASE
            ):
                return 0
            bitrate = min(target, int(estimate * PROBE_MULTIPLIER), self._max_bitrate)
            if bitrate <= estimate:
                return 0
            probe = _Probe(self._next_probe_id, bitrate, now, now + PROBE_DURATION)
            self._next_probe_id += 1
            self._probe = probe
        elif now >= probe.end:
            return 0
        self._expire_media_sent(now)
        media_bitrate = self._media_sent_bytes * 8 / SEND_RATE_WINDOW
        return max(int((probe.bitrate - media_bitrate) / 8), 0)

    # -- internals ----------------------------------------------------------------------

    def _remb_limits(self) -> bool:
        """True while a fresh REMB is what holds the estimate down (probing is pointless)."""
        remb = self._remb
        return (
            remb is not None
            and self._now - self._remb_time <= REMB_TIMEOUT
            and remb <= min(self._delay_based, self._loss_cap or math.inf)
        )

    def _expire_media_sent(self, now: float) -> None:
        media_sent = self._media_sent
        while media_sent and media_sent[0][0] <= now - SEND_RATE_WINDOW:
            self._media_sent_bytes -= media_sent.popleft()[1]

    def _slide_acked_window(self, first: float, latest: float) -> None:
        """Packets arrived up to ``latest`` (the first of them, in send order, at
        ``first``) were appended to the acknowledged window: slide it."""
        if self._first_arrival is None:
            self._first_arrival = first
        self._latest_arrival = latest
        acked = self._acked
        while acked and acked[0][0] <= latest - ACKED_WINDOW:
            self._acked_bytes -= acked.popleft()[1]

    def _acked_bitrate(self) -> float | None:
        if self._first_arrival is None:
            return None
        span = self._latest_arrival - self._first_arrival
        if span < ACKED_MIN_WINDOW:
            return None
        return self._acked_bytes * 8 / min(span, ACKED_WINDOW)

    def _add_to_probe(self, packet: _SentPacket, arrival: float) -> None:
        probe = self._probe
        if probe is None or packet.probe_id != probe.probe_id:
            return
        probe.received += 1
        probe.received_bytes += packet.size
        if arrival < probe.first_arrival:
            probe.first_arrival = arrival
            probe.first_arrival_size = packet.size
        probe.last_arrival = max(probe.last_arrival, arrival)

    def _update_delay_based(self, signal: str, now: float) -> None:
        acked = self._acked_bitrate()
        if signal == _OVERUSE:
            if self._state != "decrease" or self._time_to_reduce_further(now, acked):
                self._decrease(acked, now)
            return
        if signal == _UNDERUSE:
            self._state = "hold"
            self._last_change = now
            return
        if self._state != "increase":
            self._state = "increase"
            self._last_change = now
            return
        self._increase(acked, now)

    def _time_to_reduce_further(self, now: float, acked: float | None) -> bool:
        rtt = self._rtt if self._rtt is not None else DEFAULT_RTT
        interval = min(max(rtt, REDUCE_FURTHER_MIN), REDUCE_FURTHER_MAX)
        if self._last_change is None or now - self._last_change >= interval:
            return True
        return acked is not None and acked < 0.5 * self._delay_based

    def _decrease(self, acked: float | None, now: float) -> None:
        base = acked if acked is not None else self._delay_based
        self._delay_based = max(min(DECREASE_FACTOR * base, self._delay_based), self._min_bitrate)
        if acked is not None:
            self._update_link_capacity(acked)
        self._state = "decrease"
        self._last_change = now
        self._last_decrease = now

    def _update_link_capacity(self, sample: float) -> None:
        capacity = self._link_capacity
        if capacity is None:
            self._link_capacity = sample
            self._link_deviation = 0.0
            return
        error = (sample - capacity) / capacity
        self._link_capacity = (1 - CAPACITY_SMOOTHING) * capacity + CAPACITY_SMOOTHING * sample
        self._link_deviation = math.sqrt(
            (1 - CAPACITY_SMOOTHING) * self._link_deviation**2 + CAPACITY_SMOOTHING * error**2
        )

    def _increase(self, acked: float | None, now: float) -> None:
        elapsed = min(now - self._last_change, 1.0) if self._last_change is not None else 0.0
        self._last_change = now
        current = self._delay_based
        capacity = self._link_capacity
        near = False
        if capacity is not None:
            spread = 3 * max(self._link_deviation, CAPACITY_MIN_DEVIATION) * capacity
            if current > capacity + spread:
                self._link_capacity = None
            near = abs(current - capacity) <= spread
        if near:
            rtt = self._rtt if self._rtt is not None else DEFAULT_RTT
            per_second = max(
                AVERAGE_PACKET_BITS / (rtt + RESPONSE_TIME_OFFSET), ADDITIVE_MIN_INCREASE
            )
            increased = current + per_second * elapsed
        else:
            increased = current + max(
                current * ((1 + MULTIPLICATIVE_INCREASE) ** elapsed - 1), MIN_INCREASE
            )
        if acked is not None:
            increased = min(increased, max(ACKED_HEADROOM * acked + ACKED_HEADROOM_OFFSET, current))
        self._delay_based = min(increased, self._max_bitrate)

    def _maybe_update_loss(self, now: float) -> None:
        start = self._loss_window_start
        if start is None or now - start < LOSS_INTERVAL or self._loss_total < LOSS_MIN_PACKETS:
            return
        loss = self._loss_lost / self._loss_total
        self._loss_lost = 0
        self._loss_total = 0
        self._loss_window_start = None
        self._apply_loss(loss, now)

    def _apply_loss(self, loss: float, now: float) -> None:
        self._loss_fraction = loss
        last_update = self._last_loss_update
        self._last_loss_update = now
        if loss > LOSS_HIGH:
            rtt = self._rtt if self._rtt is not None else DEFAULT_RTT
            last = self._last_loss_decrease
            if last is None or now - last >= LOSS_DECREASE_INTERVAL + rtt:
                cap = self.estimate * (1 - 0.5 * loss)
                acked = self._acked_bitrate()
                if acked is not None:
                    cap = max(cap, min(LOSS_ACKED_FLOOR * acked, self.estimate))
                self._loss_cap = max(cap, self._min_bitrate)
                self._last_loss_decrease = now
                self._last_decrease = now
        elif loss < LOSS_LOW and self._loss_cap is not None:
            elapsed = min(now - last_update, 1.0) if last_update is not None else 0.0
            cap = self._loss_cap * (1 + MULTIPLICATIVE_INCREASE) ** elapsed + MIN_INCREASE
            self._loss_cap = None if cap >= self._delay_based else cap

    def _maybe_finish_probe(self, now: float) -> None:
        probe = self._probe
        if probe is None or now < probe.end:
            return
        complete = probe.resolved >= probe.sent_packets
        if not complete and now < probe.end + PROBE_TIMEOUT:
            return
        self._probe = None
        success = False
        if (
            probe.sent_packets >= PROBE_MIN_PACKETS
            and probe.received >= PROBE_MIN_PACKETS
            and probe.last_send > probe.first_send
            and probe.last_arrival > probe.first_arrival
            and (self._last_decrease is None or self._last_decrease < probe.start)
        ):
            send_rate = (
                (probe.sent_bytes - probe.last_send_size) * 8 / (probe.last_send - probe.first_send)
            )
            receive_rate = (
                (probe.received_bytes - probe.first_arrival_size)
                * 8
                / (probe.last_arrival - probe.first_arrival)
            )
            if receive_rate >= PROBE_SUCCESS_RATIO * send_rate:
                success = True
                rate = min(send_rate, receive_rate, self._max_bitrate)
                if rate > self._delay_based:
                    self._delay_based = rate
                    self._link_capacity = None
                if self._loss_cap is not None and rate > self._loss_cap:
                    self._loss_cap = None
        if success:
            self._probe_backoff = 0.0
            self._probe_not_before = now
        else:
            self._probe_backoff = min(
                max(self._probe_backoff * 2, PROBE_BACKOFF_INITIAL), PROBE_BACKOFF_MAX
            )
            self._probe_not_before = now + self._probe_backoff
