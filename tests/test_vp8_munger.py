"""Vp8Munger: picture id / TL0PICIDX continuity across layer switches, TID filtering."""

from __future__ import annotations

import pytest

from sfu.rtp.vp8 import Vp8Descriptor
from sfu.vp8_munger import PICTURE_REORDER_WINDOW, Vp8Munger

BODY = b"\x10\x02\x00\x9d\x01\x2a"


def packet(
    picture_id: int | None, width: int = 15, tl0: int | None = None, tid: int | None = None
) -> bytes:
    descriptor = Vp8Descriptor(
        start_of_partition=True,
        picture_id=picture_id,
        picture_id_length=width if picture_id is not None else 0,
        tl0picidx=tl0,
        tid=tid,
    )
    return bytes(descriptor) + BODY


# Steps: ("switch", picture_id, width, tl0)
#        ("rtp", picture_id, width, tl0, expected_picture_id, expected_tl0)
#        ("drop", picture_id, width)
SCRIPTS = {
    "first layer keeps its values": [
        ("switch", 1000, 15, 7),
        ("rtp", 1000, 15, 7, 1000, 7),
        ("rtp", 1001, 15, 7, 1001, 7),
    ],
    "switch continues picture id and TL0PICIDX": [
        ("switch", 1000, 15, 7),
        ("rtp", 1000, 15, 7, 1000, 7),
        ("rtp", 1001, 15, 8, 1001, 8),
        ("switch", 20000, 15, 200),
        ("rtp", 20000, 15, 200, 1002, 9),
        ("rtp", 20001, 15, 201, 1003, 10),
    ],
    "a switch after a long untouched run continues from its latest picture": [
        ("switch", 0, 15, 0),
        ("rtp", 10000, 15, 5, 10000, 5),
        ("rtp", 20000, 15, 9, 20000, 9),
        ("switch", 7, 15, 1),
        ("rtp", 7, 15, 1, 20001, 10),
        ("rtp", 8, 15, 1, 20002, 10),
    ],
    "15-bit picture id and TL0PICIDX wrap in the source": [
        ("switch", 0x7FFF, 15, 255),
        ("rtp", 0x7FFF, 15, 255, 0x7FFF, 255),
        ("rtp", 0, 15, 0, 0, 0),
        ("rtp", 1, 15, 1, 1, 1),
    ],
    "15-bit wrap in the output across a switch": [
        ("switch", 0x7FFE, 15, 254),
        ("rtp", 0x7FFF, 15, 255, 0x7FFF, 255),
        ("switch", 50, 15, 3),
        ("rtp", 50, 15, 3, 0, 0),
        ("rtp", 51, 15, 4, 1, 1),
    ],
    "7-bit layer is written as 15-bit and continues past 127": [
        ("switch", 120, 7, 1),
        ("rtp", 120, 7, 1, 120, 1),
        ("rtp", 127, 7, 2, 127, 2),
        ("rtp", 0, 7, 3, 128, 3),
        ("rtp", 1, 7, 3, 129, 3),
    ],
    "switch from a 15-bit layer to a 7-bit layer": [
        ("switch", 5000, 15, 10),
        ("rtp", 5000, 15, 10, 5000, 10),
        ("switch", 100, 7, 50),
        ("rtp", 100, 7, 50, 5001, 11),
        ("rtp", 101, 7, 50, 5002, 11),
    ],
    "sender extends from 7 to 15 bits after 127": [
        ("switch", 126, 7, None),
        ("rtp", 127, 7, None, 127, None),
        ("rtp", 128, 15, None, 128, None),
    ],
    "reordered packets map like the rest of their picture": [
        ("switch", 10, 15, 0),
        ("rtp", 10, 15, 0, 10, 0),
        ("switch", 300, 15, 90),
        ("rtp", 300, 15, 90, 11, 1),
        ("rtp", 302, 15, 91, 13, 2),
        ("rtp", 301, 15, 90, 12, 1),
        ("rtp", 302, 15, 91, 13, 2),
    ],
    "reordered 7-bit packet across the wrap": [
        ("switch", 126, 7, None),
        ("rtp", 126, 7, None, 126, None),
        ("rtp", 1, 7, None, 129, None),
        ("rtp", 127, 7, None, 127, None),
        ("rtp", 0, 7, None, 128, None),
    ],
    "dropped pictures leave no gap": [
        ("switch", 10, 15, 0),
        ("rtp", 10, 15, 0, 10, 0),
        ("drop", 11, 15),
        ("drop", 11, 15),
        ("rtp", 12, 15, 0, 11, 0),
        ("drop", 13, 15),
        ("rtp", 14, 15, 1, 12, 1),
        ("rtp", 12, 15, 0, 11, 0),
    ],
    "drop of an already forwarded picture is ignored": [
        ("switch", 10, 15, 0),
        ("rtp", 11, 15, 0, 11, 0),
        ("drop", 11, 15),
        ("drop", 10, 15),
        ("rtp", 12, 15, 0, 12, 0),
    ],
    "old drops are folded into the offset": [
        ("switch", 0, 15, 0),
        ("rtp", 0, 15, 0, 0, 0),
        ("drop", 1, 15),
        ("rtp", 2, 15, 0, 1, 0),
        ("rtp", PICTURE_REORDER_WINDOW + 5, 15, 0, PICTURE_REORDER_WINDOW + 4, 0),
        ("rtp", PICTURE_REORDER_WINDOW + 6, 15, 0, PICTURE_REORDER_WINDOW + 5, 0),
    ],
    "drops are forgotten at a switch": [
        ("switch", 10, 15, 0),
        ("rtp", 10, 15, 0, 10, 0),
        ("drop", 11, 15),
        ("switch", 500, 15, 0),
        ("rtp", 500, 15, 0, 11, 1),
        ("rtp", 501, 15, 0, 12, 1),
    ],
}


@pytest.mark.parametrize("script", SCRIPTS.values(), ids=SCRIPTS.keys())
def test_scripts(script: list[tuple]) -> None:
    munger = Vp8Munger()
    for step in script:
        if step[0] == "switch":
            munger.switch(packet(step[1], step[2], step[3], 0))
        elif step[0] == "drop":
            munger.drop(packet(step[1], step[2], None, 2))
        else:
            _, picture_id, width, tl0, expected_picture_id, expected_tl0 = step
            out = munger.rewrite(packet(picture_id, width, tl0, 0))
            descriptor = Vp8Descriptor.parse(out)
            assert (descriptor.picture_id, descriptor.tl0picidx) == (
                expected_picture_id,
                expected_tl0,
            ), step
            assert descriptor.picture_id_length == 15
            assert descriptor.tid == 0
            assert out[descriptor.size :] == BODY


@pytest.mark.parametrize(
    ("payload", "switched"),
    [
        (packet(None), True),
        (packet(5), False),
        (b"\x90", True),
        (b"\x90\x80", True),
        (b"", True),
    ],
    ids=["no picture id", "before any switch", "no extension", "truncated", "empty"],
)
def test_payload_passes_through(payload: bytes, switched: bool) -> None:
    munger = Vp8Munger()
    if switched:
        munger.switch(packet(100, 15, 1, 0))
        munger.rewrite(packet(100, 15, 1, 0))
    assert munger.rewrite(payload) == payload
    munger.drop(payload)
    assert Vp8Descriptor.parse(munger.rewrite(packet(101, 15, 1, 0))).picture_id == 101


def test_switch_to_a_layer_without_picture_id_passes_through() -> None:
    munger = Vp8Munger()
    munger.switch(packet(7))
    munger.switch(packet(None))
    assert munger.rewrite(packet(9)) == packet(9)
