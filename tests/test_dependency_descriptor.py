"""The dependency descriptor parser and writer (AV1 RTP specification, appendix A) over
bytes: golden descriptors Chromium 156 sent publishing AV1 (libaom) in L1T3, L2T3_KEY and
L2T3 (tests/fixtures/dependency_descriptor/), hand-built custom fields, malformed values,
and Hypothesis fuzzing."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sfu.rtp.dependency_descriptor import (
    MAX_DESCRIPTOR_SIZE,
    DecodeTargetIndication,
    DependencyDescriptor,
    DependencyDescriptorError,
    FrameDependencyStructure,
    FrameDependencyTemplate,
    parse_dependency_descriptor,
    write_dependency_descriptor,
)

FIXTURES = Path(__file__).parent / "fixtures" / "dependency_descriptor"
CAPTURES = ("chromium-av1-l1t3", "chromium-av1-l2t3-key", "chromium-av1-l2t3")

S = DecodeTargetIndication.SWITCH
D = DecodeTargetIndication.DISCARDABLE
R = DecodeTargetIndication.REQUIRED
N = DecodeTargetIndication.NOT_PRESENT


def golden(name: str) -> list[tuple[int, int, bool, bytes]]:
    """(sequence number, timestamp, marker, descriptor) of each captured packet."""
    document: dict[str, Any] = json.loads((FIXTURES / f"{name}.json").read_text())
    return [(seq, ts, bool(m), bytes.fromhex(value)) for seq, ts, m, value in document["packets"]]


def parse_all(name: str) -> list[tuple[bytes, DependencyDescriptor, FrameDependencyStructure]]:
    structure: FrameDependencyStructure | None = None
    parsed = []
    for _, _, _, value in golden(name):
        descriptor = parse_dependency_descriptor(value, structure)
        structure = descriptor.attached_structure or structure
        assert structure is not None
        parsed.append((value, descriptor, structure))
    return parsed


L1T3 = FrameDependencyStructure(
    structure_id=0,
    num_decode_targets=3,
    templates=(
        FrameDependencyTemplate(0, 0, (S, S, S), (), (0,)),
        FrameDependencyTemplate(0, 0, (S, S, S), (4,), (4,)),
        FrameDependencyTemplate(0, 1, (N, D, S), (2,), (2,)),
        FrameDependencyTemplate(0, 2, (N, N, D), (1,), (1,)),
        FrameDependencyTemplate(0, 2, (N, N, D), (1,), (3,)),
    ),
    num_chains=1,
    decode_target_protected_by_chain=(0, 0, 0),
    resolutions=((640, 480),),
)
"""What libaom's L1T3 in Chromium 156 attaches to its key frames."""


def test_l1t3_key_frame_attaches_the_structure() -> None:
    packets = golden("chromium-av1-l1t3")
    first = parse_dependency_descriptor(packets[0][3], None)
    assert first.attached_structure == L1T3
    assert first.start_of_frame and not first.end_of_frame
    assert first.frame == L1T3.templates[0]
    assert first.active_decode_targets_bitmask is None
    # Later packets are the three mandatory bytes, read against that structure.
    second = parse_dependency_descriptor(packets[1][3], L1T3)
    assert len(packets[1][3]) == 3
    assert second.frame_number == first.frame_number
    assert second.attached_structure is None


@pytest.mark.parametrize("name", CAPTURES)
def test_golden_frames_are_consistent(name: str) -> None:
    """Frames are numbered one after another, each starts and ends once, and the RTP
    marker is on the last packet of the temporal unit's top spatial layer."""
    packets = golden(name)
    parsed = parse_all(name)
    top_spatial = parsed[0][2].templates[-1].spatial_id
    previous: DependencyDescriptor | None = None
    for (_, _, marker, _), (_, descriptor, _) in zip(packets, parsed, strict=True):
        if previous is not None and descriptor.frame_number != previous.frame_number:
            assert descriptor.frame_number == (previous.frame_number + 1) & 0xFFFF
            assert descriptor.start_of_frame and previous.end_of_frame
        if marker:
            assert descriptor.end_of_frame
            assert descriptor.frame.spatial_id == top_spatial
        previous = descriptor


