"""SDP parsing, serialization and the media server's offer/answer negotiation."""

from sfu.sdp.description import (
    Codec,
    HeaderExtension,
    MediaSection,
    Rid,
    SdpError,
    SessionDescription,
    Simulcast,
    SsrcGroup,
    TransportInfo,
)

__all__ = [
    "Codec",
    "HeaderExtension",
    "MediaSection",
    "Rid",
    "SdpError",
    "SessionDescription",
    "Simulcast",
    "SsrcGroup",
    "TransportInfo",
]
