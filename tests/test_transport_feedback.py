import itertools
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sfu.bwe.send_side import SEND_HISTORY_PACKETS, SendSideBandwidthEstimator
from sfu.rtp.rtcp import TransportFeedback, parse_rtcp
from sfu.rtp.transport_feedback import (
    MAX_FEEDBACK_PACKET_SIZE,
    MAX_RUN_LENGTH,
    PacketResult,
    TransportCcFeedback,
    build_feedback_packets,
    parse_transport_cc,
)

# Captured from libwebrtc (the same packet as TRANSPORT_CC in test_rtcp.py): base 423,
# 3 packets, reference time 2857 (x 64 ms), feedback count 0, one run length chunk of 3
# small deltas (4 ms, 1 ms, 2 ms); the RTCP layer pads it with the P bit.
LIBWEBRTC_FCI = bytes.fromhex("01a7 0003 000b29 00 2003 10 04 08".replace(" ", ""))
LIBWEBRTC_RTCP = bytes.fromhex("afcd0006 00000001 7765144d 01a70003 000b2900 20031004 08000003")

# Not a capture: built by hand, field by field, after draft-holmer-rmcat-transport-wide-
# cc-extensions-01 §3.1 and libwebrtc's writer, to cover what Chrome sends in one packet:
# a sequence wrap, all three chunk kinds, a vector chunk covering more symbols than the
# status count needs, a negative (reordered) large delta, and 1 byte of zero padding
# inside the FCI (as mediasoup pads; libwebrtc pads with the RTCP P bit, as above).
CHROME_STYLE_RTCP = bytes.fromhex(
    "8fcd000a"  # V=2, P=0, FMT=15, PT=205, length 10 words
    " 00000001 7765144d"  # sender SSRC 1, media SSRC
    " fffa 0014"  # base sequence 65530, 20 statuses
    " 123456 07"  # reference time 0x123456, feedback packet count 7
    " 2008"  # run length: 8 x small delta (65530..1)
    " d241"  # 2-bit vector: small, lost, large, small, lost, lost, small (2..8)
    " b600"  # 1-bit vector: 1 1 0 1 1, then 9 unused symbols (9..13)
    " 14 00 04 08 00 50 04 04"  # small deltas of 65530..1
    " 0c ffec 28 01"  # small 2, large -20 ticks for 4 (reordered), small 5, small 8
    " 10 10 ff 00"  # small deltas of 9, 10, 12, 13
    " 00"  # zero padding inside the FCI, no P bit
)
CHROME_STYLE_ORIGIN_US = 0x123456 * 64_000
CHROME_STYLE_TICKS = {
    65530: 20,
    65531: 20,
    65532: 24,
    65533: 32,
    65534: 32,
    65535: 112,
    0: 116,
    1: 120,
    2: 132,
    4: 112,
    5: 152,
    8: 153,
    9: 169,
    10: 185,
    12: 440,
    13: 440,
}


def chrome_style_fci() -> bytes:
    (packet,) = parse_rtcp(CHROME_STYLE_RTCP)
    assert isinstance(packet, TransportFeedback)
    return packet.fci


def received(results: list[PacketResult]) -> dict[int, int]:
    return {r.sequence_number: r.arrival_time_us for r in results if r.arrival_time_us is not None}


def test_libwebrtc_capture():
    feedback = TransportCcFeedback.parse(LIBWEBRTC_FCI)
    origin = 2857 * 64_000
    assert feedback == TransportCcFeedback(
        base_sequence=423,
        reference_time=2857,
        feedback_count=0,
        packets=[
            PacketResult(423, True, origin + 4_000),
            PacketResult(424, True, origin + 5_000),
            PacketResult(425, True, origin + 7_000),
        ],
    )
    assert bytes(feedback) == LIBWEBRTC_FCI
    packet = TransportFeedback(sender_ssrc=1, media_ssrc=0x7765144D, fci=bytes(feedback))
    assert bytes(packet) == LIBWEBRTC_RTCP