def test_l2t3_key_structure() -> None:
    structure = parse_all("chromium-av1-l2t3-key")[0][2]
    assert structure.num_decode_targets == 6
    assert structure.num_chains == 2
    assert structure.decode_target_protected_by_chain == (0, 0, 0, 1, 1, 1)
    assert structure.resolutions == ((320, 240), (640, 480))
    # KEY: after the key frame the spatial layers are independent, so an S0 delta
    # frame is not part of any S1 decode target.
    s0_delta = structure.templates[1]
    assert (s0_delta.spatial_id, s0_delta.fdiffs) == (0, (8,))
    assert s0_delta.dtis == (S, S, S, N, N, N)


def test_l2t3_key_frame_is_not_the_first_template() -> None:
    """libaom's L2T3 lists a delta template first: the key frame names template 1."""
    _, descriptor, structure = parse_all("chromium-av1-l2t3")[0]
    assert descriptor.template_id == 1
    assert descriptor.frame == structure.templates[1]
    assert descriptor.frame.fdiffs == ()
    assert structure.templates[0].dtis == (S, S, S, R, R, R)


@pytest.mark.parametrize("name", CAPTURES)
def test_golden_round_trip(name: str) -> None:
    """Writing what was parsed gives Chromium's bytes back, and parses to the same."""
    for value, descriptor, structure in parse_all(name):
        written = write_dependency_descriptor(descriptor, structure)
        assert written == value
        assert parse_dependency_descriptor(written, structure) == descriptor


def test_custom_fields_round_trip() -> None:
    frame = FrameDependencyTemplate(0, 1, (N, R, S), (1, 17, 300, 4096), (200,))
    descriptor = DependencyDescriptor(
        start_of_frame=True,
        end_of_frame=True,
        frame_number=0xFFFE,
        frame=frame,
        active_decode_targets_bitmask=0b011,
    )
    value = write_dependency_descriptor(descriptor, L1T3)
    parsed = parse_dependency_descriptor(value, L1T3)
    assert parsed == descriptor
    assert parsed.template_id == 2


def test_structure_with_mask_and_no_chains_round_trips() -> None:
    structure = FrameDependencyStructure(
        structure_id=62,
        num_decode_targets=2,
        templates=(
            FrameDependencyTemplate(0, 0, (S, S)),
            FrameDependencyTemplate(0, 0, (S, S), (1,)),
            FrameDependencyTemplate(1, 0, (N, S), (1,)),
            FrameDependencyTemplate(1, 0, (N, R), (1, 2)),
        ),
    )
    descriptor = DependencyDescriptor(
        start_of_frame=True,
        end_of_frame=False,
        frame_number=7,
        frame=structure.templates[3],
        attached_structure=structure,
        active_decode_targets_bitmask=0b01,
    )
    value = write_dependency_descriptor(descriptor, structure)
    parsed = parse_dependency_descriptor(value, None)
    assert parsed == descriptor
    # Template ids wrap: template 3 of structure 62 is id 1.
    assert parsed.template_id == 1


def test_mandatory_only_when_nothing_differs() -> None:
    descriptor = DependencyDescriptor(True, True, 513, L1T3.templates[3])
    assert write_dependency_descriptor(descriptor, L1T3) == bytes([0xC3, 0x02, 0x01])


