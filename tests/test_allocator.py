"""StreamAllocator: layer decisions on scripted estimates, preferences and priorities."""

from __future__ import annotations

import pytest

from sfu.allocator import (
    DOWN_HOLDOFF,
    PRIORITY_ACTIVE_SPEAKER,
    PRIORITY_SCREEN_SHARE,
    UP_HOLD_TIME,
    UP_MARGIN,
    LayerInfo,
    StreamAllocator,
    TrackAllocationInput,
    preferred_max_layer,
)

# Chrome's fake camera at 640x480 in three layers.
LOW, MID, HIGH = 150_000, 500_000, 1_700_000
LAYERS = [
    LayerInfo(0, LOW, 160, 120),
    LayerInfo(1, MID, 320, 240),
    LayerInfo(2, HIGH, 640, 480),
]
TOP_NOT_FLOWING = [*LAYERS[:2], LayerInfo(2, 0, 640, 480)]
NONE_FLOWING = [LayerInfo(layer.spatial, 0, layer.width, layer.height) for layer in LAYERS]


def track(track_id: str = "cam", **fields: object) -> TrackAllocationInput:
    return TrackAllocationInput(track_id, fields.pop("layers", LAYERS), **fields)  # type: ignore[arg-type]


# (tracks, estimate, audio bitrate, expected targets, expected deficient)
SINGLE_ROUNDS = {
    "300 kbit/s gives the low layer": ([track()], 300_000, 0, {"cam": 0}, {"cam"}),
    "3 Mbit/s gives the top layer at once to a new track": (
        [track()],
        3_000_000,
        0,
        {"cam": 2},
        set(),
    ),
    "upgrade needs the margin": ([track()], 1_900_000, 0, {"cam": 1}, {"cam"}),
    "audio is reserved": ([track()], 600_000, 100_000, {"cam": 0}, {"cam"}),
    "nothing fits": ([track()], 200_000, 64_000, {"cam": None}, {"cam"}),
    "max layer 0": ([track(max_spatial_layer=0)], 3_000_000, 0, {"cam": 0}, set()),
    "max 320x240 gives the matching layer": (
        [track(max_width=320, max_height=240)],
        3_000_000,
        0,
        {"cam": 1},
        set(),
    ),
    "max 321 wide needs the layer above": ([track(max_width=321)], 3e6, 0, {"cam": 2}, set()),
    "max 100x100 gives the lowest layer": (
        [track(max_width=100, max_height=100)],
        3_000_000,
        0,
        {"cam": 0},
        set(),
    ),
    "size larger than every layer gives the top": (
        [track(max_width=1920, max_height=1080)],
        3_000_000,
        0,
        {"cam": 2},
        set(),
    ),
    "paused": ([track(paused=True)], 3_000_000, 0, {"cam": None}, set()),
    "layer not flowing is skipped": (
        [track(layers=TOP_NOT_FLOWING)],
        3_000_000,
        0,
        {"cam": 1},
        set(),
    ),
    "nothing flowing": ([track(layers=NONE_FLOWING)], 3_000_000, 0, {"cam": None}, set()),
    "screen share keeps its layer while the camera drops": (
        [
            track("cam", current_layer=2),
            track("screen", priority=PRIORITY_SCREEN_SHARE, current_layer=2),
        ],
        2_100_000,
        0,
        {"cam": 0, "screen": 2},
        {"cam"},
    ),
    "lower priority is paused first": (
        [
            track("cam", current_layer=0),
            track("screen", priority=PRIORITY_SCREEN_SHARE, current_layer=0),
        ],
        200_000,
        0,
        {"cam": None, "screen": 0},
        {"cam", "screen"},
    ),
    "active speaker above the others": (
        [
            track("a", current_layer=1),
            track("speaker", priority=PRIORITY_ACTIVE_SPEAKER, current_layer=1),
            track("b", current_layer=1),
        ],
        1_000_000,
        0,
        {"a": 0, "speaker": 1, "b": 0},
        {"a", "speaker", "b"},
    ),
    "equal priorities share in turns": (
        [track("a", current_layer=2), track("b", current_layer=2)],
        1_200_000,
        0,
        {"a": 1, "b": 1},
        {"a", "b"},
    ),
}


@pytest.mark.parametrize(
    ("tracks", "estimate", "audio", "expected", "deficient"),
    SINGLE_ROUNDS.values(),
    ids=SINGLE_ROUNDS.keys(),
)
def test_single_round(
    tracks: list[TrackAllocationInput],
    estimate: int,
    audio: int,
    expected: dict[str, int | None],
    deficient: set[str],
) -> None:
    allocation = StreamAllocator().allocate(tracks, int(estimate), 0.0, audio_bitrate=audio)
    assert dict(allocation.targets) == expected
    assert allocation.deficient == deficient
    bitrates = {layer.spatial: layer.bitrate for layer in LAYERS}
    assert allocation.total == audio + sum(
        bitrates[layer] for layer in expected.values() if layer is not None
    )


