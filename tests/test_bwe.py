import heapq
import random
from collections import deque

import pytest

from sfu.bwe import SendSideBandwidthEstimator, TransportCcFeedbackGenerator
from sfu.bwe.feedback_generator import MAX_TRACKED_PACKETS
from sfu.bwe.send_side import PROBE_BACKOFF_INITIAL, REMB_TIMEOUT
from sfu.rtp.rtcp import TransportFeedback, parse_rtcp
from sfu.rtp.transport_feedback import PacketResult, TransportCcFeedback, parse_transport_cc

# -- TransportCcFeedbackGenerator -------------------------------------------------------


def decode(packets: list[bytes]) -> list[TransportCcFeedback]:
    feedbacks = []
    for data in packets:
        (packet,) = parse_rtcp(data)
        assert isinstance(packet, TransportFeedback)
        assert (packet.sender_ssrc, packet.media_ssrc) == (11, 22)
        feedbacks.append(TransportCcFeedback.parse(packet.fci))
    return feedbacks


def statuses(feedbacks: list[TransportCcFeedback]) -> list[tuple[int, int | None]]:
    """``(sequence_number, arrival_us relative to the first arrival)`` in report order."""
    results = [r for f in feedbacks for r in f.packets]
    first = next(r.arrival_time_us for r in results if r.arrival_time_us is not None)
    return [
        (r.sequence_number, None if r.arrival_time_us is None else r.arrival_time_us - first)
        for r in results
    ]


def generator() -> TransportCcFeedbackGenerator:
    return TransportCcFeedbackGenerator(sender_ssrc=11, media_ssrc=22)


def test_generator_reports_loss_reordering_and_wraparound():
    gen = generator()
    # Arrival order: 65533, 65535, 65534 (reordered), 1 (0 lost), 2, 2 (duplicate).
    for seq, ms in [(65533, 0), (65535, 10), (65534, 11), (1, 20), (2, 30), (2, 31)]:
        gen.add(seq, 100.0 + ms / 1000)
    feedbacks = decode(gen.feedback(100.05))
    assert [f.feedback_count for f in feedbacks] == [0]
    assert statuses(feedbacks) == [
        (65533, 0),
        (65534, 11_000),
        (65535, 10_000),
        (0, None),
        (1, 20_000),
        (2, 30_000),
    ]
    # Nothing new: nothing to send; the count moves only with packets sent.
    assert gen.feedback(100.1) == []
    assert gen.feedback_count == 1


def test_generator_continues_where_the_last_feedback_ended():
    gen = generator()
    for seq in range(65530, 65536):
        gen.add(seq, 5.0 + seq / 1e6)
    first = decode(gen.feedback(5.1))
    for seq in (2, 3):  # 0 and 1 lost
        gen.add(seq, 5.2)
    second = decode(gen.feedback(5.25))
    assert first[0].base_sequence == 65530
    assert second[0].base_sequence == 0
    assert second[0].feedback_count == 1
    assert [(r.sequence_number, r.received) for r in second[0].packets] == [
        (0, False),
        (1, False),
        (2, True),
        (3, True),
    ]


def test_generator_re_reports_a_late_packet_as_received():
    gen = generator()
    for seq in (10, 12, 13):
        gen.add(seq, 1.0 + seq / 1000)
    assert [r.received for r in decode(gen.feedback(1.1))[0].packets] == [True, False, True, True]
    gen.add(11, 1.12)  # arrived after its loss was reported
    gen.add(14, 1.13)
    (feedback,) = decode(gen.feedback(1.2))
    assert [(r.sequence_number, r.received) for r in feedback.packets] == [
        (11, True),
        (12, True),
        (13, True),
        (14, True),
    ]


def test_generator_ignores_packets_older_than_its_history():
    gen = generator()
    for seq in range(100, 110):
        gen.add(seq, 1.0)
    gen.feedback(1.05)
    gen.feedback(3.0)  # the reported arrivals are now forgotten
    assert gen.pending == 0
    gen.add(99, 3.01)
    gen.add(110, 3.02)
    (feedback,) = decode(gen.feedback(3.1))
    assert [r.sequence_number for r in feedback.packets] == [110]


def test_generator_memory_is_bounded_without_feedback():
    gen = generator()
    for seq in range(3 * MAX_TRACKED_PACKETS):
        gen.add(seq & 0xFFFF, seq / 1000)
    assert gen.pending <= MAX_TRACKED_PACKETS
    feedbacks = decode(gen.feedback(100.0))
    reported = [r for f in feedbacks for r in f.packets]
    assert len(reported) <= MAX_TRACKED_PACKETS
    assert reported[-1].sequence_number == (3 * MAX_TRACKED_PACKETS - 1) & 0xFFFF
    assert all(r.received for r in reported)


