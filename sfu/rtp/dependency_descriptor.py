"""The dependency descriptor RTP header extension (AV1 RTP specification, appendix A).

A descriptor tells, for one frame, its spatial and temporal layer, which decode targets
need it (decode target indications, DTIs), which earlier frames it references (frame
diffs) and, per chain, the previous frame of that chain (chain diffs). Most of that is
given by pointing at a template of the *template dependency structure*, which a key
frame's first packet attaches and later descriptors refer to; a frame that matches no
template carries custom DTIs, frame diffs or chain diffs.

:func:`parse_dependency_descriptor` reads one extension value given the structure in
effect, :func:`write_dependency_descriptor` writes one (choosing the template that needs
the fewest custom fields, as libwebrtc's writer does). Both are bounded: a value is at
most :data:`MAX_DESCRIPTOR_SIZE` bytes, every loop consumes bits of it or is capped by
the specification's limits, and any malformed input raises
:class:`DependencyDescriptorError` (a ``ValueError``), nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum
from itertools import pairwise

MAX_DESCRIPTOR_SIZE = 255
"""Longest extension value RFC 8285's two-byte form can carry."""
MANDATORY_FIELDS_SIZE = 3
"""Bytes of the mandatory fields; a longer value carries the extended fields."""
MAX_TEMPLATES = 64
"""Template ids are 6 bits; a structure holds at most 63 templates so ids can rotate."""
MAX_SPATIAL_IDS = 4
MAX_TEMPLATE_TEMPORAL_IDS = 8
MAX_DECODE_TARGETS = 32
FRAME_NUMBER_BITS = 16
MAX_TEMPLATE_FDIFF = 16
MAX_TEMPLATE_CHAIN_DIFF = 15
MAX_CUSTOM_FDIFF = 1 << 12
MAX_CUSTOM_CHAIN_DIFF = 255
MAX_RESOLUTION = 1 << 16

_NEXT_LAYER_SAME = 0
_NEXT_LAYER_TEMPORAL = 1
_NEXT_LAYER_SPATIAL = 2
_NO_MORE_TEMPLATES = 3


class DependencyDescriptorError(ValueError):
    """A dependency descriptor that is malformed, or that refers to no known structure."""


class DecodeTargetIndication(IntEnum):
    """How a frame matters to a decode target (appendix A.8.3)."""

    NOT_PRESENT = 0
    """The frame is not part of the decode target."""
    DISCARDABLE = 1
    """Part of it, but no later frame of the decode target references it."""
    SWITCH = 2
    """Part of it and a switch point: the target is decodable from here on if its chain is
    intact."""
    REQUIRED = 3
    """Part of it, and later frames of the decode target may reference it."""


@dataclass(frozen=True, slots=True)
class FrameDependencyTemplate:
    """A frame's layer and dependencies: a template of a structure, or one frame's own.

    ``dtis`` has one entry per decode target, ``chain_diffs`` one per chain; ``fdiffs``
    are the distances back (in frame numbers) to the frames this one references.
    """

    spatial_id: int
    temporal_id: int
    dtis: tuple[int, ...]
    fdiffs: tuple[int, ...] = ()
    chain_diffs: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class FrameDependencyStructure:
    """The template dependency structure (appendix A.8.3).

    ``structure_id`` is the template id offset: template ``i`` has the id
    ``(structure_id + i) % 64``. ``decode_target_protected_by_chain`` has an entry per
    decode target when there are chains, and is empty otherwise. ``resolutions`` is
    empty or has a ``(width, height)`` per spatial layer.
    """

    structure_id: int
    num_decode_targets: int
    templates: tuple[FrameDependencyTemplate, ...]
    num_chains: int = 0
    decode_target_protected_by_chain: tuple[int, ...] = ()
    resolutions: tuple[tuple[int, int], ...] = ()

    def __post_init__(self) -> None:
        _check_structure(self)


@dataclass(frozen=True, slots=True)
class DependencyDescriptor:
    """One parsed dependency descriptor.

    ``frame`` is the frame's dependency information, from its template and any custom
    fields. ``attached_structure`` is the structure the descriptor carries (None when it
    refers to an earlier one). ``active_decode_targets_bitmask`` is the bitmask the
    descriptor carries, bit ``i`` for decode target ``i``: None when it carries none
    (the receiver keeps the last one; an attached structure makes them all active).
    """

    start_of_frame: bool
    end_of_frame: bool
    frame_number: int
    frame: FrameDependencyTemplate
    attached_structure: FrameDependencyStructure | None = None
    active_decode_targets_bitmask: int | None = None
    template_id: int = field(default=-1, compare=False)
    """The template id the descriptor named when parsed; -1 when built otherwise. The
    writer chooses its own template."""


