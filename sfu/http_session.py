"""WHIP and WHEP sessions on a worker: participants that have no socket.

A session is a participant of its room like any other (others see it join, publish
and leave), opened by one HTTP request and ended by another or by silence. Its
events (room changes, offers, errors) have nobody to go to: its sink drops them, and
a fatal one (transport failed, removed through the room API) ends the session.

A session ends on ``DELETE``; when ICE/DTLS does not come up within the transport's
connect timeout; when the transport fails; and when no RTCP has arrived for
``settings.http_session_idle_timeout`` seconds (every WebRTC endpoint sends RTCP at
least every few seconds, so a client that went away without ``DELETE`` leaves within
that; one that never connects too).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from sfu.protocol import (
    CandidateMessage,
    ErrorCode,
    ErrorMessage,
    IceCandidate,
    PublishOfferMessage,
    ServerMessage,
)
from sfu.sdp import SdpError, SessionDescription
from sfu.sdp.fragment import parse_ice_fragment
from sfu.viewer_subscription import ViewerSubscription
from sfu.worker_api import Grant, HttpSession, HttpSessionOffer, ProtocolError

if TYPE_CHECKING:
    from sfu.participant import Participant
    from sfu.worker import Worker

logger = logging.getLogger(__name__)

SWEEP_INTERVAL = 5.0
"""Seconds between two checks for idle sessions (at most; a shorter idle timeout
is checked twice per timeout)."""


@dataclass
class _Entry:
    participant_id: str
    kind: Literal["whip", "whep"]
    etag: str
    remote_ufrag: str | None


def _new_etag() -> str:
    return f'"{secrets.token_hex(8)}"'


class HttpSessions:
    """The WHIP/WHEP sessions of one :class:`~sfu.worker.Worker`, by session id."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self._sessions: dict[str, _Entry] = {}
        self._sweeper: asyncio.Task[None] | None = None

    async def open(self, grant: Grant, offer: HttpSessionOffer) -> HttpSession:
        if offer.kind == "whip" and not grant.can_publish:
            raise ProtocolError(ErrorCode.NOT_ALLOWED, "this token cannot publish")
        if offer.kind == "whep" and not grant.can_subscribe:
            raise ProtocolError(ErrorCode.NOT_ALLOWED, "this token cannot subscribe")
        # A WHIP client only sends and a WHEP client only receives.
        if offer.kind == "whip":
            grant = dataclasses.replace(grant, can_subscribe=False)
        else:
            grant = dataclasses.replace(grant, can_publish=False)
        # Parsed before anything is set up: a malformed offer costs a parse, no join.
        try:
            parsed = SessionDescription.parse(
                offer.sdp, max_media=self.worker.settings.max_mlines_per_offer
            )
        except SdpError as exc:
            raise ProtocolError(ErrorCode.BAD_SDP, str(exc)) from exc
        if not parsed.bundle_groups:
            raise ProtocolError(
                ErrorCode.BAD_SDP, "the offer has no BUNDLE group; the server requires BUNDLE"
            )
        participant_id = "PA_" + secrets.token_urlsafe(9)
        session_id = secrets.token_urlsafe(24)

        def viewer(participant: Participant) -> None:
            participant.viewer = ViewerSubscription(participant, offer.publisher)

        await self.worker.join(
            participant_id,
            grant,
            self._sink(session_id),
            prepare=viewer if offer.kind == "whep" else None,
        )
        try:
            sdp, remote_ufrag = await self._answer(participant_id, offer, parsed)
        except BaseException:
            await self.worker.remove_participant(participant_id)
            raise
        entry = _Entry(participant_id, offer.kind, _new_etag(), remote_ufrag)
        self._sessions[session_id] = entry
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep())
        return HttpSession(session_id, participant_id, sdp, entry.etag)

    async def _answer(
        self, participant_id: str, offer: HttpSessionOffer, parsed: SessionDescription
    ) -> tuple[str, str | None]:
        participant = self.worker.participants[participant_id]
        if offer.kind == "whip":
            answer = await participant.publish_offer(PublishOfferMessage(sdp=offer.sdp))
            if not answer.tracks:
                raise ProtocolError(
                    ErrorCode.BAD_SDP, "the offer has no audio or video m-line the server accepts"
                )
            sdp = answer.sdp
        else:
            assert participant.viewer is not None
            try:
                sdp = participant.viewer.answer(parsed)
            except SdpError as exc:
                raise ProtocolError(ErrorCode.BAD_SDP, str(exc)) from exc
            except ValueError as exc:
                raise ProtocolError(ErrorCode.BAD_CANDIDATE, str(exc)) from exc
        transport = participant.publish if offer.kind == "whip" else participant.subscribe
        return sdp, None if transport is None else transport.remote_ufrag

    def _sink(self, session_id: str) -> Callable[[ServerMessage], None]:
        def deliver(message: ServerMessage) -> None:
            if isinstance(message, ErrorMessage) and message.fatal:
                entry = self._sessions.pop(session_id, None)
                if entry is not None:
                    logger.info(
                        "HTTP session of %s ended: %s", entry.participant_id, message.message
                    )

        return deliver

    def _entry(self, session_id: str) -> tuple[_Entry, Participant]:
        entry = self._sessions.get(session_id)
        participant = None if entry is None else self.worker.participants.get(entry.participant_id)
        if entry is None or participant is None:
            self._sessions.pop(session_id, None)
            raise ProtocolError(ErrorCode.UNKNOWN_SESSION, "no such session (it may have ended)")
        return entry, participant

    async def patch(self, session_id: str, body: str, if_match: str | None) -> None:
        entry, participant = self._entry(session_id)
        try:
            fragment = parse_ice_fragment(body)
        except SdpError as exc:
            raise ProtocolError(ErrorCode.BAD_SDP, str(exc)) from exc
        restart = if_match == "*" or (
            fragment.ice_ufrag is not None and fragment.ice_ufrag != entry.remote_ufrag
        )
        if restart:
            raise ProtocolError(
                ErrorCode.UNSUPPORTED,
                "ICE restarts are not supported; DELETE this session and start a new one",
            )
        if if_match is not None and if_match != entry.etag:
            raise ProtocolError(
                ErrorCode.PRECONDITION_FAILED,
                f"If-Match {if_match[:80]!r} does not name this session's ICE credentials",
            )
        target: Literal["publish", "subscribe"] = "publish" if entry.kind == "whip" else "subscribe"
        mids = participant.viewer.mids if participant.viewer is not None else None
        for mid, candidate in fragment.candidates:
            if mids is not None and mid is not None and mid not in mids:
                raise ProtocolError(
                    ErrorCode.BAD_CANDIDATE, f"the session has no m-line with mid {mid[:80]!r}"
                )
            # The viewer's mids are checked here; the publisher's by the participant.
            sdp_mid = mid if mids is None else None
            await participant.add_candidate(
                CandidateMessage(
                    target=target, candidate=IceCandidate(candidate=candidate, sdpMid=sdp_mid)
                )
            )
        if fragment.end_of_candidates:
            await participant.add_candidate(CandidateMessage(target=target, candidate=None))

    async def close(self, session_id: str) -> None:
        entry, _ = self._entry(session_id)
        del self._sessions[session_id]
        await self.worker.remove_participant(entry.participant_id)

    async def _sweep(self) -> None:
        """End connected sessions that went silent; forget those whose participant left
        (removed through the room API, or its transport failed)."""
        try:
            timeout = self.worker.settings.http_session_idle_timeout
            while self._sessions:
                await asyncio.sleep(min(SWEEP_INTERVAL, timeout / 2))
                now = time.monotonic()
                for session_id, entry in list(self._sessions.items()):
                    participant = self.worker.participants.get(entry.participant_id)
                    if participant is None:
                        self._sessions.pop(session_id, None)
                    elif now - participant.rtcp_received_at > timeout:
                        logger.info("HTTP session of %s idle, ending it", entry.participant_id)
                        self._sessions.pop(session_id, None)
                        with contextlib.suppress(Exception):
                            await self.worker.remove_participant(entry.participant_id)
        finally:
            self._sweeper = None

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
