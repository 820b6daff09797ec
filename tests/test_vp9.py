"""The VP9 payload descriptor (RFC 9628 section 4.2) over bytes: golden packets from a
real Chromium 156 publisher (``scalabilityMode`` L3T3_KEY, which at 640x480 Chromium
sends as two spatial layers, 320x240 and 640x480, in flexible mode: in
``sfu/bench/captures/``, the benchmark's VP9 clip; and L1T3 in ``tests/fixtures/vp9/``),
hand-built non-flexible descriptors with a group of frames, and truncated or random
input, which is rejected and never read past its end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sfu.bench.media import VP9_SVC_CAPTURE
from sfu.producer import Producer
from sfu.rtp.packet import build_rtp_packet
from sfu.rtp.vp9 import (
    LAYER_END,
    LAYER_INDICES,
    LAYER_INTER_LAYER,
    LAYER_INTER_PICTURE,
    LAYER_SID,
    LAYER_SID_SHIFT,
    LAYER_START,
    LAYER_SWITCHING_UP,
    LAYER_TID,
    PictureInGroup,
    ScalabilityStructure,
    Vp9Descriptor,
    is_vp9_keyframe,
    rewrite_vp9_picture,
    vp9_layers,
    vp9_picture_id,
    vp9_spatial_sizes,
    vp9_tl0picidx,
)
from sfu.sdp import Codec

FIXTURES = Path(__file__).parent / "fixtures" / "vp9"


def golden(name: str) -> list[dict[str, int | bytes]]:
    """Captured packets: sequence number, timestamp, marker, payload size and the
    payload's first 32 bytes (the descriptor and the start of the VP9 frame)."""
    rows = []
    # The L3T3_KEY capture is the benchmark's VP9 clip too, so it ships in sfu/bench.
    path = VP9_SVC_CAPTURE if name == VP9_SVC_CAPTURE.name else FIXTURES / name
    for line in path.read_text().splitlines():
        row = json.loads(line)
        row["head"] = bytes.fromhex(row["head"])
        rows.append(row)
    return rows


def test_a_chromium_l3t3_key_picture_carries_its_scalability_structure():
    first = golden("chromium-l3t3-key.jsonl")[0]["head"]
    assert isinstance(first, bytes)
    descriptor = Vp9Descriptor.parse(first)
    assert descriptor == Vp9Descriptor(
        inter_picture_predicted=False,
        flexible=True,
        start_of_frame=True,
        end_of_frame=True,
        not_reference_for_upper=False,
        picture_id=7042,
        picture_id_length=15,
        tid=0,
        switching_up=True,
        sid=0,
        inter_layer_dependency=False,
        scalability=ScalabilityStructure(2, ((320, 240), (640, 480))),
        size=13,
    )
    assert is_vp9_keyframe(first)
    assert vp9_spatial_sizes(first) == ((320, 240), (640, 480))


@pytest.mark.parametrize(
    ("name", "spatial", "keys"), [("chromium-l3t3-key.jsonl", 2, 2), ("chromium-l1t3.jsonl", 1, 1)]
)
def test_the_layer_word_agrees_with_the_full_parse_on_every_golden_packet(
    name: str, spatial: int, keys: int
) -> None:
    sids = set()
    tids = set()
    key_frames = 0
    for row in golden(name):
        payload = row["head"]
        assert isinstance(payload, bytes)
        descriptor = Vp9Descriptor.parse(payload)
        word = vp9_layers(payload)
        assert word & LAYER_INDICES
        assert word & LAYER_TID == descriptor.tid
        assert (word & LAYER_SID) >> LAYER_SID_SHIFT == descriptor.sid
        assert bool(word & LAYER_START) == descriptor.start_of_frame
        assert bool(word & LAYER_END) == descriptor.end_of_frame
        assert bool(word & LAYER_INTER_PICTURE) == descriptor.inter_picture_predicted
        assert bool(word & LAYER_SWITCHING_UP) == descriptor.switching_up
        assert bool(word & LAYER_INTER_LAYER) == descriptor.inter_layer_dependency
        assert descriptor.flexible and descriptor.tl0picidx is None
        assert len(descriptor.p_diffs) == (1 if descriptor.inter_picture_predicted else 0)
        if row["marker"]:
            assert descriptor.end_of_frame and descriptor.sid == spatial - 1
        sids.add(descriptor.sid)
        tids.add(descriptor.tid)
        key_frames += is_vp9_keyframe(payload)
    assert sids == set(range(spatial)) and tids == {0, 1, 2}
    assert key_frames == keys


NON_FLEXIBLE = bytes(
    [
        0b1010_1010,  # I, L, B, V
        0x80 | 0x12,  # 15-bit picture id 0x1234
        0x34,
        0b010_1_001_1,  # TID 2, U, SID 1, D
        0x77,  # TL0PICIDX
        0b010_1_1_000,  # SS: N_S 2 (3 layers), Y, G
        *(0x00, 0xA0, 0x00, 0x78),  # 160x120
        *(0x01, 0x40, 0x00, 0xF0),  # 320x240
        *(0x02, 0x80, 0x01, 0xE0),  # 640x480
        2,  # N_G
        0b000_0_01_00,  # TID 0, one reference
        4,
        0b001_1_10_00,  # TID 1, U, two references
        1,
        2,
        0xFF,  # VP9 payload
    ]
)


