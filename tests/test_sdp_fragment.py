"""Trickle ICE SDP fragments (RFC 8840), as WHIP/WHEP PATCH bodies carry them."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sfu.sdp import SdpError
from sfu.sdp.fragment import MAX_FRAGMENT_LINES, parse_ice_fragment

# RFC 9725 section 4.3.1's example (a trickle fragment), with CRLF line ends.
RFC_EXAMPLE = (
    "a=group:BUNDLE 0 1\r\n"
    "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\n"
    "a=mid:0\r\n"
    "a=ice-ufrag:EsAw\r\n"
    "a=ice-pwd:P2uYro0UCOQ4zxjKXaWCBui1\r\n"
    "a=candidate:1387637174 1 udp 2122260223 192.0.2.1 61764 typ host generation 0"
    " ufrag EsAw network-id 1\r\n"
    "a=candidate:3471623853 1 udp 2122194687 198.51.100.2 61765 typ host generation 0"
    " ufrag EsAw network-id 2\r\n"
    "a=candidate:473322822 1 tcp 1518280447 192.0.2.1 9 typ host tcptype active"
    " generation 0 ufrag EsAw network-id 1\r\n"
    "a=end-of-candidates\r\n"
)


def test_rfc_example() -> None:
    fragment = parse_ice_fragment(RFC_EXAMPLE)
    assert (fragment.ice_ufrag, fragment.ice_pwd) == ("EsAw", "P2uYro0UCOQ4zxjKXaWCBui1")
    assert [mid for mid, _ in fragment.candidates] == ["0", "0", "0"]
    assert fragment.candidates[0][1].startswith("1387637174 1 udp")
    assert fragment.end_of_candidates
    assert fragment.mids == ["0"]


@pytest.mark.parametrize(
    ("text", "candidates", "end"),
    [
        ("", 0, False),
        ("a=end-of-candidates\r\n", 0, True),
        ("a=candidate:1 1 udp 1 127.0.0.1 1 typ host\n", 1, False),  # bare LF, no m=
        ("c=IN IP4 0.0.0.0\r\na=ice-options:trickle\r\n", 0, False),  # skipped lines
    ],
)
def test_table(text: str, candidates: int, end: bool) -> None:
    fragment = parse_ice_fragment(text)
    assert len(fragment.candidates) == candidates
    assert fragment.end_of_candidates is end


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("not an sdp line\r\n", "is not '<type>=<value>'"),
        ("a=ice-ufrag:abcd\r\n", "without the other"),
        ("a=ice-ufrag:ab\r\na=ice-pwd:" + "x" * 22 + "\r\n", "ICE characters"),
        ("a=ice-ufrag:ab cd\r\na=ice-pwd:" + "x" * 22 + "\r\n", "ICE characters"),
        ("a=x\r\n" * (MAX_FRAGMENT_LINES + 1), "lines"),
    ],
)
def test_refused(text: str, message: str) -> None:
    with pytest.raises(SdpError, match=message):
        parse_ice_fragment(text)


@given(st.text(max_size=400))
def test_any_text_parses_or_is_refused_with_sdp_error(text: str) -> None:
    with contextlib.suppress(SdpError):
        parse_ice_fragment(text)
