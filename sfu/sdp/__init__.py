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
from sfu.sdp.negotiation import (
    CODEC_POLICY,
    CodecPolicy,
    LocalTransport,
    NegotiatedMedia,
    OutgoingMedia,
    PublishedMedia,
    create_publish_answer,
    create_subscribe_offer,
    default_outgoing_codecs,
    parse_subscribe_answer,
)

__all__ = [
    "CODEC_POLICY",
    "Codec",
    "CodecPolicy",
    "HeaderExtension",
    "LocalTransport",
    "MediaSection",
    "NegotiatedMedia",
    "OutgoingMedia",
    "PublishedMedia",
    "Rid",
    "SdpError",
    "SessionDescription",
    "Simulcast",
    "SsrcGroup",
    "TransportInfo",
    "create_publish_answer",
    "create_subscribe_offer",
    "default_outgoing_codecs",
    "parse_subscribe_answer",
]
