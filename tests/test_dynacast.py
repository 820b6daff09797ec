"""DynacastManager and wanted_layers: which publisher layers to pause and resume."""

from __future__ import annotations

import pytest

from sfu.dynacast import PAUSE_DELAY, DynacastManager, wanted_layers

RIDS = ["q", "h", "f"]
ALL = {"q": True, "h": True, "f": True}

# Steps: (now, wanted layers, expected update result)
SCRIPTS = {
    "all wanted: nothing changes": [(0.0, {0, 1, 2}, None), (10.0, {0, 1, 2}, None)],
    "unwanted layers pause after the delay": [
        (0.0, {0}, None),
        (PAUSE_DELAY - 0.1, {0}, None),
        (PAUSE_DELAY, {0}, {"q": True, "h": False, "f": False}),
        (PAUSE_DELAY + 5, {0}, None),
    ],
    "resume at once": [
        (0.0, {0, 1}, None),
        (PAUSE_DELAY, {0, 1}, {"q": True, "h": True, "f": False}),
        (PAUSE_DELAY + 0.5, {0, 1, 2}, ALL),
    ],
    "wanted again within the delay restarts it": [
        (0.0, {0}, None),
        (2.0, {0, 1, 2}, None),
        (2.5, {0}, None),
        (2.5 + PAUSE_DELAY - 0.1, {0}, None),
        (2.5 + PAUSE_DELAY, {0}, {"q": True, "h": False, "f": False}),
    ],
    "the lowest layer is never paused": [
        (0.0, set(), None),
        (PAUSE_DELAY, set(), {"q": True, "h": False, "f": False}),
    ],
    "layers pause on their own schedule": [
        (0.0, {0, 1}, None),
        (1.0, {0}, None),
        (PAUSE_DELAY, {0}, {"q": True, "h": True, "f": False}),
        (1.0 + PAUSE_DELAY, {0}, {"q": True, "h": False, "f": False}),
    ],
}


@pytest.mark.parametrize("script", SCRIPTS.values(), ids=SCRIPTS.keys())
def test_scripts(script: list[tuple[float, set[int], dict[str, bool] | None]]) -> None:
    manager = DynacastManager(RIDS)
    assert manager.active == ALL
    for now, wanted, expected in script:
        assert manager.update(wanted, now) == expected, now
        if expected is not None:
            assert manager.active == expected


@pytest.mark.parametrize(
    ("preferred", "expected"),
    [
        ([], {}),
        ([{"t": 2}], {"t": {0, 1, 2}}),
        ([{"t": 0}, {"t": 0}], {"t": {0}}),
        ([{"t": 0}, {"t": 1}], {"t": {0, 1}}),
        ([{"t": None}], {"t": set()}),
        ([{"t": None}, {"t": 0, "u": 2}], {"t": {0}, "u": {0, 1, 2}}),
    ],
)
def test_wanted_layers(
    preferred: list[dict[str, int | None]], expected: dict[str, set[int]]
) -> None:
    assert wanted_layers(preferred) == expected