class _BitReader:
    __slots__ = ("_bits", "_position", "_value")

    def __init__(self, data: bytes) -> None:
        self._value = int.from_bytes(data, "big")
        self._bits = len(data) * 8
        self._position = 0

    def read(self, count: int) -> int:
        end = self._position + count
        if end > self._bits:
            raise DependencyDescriptorError(
                f"dependency descriptor ends after {self._bits} bits, reading bit {end}"
            )
        self._position = end
        return (self._value >> (self._bits - end)) & ((1 << count) - 1)

    def read_non_symmetric(self, num_values: int) -> int:
        """``ns(n)`` of the AV1 specification (4.10.7): a value in ``0..n-1``."""
        width = num_values.bit_length()
        limit = (1 << width) - num_values
        value = self.read(width - 1)
        if value < limit:
            return value
        return (value << 1) - limit + self.read(1)


class _BitWriter:
    __slots__ = ("_bits", "_value")

    def __init__(self) -> None:
        self._value = 0
        self._bits = 0

    def write(self, value: int, count: int) -> None:
        self._value = (self._value << count) | value
        self._bits += count

    def write_non_symmetric(self, value: int, num_values: int) -> None:
        width = num_values.bit_length()
        limit = (1 << width) - num_values
        if value < limit:
            self.write(value, width - 1)
        else:
            self.write(value + limit, width)

    def to_bytes(self) -> bytes:
        size = (self._bits + 7) // 8
        return (self._value << (size * 8 - self._bits)).to_bytes(size, "big")


def parse_dependency_descriptor(
    data: bytes, structure: FrameDependencyStructure | None
) -> DependencyDescriptor:
    """Parse one extension value; ``structure`` is the latest one received, if any.

    A value that attaches a structure is read with it; one that does not needs
    ``structure``. Raises :class:`DependencyDescriptorError` on anything malformed.
    """
    size = len(data)
    if size < MANDATORY_FIELDS_SIZE:
        raise DependencyDescriptorError(f"dependency descriptor is {size} bytes, at least 3")
    if size > MAX_DESCRIPTOR_SIZE:
        raise DependencyDescriptorError(f"dependency descriptor is {size} bytes, at most 255")
    first = data[0]
    template_id = first & 0x3F
    frame_number = (data[1] << 8) | data[2]
    attached: FrameDependencyStructure | None = None
    mask: int | None = None
    custom_dtis = custom_fdiffs = custom_chains = False
    reader: _BitReader | None = None
    if size > MANDATORY_FIELDS_SIZE:
        reader = _BitReader(data)
        reader.read(24)
        flags = reader.read(5)
        custom_dtis = bool(flags & 0x04)
        custom_fdiffs = bool(flags & 0x02)
        custom_chains = bool(flags & 0x01)
        if flags & 0x10:
            attached = _read_structure(reader)
            structure = attached
        if flags & 0x08:
            if structure is None:
                raise DependencyDescriptorError("dependency descriptor refers to no structure")
            mask = reader.read(structure.num_decode_targets)
    if structure is None:
        raise DependencyDescriptorError("dependency descriptor refers to no structure")
    index = (template_id - structure.structure_id) % MAX_TEMPLATES
    templates = structure.templates
    if index >= len(templates):
        raise DependencyDescriptorError(
            f"dependency descriptor template id {template_id} is not in structure "
            f"{structure.structure_id} of {len(templates)} templates"
        )
    frame = templates[index]
    if reader is not None and (custom_dtis or custom_fdiffs or custom_chains):
        frame = _read_custom_fields(
            reader, frame, structure, custom_dtis, custom_fdiffs, custom_chains
        )
    return DependencyDescriptor(
        start_of_frame=bool(first & 0x80),
        end_of_frame=bool(first & 0x40),
        frame_number=frame_number,
        frame=frame,
        attached_structure=attached,
        active_decode_targets_bitmask=mask,
        template_id=template_id,
    )


