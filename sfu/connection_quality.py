"""ConnectionQuality: a score per participant (excellent, good, poor), sans I/O.

Every :data:`QUALITY_INTERVAL` the room hands :class:`ConnectionQualityTracker` one
:class:`ParticipantSample` per participant (cumulative counters read off its objects,
``now`` passed in) and gets back the scores that changed. A participant's score is the
worse of its two directions:

- what it publishes: packet loss over the interval on each stream the SFU receives
  from it (RFC 3550 expected minus received; Opus DTX sends few packets but leaves no
  sequence gap, so silence is no loss) and their interarrival jitter;
- what it receives: the fraction lost its receiver reports give for each forwarded
  stream, less the loss the SFU itself saw upstream on the stream it forwards (a
  publisher's bad link is the publisher's score, not every subscriber's), the
  round-trip time, and how many spatial layers the forwarded video is below the one
  its preferences ask for (the subscriber's bandwidth holds it down).

A worse score is taken at once; a better one after :data:`UPGRADE_INTERVALS` intervals
in a row, so a score does not flap (LiveKit's connection quality, simplified to its
thresholds).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import IntEnum

from sfu.protocol import ConnectionQualityLabel

QUALITY_INTERVAL = 2.0
"""Seconds between two scores (every 40th worker tick)."""
UPGRADE_INTERVALS = 2
"""Intervals in a row a better score must hold before it is taken."""
EXCELLENT_MAX_LOSS = 0.02
POOR_MIN_LOSS = 0.10
EXCELLENT_MAX_RTT = 0.3
POOR_MIN_RTT = 0.6
EXCELLENT_MAX_JITTER = 0.05
POOR_MIN_JITTER = 0.15
"""Seconds of interarrival jitter."""
POOR_MIN_LAYER_DEFICIT = 2
"""Spatial layers below the wanted one that make a subscriber's score poor (one is good)."""
LAYER_RAMP_UP = 10.0
"""Seconds after a consumer started forwarding during which its layer deficit does not
count: the allocator starts every track low and climbs (up needs two seconds of
headroom per step)."""
MIN_EXPECTED_PACKETS = 10
"""Packets a received stream must have been expected to carry in an interval for its
loss to count (a DTX audio stream sends about five in two seconds)."""


class Quality(IntEnum):
    """Ordered: a higher value is better."""

    POOR = 0
    GOOD = 1
    EXCELLENT = 2

    @property
    def label(self) -> ConnectionQualityLabel:
        """The protocol's and the metric's name of it."""
        return _LABELS[self]


_LABELS: dict[Quality, ConnectionQualityLabel] = {
    Quality.POOR: "poor",
    Quality.GOOD: "good",
    Quality.EXCELLENT: "excellent",
}
QUALITY_LABELS: tuple[ConnectionQualityLabel, ...] = ("excellent", "good", "poor")
"""Every label, for the metric's series."""


@dataclass(frozen=True, slots=True)
class ReceivedStream:
    """A stream the SFU receives from the participant: cumulative counters."""

    key: int
    """Unique among the room's received streams (its SSRC)."""
    expected: int
    received: int
    jitter: float
    """Seconds (RFC 3550 A.8)."""


@dataclass(frozen=True, slots=True)
class SentStream:
    """A stream the SFU forwards to the participant."""

    fraction_lost: float
    """0..1, from the participant's latest receiver report on it."""
    source_key: int | None
    """The :attr:`ReceivedStream.key` it forwards, when known."""
    layer_deficit: int = 0
    """Spatial layers below the one the participant's preferences want (video)."""
    forwarding_since: float = 0.0
    """When the consumer forwarded its first packet (the layer deficit counts from
    :data:`LAYER_RAMP_UP` later)."""


@dataclass(frozen=True, slots=True)
class ParticipantSample:
    received: tuple[ReceivedStream, ...] = ()
    sent: tuple[SentStream, ...] = ()
    rtt: float | None = None
    """Seconds, when receiver reports gave one."""


@dataclass(frozen=True, slots=True)
class QualityFactors:
    """What a score was made of (for tests and logs)."""

    loss: float
    rtt: float | None
    jitter: float
    layer_deficit: int


