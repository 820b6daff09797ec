"""DependencyDescriptorSelector over Chromium's AV1 descriptors (L1T3, L2T3_KEY, L2T3):
which frames each decode target gets, switches up and down at the right frames, key
frame requests, and what a subscriber receives: decodable frames (every reference
arrived), increasing frame numbers across a publisher restart, the structure after a
switch and the active decode targets bitmask."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, replace

from hypothesis import given, settings
from hypothesis import strategies as st
from test_dependency_descriptor import golden

from sfu.dependency_descriptor_selector import (
    DependencyDescriptorSelector,
    decode_targets,
)
from sfu.rtp.dependency_descriptor import (
    DecodeTargetIndication,
    DependencyDescriptor,
    FrameDependencyStructure,
    parse_dependency_descriptor,
    write_dependency_descriptor,
)
from sfu.rtp.seqnum import WrapAroundExtender


@dataclass
class Packet:
    value: bytes
    marker: bool
    descriptor: DependencyDescriptor
    structure: FrameDependencyStructure

    @property
    def layer(self) -> tuple[int, int]:
        return self.descriptor.frame.spatial_id, self.descriptor.frame.temporal_id


def stream(name: str, frame_shift: int = 0) -> list[Packet]:
    """A capture as the producer would hand it over: each value parsed against the
    latest structure; ``frame_shift`` renumbers the frames (a later stretch of the same
    stream)."""
    structure: FrameDependencyStructure | None = None
    packets = []
    for _, _, marker, value in golden(name):
        descriptor = parse_dependency_descriptor(value, structure)
        structure = descriptor.attached_structure or structure
        assert structure is not None
        if frame_shift:
            descriptor = replace(
                descriptor, frame_number=(descriptor.frame_number + frame_shift) & 0xFFFF
            )
            value = write_dependency_descriptor(descriptor, structure)
        packets.append(Packet(value, marker, descriptor, structure))
    return packets


def last_frame(packets: list[Packet]) -> int:
    return packets[-1].descriptor.frame_number


class Subscriber:
    """What a receiver of the forwarded stream knows and checks (libwebrtc's way of
    reading the descriptor): the structure it was sent, its active decode targets, and
    that every new frame's references arrived before it, in increasing frame numbers."""

    def __init__(self) -> None:
        self.structure: FrameDependencyStructure | None = None
        self.active: int | None = None
        self.frames = WrapAroundExtender(16)
        self.received: dict[int, tuple[int, int]] = {}
        """Layer of each frame received, by extended frame number."""
        self.last: int | None = None
        self.layers: Counter[tuple[int, int]] = Counter()
        self.structures_received = 0
        self.markers = 0
        self.numbers: list[int] = []
        """The extended frame number of each packet received."""

    def receive(self, value: bytes, marker: bool) -> DependencyDescriptor:
        descriptor = parse_dependency_descriptor(value, self.structure)
        if descriptor.attached_structure is not None:
            self.structure = descriptor.attached_structure
            self.active = (1 << self.structure.num_decode_targets) - 1
            self.structures_received += 1
        if descriptor.active_decode_targets_bitmask is not None:
            self.active = descriptor.active_decode_targets_bitmask
        number = self.frames.update(descriptor.frame_number)
        self.numbers.append(number)
        layer = descriptor.frame.spatial_id, descriptor.frame.temporal_id
        if number in self.received:
            # Another packet of a frame already started: the same frame, not a reused
            # number.
            assert self.received[number] == layer and not descriptor.start_of_frame
        else:
            assert self.last is None or number > self.last, (number, self.last)
            for fdiff in descriptor.frame.fdiffs:
                assert number - fdiff in self.received, (number, fdiff)
            self.received[number] = layer
            self.last = number
            self.layers[layer] += 1
        self.markers += marker
        return descriptor


def run(
    selector: DependencyDescriptorSelector, packets: Iterable[Packet], subscriber: Subscriber
) -> list[Packet]:
    """Feed ``packets``; returns those forwarded."""
    forwarded = []
    for packet in packets:
        selection = selector.select(
            packet.descriptor, packet.structure, packet.value, packet.marker
        )
        if selection is not None:
            subscriber.receive(selection.descriptor, selection.marker)
            forwarded.append(packet)
    return forwarded


def test_decode_targets_stand_for_layers() -> None:
    l1t3 = decode_targets(stream("chromium-av1-l1t3")[0].structure)
    assert [(t.index, t.spatial_id, t.temporal_id, t.chain) for t in l1t3] == [
        (2, 0, 2, 0),
        (1, 0, 1, 0),
        (0, 0, 0, 0),
    ]
    l2t3 = decode_targets(stream("chromium-av1-l2t3-key")[0].structure)
    assert [(t.index, t.spatial_id, t.temporal_id, t.chain) for t in l2t3] == [
        (5, 1, 2, 1),
        (4, 1, 1, 1),
        (3, 1, 0, 1),
        (2, 0, 2, 0),
        (1, 0, 1, 0),
        (0, 0, 0, 0),
    ]


