"""Just enough of a STUN message (RFC 8489) to route it before aioice parses it.

A single-port server must know which ICE connection a datagram belongs to before any
connection's own parser runs: binding requests by their USERNAME (``<our ufrag>:<theirs>``,
RFC 8445 section 7.2.2), responses by their transaction ID. Everything here is
sans-I/O: bytes in, a :class:`StunHeader` or :class:`ValueError` out. Integrity is
checked later by aioice, with the connection's password.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

HEADER_LENGTH = 20
MAGIC_COOKIE = b"\x21\x12\xa4\x42"
BINDING_REQUEST = 0x0001
BINDING_SUCCESS = 0x0101
USERNAME = 0x0006
MAX_USERNAME = 513
"""RFC 8489 section 14.3: a USERNAME is fewer than 509 bytes (with padding, 513)."""
_HEADER = struct.Struct("!HH4s12s")
_ATTRIBUTE = struct.Struct("!HH")


@dataclass(frozen=True)
class StunHeader:
    """The routing-relevant fields of one STUN message."""

    message_type: int
    """method and class, e.g. :data:`BINDING_REQUEST`"""
    transaction_id: bytes
    """the 12-byte transaction ID (RFC 8489 section 5)"""
    username: str | None
    """the USERNAME attribute, when the message has one"""

    @property
    def is_request(self) -> bool:
        return self.message_type & 0x0110 == 0x0000

    @property
    def is_response(self) -> bool:
        return self.message_type & 0x0100 != 0

    @property
    def local_ufrag(self) -> str | None:
        """Our ufrag: what precedes the colon of a request's USERNAME (RFC 8445 7.2.2)."""
        if self.username is None:
            return None
        ufrag, colon, _ = self.username.partition(":")
        return ufrag if colon else None

    @classmethod
    def parse(cls, data: bytes) -> StunHeader:
        """Parse the header and find USERNAME; raises ValueError for anything that is
        not a complete, well-formed STUN message."""
        if len(data) < HEADER_LENGTH:
            raise ValueError(f"STUN message of {len(data)} bytes is shorter than its header")
        message_type, length, cookie, transaction_id = _HEADER.unpack_from(data)
        if message_type & 0xC000:
            raise ValueError("STUN message type has its two top bits set")
        if cookie != MAGIC_COOKIE:
            raise ValueError("STUN message without the magic cookie")
        if length % 4 or HEADER_LENGTH + length != len(data):
            raise ValueError(
                f"STUN message length {length} does not match the {len(data)}-byte datagram"
            )
        username = None
        offset = HEADER_LENGTH
        while offset < len(data):
            if offset + 4 > len(data):
                raise ValueError("STUN attribute header truncated")
            kind, size = _ATTRIBUTE.unpack_from(data, offset)
            offset += 4
            if offset + size > len(data):
                raise ValueError(f"STUN attribute 0x{kind:04x} of {size} bytes is truncated")
            if kind == USERNAME and username is None:
                if size > MAX_USERNAME:
                    raise ValueError(f"STUN USERNAME of {size} bytes is too long")
                try:
                    username = data[offset : offset + size].decode("utf-8")
                except UnicodeDecodeError:
                    raise ValueError("STUN USERNAME is not UTF-8") from None
            offset += size + (-size % 4)
        return cls(message_type, transaction_id, username)
