"""Connection quality scores from synthetic samples: the thresholds, loss over an
interval, upstream loss not blamed on subscribers, DTX silence not taken for loss, the
layer deficit after the ramp-up, and a better score taken only once it holds."""

from __future__ import annotations

import pytest

from sfu.connection_quality import (
    LAYER_RAMP_UP,
    QUALITY_INTERVAL,
    ConnectionQualityTracker,
    ParticipantSample,
    Quality,
    QualityFactors,
    ReceivedStream,
    SentStream,
    score,
)


@pytest.mark.parametrize(
    ("loss", "rtt", "jitter", "deficit", "expected"),
    [
        (0.0, None, 0.0, 0, Quality.EXCELLENT),
        (0.01, 0.05, 0.01, 0, Quality.EXCELLENT),
        (0.03, 0.05, 0.01, 0, Quality.GOOD),
        (0.0, 0.4, 0.0, 0, Quality.GOOD),
        (0.0, 0.0, 0.07, 0, Quality.GOOD),
        (0.0, 0.0, 0.0, 1, Quality.GOOD),
        (0.10, 0.0, 0.0, 0, Quality.POOR),
        (0.0, 0.6, 0.0, 0, Quality.POOR),
        (0.0, 0.0, 0.2, 0, Quality.POOR),
        (0.0, 0.0, 0.0, 2, Quality.POOR),
    ],
)
def test_score(loss: float, rtt: float | None, jitter: float, deficit: int, expected: Quality):
    assert score(QualityFactors(loss, rtt, jitter, deficit)) == expected


def publisher(expected: int, received: int, key: int = 1, jitter: float = 0.005):
    return ParticipantSample(received=(ReceivedStream(key, expected, received, jitter),))


def run(tracker: ConnectionQualityTracker, steps: list[dict[str, ParticipantSample]]):
    """Each step one interval later; the changes each returned."""
    return [tracker.update(i * QUALITY_INTERVAL, step) for i, step in enumerate(steps)]


def test_loss_over_an_interval_and_a_better_score_only_once_it_holds():
    tracker = ConnectionQualityTracker()
    changes = run(
        tracker,
        [
            {"a": publisher(100, 100)},
            {"a": publisher(200, 180)},  # 20 % of this interval lost
            {"a": publisher(300, 280)},  # none lost: better, once
            {"a": publisher(400, 380)},  # twice: taken
            {"a": publisher(500, 480)},
        ],
    )
    assert changes == [
        {"a": Quality.EXCELLENT},
        {"a": Quality.POOR},
        None,
        {"a": Quality.EXCELLENT},
        None,
    ]
    assert tracker.counts() == {"excellent": 1, "good": 0, "poor": 0}


def test_dtx_silence_is_no_loss_and_a_quiet_stream_is_not_judged():
    tracker = ConnectionQualityTracker()
    # Opus DTX: about five packets in two seconds, no sequence gap.
    changes = run(tracker, [{"a": publisher(n * 5, n * 5, jitter=0.02)} for n in range(1, 5)])
    assert changes == [{"a": Quality.EXCELLENT}, None, None, None]
    # Fewer packets than judging takes, even with one missing: no verdict on loss.
    assert tracker.update(10.0, {"a": publisher(24, 19)}) is None


def test_upstream_loss_is_the_publishers_not_the_subscribers():
    tracker = ConnectionQualityTracker()
    clean = SentStream(fraction_lost=0.0, source_key=7)
    lossy_upstream = SentStream(fraction_lost=0.2, source_key=7)
    lossy_downlink = SentStream(fraction_lost=0.2, source_key=8)
    changes = run(
        tracker,
        [
            {
                "pub": ParticipantSample(received=(ReceivedStream(7, 100, 100, 0.0),)),
                "sub": ParticipantSample(sent=(clean,)),
                "far": ParticipantSample(sent=(clean,)),
            },
            {
                "pub": ParticipantSample(received=(ReceivedStream(7, 200, 180, 0.0),)),
                "sub": ParticipantSample(sent=(lossy_upstream,)),
                "far": ParticipantSample(sent=(lossy_downlink,)),
            },
        ],
    )
    assert changes[1] == {"pub": Quality.POOR, "far": Quality.POOR}
    assert tracker.scores["sub"] == Quality.EXCELLENT


def test_rtt_and_the_layer_deficit_after_the_ramp_up():
    tracker = ConnectionQualityTracker()
    held_down = SentStream(fraction_lost=0.0, source_key=None, layer_deficit=2)
    assert tracker.update(1.0, {"a": ParticipantSample(sent=(held_down,), rtt=0.02)}) == {
        "a": Quality.EXCELLENT
    }, "a new consumer climbs from the lowest layer"
    assert tracker.update(LAYER_RAMP_UP, {"a": ParticipantSample(sent=(held_down,))}) == {
        "a": Quality.POOR
    }
    slow = ParticipantSample(rtt=0.7)
    assert tracker.update(20.0, {"a": slow, "b": slow}) == {"b": Quality.POOR}


def test_participants_that_left_are_forgotten():
    tracker = ConnectionQualityTracker()
    tracker.update(0.0, {"a": ParticipantSample(), "b": ParticipantSample()})
    assert not tracker.due(QUALITY_INTERVAL - 0.1) and tracker.due(QUALITY_INTERVAL)
    tracker.forget("a")
    tracker.update(QUALITY_INTERVAL, {"c": ParticipantSample()})
    assert set(tracker.scores) == {"c"}
    assert tracker.counts() == {"excellent": 1, "good": 0, "poor": 0}