def test_chrome_style_golden():
    feedback = TransportCcFeedback.parse(chrome_style_fci())
    assert feedback.base_sequence == 65530
    assert feedback.reference_time == 0x123456
    assert feedback.feedback_count == 7
    assert [p.sequence_number for p in feedback.packets] == [*range(65530, 65536), *range(14)]
    assert received(feedback.packets) == {
        seq: CHROME_STYLE_ORIGIN_US + ticks * 250 for seq, ticks in CHROME_STYLE_TICKS.items()
    }
    assert [p.sequence_number for p in feedback.packets if not p.received] == [3, 6, 7, 11]
    # Our writer chooses its own chunks; what they say is the same.
    assert TransportCcFeedback.parse(bytes(feedback)) == feedback


def test_every_prefix_raises_value_error_or_parses():
    fci = chrome_style_fci()
    for end in range(len(fci)):
        try:
            feedback = TransportCcFeedback.parse(fci[:end])
        except ValueError:
            continue
        # Only dropping the padding leaves a complete FCI.
        assert end == len(fci) - 1
        assert feedback == TransportCcFeedback.parse(fci)


def test_negative_reference_time():
    fci = bytes.fromhex("0000 0001 ffffff 00 2001 ff")
    feedback = TransportCcFeedback.parse(fci)
    assert feedback.reference_time == -1
    assert feedback.packets == [PacketResult(0, True, -64_000 + 255 * 250)]
    assert bytes(feedback) == fci


def test_draft_example_run_of_reserved_symbol_is_rejected():
    # -01 §3.1.3 example 1 is a run of 221 with symbol 11, which §3.1.1 reserves (it is
    # "received without delta" in -00); libwebrtc rejects it, so do we.
    with pytest.raises(ValueError, match="reserved status 3"):
        TransportCcFeedback.parse(bytes.fromhex("0000 00dd 000000 00 60dd"))


def _packets(base: int, spec: str, start_us: int = 0, step_us: int = 1_000) -> list[PacketResult]:
    """``spec``: one character per packet, '.' lost, 's' small delta, 'L' large delta."""
    results = []
    arrival = start_us
    for index, char in enumerate(spec):
        seq = (base + index) & 0xFFFF
        if char == ".":
            results.append(PacketResult(seq, False))
            continue
        arrival += step_us if char == "s" else 100_000
        results.append(PacketResult(seq, True, arrival))
    return results


@pytest.mark.parametrize(
    ("spec", "chunks"),
    [
        ("s" * 20, ["2014"]),  # run length, small
        ("." * 9 + "s", ["8010"]),  # 10 statuses without large delta: one 1-bit vector
        ("L" * 10, ["400a"]),  # run length, large
        ("s." * 7, ["aaaa"]),  # 1-bit vector of 14
        ("s.s", ["d100"]),  # short mix at the end: 2-bit vector of 3
        ("sL.sL", ["d860"]),  # 2-bit vector with large deltas
        ("s.s.s.s.s", ["aaa0"]),  # 9 statuses without large: 1-bit vector
        ("s.s.s.sL", ["d111", "4001"]),  # a large delta after 7 mixed: 2-bit then rest
        ("s" * 8 + "L", ["2008", "4001"]),  # a run of 8 stays a run
        ("." * (MAX_RUN_LENGTH + 2) + "s", ["1fff", "c100"]),  # longest run, then the rest
    ],
)
def test_chunk_choice(spec, chunks):
    feedback = TransportCcFeedback(1000, 10, 1, _packets(1000, spec, 10 * 64_000))
    data = bytes(feedback)
    count = len(chunks)
    assert data[8 : 8 + 2 * count].hex() == "".join(chunks)
    assert TransportCcFeedback.parse(data) == feedback