# Scripted estimates for one camera: (now, estimate, expected layer); the forwarder
# follows the allocation, so the previous target is the current layer.
SCRIPTS = {
    "climbs only after the hysteresis time": [
        (0.0, 300_000, 0),
        (1.0, 3_000_000, 0),
        (2.0, 3_000_000, 0),
        (1.0 + UP_HOLD_TIME, 3_000_000, 2),
    ],
    "goes down at once, up only after the hold-off": [
        (0.0, 3_000_000, 2),
        (1.0, 1_000_000, 1),
        (2.0, 3_000_000, 1),
        (1.0 + DOWN_HOLDOFF - 0.1, 3_000_000, 1),
        (1.0 + DOWN_HOLDOFF, 3_000_000, 2),
    ],
    "a dip restarts the hold": [
        (0.0, 700_000, 1),
        (1.0, 3_000_000, 1),
        (2.0, 1_900_000, 1),
        (3.0, 3_000_000, 1),
        (4.5, 3_000_000, 1),
        (5.0, 3_000_000, 2),
    ],
    "an estimate around a layer's cost does not flap": [
        (0.0, 3_000_000, 2),
        (1.0, 1_800_000, 2),
        (2.0, 1_650_000, 1),
        (3.0, 1_800_000, 1),
        (4.0, 2_100_000, 1),
        (5.0, 1_900_000, 1),
        (6.0, 2_100_000, 1),
        (7.0, 2_100_000, 1),
        (8.0, 2_100_000, 2),
    ],
    "paused for lack of bandwidth resumes with margin after the hold-off": [
        (0.0, 300_000, 0),
        (1.0, 100_000, None),
        (2.0, 160_000, None),
        (1.0 + DOWN_HOLDOFF, 160_000, None),
        (1.0 + DOWN_HOLDOFF, 200_000, 0),
    ],
}


@pytest.mark.parametrize("script", SCRIPTS.values(), ids=SCRIPTS.keys())
def test_scripted_estimates(script: list[tuple[float, int, int | None]]) -> None:
    allocator = StreamAllocator()
    current = None
    for now, estimate, expected in script:
        allocation = allocator.allocate([track(current_layer=current)], estimate, now)
        assert allocation.targets["cam"] == expected, (now, estimate)
        current = allocation.targets["cam"]


def test_waiting_upgrade_keeps_its_bitrate_from_lower_priorities() -> None:
    """Without the reservation the camera would keep layer 1 and the screen share could
    never climb: 800 kbit/s carries one layer 1, and the screen share ranks first."""
    allocator = StreamAllocator()
    screen = track("screen", priority=PRIORITY_SCREEN_SHARE, max_spatial_layer=1, current_layer=0)
    cam = track("cam", max_spatial_layer=1, current_layer=1)
    assert allocator.allocate([screen, cam], 800_000, 0.0).targets == {"screen": 0, "cam": 0}
    later = allocator.allocate([screen, cam], 800_000, UP_HOLD_TIME).targets
    assert later == {"screen": 1, "cam": 0}


def test_removed_tracks_are_forgotten() -> None:
    allocator = StreamAllocator()
    allocator.allocate([track(current_layer=2)], 1_000_000, 0.0)
    assert allocator.allocate([], 1_000_000, 1.0).targets == {}
    # Back with no hold-off, as a new track.
    assert allocator.allocate([track()], 3_000_000, 2.0).targets == {"cam": 2}


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({}, 2),
        ({"paused": True}, None),
        ({"max_spatial_layer": 1}, 1),
        ({"max_height": 200}, 1),
        ({"layers": TOP_NOT_FLOWING}, 2),
        ({"layers": []}, None),
    ],
)
def test_preferred_max_layer(fields: dict[str, object], expected: int | None) -> None:
    assert preferred_max_layer(track(**fields)) == expected


TEMPORAL = [
    LayerInfo(0, LOW, 160, 120, temporal_bitrates=(LOW // 3, LOW * 2 // 3, LOW)),
    LayerInfo(1, MID, 320, 240, temporal_bitrates=(MID // 3, MID * 2 // 3, MID)),
    LayerInfo(2, HIGH, 640, 480, temporal_bitrates=(HIGH // 3, HIGH * 2 // 3, HIGH)),
]


@pytest.mark.parametrize(
    ("estimate", "spatial", "temporal"),
    [
        (LOW // 3 - 1, None, None),  # not even the base temporal layer fits
        (LOW // 3 * 2, 0, 0),  # the lowest layer at a third of its frame rate
        (LOW, 0, 1),  # two temporal layers (the full rate needs the upgrade margin)
        (int(LOW * (1 + UP_MARGIN)) + 1, 0, None),  # the lowest layer, every frame
        (int(MID * (1 + UP_MARGIN)) + 1, 1, None),  # higher layers only at full rate
        (int(HIGH * (1 + UP_MARGIN)) + 1, 2, None),
    ],
)
def test_temporal_layers_are_steps_below_the_lowest_layers_full_rate(
    estimate: int, spatial: int | None, temporal: int | None
) -> None:
    allocation = StreamAllocator().allocate([track(layers=TEMPORAL)], estimate, now=0.0)
    assert allocation.targets["cam"] == spatial
    assert allocation.temporal_targets["cam"] == temporal


def test_going_up_a_temporal_layer_waits_like_a_spatial_upgrade() -> None:
    allocator = StreamAllocator()
    cam = track(layers=TEMPORAL, current_layer=0, current_temporal_layer=0)
    tight = allocator.allocate([cam], LOW // 3 * 2, now=0.0)
    assert (tight.targets["cam"], tight.temporal_targets["cam"]) == (0, 0)
    roomy = int(LOW * 2 // 3 * (1 + UP_MARGIN)) + 1
    assert allocator.allocate([cam], roomy, now=0.5).temporal_targets["cam"] == 0
    later = allocator.allocate([cam], roomy, now=0.5 + UP_HOLD_TIME)
    assert later.temporal_targets["cam"] == 1