def test_generator_round_trip_with_random_loss_and_reordering():
    rng = random.Random(7)
    gen = generator()
    sent = list(range(64_000, 64_000 + 3000))  # wraps at 65535
    lost = {seq for seq in sent if rng.random() < 0.1}
    arrivals = {seq: 10.0 + i * 0.002 + rng.uniform(0, 0.004) for i, seq in enumerate(sent)}
    order = sorted((t, seq) for seq, t in arrivals.items() if seq not in lost)
    reported: dict[int, int | None] = {}
    next_feedback = 10.05
    for t, seq in order:
        while t >= next_feedback:
            for result in (r for f in decode(gen.feedback(next_feedback)) for r in f.packets):
                if result.received or result.sequence_number not in reported:
                    reported[result.sequence_number] = result.arrival_time_us
            next_feedback += 0.05
        gen.add(seq & 0xFFFF, t)
    for result in (r for f in decode(gen.feedback(next_feedback)) for r in f.packets):
        if result.received or result.sequence_number not in reported:
            reported[result.sequence_number] = result.arrival_time_us

    expected_received = {seq & 0xFFFF for seq in sent if seq not in lost}
    assert {seq for seq, t in reported.items() if t is not None} == expected_received
    last_received = max(seq for seq in sent if seq not in lost)
    expected_lost = {seq & 0xFFFF for seq in lost if seq < last_received}
    assert {seq for seq, t in reported.items() if t is None} == expected_lost
    # Arrival times survive to within 250 µs, relative to one another.
    first = sent[0] if sent[0] not in lost else min(expected_received)
    base = reported[first & 0xFFFF]
    assert base is not None
    for seq in sent:
        if seq in lost:
            continue
        got = reported[seq & 0xFFFF]
        assert got is not None
        want = (arrivals[seq] - arrivals[first]) * 1e6
        assert abs((got - base) - want) <= 250


# -- SendSideBandwidthEstimator on a simulated link --------------------------------------


class Link:
    """A FIFO bottleneck: ``capacity`` bits/s, drop-tail at ``max_queue_delay``, random loss."""

    def __init__(self, capacity, *, propagation=0.02, max_queue_delay=0.3, loss=0.0, seed=1):
        self.capacity = capacity
        self.propagation = propagation
        self.max_queue_delay = max_queue_delay
        self.loss = loss
        self.rng = random.Random(seed)
        self.free_at = 0.0

    def transmit(self, now, size):
        """Arrival time of a packet sent at ``now``, or None if it is dropped."""
        if self.loss and self.rng.random() < self.loss:
            return None
        start = max(now, self.free_at)
        if start - now > self.max_queue_delay:
            return None
        self.free_at = start + size * 8 / self.capacity
        return self.free_at + self.propagation


