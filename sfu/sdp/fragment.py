"""SDP fragments for trickle ICE (RFC 8840), as WHIP and WHEP carry them in PATCH.

A fragment (``application/trickle-ice-sdpfrag``) holds session-level ``a=ice-ufrag``,
``a=ice-pwd`` and ``a=ice-options`` lines, then per media section an ``m=`` line, its
``a=mid``, any ``a=candidate`` lines and an optional ``a=end-of-candidates``. New
credentials mean an ICE restart (RFC 8839 section 4.4.1.1.1); the caller decides
what to do with them. Only the ICE attributes are read: anything else a client puts
in (``a=group``, ``c=``) is skipped, as RFC 8840 section 9 lets a receiver do.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sfu.sdp.description import SdpError, quoted

MAX_FRAGMENT_LINES = 200
"""Lines a fragment may have: a client trickles a few candidates per PATCH, and more
than 64 per transport are refused anyway."""


@dataclass
class IceFragment:
    ice_ufrag: str | None = None
    ice_pwd: str | None = None
    candidates: list[tuple[str | None, str]] = field(default_factory=list)
    """(mid of the section it came in, the ``a=candidate`` value), in order."""
    end_of_candidates: bool = False
    mids: list[str | None] = field(default_factory=list)
    """The mid of each media section of the fragment."""


def parse_ice_fragment(text: str) -> IceFragment:
    """Parse an RFC 8840 SDP fragment; raises :class:`SdpError` naming what is wrong."""
    lines = text.splitlines()
    if len(lines) > MAX_FRAGMENT_LINES:
        raise SdpError(f"the fragment has {len(lines)} lines; at most {MAX_FRAGMENT_LINES}")
    fragment = IceFragment()
    in_media = False
    for number, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line:
            continue
        if len(line) < 2 or line[1] != "=":
            raise SdpError(f"line {number} is not '<type>=<value>': {quoted(line)}")
        kind, value = line[0], line[2:]
        if kind == "m":
            in_media = True
            fragment.mids.append(None)
            continue
        if kind != "a":
            continue
        name, _, attribute = value.partition(":")
        if name == "ice-ufrag":
            fragment.ice_ufrag = _credential(attribute, "ice-ufrag", number)
        elif name == "ice-pwd":
            fragment.ice_pwd = _credential(attribute, "ice-pwd", number)
        elif name == "mid" and in_media:
            fragment.mids[-1] = attribute
        elif name == "candidate":
            fragment.candidates.append((fragment.mids[-1] if in_media else None, attribute))
        elif name == "end-of-candidates":
            fragment.end_of_candidates = True
    if (fragment.ice_ufrag is None) != (fragment.ice_pwd is None):
        raise SdpError("the fragment has one of a=ice-ufrag and a=ice-pwd without the other")
    return fragment


def _credential(value: str, what: str, number: int) -> str:
    # RFC 8839 section 5.4: ice-char = ALPHA / DIGIT / "+" / "/", 4-256 characters.
    ice_chars = all(c.isascii() and (c.isalnum() or c in "+/") for c in value)
    if not 4 <= len(value) <= 256 or not ice_chars:
        raise SdpError(f"line {number}: a={what} {quoted(value)} is not 4-256 ICE characters")
    return value
