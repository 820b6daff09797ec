"""ActiveSpeakerDetector: smoothing, enter/leave hysteresis, the N-speaker limit."""

from __future__ import annotations

import pytest

from sfu.active_speaker import ENTER_TIME, LEAVE_TIME, SMOOTHING_WINDOW, ActiveSpeakerDetector

PACKET_MS = 20
UPDATE_MS = 100

Talk = tuple[str, int, float, float, bool]
"""(participant, level in -dBov, from, to, voice flag); silence (127) outside."""


def simulate(talks: list[Talk], duration: float) -> list[tuple[float, list[str]]]:
    """Feed every participant a packet each 20 ms and update every 100 ms; the changes."""
    detector = ActiveSpeakerDetector()
    participants = sorted({talk[0] for talk in talks})
    changes = []
    for ms in range(0, int(duration * 1000) + 1, PACKET_MS):
        now = ms / 1000
        for participant in participants:
            level, voice = 127, False
            for who, talk_level, start, end, talk_voice in talks:
                if who == participant and start <= now < end:
                    level, voice = talk_level, talk_voice
            detector.add_level(participant, level, voice, now)
        if ms % UPDATE_MS == 0:
            result = detector.update(now)
            if result is not None:
                changes.append((now, result))
    return changes


SCRIPTS = {
    "one speaker enters and leaves": (
        [("a", 20, 1.0, 3.0, True)],
        5.0,
        [["a"], []],
    ),
    "quiet talk stays out": ([("a", 70, 1.0, 3.0, True)], 5.0, []),
    "a short burst does not enter": ([("a", 10, 1.0, 1.25, True)], 3.0, []),
    "no voice flag counts as silence": ([("a", 10, 1.0, 3.0, False)], 5.0, []),
    "a pause shorter than the leave time keeps the speaker": (
        [("a", 20, 1.0, 3.0, True), ("a", 20, 3.6, 5.0, True)],
        7.0,
        [["a"], []],
    ),
    "loudest first, at most three, a newcomer waits for a free place": (
        [
            ("a", 10, 1.0, 4.0, True),
            ("b", 20, 1.0, 6.0, True),
            ("c", 30, 1.0, 6.0, True),
            ("d", 40, 1.0, 8.0, True),
        ],
        10.0,
        # the quieter c falls below the threshold first when b and c stop together
        [["a", "b", "c"], ["b", "c", "d"], ["b", "d"], ["d"], []],
    ),
    "members keep their order when the loudness changes": (
        [
            ("a", 10, 1.0, 5.0, True),
            ("b", 30, 1.0, 5.0, True),
            ("a", 45, 5.0, 7.0, True),
            ("b", 5, 5.0, 7.0, True),
        ],
        9.0,
        # no reordering while b is louder; a, quieter at the end, leaves first
        [["a", "b"], ["b"], []],
    ),
}


@pytest.mark.parametrize(("talks", "duration", "expected"), SCRIPTS.values(), ids=SCRIPTS.keys())
def test_scripts(talks: list[Talk], duration: float, expected: list[list[str]]) -> None:
    assert [speakers for _, speakers in simulate(talks, duration)] == expected


def test_enter_and_leave_times() -> None:
    (entered, _), (left, _) = simulate([("a", 20, 1.0, 3.0, True)], 5.0)
    assert 1.0 + ENTER_TIME <= entered <= 1.0 + SMOOTHING_WINDOW + ENTER_TIME + 0.1
    assert 3.0 + LEAVE_TIME <= left <= 3.0 + SMOOTHING_WINDOW + LEAVE_TIME + 0.1


def test_remove_a_speaker() -> None:
    detector = ActiveSpeakerDetector()
    for ms in range(0, 1001, PACKET_MS):
        detector.add_level("a", 10, True, ms / 1000)
        detector.add_level("b", 127, False, ms / 1000)
        detector.update(ms / 1000)
    assert detector.active_speakers == ["a"]
    assert detector.remove("b") is None
    assert detector.remove("a") == []
    assert detector.update(1.1) is None
