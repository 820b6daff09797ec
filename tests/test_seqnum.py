import pytest
from hypothesis import given
from hypothesis import strategies as st

from sfu.rtp.seqnum import WrapAroundExtender, diff, expire_drops, is_newer


@pytest.mark.parametrize(
    ("a", "b", "bits", "expected"),
    [
        (1, 0, 16, 1),
        (0, 1, 16, -1),
        (0, 65535, 16, 1),
        (65535, 0, 16, -1),
        (5, 65530, 16, 11),
        (32767, 0, 16, 32767),
        (32768, 0, 16, -32768),  # exactly half the range reads as backwards
        (0, 32768, 16, -32768),
        (0, 0xFFFFFFFF, 32, 1),
        (0x7FFFFFFF, 0, 32, 0x7FFFFFFF),
        (10, 0xFFFFFFF0, 32, 26),
        (0, 0x7FFF, 15, 1),
        (0x7FFF, 0, 15, -1),
        (100, 0x7F00, 15, 356),
    ],
)
def test_diff(a, b, bits, expected):
    assert diff(a, b, bits) == expected
    assert is_newer(a, b, bits) is (expected > 0)


@pytest.mark.parametrize("bits", [15, 16, 32])
@given(data=st.data())
def test_diff_is_antisymmetric_except_at_half(bits, data):
    a = data.draw(st.integers(0, (1 << bits) - 1))
    b = data.draw(st.integers(0, (1 << bits) - 1))
    d = diff(a, b, bits)
    assert -(1 << (bits - 1)) <= d < 1 << (bits - 1)
    assert (b + d) % (1 << bits) == a
    if d != -(1 << (bits - 1)):
        assert diff(b, a, bits) == -d
        assert is_newer(a, b, bits) != is_newer(b, a, bits) or a == b


@pytest.mark.parametrize(
    ("bits", "values", "expected"),
    [
        (16, [10, 11, 12], [10, 11, 12]),
        (16, [65534, 65535, 0, 1], [65534, 65535, 65536, 65537]),
        # reordered packet from just before the wrap stays in the old cycle
        (16, [65535, 0, 65534, 1], [65535, 65536, 65534, 65537]),
        (16, [0, 65535], [0, -1]),
        (16, [100, 90, 101], [100, 90, 101]),
        # a forward jump of half the range or more reads as an old packet
        (16, [0, 32768, 1], [0, -32768, 1]),
        (16, [0, 30000, 60000, 1], [0, 30000, 60000, 65537]),
        (32, [0xFFFFFF00, 0x10, 0xFFFFFFF0], [0xFFFFFF00, 0x100000010, 0xFFFFFFF0]),
        (15, [0x7FFE, 0x7FFF, 0, 5], [0x7FFE, 0x7FFF, 0x8000, 0x8005]),
    ],
)
def test_extender(bits, values, expected):
    extender = WrapAroundExtender(bits)
    assert [extender.update(v) for v in values] == expected


def test_extender_many_cycles():
    extender = WrapAroundExtender(16)
    for n in range(0, 5 * 65536, 1000):
        assert extender.update(n & 0xFFFF) == n
    assert extender.highest == 327000


@given(st.lists(st.integers(-1000, 3000), min_size=1, max_size=200))
def test_extender_recovers_bounded_reordering(steps):
    extender = WrapAroundExtender(16)
    start = 65000
    assert extender.update(start) == start
    for step in steps:
        value = start + step
        assert extender.update(value & 0xFFFF) == value


@pytest.mark.parametrize("value", [-1, 65536])
def test_extender_rejects_out_of_range(value):
    with pytest.raises(ValueError, match="16 bits"):
        WrapAroundExtender(16).update(value)


@pytest.mark.parametrize("bits", [0, 1, 64])
def test_extender_rejects_width(bits):
    with pytest.raises(ValueError, match="bits"):
        WrapAroundExtender(bits)


@pytest.mark.parametrize(
    ("dropped", "floor", "expired", "left"),
    [([], 10, 0, []), ([3, 5, 9], 5, 1, [5, 9]), ([3, 5, 9], 10, 3, []), ([7], 1, 0, [7])],
)
def test_expire_drops(dropped, floor, expired, left):
    assert expire_drops(dropped, floor) == expired
    assert dropped == left
