"""The one place the client reaches into aiortc internals.

aiortc registers a receiver's SSRCs with its RTP router only when the receiver
first starts. The SFU reuses an inactive m-line for another track (same MID, new
SSRC); aiortc would then route the new SSRC by payload type alone, which fails as
soon as two receivers share a payload type, and drop the packets.
"""

from __future__ import annotations

from aiortc import RTCPeerConnection, RTCRtpReceiver
from aiortc.rtcdtlstransport import RTCDtlsTransport
from aiortc.sdp import SessionDescription

PRIVATE_ATTRIBUTES: tuple[tuple[type, str], ...] = (
    (RTCDtlsTransport, "_rtp_router"),
    (RTCRtpReceiver, "_RTCRtpReceiver__rtx_ssrc"),
)
"""The private instance attributes read and written here (checked by
``tests/test_private_seams.py``)."""


def route_offered_ssrcs(pc: RTCPeerConnection, offer_sdp: str) -> None:
    """Point the RTP router at the SSRCs ``offer_sdp`` announces for started receivers."""
    receivers = {t.mid: t.receiver for t in pc.getTransceivers() if t.mid is not None}
    for media in SessionDescription.parse(offer_sdp).media:
        receiver = receivers.get(media.rtp.muxId)
        if receiver is None or not media.ssrc:
            continue
        router = receiver.transport._rtp_router
        if receiver not in router.receivers:
            continue  # not started yet: aiortc registers the offered SSRCs itself
        for description in media.ssrc:
            router.ssrc_table[description.ssrc] = receiver
        rtx_map: dict[int, int] = receiver._RTCRtpReceiver__rtx_ssrc
        for group in media.ssrc_group:
            if group.semantic == "FID" and len(group.items) == 2:
                rtx_map[int(group.items[1])] = int(group.items[0])