def test_top_target_forwards_every_packet_unchanged() -> None:
    packets = stream("chromium-av1-l1t3")
    selector = DependencyDescriptorSelector(0, 2)
    subscriber = Subscriber()
    sent = []
    for packet in packets:
        selection = selector.select(
            packet.descriptor, packet.structure, packet.value, packet.marker
        )
        assert selection is not None
        subscriber.receive(selection.descriptor, selection.marker)
        sent.append(selection.descriptor)
    assert sent == [packet.value for packet in packets]
    assert not selector.needs_key_frame


def test_temporal_targets_of_l1t3() -> None:
    packets = stream("chromium-av1-l1t3")
    for temporal, mask in ((0, 0b001), (1, 0b011)):
        selector = DependencyDescriptorSelector(0, temporal)
        subscriber = Subscriber()
        forwarded = run(selector, packets, subscriber)
        assert {p.layer for p in forwarded} == {(0, t) for t in range(temporal + 1)}
        assert {p.layer for p in packets} - {p.layer for p in forwarded} == {
            (0, t) for t in range(temporal + 1, 3)
        }
        # Every frame of the kept layers is forwarded, with all its packets.
        assert len(forwarded) == sum(1 for p in packets if p.layer[1] <= temporal)
        assert subscriber.active == mask
        assert subscriber.structures_received == 1
        assert not selector.needs_key_frame


def test_spatial_target_of_l2t3_key_sets_the_marker_on_its_layer() -> None:
    packets = stream("chromium-av1-l2t3-key")
    selector = DependencyDescriptorSelector(0, 2)
    subscriber = Subscriber()
    forwarded = run(selector, packets, subscriber)
    assert {p.layer[0] for p in forwarded} == {0}
    ends = sum(1 for p in forwarded if p.descriptor.end_of_frame)
    # The publisher marks the end of S1's frames; S0's last packets get the marker here.
    assert not any(p.marker for p in forwarded)
    assert subscriber.markers == ends > 100
    assert subscriber.active == 0b000111


def test_key_mode_s1_gets_no_s0_delta_frames() -> None:
    packets = stream("chromium-av1-l2t3-key")
    selector = DependencyDescriptorSelector(1, 0)
    subscriber = Subscriber()
    forwarded = run(selector, packets, subscriber)
    assert Counter(p.layer for p in forwarded if p.descriptor.start_of_frame) == {
        (0, 0): 1,
        (1, 0): subscriber.layers[1, 0],
    }
    assert subscriber.active == 0b001001


def test_temporal_switch_up_at_a_switch_frame_without_key_frame() -> None:
    packets = stream("chromium-av1-l1t3")
    selector = DependencyDescriptorSelector(0, 0)
    subscriber = Subscriber()
    run(selector, packets[:100], subscriber)
    structures = subscriber.structures_received
    selector.set_target(0, 2)
    forwarded = run(selector, packets[100:], subscriber)
    first_t2 = next(i for i, p in enumerate(forwarded) if p.layer == (0, 2))
    # The switch happens at the next switch point of the T2 target (a T0 or T1 frame),
    # a few frames on; T2 frames before it were not sent.
    switch = forwarded[first_t2 - 1]
    assert switch.descriptor.frame.dtis[2] == DecodeTargetIndication.SWITCH
    skipped = {p.descriptor.frame_number for p in packets[100:]} - {
        p.descriptor.frame_number for p in forwarded
    }
    assert all(n < switch.descriptor.frame_number for n in skipped)
    assert len(skipped) <= 3
    assert subscriber.structures_received == structures + 1
    assert subscriber.active == 0b111
    assert not selector.needs_key_frame
    assert selector.current is not None and selector.current.index == 2


def test_temporal_switch_down_is_immediate() -> None:
    packets = stream("chromium-av1-l1t3")
    selector = DependencyDescriptorSelector(0, 2)
    subscriber = Subscriber()
    run(selector, packets[:100], subscriber)
    selector.set_target(0, 0)
    forwarded = run(selector, packets[100:], subscriber)
    assert forwarded[0].layer == (0, 0)
    assert {p.layer for p in forwarded} == {(0, 0)}
    assert subscriber.active == 0b001


def test_key_mode_spatial_switch_up_waits_for_a_key_frame() -> None:
    first = stream("chromium-av1-l2t3-key")
    second = stream("chromium-av1-l2t3-key", frame_shift=last_frame(first))
    selector = DependencyDescriptorSelector(0, 2)
    subscriber = Subscriber()
    run(selector, first[:200], subscriber)
    selector.set_target(1, 2)
    forwarded = run(selector, first[200:], subscriber)
    # S1's chain was dropped here: its switch points are out of reach.
    assert {p.layer[0] for p in forwarded} == {0}
    assert selector.needs_key_frame
    forwarded = run(selector, second, subscriber)
    assert forwarded[0] is second[0]
    assert {p.layer[0] for p in forwarded} == {0, 1}
    assert not selector.needs_key_frame
    assert subscriber.active == 0b111111


