"""RTP payload for redundant audio data (RED, RFC 2198).

A RED payload is a list of block headers, then the blocks' data in the same order:

    redundant block header (4 bytes): F=1 | block PT (7) | timestamp offset (14) | length (10)
    primary block header   (1 byte):  F=0 | block PT (7)

The primary block is the packet's own frame (its timestamp is the packet's); each
redundant block repeats an earlier frame, ``timestamp offset`` ticks before it (Chrome
sends one or two, the frames of the packets just before). A subscriber that did not
negotiate RED gets the primary block alone; one lost packet can be replaced by the
redundant block of the next.

Parsing is bounded: at most :data:`MAX_RED_BLOCKS` headers are read, and a payload whose
headers or block lengths run past its end is malformed (the caller drops and counts it).
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_RED_BLOCKS = 8
"""Block headers read from one payload (libwebrtc writes at most three blocks); a payload
with more is malformed."""
RED_HEADER_SIZE = 4
"""Bytes of a redundant block's header (the primary's has one)."""
_F_BIT = 0x80
_PT_MASK = 0x7F


@dataclass(frozen=True, slots=True)
class RedundantBlock:
    """One redundant block of a RED payload: ``payload[start:end]`` is its data."""

    payload_type: int
    timestamp_offset: int
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class RedPayload:
    """A parsed RED payload: the redundant blocks, oldest first, and where the primary
    block's data starts (it runs to the end of the payload)."""

    redundant: tuple[RedundantBlock, ...]
    primary_payload_type: int
    primary_start: int


def parse_red(payload: bytes) -> RedPayload | None:
    """The blocks of a RED payload, or None when it is malformed (no primary header
    within :data:`MAX_RED_BLOCKS` headers, or headers and block lengths that run past
    the end of the payload)."""
    size = len(payload)
    offset = 0
    headers: list[tuple[int, int, int]] = []
    while True:
        if offset >= size or len(headers) >= MAX_RED_BLOCKS:
            return None
        first = payload[offset]
        if not first & _F_BIT:
            primary_payload_type = first & _PT_MASK
            offset += 1
            break
        if offset + RED_HEADER_SIZE > size:
            return None
        word = int.from_bytes(payload[offset + 1 : offset + RED_HEADER_SIZE], "big")
        headers.append((first & _PT_MASK, word >> 10, word & 0x3FF))
        offset += RED_HEADER_SIZE
    blocks = []
    for payload_type, timestamp_offset, length in headers:
        end = offset + length
        if end > size:
            return None
        blocks.append(RedundantBlock(payload_type, timestamp_offset, offset, end))
        offset = end
    return RedPayload(tuple(blocks), primary_payload_type, offset)


def red_primary_start(payload: bytes) -> int:
    """Where the primary block's data starts, or -1 for a malformed payload: the fast
    path of :func:`parse_red` for a subscriber that gets the primary block alone."""
    size = len(payload)
    offset = 0
    data_size = 0
    for _ in range(MAX_RED_BLOCKS):
        if offset >= size:
            return -1
        if not payload[offset] & _F_BIT:
            start = offset + 1 + data_size
            return start if start <= size else -1
        if offset + RED_HEADER_SIZE > size:
            return -1
        data_size += ((payload[offset + 2] & 0x03) << 8) | payload[offset + 3]
        offset += RED_HEADER_SIZE
    return -1


def red_primary_only(payload_type: int, payload: bytes) -> bytes:
    """A RED payload whose only block is ``payload`` (RFC 2198 allows a packet without
    redundancy): a plain packet of a RED stream, made uniform with the others."""
    return bytes((payload_type & _PT_MASK,)) + payload


def rewrite_red_payload_types(payload: bytes, parsed: RedPayload, payload_type: int) -> bytes:
    """``payload`` with every block header's payload type set to ``payload_type`` (the
    subscriber's number for the redundant codec, when it differs from the publisher's)."""
    out = bytearray(payload)
    offset = 0
    for _ in parsed.redundant:
        out[offset] = _F_BIT | payload_type
        offset += RED_HEADER_SIZE
    out[offset] = payload_type
    return bytes(out)
