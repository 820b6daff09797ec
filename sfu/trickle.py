"""Trickle ICE (RFC 8838) on the server's side: a remote candidate the client trickles
for one of its transports is checked against the m-lines of that transport's current
description and handed to the transport; an empty candidate (Firefox sends one per
m-line) or none is end-of-candidates."""

from __future__ import annotations

from sfu.protocol import CandidateMessage, ErrorCode, IceCandidate
from sfu.transport import Transport
from sfu.worker_api import ProtocolError


def check_media_line(candidate: IceCandidate, mids: list[str | None], target: str) -> None:
    """A candidate must name an m-line of the current description: by sdpMid, which
    wins when both are given (as in W3C's addIceCandidate), or by sdpMLineIndex.
    Neither is fine: every m-line shares the one BUNDLE transport."""
    if candidate.sdpMid is not None:
        if candidate.sdpMid not in mids:
            raise ProtocolError(
                ErrorCode.BAD_CANDIDATE,
                f"the {target} description has no m-line with sdpMid {candidate.sdpMid[:80]!r}",
            )
    elif candidate.sdpMLineIndex is not None and not 0 <= candidate.sdpMLineIndex < len(mids):
        raise ProtocolError(
            ErrorCode.BAD_CANDIDATE,
            f"sdpMLineIndex {candidate.sdpMLineIndex} is out of range: the {target}"
            f" description has {len(mids)} m-lines",
        )


async def add_remote_candidate(
    transport: Transport | None, message: CandidateMessage, mids: list[str | None]
) -> None:
    """Add ``message``'s candidate to ``transport``, whose description has ``mids``."""
    if transport is None:
        raise ProtocolError(
            ErrorCode.OUT_OF_ORDER, f"no {message.target} transport yet: offer first"
        )
    candidate = message.candidate
    if candidate is not None:
        check_media_line(candidate, mids, message.target)
    try:
        await transport.add_remote_candidate(None if candidate is None else candidate.candidate)
    except ValueError as exc:
        raise ProtocolError(ErrorCode.BAD_CANDIDATE, str(exc)) from exc