class Simulation:
    """An SFU sending 30 video frames/s to one subscriber through ``link``.

    Each frame is ``min(source_bitrate, estimate) / 30`` bytes (or ``source_bitrate / 30``
    when not ``adaptive``) sent as a burst of packets of up to 1200 bytes, plus the padding
    ``wants_probe`` asks for. The receiver side is a real TransportCcFeedbackGenerator
    whose feedback (every 100 ms) is serialized, parsed back and delivered after the
    propagation delay. Time advances in 1 ms steps.
    """

    FPS = 30
    FEEDBACK_INTERVAL_MS = 100

    def __init__(self, estimator, link, source_bitrate, *, adaptive=True, probe_target=None):
        self.estimator = estimator
        self.link = link
        self.source_bitrate = source_bitrate
        self.adaptive = adaptive
        self.probe_target = probe_target
        self.generator = TransportCcFeedbackGenerator()
        self.in_flight: list[tuple[float, int, int]] = []
        self.feedback: deque[tuple[float, bytes]] = deque()
        self.sent_packets = 0
        self.ms = 0
        self.samples: list[tuple[float, int]] = []

    def _send_burst(self, now, total, is_padding=False):
        while total >= 50:
            size = min(total, 1200)
            total -= size
            seq = self.sent_packets & 0xFFFF
            self.estimator.on_packet_sent(seq, size, now, is_padding=is_padding)
            arrival = self.link.transmit(now, size)
            if arrival is not None:
                heapq.heappush(self.in_flight, (arrival, self.sent_packets, seq))
            self.sent_packets += 1
            now += 0.0001

    def run(self, seconds):
        end = self.ms + round(seconds * 1000)
        while self.ms < end:
            now = self.ms / 1000
            if self.ms % 33 == 0:
                rate = self.source_bitrate
                if self.adaptive:
                    rate = min(rate, self.estimator.estimate)
                self._send_burst(now, int(rate / 8 / self.FPS))
                if self.probe_target is not None:
                    padding = self.estimator.wants_probe(now, self.probe_target)
                    self._send_burst(now + 0.001, padding // self.FPS, is_padding=True)
            while self.in_flight and self.in_flight[0][0] <= now:
                self.generator.add(heapq.heappop(self.in_flight)[2], now)
            if self.ms % self.FEEDBACK_INTERVAL_MS == 0:
                for data in self.generator.feedback(now):
                    self.feedback.append((now + self.link.propagation, data))
            while self.feedback and self.feedback[0][0] <= now:
                for packet in parse_rtcp(self.feedback.popleft()[1]):
                    assert isinstance(packet, TransportFeedback)
                    self.estimator.on_feedback(parse_transport_cc(packet.fci), now)
            if self.ms % 100 == 0:
                self.samples.append((now, self.estimator.estimate))
            self.ms += 1

    def estimates(self, start, end=float("inf")):
        return [e for t, e in self.samples if start <= t < end]

    def first_time(self, predicate, after=0.0):
        return next((t for t, e in self.samples if t >= after and predicate(e)), None)


def test_bottleneck_converges_then_climbs_back_when_lifted():
    estimator = SendSideBandwidthEstimator(2_000_000)
    link = Link(300_000)
    sim = Simulation(estimator, link, 2_000_000, probe_target=2_500_000)
    sim.run(10)
    # 2 Mbit/s into 300 kbit/s: below 350 kbit/s within 3 s (2.7 s here), and it stays
    # there without collapsing (about 255..330 kbit/s), probes included.
    converged = sim.first_time(lambda e: e < 350_000)
    assert converged is not None
    assert converged <= 3.0
    assert min(sim.estimates(5, 10)) >= 200_000
    assert max(sim.estimates(5, 10)) < 350_000

    link.capacity = 10_000_000
    sim.run(10)
    # Probes at twice the estimate find the room: above 1.5 Mbit/s ~3.5 s after the lift.
    climbed = sim.first_time(lambda e: e > 1_500_000, after=10.0)
    assert climbed is not None
    assert climbed <= 20.0
    assert min(sim.estimates(climbed, 20)) > 1_500_000


def test_bufferbloat_is_detected_from_delay_alone():
    # An unbounded queue never drops: only the delay trend can tell (at 2.0 s here).
    estimator = SendSideBandwidthEstimator(2_000_000)
    sim = Simulation(estimator, Link(300_000, max_queue_delay=60.0), 2_000_000)
    sim.run(8)
    assert estimator.loss_fraction == 0.0
    converged = sim.first_time(lambda e: e < 350_000)
    assert converged is not None
    assert converged <= 2.5
    assert max(sim.estimates(converged, 8)) < 350_000


def test_random_loss_does_not_collapse_the_estimate():
    for seed in (1, 2, 3):
        estimator = SendSideBandwidthEstimator(1_000_000)
        link = Link(10_000_000, loss=0.05, seed=seed)
        sim = Simulation(estimator, link, 1_000_000, adaptive=False)
        sim.run(20)
        assert 0.02 < (estimator.loss_fraction or 0) < 0.1
        assert min(sim.estimates(1)) >= 700_000


def test_random_loss_with_probing_climbs():
    estimator = SendSideBandwidthEstimator(300_000)
    sim = Simulation(estimator, Link(10_000_000, loss=0.05), 1_500_000, probe_target=1_500_000)
    sim.run(10)
    assert min(sim.estimates(5)) >= 1_500_000


def test_remb_caps_the_estimate():
    estimator = SendSideBandwidthEstimator(1_000_000)
    sim = Simulation(estimator, Link(10_000_000), 2_000_000, probe_target=3_000_000)
    sim.run(6)
    assert estimator.estimate > 2_000_000
    estimator.on_remb(500_000, sim.ms / 1000)
    assert estimator.estimate == 500_000
    sim.run(2)
    assert max(sim.estimates(6.1)) == 500_000
    # Not refreshed: the cap expires and the estimate is what the feedback says again.
    sim.run(REMB_TIMEOUT)
    assert estimator.estimate > 1_000_000


# -- SendSideBandwidthEstimator units ---------------------------------------------------


def feedback_for(results: list[tuple[int, float | None]], reference_time: int = 0):
    base = results[0][0]
    feedback = TransportCcFeedback(
        base_sequence=base,
        reference_time=reference_time,
        feedback_count=0,
        packets=[
            PacketResult(seq, t is not None, None if t is None else round(t * 1e6))
            for seq, t in results
        ],
    )
    return parse_transport_cc(bytes(feedback))


def test_remb_is_the_estimate_before_any_transport_cc():
    estimator = SendSideBandwidthEstimator()
    estimator.on_remb(1_234_000, 1.0)
    assert estimator.estimate == 1_234_000
    estimator.on_remb(800_000, 2.0)
    assert estimator.estimate == 800_000


def test_receiver_report_loss_without_transport_cc():
    estimator = SendSideBandwidthEstimator(1_000_000)
    estimator.on_receiver_report(64, 0.05, 1.0)  # 25 % lost
    assert estimator.estimate == 875_000
    assert estimator.rtt == 0.05
    estimator.on_receiver_report(128, None, 1.1)  # too soon for another decrease
    assert estimator.estimate == 875_000
    estimator.on_receiver_report(13, 0.15, 2.0)  # 5 %: hold
    assert estimator.estimate == 875_000
    assert estimator.rtt == pytest.approx(0.1)
    estimator.on_receiver_report(0, None, 3.0)  # no loss: the cap rises 8 %/s
    assert estimator.estimate == 946_000


def test_feedback_loss_and_acknowledged_bitrate():
    estimator = SendSideBandwidthEstimator(1_000_000)
    for i in range(100):
        estimator.on_packet_sent((65500 + i) & 0xFFFF, 1000, i * 0.01)
    # Every 4th packet lost; arrivals 50 ms later on the receiver's clock. Loss is
    # evaluated once feedback has resolved packets for LOSS_INTERVAL.
    results = [((65500 + i) & 0xFFFF, None if i % 4 == 0 else 0.05 + i * 0.01) for i in range(100)]
    estimator.on_feedback(feedback_for(results[:50]), 0.6)
    assert estimator.loss_fraction is None
    estimator.on_feedback(feedback_for(results[50:]), 1.2)
    assert estimator.loss_fraction == pytest.approx(0.25)
    assert estimator.acknowledged_bitrate == pytest.approx(600_000, rel=0.05)
    assert estimator.estimate < 1_000_000


def test_probe_backs_off_after_failure():
    estimator = SendSideBandwidthEstimator(500_000)
    assert estimator.wants_probe(0.0, 400_000) == 0  # the estimate already covers it
    padding = estimator.wants_probe(0.0, 5_000_000)
    assert padding == 1_000_000 // 8  # twice the estimate, no media sent yet
    assert estimator.wants_probe(0.2, 5_000_000) == padding
    # Nothing was sent: the probe fails once its duration is over.
    assert estimator.wants_probe(2.0, 5_000_000) == 0
    assert estimator.wants_probe(2.0 + PROBE_BACKOFF_INITIAL - 0.01, 5_000_000) == 0
    assert estimator.wants_probe(2.0 + PROBE_BACKOFF_INITIAL, 5_000_000) > 0


def test_input_validation():
    with pytest.raises(ValueError, match="bitrates must satisfy"):
        SendSideBandwidthEstimator(10, min_bitrate=100)
    estimator = SendSideBandwidthEstimator()
    with pytest.raises(ValueError, match="does not fit in 16 bits"):
        estimator.on_packet_sent(70_000, 100, 0.0)
    with pytest.raises(ValueError, match="fraction lost 256"):
        estimator.on_receiver_report(256, None, 0.0)
    with pytest.raises(ValueError, match="RTT -1"):
        estimator.on_receiver_report(0, -1, 0.0)
    with pytest.raises(ValueError, match="negative"):
        estimator.on_remb(-5, 0.0)


def test_feedback_for_unknown_packets_is_ignored():
    estimator = SendSideBandwidthEstimator(1_000_000)
    estimator.on_feedback(feedback_for([(5, 0.1)]), 0.2)
    estimator.on_packet_sent(1, 100, 0.0)
    estimator.on_feedback(feedback_for([(9, 0.1), (10, None)]), 0.2)
    assert estimator.estimate == 1_000_000
    assert estimator.state == "hold"
    assert estimator.acknowledged_bitrate is None