def _read_custom_fields(
    reader: _BitReader,
    frame: FrameDependencyTemplate,
    structure: FrameDependencyStructure,
    custom_dtis: bool,
    custom_fdiffs: bool,
    custom_chains: bool,
) -> FrameDependencyTemplate:
    dtis = frame.dtis
    fdiffs = frame.fdiffs
    chain_diffs = frame.chain_diffs
    if custom_dtis:
        dtis = tuple(reader.read(2) for _ in range(structure.num_decode_targets))
    if custom_fdiffs:
        custom: list[int] = []
        # Each round consumes at least two bits: bounded by the value's length.
        fdiff_size = reader.read(2)
        while fdiff_size:
            custom.append(reader.read(4 * fdiff_size) + 1)
            fdiff_size = reader.read(2)
        fdiffs = tuple(custom)
    if custom_chains:
        chain_diffs = tuple(reader.read(8) for _ in range(structure.num_chains))
    return FrameDependencyTemplate(frame.spatial_id, frame.temporal_id, dtis, fdiffs, chain_diffs)


def _read_structure(reader: _BitReader) -> FrameDependencyStructure:
    structure_id = reader.read(6)
    num_decode_targets = reader.read(5) + 1
    layers: list[tuple[int, int]] = []
    spatial_id = temporal_id = 0
    while True:
        if len(layers) == MAX_TEMPLATES - 1:
            raise DependencyDescriptorError("dependency descriptor structure has 64 templates")
        layers.append((spatial_id, temporal_id))
        next_layer = reader.read(2)
        if next_layer == _NO_MORE_TEMPLATES:
            break
        if next_layer == _NEXT_LAYER_TEMPORAL:
            temporal_id += 1
            if temporal_id >= MAX_TEMPLATE_TEMPORAL_IDS:
                raise DependencyDescriptorError("dependency descriptor temporal id above 7")
        elif next_layer == _NEXT_LAYER_SPATIAL:
            spatial_id += 1
            temporal_id = 0
            if spatial_id >= MAX_SPATIAL_IDS:
                raise DependencyDescriptorError("dependency descriptor spatial id above 3")
    all_dtis = [
        tuple(reader.read(2) for _ in range(num_decode_targets)) for _ in range(len(layers))
    ]
    all_fdiffs: list[tuple[int, ...]] = []
    for _ in layers:
        fdiffs: list[int] = []
        # Each round consumes five bits: bounded by the value's length.
        while reader.read(1):
            fdiffs.append(reader.read(4) + 1)
        all_fdiffs.append(tuple(fdiffs))
    num_chains = reader.read_non_symmetric(num_decode_targets + 1)
    protected_by: tuple[int, ...] = ()
    all_chain_diffs: list[tuple[int, ...]] = [()] * len(layers)
    if num_chains:
        protected_by = tuple(
            reader.read_non_symmetric(num_chains) for _ in range(num_decode_targets)
        )
        all_chain_diffs = [
            tuple(reader.read(4) for _ in range(num_chains)) for _ in range(len(layers))
        ]
    resolutions: tuple[tuple[int, int], ...] = ()
    if reader.read(1):
        resolutions = tuple(
            (reader.read(16) + 1, reader.read(16) + 1) for _ in range(layers[-1][0] + 1)
        )
    templates = tuple(
        FrameDependencyTemplate(spatial, temporal, dtis, fdiffs, chain_diffs)
        for (spatial, temporal), dtis, fdiffs, chain_diffs in zip(
            layers, all_dtis, all_fdiffs, all_chain_diffs, strict=True
        )
    )
    return FrameDependencyStructure(
        structure_id=structure_id,
        num_decode_targets=num_decode_targets,
        templates=templates,
        num_chains=num_chains,
        decode_target_protected_by_chain=protected_by,
        resolutions=resolutions,
    )


