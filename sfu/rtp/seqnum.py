"""Wraparound (serial number) arithmetic for RTP counters, after RFC 1982.

One implementation serves 16-bit RTP sequence numbers, 32-bit RTP timestamps and
15-bit VP8 picture ids: every function takes the counter width in ``bits``.

Distances are taken the short way round the circle, in ``[-2**(bits-1), 2**(bits-1))``.
A step of exactly half the range is therefore read as *backwards* (RFC 1982 leaves it
undefined), and any forward jump of half the range or more is indistinguishable from an
old, reordered value. Callers that expect such jumps (a sender restart, a timestamp
discontinuity) must detect them by other means and start a new
:class:`WrapAroundExtender`.
"""

from __future__ import annotations

from bisect import bisect_left

SEQUENCE_NUMBER_BITS = 16
TIMESTAMP_BITS = 32
VP8_PICTURE_ID_BITS = 15


def diff(a: int, b: int, bits: int) -> int:
    """Signed shortest distance from ``b`` to ``a`` (positive when ``a`` is newer)."""
    modulus = 1 << bits
    half = modulus >> 1
    return ((a - b + half) % modulus) - half


def is_newer(a: int, b: int, bits: int) -> bool:
    """True when ``a`` comes after ``b`` on the ``bits``-wide circle."""
    return diff(a, b, bits) > 0


class WrapAroundExtender:
    """Extend a wrapping ``bits``-wide counter to a monotonic integer.

    Each value is placed at the shortest distance from the highest value seen so far, so
    a packet that arrives late from just before a wrap (65535 after 0) maps to the
    previous cycle rather than the next one. Only newer values move the reference point
    forward. The first value is returned unchanged; a reordered value older than the
    first one returns a negative number. A forward jump of half the range or more is read
    as an old value (see the module docstring).
    """

    __slots__ = ("_bits", "_full", "_half", "_highest", "_mask")

    def __init__(self, bits: int) -> None:
        if bits < 2 or bits > 63:
            raise ValueError(f"counter width must be 2..63 bits, got {bits}")
        self._bits = bits
        self._mask = (1 << bits) - 1
        self._full = 1 << bits
        self._half = 1 << (bits - 1)
        self._highest: int | None = None

    @property
    def highest(self) -> int | None:
        """Highest extended value returned so far, or None before the first update."""
        return self._highest

    def update(self, value: int) -> int:
        """Return ``value`` (a raw ``bits``-wide counter) extended to 64 bits."""
        if value < 0 or value > self._mask:
            raise ValueError(f"value {value} does not fit in {self._bits} bits")
        highest = self._highest
        if highest is None:
            self._highest = value
            return value
        # diff() inlined: this runs for every forwarded packet.
        delta = (value - highest) & self._mask
        if delta >= self._half:
            delta -= self._full
        extended = highest + delta
        if extended > highest:
            self._highest = extended
        return extended


def expire_drops(dropped: list[int], floor: int) -> int:
    """Remove the values below ``floor`` from the ascending list ``dropped`` (numbers a
    forwarder left out on purpose); returns how many, for the caller to fold into its
    offset."""
    expired = bisect_left(dropped, floor)
    if expired:
        del dropped[:expired]
    return expired