def test_arrival_times_round_to_250_us_without_drift():
    origin = 5 * 64_000
    arrivals = [origin + 124, origin + 125, origin + 375 + 1_000_000, origin + 1_000_500]
    feedback = TransportCcFeedback(
        7, 5, 0, [PacketResult(7 + i, True, t) for i, t in enumerate(arrivals)]
    )
    parsed = TransportCcFeedback.parse(bytes(feedback))
    assert [p.arrival_time_us for p in parsed.packets] == [
        origin,
        origin + 250,
        origin + 1_000_500,
        origin + 1_000_500,
    ]


@pytest.mark.parametrize(
    ("fci", "message"),
    [
        ("0000 0001 000000", "fixed part needs 8"),
        ("0000 0000 000000 00", "status count of 0"),
        ("0000 0002 000000 00 2001", "chunk at byte 10 is truncated after 1 of 2"),
        ("0000 0001 000000 00 20", "chunk at byte 8 is truncated"),
        ("0000 0001 000000 00 2001", "deltas need 1 bytes from byte 10, the FCI has 0"),
        ("0000 0001 000000 00 4001 00", "deltas need 2 bytes from byte 10, the FCI has 1"),
        ("0000 0001 000000 00 f000", "2-bit status vector chunk at byte 8 .* symbol 0"),
        ("0000 0001 000000 00 2001 01 00000000", "4 bytes after its receive deltas"),
    ],
)
def test_parse_errors(fci, message):
    with pytest.raises(ValueError, match=message):
        TransportCcFeedback.parse(bytes.fromhex(fci.replace(" ", "")))


def test_reserved_symbol_after_the_status_count_is_ignored():
    # 2-bit vector: small, then reserved symbols past the single reported status.
    feedback = TransportCcFeedback.parse(bytes.fromhex("0000 0001 000000 00 dfff 01"))
    assert feedback.packets == [PacketResult(0, True, 250)]


@pytest.mark.parametrize(
    ("feedback", "message"),
    [
        (TransportCcFeedback(0, 0, 0, []), "1..65535 packets"),
        (TransportCcFeedback(0x10000, 0, 0, _packets(0, "s")), "base sequence number"),
        (TransportCcFeedback(0, 1 << 23, 0, _packets(0, "s")), "reference time"),
        (TransportCcFeedback(0, 0, 256, _packets(0, "s")), "feedback packet count"),
        (TransportCcFeedback(5, 0, 0, _packets(4, "s")), "expected 5"),
        (
            TransportCcFeedback(0, 0, 0, [PacketResult(0, True, 8_192_000)]),
            "does not fit in a 16-bit large delta",
        ),
    ],
)
def test_serialize_errors(feedback, message):
    with pytest.raises(ValueError, match=message):
        bytes(feedback)


def test_packet_result_consistency():
    with pytest.raises(ValueError, match="no arrival time"):
        PacketResult(1, True)
    with pytest.raises(ValueError, match="has an arrival time"):
        PacketResult(1, False, 5)


@given(st.binary(max_size=64))
def test_fuzz_parse_only_raises_value_error(data):
    try:
        feedback = TransportCcFeedback.parse(data)
    except ValueError:
        return
    assert TransportCcFeedback.parse(bytes(feedback)) == feedback


@given(
    base=st.integers(0, 0xFFFF),
    reference_time=st.integers(-(1 << 23), (1 << 23) - 1),
    steps=st.lists(st.one_of(st.none(), st.integers(-8000, 8000)), min_size=1, max_size=150),
)
def test_fuzz_round_trip(base, reference_time, steps):
    origin = reference_time * 64_000
    ticks = 0
    packets = []
    for index, step in enumerate(steps):
        seq = (base + index) & 0xFFFF
        if step is None:
            packets.append(PacketResult(seq, False))
        else:
            ticks += step
            packets.append(PacketResult(seq, True, origin + ticks * 250))
    feedback = TransportCcFeedback(base, reference_time, 3, packets)
    assert TransportCcFeedback.parse(bytes(feedback)) == feedback


