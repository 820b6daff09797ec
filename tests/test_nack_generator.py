"""NackGenerator: loss detection, retry spacing and limits, overflow, wraparound."""

from __future__ import annotations

import pytest

from sfu.nack_generator import (
    MAX_NACK_PACKETS,
    MAX_NACK_RETRIES,
    MAX_PACKET_AGE,
    NackGenerator,
    NackResult,
)


def rtp(
    seq: int,
    now: float = 0.0,
    nack: list[int] | None = None,
    key_frame: bool = False,
    key_frame_required: bool = False,
) -> tuple:
    return ("rtp", seq, now, key_frame, NackResult(nack or [], key_frame_required))


def timer(now: float, rtt: float, nack: list[int]) -> tuple:
    return ("timer", now, rtt, nack)


def missing(expected: list[int]) -> tuple:
    return ("missing", expected)


def _retries(seq: int) -> list[tuple]:
    """One loss NACKed at once, then re-NACKed every 100 ms until the limit."""
    steps = [rtp((seq - 1) & 0xFFFF), rtp((seq + 1) & 0xFFFF, 0.0, [seq])]
    for retry in range(1, MAX_NACK_RETRIES):
        steps.append(timer(retry * 0.2, 0.1, [seq]))
    steps += [missing([]), timer(5.0, 0.1, [])]
    return steps


SCRIPTS = {
    "in order: nothing to NACK": [rtp(1), rtp(2), rtp(3), missing([]), timer(1.0, 0.1, [])],
    "gap is NACKed at once": [rtp(1), rtp(2), rtp(5, 0.0, [3, 4]), missing([3, 4])],
    "gap across the wrap": [rtp(65534), rtp(1, 0.0, [65535, 0]), missing([65535, 0])],
    "late packet leaves the list": [
        rtp(10),
        rtp(13, 0.0, [11, 12]),
        rtp(12),
        missing([11]),
        rtp(11),
        missing([]),
        timer(1.0, 0.1, []),
    ],
    "retransmission of a NACKed packet leaves the list": [
        rtp(10),
        rtp(12, 0.0, [11]),
        rtp(11, 0.05),
        missing([]),
    ],
    "duplicate and old packets change nothing": [
        rtp(10),
        rtp(12, 0.0, [11]),
        rtp(12),
        rtp(5),
        missing([11]),
    ],
    "re-NACK waits for the round-trip time": [
        rtp(1),
        rtp(3, 0.0, [2]),
        timer(0.04, 0.1, []),
        timer(0.1, 0.1, [2]),
        timer(0.15, 0.1, []),
        timer(0.21, 0.1, [2]),
        timer(0.52, 0.3, [2]),
        timer(0.7, 0.3, []),
    ],
    "unknown round-trip time uses the default": [
        rtp(1),
        rtp(3, 0.0, [2]),
        timer(0.05, 0.0, []),
        timer(0.1, 0.0, [2]),
    ],
    "retry limit": _retries(100),
    "retry limit across the wrap": _retries(0),
    "each loss has its own schedule": [
        rtp(1),
        rtp(3, 0.0, [2]),
        rtp(5, 0.06, [4]),
        timer(0.1, 0.1, [2]),
        timer(0.17, 0.1, [4]),
    ],
    "overflow clears the list and asks for a key frame": [
        rtp(1),
        rtp(10, 0.0, list(range(2, 10))),
        rtp(10 + MAX_NACK_PACKETS + 1, 0.1, key_frame_required=True),
        missing([]),
        rtp(10 + MAX_NACK_PACKETS + 3, 0.2, [10 + MAX_NACK_PACKETS + 2]),
    ],
    "overflow gives up the losses before a key frame instead": [
        rtp(0),
        rtp(601, 0.0, list(range(1, 601))),
        rtp(602, 0.0, key_frame=True),
        rtp(1203, 0.1, list(range(603, 1203))),
        missing(list(range(603, 1203))),
    ],
    "overflow with only an older key frame clears the list": [
        rtp(0, key_frame=True),
        rtp(601, 0.0, list(range(1, 601))),
        rtp(1202, 0.1, key_frame_required=True),
        missing([]),
    ],
    "losses too old are forgotten": [
        rtp(0),
        rtp(2, 0.0, [1]),
        *[rtp(seq) for seq in range(3, MAX_PACKET_AGE + 1)],
        missing([1]),
        rtp(MAX_PACKET_AGE + 2, 0.0, [MAX_PACKET_AGE + 1]),
        missing([MAX_PACKET_AGE + 1]),
    ],
}


@pytest.mark.parametrize("script", SCRIPTS.values(), ids=SCRIPTS.keys())
def test_scripts(script: list[tuple]) -> None:
    generator = NackGenerator()
    for step in script:
        if step[0] == "rtp":
            _, seq, now, key_frame, expected = step
            assert generator.received(seq, now, key_frame) == expected, step[:2]
        elif step[0] == "timer":
            _, now, rtt, expected = step
            assert generator.timer(now, rtt) == expected, step
        else:
            assert generator.missing == step[1]


def test_awaits_tells_a_repair_from_a_duplicate():
    generator = NackGenerator()
    assert not generator.awaits(7), "nothing received yet"
    generator.received(65534, 0.0)
    generator.received(2, 0.0)  # 65535, 0 and 1 missing, across the wrap
    assert [generator.awaits(seq) for seq in (65533, 65534, 65535, 0, 1, 2, 3)] == [
        False,
        False,
        True,
        True,
        True,
        False,
        False,
    ]
    assert generator.missing == [65535, 0, 1], "asking changes nothing"
    generator.received(0, 0.1)
    assert not generator.awaits(0)
