"""RtpMunger: continuous sequence numbers and timestamps across simulcast layer switches."""

from __future__ import annotations

from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sfu.rtp_munger import REORDER_WINDOW, RtpMunger

CLOCK = 90000

# A script is a list of steps:
#   ("switch", ssrc, seq, ts, now)            switch to a new source stream at this packet
#   ("rtp", ssrc, seq, ts, expected)          translate; expected (seq, ts) or None
#   ("drop", seq)                             the packet is not forwarded
# The munger sees no SSRCs: as a consumer does, the runner hands it only packets of the
# stream it switched to, and a packet of another one (a late packet of the previous
# layer) must be expected None.
SCRIPTS = {
    "first switch keeps the initial values": (
        (1000, 5000),
        [
            ("switch", 1, 40000, 123456, 0.0),
            ("rtp", 1, 40000, 123456, (1000, 5000)),
            ("rtp", 1, 40001, 126456, (1001, 8000)),
        ],
    ),
    "switch continues sequence numbers, timestamps advance by the elapsed time": (
        (1000, 5000),
        [
            ("switch", 1, 100, 0, 10.0),
            ("rtp", 1, 100, 0, (1000, 5000)),
            ("rtp", 1, 101, 3000, (1001, 8000)),
            # the last packet was sent at 10 + 3000/90000 s; 0.1 s later = 9000 ticks
            ("switch", 2, 7000, 999999, 10.0 + 3000 / CLOCK + 0.1),
            ("rtp", 2, 7000, 999999, (1002, 17000)),
            ("rtp", 2, 7001, 1002999, (1003, 20000)),
        ],
    ),
    "switch right away advances the timestamp by at least one tick": (
        (0, 0),
        [
            ("switch", 1, 10, 500, 1.0),
            ("rtp", 1, 10, 500, (0, 0)),
            ("switch", 2, 20, 800, 0.5),
            ("rtp", 2, 20, 800, (1, 1)),
        ],
    ),
    "outgoing sequence number and timestamp wrap": (
        (65534, 0xFFFFFFFF - 2999),
        [
            ("switch", 1, 500, 0, 0.0),
            ("rtp", 1, 500, 0, (65534, 0xFFFFFFFF - 2999)),
            ("rtp", 1, 501, 3000, (65535, 0)),
            ("rtp", 1, 502, 6000, (0, 3000)),
            ("switch", 2, 9, 70, 6000 / CLOCK + 1 / CLOCK),
            ("rtp", 2, 9, 70, (1, 3001)),
        ],
    ),
    "source sequence number and timestamp wrap": (
        (100, 100),
        [
            ("switch", 1, 65534, 0xFFFFFFFF - 1000, 0.0),
            ("rtp", 1, 65534, 0xFFFFFFFF - 1000, (100, 100)),
            ("rtp", 1, 65535, 0xFFFFFFFF, (101, 1100)),
            ("rtp", 1, 0, 2000, (102, 3101)),
            ("rtp", 1, 1, 2000, (103, 3101)),
        ],
    ),
    "both wrap across a switch": (
        (65535, 0),
        [
            ("switch", 1, 65535, 0xFFFFFFFF, 0.0),
            ("rtp", 1, 65535, 0xFFFFFFFF, (65535, 0)),
            ("rtp", 1, 0, 2999, (0, 3000)),
            ("switch", 2, 65535, 0xFFFFFF00, 3000 / CLOCK + 3000 / CLOCK),
            ("rtp", 2, 65535, 0xFFFFFF00, (1, 6000)),
            ("rtp", 2, 0, 0xFFFFFF00 + 3000 - (1 << 32), (2, 9000)),
        ],
    ),
    "loss keeps its gap so the subscriber NACKs it": (
        (0, 0),
        [
            ("switch", 1, 10, 0, 0.0),
            ("rtp", 1, 10, 0, (0, 0)),
            ("rtp", 1, 13, 0, (3, 0)),
            ("rtp", 1, 11, 0, (1, 0)),
        ],
    ),
    "a late packet of the old layer is not the munger's to see": (
        (0, 0),
        [
            ("switch", 1, 10, 0, 0.0),
            ("rtp", 1, 10, 0, (0, 0)),
            ("rtp", 1, 12, 0, (2, 0)),
            ("switch", 2, 500, 0, 1 / CLOCK),
            ("rtp", 2, 500, 0, (3, 1)),
            ("rtp", 1, 11, 0, None),
            ("rtp", 2, 501, 0, (4, 1)),
        ],
    ),
    "late packet of the new layer from before its key frame is refused": (
        (0, 0),
        [
            ("switch", 1, 10, 0, 0.0),
            ("rtp", 1, 10, 0, (0, 0)),
            ("switch", 2, 500, 9000, 1.0),
            ("rtp", 2, 500, 9000, (1, 90000)),
            ("rtp", 2, 499, 6000, None),
            ("rtp", 2, 502, 12000, (3, 93000)),
            ("rtp", 2, 501, 9000, (2, 90000)),
        ],
    ),
    "new layer's pre-key-frame packet across the source wrap is refused": (
        (0, 0),
        [
            ("switch", 1, 0, 0, 0.0),
            ("rtp", 1, 0, 0, (0, 0)),
            ("rtp", 1, 65535, 0, None),
            ("rtp", 1, 1, 0, (1, 0)),
        ],
    ),
    "nothing is forwarded before the first switch": (
        (0, 0),
        [("rtp", 1, 10, 0, None), ("drop", 11)],
    ),
    "drop shifts later packets down": (
        (0, 0),
        [
            ("switch", 1, 10, 0, 0.0),
            ("rtp", 1, 10, 0, (0, 0)),
            ("drop", 11),
            ("drop", 12),
            ("rtp", 1, 13, 0, (1, 0)),
            ("drop", 14),
            ("rtp", 1, 15, 0, (2, 0)),
        ],
    ),
    "reordered packet before a drop keeps its number, after it is shifted": (
        (0, 0),
        [
            ("switch", 1, 10, 0, 0.0),
            ("rtp", 1, 10, 0, (0, 0)),
            ("rtp", 1, 12, 0, (2, 0)),
            ("drop", 13),
            ("rtp", 1, 15, 0, (4, 0)),
            ("rtp", 1, 11, 0, (1, 0)),
            ("rtp", 1, 14, 0, (3, 0)),
            ("rtp", 1, 13, 0, None),
        ],
    ),
    "drop of a reordered packet leaves its hole": (
        (0, 0),
        [
            ("switch", 1, 10, 0, 0.0),
            ("rtp", 1, 10, 0, (0, 0)),
            ("rtp", 1, 12, 0, (2, 0)),
            ("drop", 11),
            ("rtp", 1, 13, 0, (3, 0)),
        ],
    ),
    "drop across the source wrap": (
        (0, 0),
        [
            ("switch", 1, 65534, 0, 0.0),
            ("rtp", 1, 65534, 0, (0, 0)),
            ("drop", 65535),
            ("drop", 0),
            ("rtp", 1, 1, 0, (1, 0)),
        ],
    ),
    "drops are forgotten at a switch": (
        (0, 0),
        [
            ("switch", 1, 10, 0, 0.0),
            ("rtp", 1, 10, 0, (0, 0)),
            ("drop", 11),
            ("switch", 2, 11, 0, 1 / CLOCK),
            ("rtp", 2, 11, 0, (1, 1)),
            ("rtp", 2, 12, 0, (2, 1)),
        ],
    ),
    "packets behind the reorder window are refused, old drops still count": (
        (0, 0),
        [
            ("switch", 1, 0, 0, 0.0),
            ("rtp", 1, 0, 0, (0, 0)),
            ("drop", 1),
            ("rtp", 1, 2, 0, (1, 0)),
            ("rtp", 1, REORDER_WINDOW + 10, 0, (REORDER_WINDOW + 9, 0)),
            ("rtp", 1, 5, 0, None),
            ("rtp", 1, REORDER_WINDOW + 11, 0, (REORDER_WINDOW + 10, 0)),
            ("rtp", 1, 20, 0, (19, 0)),
        ],
    ),
}