def _decode(packets: list[TransportFeedback]) -> list[TransportCcFeedback]:
    return [TransportCcFeedback.parse(p.fci) for p in packets]


def test_build_wraps_sequence_numbers_and_reports_gaps():
    start = 1_000_000_000
    arrivals = [(65534, start), (65535, start + 1_000), (65537, start + 5_000)]
    (packet,) = build_feedback_packets(9, 10, arrivals, 255, base_sequence=65532)
    assert (packet.sender_ssrc, packet.media_ssrc) == (9, 10)
    (feedback,) = _decode([packet])
    assert feedback.base_sequence == 65532
    assert feedback.feedback_count == 255
    assert [(p.sequence_number, p.received) for p in feedback.packets] == [
        (65532, False),
        (65533, False),
        (65534, True),
        (65535, True),
        (0, False),
        (1, True),
    ]
    shift = feedback.reference_time * 64_000 - (start // 64_000) * 64_000
    assert received(feedback.packets) == {
        65534: start + shift,
        65535: start + 1_000 + shift,
        1: start + 5_000 + shift,
    }


def test_build_reference_time_wraps_to_24_bits_signed():
    arrival = ((1 << 23) + 5) * 64_000 + 300
    (feedback,) = _decode(build_feedback_packets(1, 2, [(0, arrival)], 0))
    assert feedback.reference_time == -(1 << 23) + 5
    assert feedback.packets[0].arrival_time_us == feedback.reference_time * 64_000 + 250


def test_build_splits_on_size_and_keeps_counts_going():
    # Alternate received and lost, with deltas that need 2 bytes: many chunks and deltas.
    arrivals = [(2 * i, 1_000_000 + i * 100_000) for i in range(2000)]
    packets = build_feedback_packets(1, 2, arrivals, 254)
    assert len(packets) > 3
    feedbacks = _decode(packets)
    assert [f.feedback_count for f in feedbacks] == [(254 + i) & 0xFF for i in range(len(packets))]
    for packet in packets:
        assert len(bytes(packet)) <= MAX_FEEDBACK_PACKET_SIZE
    reported = {}
    for feedback in feedbacks:
        for result in feedback.packets:
            if result.received:
                reported[result.sequence_number] = result.arrival_time_us
    assert sorted(reported) == sorted(seq & 0xFFFF for seq, _ in arrivals)
    # Consecutive packets leave no sequence number unreported.
    for first, second in itertools.pairwise(feedbacks):
        assert second.base_sequence == (first.base_sequence + len(first.packets)) & 0xFFFF


def test_build_splits_when_a_delta_does_not_fit_16_bits():
    arrivals = [(10, 0), (11, 1_000), (13, 9_000_000)]
    first, second = _decode(build_feedback_packets(1, 2, arrivals, 0))
    assert [p.sequence_number for p in first.packets] == [10, 11]
    assert [(p.sequence_number, p.received) for p in second.packets] == [(12, False), (13, True)]
    assert second.packets[1].arrival_time_us == second.reference_time * 64_000 + 40_000


def test_build_does_not_report_a_gap_longer_than_a_run():
    arrivals = [(0, 0), (MAX_RUN_LENGTH + 2, 1_000)]
    first, second = _decode(build_feedback_packets(1, 2, arrivals, 0))
    assert len(first.packets) == 1
    assert second.base_sequence == MAX_RUN_LENGTH + 2
    assert len(second.packets) == 1


def test_build_input_checks():
    assert build_feedback_packets(1, 2, [], 0) == []
    with pytest.raises(ValueError, match="strictly increasing"):
        build_feedback_packets(1, 2, [(5, 0), (5, 1)], 0)
    with pytest.raises(ValueError, match="max_packet_size"):
        build_feedback_packets(1, 2, [(5, 0)], 0, max_packet_size=20)


# -- hostile feedback: cost in proportion to what was sent ------------------------------

# Base 0, 65,535 statuses, then run length chunks of 8,191 "not received": 28 bytes that
# used to expand into 65,535 objects (33-77 ms) and then make the estimator walk them.
HOSTILE_LOST_FCI = bytes.fromhex("0000 ffff 000000 00" + "1fff" * 8 + "1fff 0000")
# The same count declared as received small deltas, without the 65,535 delta bytes.
HOSTILE_RECEIVED_FCI = bytes.fromhex("0000 ffff 000000 00" + "3fff" * 8 + "3fff 0000")


def test_lean_parse_does_not_expand_losses():
    report = parse_transport_cc(HOSTILE_LOST_FCI)
    assert (report.base_sequence, report.status_count, report.received) == (0, 0xFFFF, [])


def test_declared_deltas_are_checked_before_anything_is_expanded():
    with pytest.raises(ValueError, match="deltas need 65535 bytes from byte 26, the FCI has 2"):
        parse_transport_cc(HOSTILE_RECEIVED_FCI)


def test_lean_parse_matches_the_full_parse():
    for fci in (LIBWEBRTC_FCI, chrome_style_fci()):
        report = parse_transport_cc(fci)
        full = TransportCcFeedback.parse(fci)
        assert report.status_count == len(full.packets)
        assert [(full.packets[i].sequence_number, t) for i, t in report.received] == [
            (p.sequence_number, p.arrival_time_us) for p in full.packets if p.received
        ]


def _estimator_with_history(sent: int) -> SendSideBandwidthEstimator:
    estimator = SendSideBandwidthEstimator()
    for seq in range(sent):
        estimator.on_packet_sent(seq & 0xFFFF, 1_000, seq / 1_000)
    return estimator


def test_hostile_feedback_costs_microseconds_not_seconds():
    # Thirty of them fit in one 1,200-byte RTCP compound: 1.5 s of event loop before.
    estimator = _estimator_with_history(2 * SEND_HISTORY_PACKETS)
    start = time.perf_counter()
    for _ in range(30):
        estimator.on_feedback(parse_transport_cc(HOSTILE_LOST_FCI), 10.0)
    elapsed = time.perf_counter() - start
    assert elapsed < 0.02, f"30 hostile feedbacks took {elapsed * 1000:.1f} ms"


def test_losses_apply_once_and_only_to_sent_packets():
    estimator = _estimator_with_history(100)
    for _ in range(3):
        estimator.on_feedback(parse_transport_cc(HOSTILE_LOST_FCI), 0.2)
    assert estimator._loss_lost == 100 and estimator._loss_total == 100
    # Feedback for the next packets still counts, received or lost.
    for seq in range(100, 110):
        estimator.on_packet_sent(seq, 1_000, 0.3)
    feedback = TransportCcFeedback(
        100,
        0,
        1,
        [PacketResult(100 + i, i % 2 == 0, 1_000 * i if i % 2 == 0 else None) for i in range(10)],
    )
    estimator.on_feedback(parse_transport_cc(bytes(feedback)), 0.4)
    assert estimator._loss_lost == 105 and estimator._loss_total == 110


def test_a_late_arrival_still_resolves_a_reported_loss():
    estimator = _estimator_with_history(10)
    lost = TransportCcFeedback(
        0, 0, 0, [PacketResult(i, i != 4, None if i == 4 else 1_000 * i) for i in range(10)]
    )
    estimator.on_feedback(parse_transport_cc(bytes(lost)), 0.1)
    assert estimator._loss_lost == 1
    late = TransportCcFeedback(4, 0, 1, [PacketResult(4, True, 20_000)])
    estimator.on_feedback(parse_transport_cc(bytes(late)), 0.2)
    assert estimator._loss_lost == 0 and estimator._loss_total == 10