MALFORMED = {
    "shorter than the mandatory fields": (b"\x80\x00", L1T3, "at least 3"),
    "longer than a two-byte extension": (b"\x80\x00\x01" + bytes(253), L1T3, "at most 255"),
    "no structure": (b"\x80\x00\x01", None, "no structure"),
    "template id beyond the structure": (bytes([0x85, 0, 1]), L1T3, "template id 5"),
    "structure truncated": (bytes.fromhex("c0000180051485"), None, "ends after"),
    "mask without a structure": (bytes([0x80, 0, 1, 0x40]), None, "no structure"),
    "custom fdiffs run past the end": (bytes([0x80, 0, 1, 0x12, 0x55]), L1T3, "ends after"),
    # Seven "next spatial layer" steps: spatial id 4.
    "spatial id above 3": (bytes([0x80, 0, 1, 0x80, 0x00, 0xAA, 0xAA, 0xFF]), None, "spatial id"),
    # "Next temporal layer" eight times: temporal id 8.
    "temporal id above 7": (bytes([0x80, 0, 1, 0x80, 0x00, 0x55, 0x55, 0xFF]), None, "temporal id"),
    # 63 templates of the same layer, no end marker.
    "64 templates": (bytes([0x80, 0, 1, 0x80, 0x00]) + bytes(20), None, "64 templates"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_raises_its_own_error(case: str) -> None:
    value, structure, message = MALFORMED[case]
    with pytest.raises(DependencyDescriptorError, match=message):
        parse_dependency_descriptor(value, structure)


def test_writer_refuses_a_frame_the_structure_has_no_template_for() -> None:
    descriptor = DependencyDescriptor(
        True, True, 1, FrameDependencyTemplate(1, 0, (S, S, S), (), (0,))
    )
    with pytest.raises(DependencyDescriptorError, match="no template"):
        write_dependency_descriptor(descriptor, L1T3)


def test_structure_rejects_inconsistent_fields() -> None:
    with pytest.raises(DependencyDescriptorError, match="first template"):
        FrameDependencyStructure(0, 1, (FrameDependencyTemplate(1, 0, (S,)),))
    with pytest.raises(DependencyDescriptorError, match="chain"):
        FrameDependencyStructure(0, 1, (FrameDependencyTemplate(0, 0, (S,), (), (0,)),), 1, (1,))


def test_work_is_bounded_by_the_value_length() -> None:
    """A costly value: a structure of 63 templates, then every bit set, so the first
    template's "frame diff follows" loop runs on; each round consumes bits, so it ends
    at the 255th byte (an error: the value runs out)."""
    header = bytes([0x80, 0x00, 0x01])
    reader_bits = "10000" + "000000" + "00000" + "00" * 62 + "11"
    value_bits = reader_bits + "1" * (MAX_DESCRIPTOR_SIZE * 8 - 24 - len(reader_bits))
    value = header + int(value_bits, 2).to_bytes(MAX_DESCRIPTOR_SIZE - 3, "big")
    started = time.perf_counter()
    for _ in range(10):
        with pytest.raises(DependencyDescriptorError, match="ends after 2040 bits"):
            parse_dependency_descriptor(value, None)
    # Generous: a parse takes well under a millisecond; a shared machine may be slow.
    assert time.perf_counter() - started < 1.0


GOLDEN_STRUCTURES = [parse_all(name)[0][2] for name in CAPTURES]


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    value=st.binary(min_size=0, max_size=MAX_DESCRIPTOR_SIZE + 2),
    structure=st.sampled_from([None, *GOLDEN_STRUCTURES]),
)
def test_fuzz_parse_raises_only_its_error(
    value: bytes, structure: FrameDependencyStructure | None
) -> None:
    try:
        descriptor = parse_dependency_descriptor(value, structure)
    except DependencyDescriptorError:
        return
    # Whatever parses can be written back and means the same.
    in_effect = descriptor.attached_structure or structure
    assert in_effect is not None
    written = write_dependency_descriptor(descriptor, in_effect)
    assert parse_dependency_descriptor(written, in_effect) == descriptor


@settings(max_examples=1500, deadline=None)
@given(
    prefix=st.binary(min_size=3, max_size=3),
    flags=st.integers(0, 31),
    tail=st.binary(max_size=60),
    structure=st.sampled_from(GOLDEN_STRUCTURES),
)
def test_fuzz_extended_fields(
    prefix: bytes, flags: int, tail: bytes, structure: FrameDependencyStructure
) -> None:
    """Values with the extended fields' flags set on purpose, so fuzzing reaches the
    structure, mask and custom-field readers rather than failing on the template id."""
    first = (prefix[0] & 0xC0) | (prefix[0] % len(structure.templates))
    value = bytes([first, prefix[1], prefix[2], flags << 3]) + tail
    try:
        descriptor = parse_dependency_descriptor(value, structure)
    except DependencyDescriptorError:
        return
    in_effect = descriptor.attached_structure or structure
    written = write_dependency_descriptor(descriptor, in_effect)
    assert parse_dependency_descriptor(written, in_effect) == descriptor


@st.composite
def structures(draw: st.DrawFn) -> FrameDependencyStructure:
    targets = draw(st.integers(1, 6))
    chains = draw(st.integers(0, targets))
    count = draw(st.integers(1, 12))
    layers = [(0, 0)]
    for _ in range(count - 1):
        spatial, temporal = layers[-1]
        step = draw(st.sampled_from(["same", "temporal", "spatial"]))
        if step == "temporal" and temporal < 7:
            layers.append((spatial, temporal + 1))
        elif step == "spatial" and spatial < 3:
            layers.append((spatial + 1, 0))
        else:
            layers.append((spatial, temporal))
    dti = st.integers(0, 3)
    templates = tuple(
        FrameDependencyTemplate(
            spatial,
            temporal,
            tuple(draw(st.lists(dti, min_size=targets, max_size=targets))),
            tuple(draw(st.lists(st.integers(1, 16), max_size=3))),
            tuple(draw(st.lists(st.integers(0, 15), min_size=chains, max_size=chains))),
        )
        for spatial, temporal in layers
    )
    protected = (
        tuple(draw(st.lists(st.integers(0, chains - 1), min_size=targets, max_size=targets)))
        if chains
        else ()
    )
    resolutions = draw(
        st.one_of(
            st.just(()),
            st.just(tuple((16 * (s + 1), 9 * (s + 1)) for s in range(layers[-1][0] + 1))),
        )
    )
    return FrameDependencyStructure(
        structure_id=draw(st.integers(0, 63)),
        num_decode_targets=targets,
        templates=templates,
        num_chains=chains,
        decode_target_protected_by_chain=protected,
        resolutions=resolutions,
    )


@settings(max_examples=500, deadline=None)
@given(data=st.data(), structure=structures())
def test_fuzz_write_then_parse(data: st.DataObject, structure: FrameDependencyStructure) -> None:
    template = data.draw(st.sampled_from(structure.templates))
    targets = structure.num_decode_targets
    custom = data.draw(st.booleans())
    frame = (
        FrameDependencyTemplate(
            template.spatial_id,
            template.temporal_id,
            tuple(data.draw(st.lists(st.integers(0, 3), min_size=targets, max_size=targets))),
            tuple(data.draw(st.lists(st.integers(1, 4096), max_size=4))),
            tuple(
                data.draw(
                    st.lists(
                        st.integers(0, 255),
                        min_size=structure.num_chains,
                        max_size=structure.num_chains,
                    )
                )
            ),
        )
        if custom
        else template
    )
    descriptor = DependencyDescriptor(
        start_of_frame=data.draw(st.booleans()),
        end_of_frame=data.draw(st.booleans()),
        frame_number=data.draw(st.integers(0, 0xFFFF)),
        frame=frame,
        attached_structure=structure if data.draw(st.booleans()) else None,
        active_decode_targets_bitmask=data.draw(
            st.one_of(st.none(), st.integers(0, (1 << targets) - 1))
        ),
    )
    value = write_dependency_descriptor(descriptor, structure)
    parsed = parse_dependency_descriptor(value, structure)
    expected_mask = descriptor.active_decode_targets_bitmask
    assert parsed.frame == frame
    assert parsed.frame_number == descriptor.frame_number
    assert (parsed.start_of_frame, parsed.end_of_frame) == (
        descriptor.start_of_frame,
        descriptor.end_of_frame,
    )
    assert parsed.attached_structure == descriptor.attached_structure
    all_active = (1 << targets) - 1
    if descriptor.attached_structure is not None and expected_mask == all_active:
        # "All active" is what an attached structure means: it is not written.
        assert parsed.active_decode_targets_bitmask is None
    else:
        assert parsed.active_decode_targets_bitmask == expected_mask
