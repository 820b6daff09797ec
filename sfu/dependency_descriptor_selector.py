"""DependencyDescriptorSelector: per consumer, which frames of a dependency-descriptor
stream to forward for the decode target it is given, and the descriptor it receives.

The dependency descriptor (AV1 RTP specification, appendix A; ``sfu/rtp/
dependency_descriptor.py``) gives each frame a decode target indication (DTI) per decode
target and, per chain, the previous frame of the chain. A decode target stands for a
spatial and temporal layer: the highest layer of the templates it needs. The selector
picks, frame by frame, the highest active decode target within the consumer's target
layer that it can forward (LiveKit ``videolayerselector/dependencydescriptor.go``):

- it stays on the decode target it forwards while that target's chain is intact (the
  previous frame of the chain was not dropped here);
- it switches to another one at a frame whose DTI for it is *switch* and whose chain is
  intact (every frame of the chain so far forwarded), or, for a target the current one
  includes, at any frame with an intact chain; a key frame (all chains starting) is
  such a point for every target;
- it forwards a frame when the chosen target needs it (DTI not *not present*) and none
  of the frames it references was dropped here; every packet of a frame gets the
  decision of its frame;
- with no decode target it can forward (before the first key frame, or once the chain
  broke) it drops everything and :attr:`needs_key_frame` says so.

What the subscriber receives: the publisher's frame numbers plus an offset, changed
only at a key frame where forwarding resumes so the numbering stays increasing across
publisher restarts and structure changes (the frames in between keep their distances,
which the frame diffs and chain diffs are); frames dropped here leave gaps, which the
descriptor allows (references are explicit). The structure is attached to the first
forwarded packet after a switch or a structure change, and the active decode targets
bitmask (the targets within the one forwarded) is written on every packet while it is
not "all", so a lost packet cannot leave the subscriber waiting for frames that will
never come.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import NamedTuple

from sfu.rtp.dependency_descriptor import (
    FRAME_NUMBER_BITS,
    DecodeTargetIndication,
    DependencyDescriptor,
    FrameDependencyStructure,
    FrameDependencyTemplate,
    write_dependency_descriptor,
)
from sfu.rtp.seqnum import WrapAroundExtender

DECISION_HISTORY = 256
"""Frames whose forward/drop decision is remembered (a power of two; chain diffs reach
at most 255 frames back)."""
MAX_FRAME_NUMBER_JUMP = 1000
"""A resuming key frame more than this many frames ahead of the last one forwarded is
renumbered to follow it directly."""

_HISTORY_MASK = DECISION_HISTORY - 1
_FRAME_NUMBER_MASK = (1 << FRAME_NUMBER_BITS) - 1
_NOT_PRESENT = DecodeTargetIndication.NOT_PRESENT
_SWITCH = DecodeTargetIndication.SWITCH


@dataclass(frozen=True, slots=True)
class DecodeTarget:
    """A decode target of a structure: its index, the layer it stands for, its chain."""

    index: int
    spatial_id: int
    temporal_id: int
    chain: int | None
    """The chain protecting it, None when the structure has no chains."""


def decode_targets(structure: FrameDependencyStructure) -> tuple[DecodeTarget, ...]:
    """The decode targets of ``structure``, highest layer first.

    A target's layer is the highest spatial and temporal id among the templates it
    needs; a target no template is part of is left out.
    """
    targets = []
    for index in range(structure.num_decode_targets):
        layers = [
            (template.spatial_id, template.temporal_id)
            for template in structure.templates
            if template.dtis[index] != _NOT_PRESENT
        ]
        if not layers:
            continue
        chain = structure.decode_target_protected_by_chain[index] if structure.num_chains else None
        spatial = max(layer[0] for layer in layers)
        temporal = max(layer[1] for layer in layers)
        targets.append(DecodeTarget(index, spatial, temporal, chain))
    targets.sort(key=lambda t: (t.spatial_id, t.temporal_id, -t.index), reverse=True)
    return tuple(targets)


class DependencyDescriptorSelection(NamedTuple):
    """What to send for a forwarded packet: its descriptor value and its marker bit."""

    descriptor: bytes
    marker: bool


class DependencyDescriptorSelector:
    """Forward/drop decisions and descriptor rewriting for one consumer of one stream."""

    __slots__ = (
        "_all_active",
        "_attach_structure",
        "_current",
        "_decided",
        "_forwarded",
        "_frames",
        "_key_frame_wanted",
        "_last_out",
        "_offset",
        "_out_mask",
        "_source_active",
        "_structure",
        "_structure_frame",
        "_target",
        "_targets",
        "frames_dropped",
        "frames_forwarded",
    )

    def __init__(self, spatial_id: int = 0, temporal_id: int = 0) -> None:
        self._target = (spatial_id, temporal_id)
        self._key_frame_wanted = False
        self._structure: FrameDependencyStructure | None = None
        self._targets: tuple[DecodeTarget, ...] = ()
        self._all_active = 0
        self._source_active = 0
        """The publisher's active decode targets (its last bitmask)."""
        self._current: DecodeTarget | None = None
        self._out_mask = 0
        self._attach_structure = False
        self._key_frame_wanted = False
        """A wanted decode target (a lower one, or a higher one at a switch point) is out
        of reach until its chain restarts at a key frame."""
        self._frames = WrapAroundExtender(FRAME_NUMBER_BITS)
        self._structure_frame = 0
        """Extended number of the frame the structure took effect at; older frames are
        dropped."""
        self._decided = [-1] * DECISION_HISTORY
        """Extended frame number whose decision each slot holds."""
        self._forwarded = [False] * DECISION_HISTORY
        self._offset = 0
        self._last_out: int | None = None
        """Highest extended frame number (after the offset) forwarded so far."""
        self.frames_forwarded = 0
        self.frames_dropped = 0

    @property
    def target(self) -> tuple[int, int]:
        """The highest (spatial, temporal) layer the consumer is to receive."""
        return self._target

    @property
    def current(self) -> DecodeTarget | None:
        """The decode target being forwarded, None when none is."""
        return self._current

    @property
    def needs_key_frame(self) -> bool:
        """Only a key frame of the publisher lets this consumer get its target: nothing
        can be forwarded, or the wanted decode target's chain was dropped here."""
        return self._current is None or self._key_frame_wanted

    def set_target(self, spatial_id: int, temporal_id: int) -> None:
        """Aim at the highest decode target within this layer, from the next switch point."""
        self._target = (spatial_id, temporal_id)
        self._key_frame_wanted = False

    def select(
        self,
        descriptor: DependencyDescriptor,
        structure: FrameDependencyStructure,
        value: bytes,
        marker: bool,
    ) -> DependencyDescriptorSelection | None:
        """Decide one packet: None to drop it, else the descriptor value and marker to send.

        ``descriptor`` was parsed from ``value`` with ``structure``, the latest structure
        of the stream; ``marker`` is the packet's RTP marker bit.
        """
        frame_number = self._frames.update(descriptor.frame_number)
        if structure is not self._structure:
            self._change_structure(structure, frame_number)
        if descriptor.active_decode_targets_bitmask is not None:
            self._source_active = descriptor.active_decode_targets_bitmask
        elif descriptor.attached_structure is not None:
            self._source_active = self._all_active
        slot = frame_number & _HISTORY_MASK
        if (
            descriptor.attached_structure is not None
            and not descriptor.frame.fdiffs
            and self._decided[slot] != frame_number
        ):
            self._forget(frame_number)
        elif frame_number < self._structure_frame:
            return None
        if self._decided[slot] == frame_number:
            if not self._forwarded[slot]:
                return None
        elif not self._decide(descriptor.frame, frame_number, slot):
            return None
        return self._rewrite(descriptor, structure, value, marker, frame_number)

    def _change_structure(self, structure: FrameDependencyStructure, frame_number: int) -> None:
        previous = self._structure
        self._structure = structure
        if previous is not None and previous == structure:
            return
        self._targets = decode_targets(structure)
        self._all_active = (1 << structure.num_decode_targets) - 1
        self._source_active = self._all_active
        self._current = None
        self._forget(frame_number)

    def _forget(self, frame_number: int) -> None:
        """A key frame (or a new structure) at ``frame_number``: earlier frames are dropped
        from now on, and no decision about them is looked up (a restarted publisher's
        frame numbers may repeat them)."""
        self._structure_frame = frame_number
        self._decided = [-1] * DECISION_HISTORY

    def _decide(self, frame: FrameDependencyTemplate, frame_number: int, slot: int) -> bool:
        chosen = self._choose(frame, frame_number)
        if chosen is not self._current:
            if chosen is not None and self._current is None:
                self._resume(frame, frame_number)
            self._current = chosen
            if chosen is not None:
                self._attach_structure = True
                self._out_mask = self._mask_within(chosen)
        forward = chosen is not None and frame.dtis[chosen.index] != _NOT_PRESENT
        if forward:
            for fdiff in frame.fdiffs:
                if self._dropped(frame_number - fdiff):
                    forward = False
                    break
        self._decided[slot] = frame_number
        self._forwarded[slot] = forward
        if forward:
            self.frames_forwarded += 1
        else:
            self.frames_dropped += 1
        return forward

    def _choose(self, frame: FrameDependencyTemplate, frame_number: int) -> DecodeTarget | None:
        current = self._current
        spatial, temporal = self._target
        active = self._source_active
        current_usable = (
            current is not None
            and active >> current.index & 1 == 1
            and self._chain_not_dropped(frame, frame_number, current)
        )
        blocked = False
        for target in self._targets:
            if (
                target.spatial_id > spatial
                or target.temporal_id > temporal
                or not active >> target.index & 1
            ):
                continue
            if target is current:
                if current_usable:
                    break
                continue
            switch = frame.dtis[target.index] == _SWITCH
            if self._chain_forwarded(frame, frame_number, target):
                if switch or (
                    current is not None
                    and target.spatial_id <= current.spatial_id
                    and target.temporal_id <= current.temporal_id
                ):
                    self._key_frame_wanted = False
                    return target
            elif switch:
                # A switch point of a wanted target whose chain was dropped here: only
                # a key frame restarts the chain.
                blocked = True
        else:
            # Nothing within the target can be forwarded from here: stay above it until
            # a key frame, or stop.
            if current_usable:
                self._key_frame_wanted = True
                return current
            return None
        if blocked:
            self._key_frame_wanted = True
        return current

    def _chain_forwarded(
        self, frame: FrameDependencyTemplate, frame_number: int, target: DecodeTarget
    ) -> bool:
        """Every frame of the target's chain so far was forwarded (strict: to switch)."""
        if target.chain is None:
            return not frame.fdiffs
        diff = frame.chain_diffs[target.chain]
        if diff == 0:
            return True
        previous = frame_number - diff
        slot = previous & _HISTORY_MASK
        return self._decided[slot] == previous and self._forwarded[slot]

    def _chain_not_dropped(
        self, frame: FrameDependencyTemplate, frame_number: int, target: DecodeTarget
    ) -> bool:
        """The previous frame of the target's chain was not dropped here (relaxed: a
        frame still on its way, or being repaired, does not break it)."""
        if target.chain is None:
            return True
        diff = frame.chain_diffs[target.chain]
        return diff == 0 or not self._dropped(frame_number - diff)

    def _dropped(self, frame_number: int) -> bool:
        slot = frame_number & _HISTORY_MASK
        return self._decided[slot] == frame_number and not self._forwarded[slot]

    def _mask_within(self, chosen: DecodeTarget) -> int:
        mask = 0
        for target in self._targets:
            if target.spatial_id <= chosen.spatial_id and target.temporal_id <= chosen.temporal_id:
                mask |= 1 << target.index
        return mask & self._source_active

    def _resume(self, frame: FrameDependencyTemplate, frame_number: int) -> None:
        """Forwarding starts again at ``frame``: at a frame that references nothing,
        renumber so it follows the last forwarded frame when it would not."""
        last = self._last_out
        if last is None or frame.fdiffs:
            return
        out = frame_number + self._offset
        if out <= last or out > last + MAX_FRAME_NUMBER_JUMP:
            self._offset = last + 1 - frame_number

    def _rewrite(
        self,
        descriptor: DependencyDescriptor,
        structure: FrameDependencyStructure,
        value: bytes,
        marker: bool,
        frame_number: int,
    ) -> DependencyDescriptorSelection:
        current = self._current
        assert current is not None
        out = frame_number + self._offset
        if self._last_out is None or out > self._last_out:
            self._last_out = out
        if descriptor.end_of_frame and descriptor.frame.spatial_id == current.spatial_id:
            marker = True
        attach = self._attach_structure
        self._attach_structure = False
        mask = self._out_mask
        if (
            not self._offset
            and mask == self._all_active
            and (not attach or descriptor.attached_structure is not None)
            and descriptor.active_decode_targets_bitmask in (None, self._all_active)
        ):
            return DependencyDescriptorSelection(value, marker)
        rewritten = replace(
            descriptor,
            frame_number=out & _FRAME_NUMBER_MASK,
            attached_structure=structure if attach or descriptor.attached_structure else None,
            active_decode_targets_bitmask=None if mask == self._all_active else mask,
        )
        return DependencyDescriptorSelection(
            write_dependency_descriptor(rewritten, structure), marker
        )