def test_a_non_flexible_descriptor_with_a_group_of_frames():
    descriptor = Vp9Descriptor.parse(NON_FLEXIBLE)
    assert (descriptor.picture_id, descriptor.picture_id_length) == (0x1234, 15)
    assert (descriptor.tid, descriptor.switching_up, descriptor.sid) == (2, True, 1)
    assert descriptor.inter_layer_dependency and descriptor.tl0picidx == 0x77
    assert descriptor.scalability == ScalabilityStructure(
        3,
        ((160, 120), (320, 240), (640, 480)),
        (PictureInGroup(0, False, (4,)), PictureInGroup(1, True, (1, 2))),
    )
    assert descriptor.size == len(NON_FLEXIBLE) - 1
    assert not is_vp9_keyframe(NON_FLEXIBLE), "spatial layer 1 is no key picture's start"


def test_a_seven_bit_picture_id_without_layer_indices():
    payload = bytes([0b1000_1100, 0x05, 0xAA])  # I, B, E; picture id 5
    descriptor = Vp9Descriptor.parse(payload)
    assert (descriptor.picture_id, descriptor.picture_id_length, descriptor.size) == (5, 7, 2)
    assert descriptor.tid is None and descriptor.sid is None
    word = vp9_layers(payload)
    assert word == LAYER_START | LAYER_END, "no layer indices: forwarded unfiltered"
    assert is_vp9_keyframe(payload)
    assert rewrite_vp9_picture(payload, 130, None) == bytes([0b1000_1100, 130 & 0x7F, 0xAA])


def test_the_picture_id_and_tl0picidx_readers():
    assert (vp9_picture_id(NON_FLEXIBLE), vp9_tl0picidx(NON_FLEXIBLE)) == (0x1234, 0x77)
    assert [vp9_picture_id(NON_FLEXIBLE[:end]) for end in range(4)] == [-1, -1, -1, 0x1234]
    assert [vp9_tl0picidx(NON_FLEXIBLE[:end]) for end in range(6)] == [-1] * 5 + [0x77]
    seven_bit = bytes([0b1010_1000, 0x05, 0x00, 0x09])  # I, L, B; 7-bit id; TL0PICIDX 9
    assert (vp9_picture_id(seven_bit), vp9_tl0picidx(seven_bit)) == (5, 9)
    flexible = golden("chromium-l3t3-key.jsonl")[0]["head"]
    assert isinstance(flexible, bytes)
    assert (vp9_picture_id(flexible), vp9_tl0picidx(flexible)) == (7042, -1)


def test_rewriting_the_picture_id_and_tl0picidx_keeps_everything_else():
    rewritten = rewrite_vp9_picture(NON_FLEXIBLE, 0x8001, 0x102)
    descriptor = Vp9Descriptor.parse(rewritten)
    assert (descriptor.picture_id, descriptor.tl0picidx) == (0x0001, 0x02)
    assert rewritten[5:] == NON_FLEXIBLE[5:] and rewritten[0] == NON_FLEXIBLE[0]


def test_every_truncation_is_rejected():
    size = Vp9Descriptor.parse(NON_FLEXIBLE).size
    for end in range(size):
        with pytest.raises(ValueError):
            Vp9Descriptor.parse(NON_FLEXIBLE[:end])
    # The layer word needs the bytes up to TL0PICIDX, and nothing after them.
    assert [vp9_layers(NON_FLEXIBLE[:end]) for end in range(6)] == [-1] * 5 + [
        vp9_layers(NON_FLEXIBLE)
    ]


def test_more_than_three_p_diffs_are_rejected():
    payload = bytes([0b0111_1000, 0x00, 3, 3, 3, 2, 0xFF])  # P, L, F, B; four P_DIFFs
    with pytest.raises(ValueError, match="more than 3"):
        Vp9Descriptor.parse(payload)
    assert Vp9Descriptor.parse(bytes([0b0111_1000, 0x00, 3, 3, 2])).p_diffs == (1, 1, 1)


@given(st.binary(max_size=64))
def test_random_bytes_parse_or_raise_value_error(data: bytes) -> None:
    try:
        descriptor = Vp9Descriptor.parse(data)
    except ValueError:
        pass
    else:
        assert descriptor.size <= len(data)
        assert vp9_layers(data) >= 0
    word = vp9_layers(data)
    assert word == -1 or 0 <= word < 1 << 12
    is_vp9_keyframe(data)
    vp9_spatial_sizes(data)
    assert -1 <= vp9_picture_id(data) < 1 << 15 and -1 <= vp9_tl0picidx(data) < 256


def test_a_producer_drops_and_counts_a_truncated_descriptor():
    """Bad input never reaches a subscriber: counted as malformed, received in the
    statistics (no NACK for it), and the consumers' numbering leaves no gap."""
    producer = Producer(
        "TR_cam", "PA_pub", "video", "1", [Codec(98, "VP9", 90000)], [], "camera", lambda s: None
    )
    stream = producer.add_stream(1, None)
    truncated = bytes([0b1011_1000, 0x81])  # I, L, B, F: cut inside its picture id
    data = build_rtp_packet(
        payload_type=98, sequence_number=7, timestamp=0, ssrc=1, payload=truncated
    )
    producer.receive(stream, data, 12, now=1.0)
    assert producer.packets_dropped == 1
    assert stream.statistics.packets_received == 1