def score(factors: QualityFactors) -> Quality:
    """The score of one interval's factors."""
    rtt = factors.rtt or 0.0
    if (
        factors.loss >= POOR_MIN_LOSS
        or rtt >= POOR_MIN_RTT
        or factors.jitter >= POOR_MIN_JITTER
        or factors.layer_deficit >= POOR_MIN_LAYER_DEFICIT
    ):
        return Quality.POOR
    if (
        factors.loss < EXCELLENT_MAX_LOSS
        and rtt < EXCELLENT_MAX_RTT
        and factors.jitter < EXCELLENT_MAX_JITTER
        and factors.layer_deficit == 0
    ):
        return Quality.EXCELLENT
    return Quality.GOOD


class ConnectionQualityTracker:
    """The scores of one room's participants."""

    __slots__ = ("_better_since", "_next", "_prior", "scores")

    def __init__(self) -> None:
        self.scores: dict[str, Quality] = {}
        """The current score by participant id."""
        self._prior: dict[int, tuple[int, int]] = {}
        """(expected, received) of each received stream at the last interval."""
        self._better_since: dict[str, int] = {}
        """Intervals in a row a participant scored better than its current score."""
        self._next = 0.0

    def due(self, now: float) -> bool:
        """Whether an interval has passed (the room samples only then)."""
        return now >= self._next

    def update(
        self, now: float, samples: Mapping[str, ParticipantSample]
    ) -> dict[str, Quality] | None:
        """Score every participant of ``samples`` (those missing are forgotten); the
        scores that changed, or None."""
        self._next = now + QUALITY_INTERVAL
        upstream: dict[int, float] = {}
        prior: dict[int, tuple[int, int]] = {}
        for sample in samples.values():
            for stream in sample.received:
                before = self._prior.get(stream.key)
                prior[stream.key] = (stream.expected, stream.received)
                if before is None:
                    continue
                expected = stream.expected - before[0]
                if expected >= MIN_EXPECTED_PACKETS:
                    lost = expected - (stream.received - before[1])
                    upstream[stream.key] = min(1.0, max(0.0, lost / expected))
        self._prior = prior
        changed: dict[str, Quality] = {}
        for participant_id, sample in samples.items():
            quality = score(self.factors(sample, upstream, now))
            current = self.scores.get(participant_id)
            if current is None or quality < current:
                self._set(participant_id, quality, changed)
            elif quality > current:
                streak = self._better_since.get(participant_id, 0) + 1
                if streak >= UPGRADE_INTERVALS:
                    self._set(participant_id, quality, changed)
                else:
                    self._better_since[participant_id] = streak
            else:
                self._better_since.pop(participant_id, None)
        for participant_id in [p for p in self.scores if p not in samples]:
            self.forget(participant_id)
        return changed or None

    @staticmethod
    def factors(
        sample: ParticipantSample, upstream: Mapping[int, float], now: float
    ) -> QualityFactors:
        """The worst loss, jitter and layer deficit of ``sample``; ``upstream``: the
        interval's loss of each received stream by key."""
        loss = max((upstream.get(s.key, 0.0) for s in sample.received), default=0.0)
        jitter = max((s.jitter for s in sample.received), default=0.0)
        deficit = 0
        for sent in sample.sent:
            before = upstream.get(sent.source_key, 0.0) if sent.source_key is not None else 0.0
            loss = max(loss, sent.fraction_lost - before)
            if now - sent.forwarding_since >= LAYER_RAMP_UP:
                deficit = max(deficit, sent.layer_deficit)
        return QualityFactors(loss=loss, rtt=sample.rtt, jitter=jitter, layer_deficit=deficit)

    def _set(self, participant_id: str, quality: Quality, changed: dict[str, Quality]) -> None:
        self._better_since.pop(participant_id, None)
        if self.scores.get(participant_id) != quality:
            changed[participant_id] = quality
        self.scores[participant_id] = quality

    def forget(self, participant_id: str) -> None:
        """The participant left the room."""
        self.scores.pop(participant_id, None)
        self._better_since.pop(participant_id, None)

    def counts(self) -> dict[str, int]:
        """Participants per score label (the metric's bounded label)."""
        counts = dict.fromkeys(QUALITY_LABELS, 0)
        for quality in self.scores.values():
            counts[quality.label] += 1
        return counts