def _check_structure(structure: FrameDependencyStructure) -> None:
    templates = structure.templates
    count = structure.num_decode_targets
    if not 0 <= structure.structure_id < MAX_TEMPLATES:
        raise DependencyDescriptorError(f"structure id {structure.structure_id} is not 0..63")
    if not 1 <= count <= MAX_DECODE_TARGETS:
        raise DependencyDescriptorError(f"{count} decode targets, expected 1..32")
    if not 1 <= len(templates) < MAX_TEMPLATES:
        raise DependencyDescriptorError(f"{len(templates)} templates, expected 1..63")
    if not 0 <= structure.num_chains <= count:
        raise DependencyDescriptorError(f"{structure.num_chains} chains for {count} targets")
    if structure.num_chains:
        protected_by = structure.decode_target_protected_by_chain
        if len(protected_by) != count or any(
            not 0 <= chain < structure.num_chains for chain in protected_by
        ):
            raise DependencyDescriptorError("decode targets are not each protected by a chain")
    elif structure.decode_target_protected_by_chain:
        raise DependencyDescriptorError("decode targets protected by chains but no chains")
    if (templates[0].spatial_id, templates[0].temporal_id) != (0, 0):
        raise DependencyDescriptorError("the first template is not of layer S0T0")
    previous = (0, 0)
    for template in templates:
        layer = (template.spatial_id, template.temporal_id)
        if not (
            layer == previous
            or layer == (previous[0], previous[1] + 1)
            or layer == (previous[0] + 1, 0)
        ):
            raise DependencyDescriptorError(f"template layer {layer} cannot follow {previous}")
        if template.spatial_id >= MAX_SPATIAL_IDS:
            raise DependencyDescriptorError("template spatial id above 3")
        if template.temporal_id >= MAX_TEMPLATE_TEMPORAL_IDS:
            raise DependencyDescriptorError("template temporal id above 7")
        previous = layer
        if len(template.dtis) != count or any(not 0 <= dti <= 3 for dti in template.dtis):
            raise DependencyDescriptorError("template DTIs do not match the decode targets")
        if any(not 1 <= fdiff <= MAX_TEMPLATE_FDIFF for fdiff in template.fdiffs):
            raise DependencyDescriptorError("template frame diff is not 1..16")
        if len(template.chain_diffs) != structure.num_chains or any(
            not 0 <= diff <= MAX_TEMPLATE_CHAIN_DIFF for diff in template.chain_diffs
        ):
            raise DependencyDescriptorError("template chain diffs do not match the chains")
    if structure.resolutions:
        if len(structure.resolutions) != templates[-1].spatial_id + 1:
            raise DependencyDescriptorError("structure needs one resolution per spatial layer")
        for width, height in structure.resolutions:
            if not (1 <= width <= MAX_RESOLUTION and 1 <= height <= MAX_RESOLUTION):
                raise DependencyDescriptorError(f"resolution {width}x{height} out of range")


def write_dependency_descriptor(
    descriptor: DependencyDescriptor, structure: FrameDependencyStructure
) -> bytes:
    """Write ``descriptor`` as an extension value, against ``structure``.

    ``structure`` is the one the receiver has (or gets now, when the descriptor attaches
    it: it must then be ``descriptor.attached_structure``). The frame's template is the
    one of its layer needing the fewest custom bits. A mask equal to "all active" is
    omitted when the structure is attached. Raises :class:`DependencyDescriptorError`
    when the frame does not fit the structure.
    """
    attached = descriptor.attached_structure
    if attached is not None and attached is not structure and attached != structure:
        raise DependencyDescriptorError("the attached structure is not the one written against")
    frame = descriptor.frame
    if not 0 <= descriptor.frame_number < 1 << FRAME_NUMBER_BITS:
        raise DependencyDescriptorError(f"frame number {descriptor.frame_number} is not 16 bits")
    if len(frame.dtis) != structure.num_decode_targets or any(
        not 0 <= dti <= 3 for dti in frame.dtis
    ):
        raise DependencyDescriptorError("frame DTIs do not match the decode targets")
    if len(frame.chain_diffs) != structure.num_chains or any(
        not 0 <= diff <= MAX_CUSTOM_CHAIN_DIFF for diff in frame.chain_diffs
    ):
        raise DependencyDescriptorError("frame chain diffs do not match the chains")
    if any(not 1 <= fdiff <= MAX_CUSTOM_FDIFF for fdiff in frame.fdiffs):
        raise DependencyDescriptorError("frame diff is not 1..4096")
    index, custom_dtis, custom_fdiffs, custom_chains = _best_template(frame, structure)
    all_active = (1 << structure.num_decode_targets) - 1
    mask = descriptor.active_decode_targets_bitmask
    if mask is not None and not 0 <= mask <= all_active:
        raise DependencyDescriptorError(f"active decode targets bitmask {mask:#x} too wide")
    write_mask = mask is not None and not (attached is not None and mask == all_active)
    writer = _BitWriter()
    writer.write(
        (0x80 if descriptor.start_of_frame else 0)
        | (0x40 if descriptor.end_of_frame else 0)
        | (structure.structure_id + index) % MAX_TEMPLATES,
        8,
    )
    writer.write(descriptor.frame_number, FRAME_NUMBER_BITS)
    if attached is None and not write_mask and not (custom_dtis or custom_fdiffs or custom_chains):
        return writer.to_bytes()
    writer.write(1 if attached is not None else 0, 1)
    writer.write(1 if write_mask else 0, 1)
    writer.write(1 if custom_dtis else 0, 1)
    writer.write(1 if custom_fdiffs else 0, 1)
    writer.write(1 if custom_chains else 0, 1)
    if attached is not None:
        _write_structure(writer, structure)
    if write_mask:
        writer.write(mask or 0, structure.num_decode_targets)
    if custom_dtis:
        for dti in frame.dtis:
            writer.write(dti, 2)
    if custom_fdiffs:
        for fdiff in frame.fdiffs:
            if fdiff <= 1 << 4:
                writer.write((1 << 4) | (fdiff - 1), 6)
            elif fdiff <= 1 << 8:
                writer.write((2 << 8) | (fdiff - 1), 10)
            else:
                writer.write((3 << 12) | (fdiff - 1), 14)
        writer.write(0, 2)
    if custom_chains:
        for diff in frame.chain_diffs:
            writer.write(diff, 8)
    value = writer.to_bytes()
    if len(value) > MAX_DESCRIPTOR_SIZE:
        raise DependencyDescriptorError(f"dependency descriptor would be {len(value)} bytes")
    return value


