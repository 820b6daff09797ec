"""StreamAllocator: which simulcast layer each video track of a subscriber gets.

One allocator per subscribe transport shares the subscriber's estimated downlink
bandwidth between the video tracks it receives (LiveKit ``streamallocator``, mediasoup
``Transport::DistributeAvailableOutgoingBitrate``):

1. the subscriber's preferences cap each track (maximum spatial layer, and the
   smallest layer whose size covers the size it renders); paused tracks get nothing;
2. every track gets its lowest flowing layer, in priority order (screen share, then
   active speakers, then the others), as long as the budget allows: what does not fit
   is paused, lowest priority first;
3. the remaining budget raises tracks one step at a time, higher priorities first and
   equal priorities in turns, so equals share fairly.

The steps of a track are its allowed flowing layers, lowest first. When the lowest of
them carries VP8 temporal layers, its temporal layers come first as steps of their own
(base layer alone, then with the next, ...), so a subscriber too constrained for the
lowest layer at its full frame rate gets it at a lower frame rate instead of nothing;
higher spatial layers are taken at their full frame rate (a smoother picture at a
lower resolution is what a video call needs).

Going down is immediate: a layer that no longer fits the estimate is left at once.
Going up (above the layer the track already has) is hysteretic, so that a noisy
estimate does not make the picture flap: the estimate must exceed the new total by
:data:`UP_MARGIN`, that must have held for :data:`UP_HOLD_TIME`, and the track must not
have gone down within :data:`DOWN_HOLDOFF`. While an upgrade waits, its bitrate stays
reserved so a lower-priority track cannot take it.

Layers with a measured bitrate of 0 are not flowing (dynacast paused them, or the
publisher's encoder dropped them) and are skipped.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from itertools import groupby

PRIORITY_DEFAULT = 0
PRIORITY_ACTIVE_SPEAKER = 1
PRIORITY_SCREEN_SHARE = 2

UP_MARGIN = 0.15
"""An upgrade needs the estimate to exceed the new total by this fraction."""
UP_HOLD_TIME = 2.0
"""Seconds an upgrade must stay possible before it is made."""
DOWN_HOLDOFF = 3.0
"""Seconds after a track went down for lack of bandwidth before it may go up again."""


@dataclass(frozen=True, slots=True)
class LayerInfo:
    """One simulcast layer of a track: its index, measured bitrate (bits/s, 0 when not
    flowing), frame size (0 when unknown) and the bitrates of its temporal layers 0..t
    together for each t (empty: no temporal layers)."""

    spatial: int
    bitrate: int
    width: int = 0
    height: int = 0
    temporal_bitrates: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class _Step:
    """One allocation step of a track: a spatial layer, up to a temporal layer (None:
    all of them), and what it costs."""

    spatial: int
    temporal: int | None
    bitrate: int

    @property
    def rank(self) -> tuple[int, int]:
        return _rank(self.spatial, self.temporal)


_ALL_TEMPORAL = 1 << 8


def _rank(spatial: int, temporal: int | None) -> tuple[int, int]:
    """Orders steps: by spatial layer, then temporal layer (None: all, highest)."""
    return spatial, _ALL_TEMPORAL if temporal is None else temporal


@dataclass(frozen=True, slots=True)
class TrackAllocationInput:
    """A video track the subscriber receives, with its preferences.

    ``current_layer`` is the layer being forwarded now; the allocator uses it as the
    starting point for tracks it has not allocated before.
    """

    consumer_id: str
    layers: list[LayerInfo]
    priority: int = PRIORITY_DEFAULT
    paused: bool = False
    max_spatial_layer: int | None = None
    max_width: int | None = None
    max_height: int | None = None
    current_layer: int | None = None
    current_temporal_layer: int | None = None
    """The temporal limit being forwarded now (None: all temporal layers)."""


@dataclass(frozen=True, slots=True)
class Allocation:
    """The result of one allocation round."""

    targets: Mapping[str, int | None] = field(default_factory=dict)
    """Target spatial layer per track; None: forward nothing (paused, nothing fits or
    nothing flows)."""
    temporal_targets: Mapping[str, int | None] = field(default_factory=dict)
    """Highest temporal layer to forward per track; None: all of them."""
    total: int = 0
    """Bits/s of the targets plus the reserved audio bitrate."""
    deficient: frozenset[str] = frozenset()
    """Tracks below the best layer their preferences allow, for lack of bandwidth."""


def preferred_max_layer(track: TrackAllocationInput) -> int | None:
    """The highest layer the subscriber's preferences allow, flowing or not; None when
    paused or the track has no layers. Dynacast keeps the layers up to it active."""
    if track.paused or not track.layers:
        return None
    layers = sorted(track.layers, key=lambda layer: layer.spatial)
    cap = layers[-1].spatial
    if track.max_spatial_layer is not None:
        cap = min(cap, track.max_spatial_layer)
    if track.max_width is not None or track.max_height is not None:
        min_width = track.max_width or 0
        min_height = track.max_height or 0
        for layer in layers:
            if layer.width >= min_width and layer.height >= min_height:
                cap = min(cap, layer.spatial)
                break
    return cap


def _candidates(track: TrackAllocationInput) -> list[_Step]:
    """Steps through the flowing layers the preferences allow, lowest first."""
    cap = preferred_max_layer(track)
    if cap is None:
        return []
    layers = sorted(
        (layer for layer in track.layers if layer.bitrate > 0 and layer.spatial <= cap),
        key=lambda layer: layer.spatial,
    )
    steps = [_Step(layer.spatial, None, layer.bitrate) for layer in layers]
    if layers and len(layers[0].temporal_bitrates) > 1:
        lowest = layers[0]
        steps[0:0] = [
            _Step(lowest.spatial, temporal, bitrate)
            for temporal, bitrate in enumerate(lowest.temporal_bitrates[:-1])
            if 0 < bitrate < lowest.bitrate
        ]
    return steps


class StreamAllocator:
    """Allocates the video layers of one subscribe transport; call :meth:`allocate`
    whenever the estimate, a track's layers or a preference changes, and periodically
    (pending upgrades are time-based)."""

    __slots__ = ("_down_at", "_targets", "_upgrade_since")

    def __init__(self) -> None:
        self._targets: dict[str, tuple[int, int] | None] = {}
        """Last target step (its rank) per track, the reference for hysteresis."""
        self._down_at: dict[str, float] = {}
        """When each track last went down for lack of bandwidth."""
        self._upgrade_since: dict[str, float] = {}
        """Since when an upgrade of each track has been possible."""

    def allocate(
        self,
        tracks: Iterable[TrackAllocationInput],
        estimate: int,
        now: float,
        audio_bitrate: int = 0,
    ) -> Allocation:
        """Share ``estimate`` (bits/s, minus ``audio_bitrate`` kept for audio)."""
        ordered = sorted(tracks, key=lambda track: -track.priority)
        candidates = {track.consumer_id: _candidates(track) for track in ordered}
        references = {
            track.consumer_id: self._targets.get(
                track.consumer_id,
                None
                if track.current_layer is None
                else _rank(track.current_layer, track.current_temporal_layer),
            )
            for track in ordered
        }
        chosen: dict[str, int | None] = {}
        used = audio_bitrate
        for track in ordered:
            consumer_id = track.consumer_id
            layers = candidates[consumer_id]
            chosen[consumer_id] = None
            if not layers:
                continue
            needed = used + layers[0].bitrate
            down_at = self._down_at.get(consumer_id)
            # Paused for lack of bandwidth: resuming is an upgrade like any other.
            if (
                references[consumer_id] is None
                and down_at is not None
                and (now - down_at < DOWN_HOLDOFF or needed * (1 + UP_MARGIN) > estimate)
            ):
                continue
            if needed <= estimate:
                chosen[consumer_id] = 0
                used = needed

        waiting: set[str] = set()
        held: set[str] = set()
        for _, group_iter in groupby(ordered, key=lambda track: track.priority):
            group = [track.consumer_id for track in group_iter]
            raised = True
            while raised:
                raised = False
                for consumer_id in group:
                    index = chosen[consumer_id]
                    layers = candidates[consumer_id]
                    if consumer_id in held or index is None or index + 1 >= len(layers):
                        continue
                    step = layers[index + 1]
                    new_used = used + step.bitrate - layers[index].bitrate
                    reference = references[consumer_id]
                    if reference is not None and step.rank <= reference:
                        if new_used > estimate:
                            continue
                    else:
                        if new_used * (1 + UP_MARGIN) > estimate:
                            continue
                        if reference is not None:
                            waiting.add(consumer_id)
                            since = self._upgrade_since.setdefault(consumer_id, now)
                            down_at = self._down_at.get(consumer_id)
                            if now - since < UP_HOLD_TIME or (
                                down_at is not None and now - down_at < DOWN_HOLDOFF
                            ):
                                # Reserve the step while the upgrade waits.
                                held.add(consumer_id)
                                used = new_used
                                continue
                    chosen[consumer_id] = index + 1
                    used = new_used
                    raised = True

        targets: dict[str, int | None] = {}
        temporal_targets: dict[str, int | None] = {}
        ranks: dict[str, tuple[int, int] | None] = {}
        deficient: set[str] = set()
        total = audio_bitrate
        for track in ordered:
            consumer_id = track.consumer_id
            layers = candidates[consumer_id]
            index = chosen[consumer_id]
            step = None if index is None else layers[index]
            targets[consumer_id] = None if step is None else step.spatial
            temporal_targets[consumer_id] = None if step is None else step.temporal
            rank = ranks[consumer_id] = None if step is None else step.rank
            if step is not None:
                total += step.bitrate
            if layers and (index is None or index + 1 < len(layers)):
                deficient.add(consumer_id)
                reference = references[consumer_id]
                if reference is not None and (rank is None or rank < reference):
                    self._down_at[consumer_id] = now
        self._upgrade_since = {
            consumer_id: since
            for consumer_id, since in self._upgrade_since.items()
            if consumer_id in waiting
        }
        self._targets = ranks
        self._down_at = {
            consumer_id: down_at
            for consumer_id, down_at in self._down_at.items()
            if consumer_id in targets
        }
        return Allocation(targets, temporal_targets, total, frozenset(deficient))