@pytest.mark.parametrize(("initial", "script"), SCRIPTS.values(), ids=SCRIPTS.keys())
def test_scripts(initial: tuple[int, int], script: list[tuple]) -> None:
    munger = RtpMunger(*initial)
    current = None
    for step in script:
        if step[0] == "switch":
            _, current, seq, ts, now = step
            munger.switch(seq, ts, now, CLOCK)
        elif step[0] == "rtp":
            _, ssrc, seq, ts, expected = step
            if ssrc != current:
                assert expected is None, step
            else:
                assert munger.translate(seq, ts) == expected, step
        else:
            munger.drop(step[1])


def test_last_values_and_offset_follow_the_newest_packet() -> None:
    munger = RtpMunger(7, 1000)
    munger.switch(100, 50, 0.0, CLOCK)
    munger.translate(100, 50)
    munger.translate(102, 3050)
    munger.translate(101, 50)
    assert (munger.last_sequence_number, munger.last_timestamp) == (9, 4000)
    assert (3050 + munger.timestamp_offset) & 0xFFFFFFFF == 4000


_layer = st.tuples(
    st.integers(0, 0xFFFF),  # first sequence number
    st.integers(0, 0xFFFFFFFF),  # first timestamp
    st.lists(st.sampled_from(["send", "drop"]), min_size=1, max_size=40),
    st.floats(0.0, 2.0),  # pause before the switch, seconds
)


@settings(max_examples=150, deadline=None)
@given(
    initial_seq=st.integers(0, 0xFFFF),
    initial_ts=st.integers(0, 0xFFFFFFFF),
    layers=st.lists(_layer, min_size=1, max_size=6),
)
def test_in_order_output_is_gapless_and_monotonic(
    initial_seq: int, initial_ts: int, layers: list[tuple[int, int, list[str], float]]
) -> None:
    """Whatever the switch schedule and drops, in-order input yields +1 steps and
    timestamps that never go back."""
    munger = RtpMunger(initial_seq, initial_ts)
    now = 0.0
    outputs: list[tuple[int, int]] = []
    for first_seq, first_ts, actions, pause in layers:
        now += pause
        munger.switch(first_seq, first_ts, now, CLOCK)
        for index, action in enumerate(actions):
            seq = (first_seq + index) & 0xFFFF
            ts = (first_ts + 3000 * (index // 3)) & 0xFFFFFFFF
            if action == "drop" and index > 0:
                munger.drop(seq)
                continue
            result = munger.translate(seq, ts)
            assert result is not None
            outputs.append(result)
        now += 3000 * ((len(actions) - 1) // 3) / CLOCK
    assert outputs[0] == (initial_seq, initial_ts)
    for (seq_a, ts_a), (seq_b, ts_b) in pairwise(outputs):
        assert seq_b == (seq_a + 1) & 0xFFFF
        assert 0 <= (ts_b - ts_a) & 0xFFFFFFFF < 1 << 31