def test_key_mode_spatial_switch_down_stays_up_until_a_key_frame() -> None:
    first = stream("chromium-av1-l2t3-key")
    second = stream("chromium-av1-l2t3-key", frame_shift=last_frame(first))
    selector = DependencyDescriptorSelector(1, 2)
    subscriber = Subscriber()
    run(selector, first[:200], subscriber)
    selector.set_target(0, 2)
    forwarded = run(selector, first[200:], subscriber)
    # S0's own frames were not forwarded: S0 alone is not decodable until a key frame,
    # so S1 (above the target) goes on, and a key frame is asked for.
    assert {p.layer[0] for p in forwarded} == {1}
    assert selector.needs_key_frame
    forwarded = run(selector, second, subscriber)
    assert {p.layer[0] for p in forwarded[1:]} == {0}
    assert not selector.needs_key_frame
    assert subscriber.active == 0b000111


def test_full_svc_spatial_switch_down_is_immediate() -> None:
    packets = stream("chromium-av1-l2t3")
    selector = DependencyDescriptorSelector(1, 2)
    subscriber = Subscriber()
    run(selector, packets[:200], subscriber)
    selector.set_target(0, 2)
    forwarded = run(selector, packets[200:], subscriber)
    assert {p.layer[0] for p in forwarded} == {0}
    assert not selector.needs_key_frame


def test_nothing_before_the_first_key_frame() -> None:
    packets = stream("chromium-av1-l1t3")
    selector = DependencyDescriptorSelector(0, 2)
    subscriber = Subscriber()
    # A consumer that starts mid-stream knows the structure (the producer keeps it)
    # but can forward nothing until the chain starts again.
    forwarded = run(selector, packets[50:], subscriber)
    assert forwarded == []
    assert selector.needs_key_frame
    assert selector.frames_dropped > 0


def test_frame_numbers_continue_across_a_publisher_restart() -> None:
    """A new structure whose frames restart at 1 (the publisher restarted its encoder
    in another mode) goes on from the last frame number sent, with its structure."""
    first = stream("chromium-av1-l1t3")
    second = stream("chromium-av1-l2t3")
    assert second[0].descriptor.frame_number < last_frame(first)
    selector = DependencyDescriptorSelector(1, 2)
    subscriber = Subscriber()
    run(selector, first, subscriber)
    before = subscriber.last
    count = len(subscriber.numbers)
    forwarded = run(selector, second, subscriber)
    assert forwarded[0] is second[0]
    assert before is not None
    after = subscriber.numbers[count:]
    assert after[0] == before + 1
    assert after == sorted(after)
    assert len(set(after)) == len({p.descriptor.frame_number for p in second})
    assert subscriber.structures_received == 2
    assert subscriber.structure == second[0].structure


def test_every_packet_of_a_frame_gets_its_frame_decision() -> None:
    packets = stream("chromium-av1-l1t3")
    selector = DependencyDescriptorSelector(0, 1)
    subscriber = Subscriber()
    run(selector, packets[:60], subscriber)
    # A retransmitted packet (a NACK answered by the publisher) gets the same answer.
    for packet in packets[:60]:
        if packet.descriptor.frame_number <= packets[10].descriptor.frame_number:
            continue
        selection = selector.select(
            packet.descriptor, packet.structure, packet.value, packet.marker
        )
        assert (selection is not None) == (packet.layer[1] <= 1)


CAPTURED = {name: stream(name) for name in ("chromium-av1-l1t3", "chromium-av1-l2t3-key")}


@settings(max_examples=150, deadline=None)
@given(
    name=st.sampled_from(sorted(CAPTURED)),
    lost=st.sets(st.integers(0, 400), max_size=40),
    swapped=st.sets(st.integers(0, 399), max_size=20),
    targets=st.lists(
        st.tuples(st.integers(0, 400), st.integers(0, 2), st.integers(0, 2)), max_size=6
    ),
)
def test_fuzz_loss_reordering_and_target_changes(
    name: str,
    lost: set[int],
    swapped: set[int],
    targets: list[tuple[int, int, int]],
) -> None:
    """Whatever arrives, in whatever order, and whatever the target: the selector never
    raises, and every descriptor it sends is readable by its subscriber (the structure
    always came first)."""
    packets = [p for i, p in enumerate(CAPTURED[name][:401]) if i not in lost]
    for i in sorted(swapped):
        if i + 1 < len(packets):
            packets[i], packets[i + 1] = packets[i + 1], packets[i]
    changes = {at: (spatial, temporal) for at, spatial, temporal in targets}
    selector = DependencyDescriptorSelector(1, 2)
    structure: FrameDependencyStructure | None = None
    for index, packet in enumerate(packets):
        if index in changes:
            selector.set_target(*changes[index])
        selection = selector.select(
            packet.descriptor, packet.structure, packet.value, packet.marker
        )
        if selection is None:
            continue
        descriptor = parse_dependency_descriptor(selection.descriptor, structure)
        structure = descriptor.attached_structure or structure