def _best_template(
    frame: FrameDependencyTemplate, structure: FrameDependencyStructure
) -> tuple[int, bool, bool, bool]:
    best: tuple[int, int, bool, bool, bool] | None = None
    for index, template in enumerate(structure.templates):
        if template.spatial_id != frame.spatial_id or template.temporal_id != frame.temporal_id:
            continue
        custom_dtis = template.dtis != frame.dtis
        custom_fdiffs = template.fdiffs != frame.fdiffs
        custom_chains = template.chain_diffs != frame.chain_diffs
        cost = 0
        if custom_dtis:
            cost += 2 * len(frame.dtis)
        if custom_fdiffs:
            cost += 2 + sum(6 if d <= 16 else 10 if d <= 256 else 14 for d in frame.fdiffs)
        if custom_chains:
            cost += 8 * len(frame.chain_diffs)
        if best is None or cost < best[0]:
            best = (cost, index, custom_dtis, custom_fdiffs, custom_chains)
            if cost == 0:
                break
    if best is None:
        raise DependencyDescriptorError(
            f"no template of layer S{frame.spatial_id}T{frame.temporal_id} in the structure"
        )
    return best[1], best[2], best[3], best[4]


def _write_structure(writer: _BitWriter, structure: FrameDependencyStructure) -> None:
    writer.write(structure.structure_id, 6)
    writer.write(structure.num_decode_targets - 1, 5)
    templates = structure.templates
    for previous, template in pairwise(templates):
        if template.spatial_id != previous.spatial_id:
            writer.write(_NEXT_LAYER_SPATIAL, 2)
        elif template.temporal_id != previous.temporal_id:
            writer.write(_NEXT_LAYER_TEMPORAL, 2)
        else:
            writer.write(_NEXT_LAYER_SAME, 2)
    writer.write(_NO_MORE_TEMPLATES, 2)
    for template in templates:
        for dti in template.dtis:
            writer.write(dti, 2)
    for template in templates:
        for fdiff in template.fdiffs:
            writer.write((1 << 4) | (fdiff - 1), 5)
        writer.write(0, 1)
    writer.write_non_symmetric(structure.num_chains, structure.num_decode_targets + 1)
    if structure.num_chains:
        for chain in structure.decode_target_protected_by_chain:
            writer.write_non_symmetric(chain, structure.num_chains)
        for template in templates:
            for diff in template.chain_diffs:
                writer.write(diff, 4)
    writer.write(1 if structure.resolutions else 0, 1)
    for width, height in structure.resolutions:
        writer.write(width - 1, 16)
        writer.write(height - 1, 16)
