"""WHIP ingest (RFC 9725) and WHEP egress (the IETF WHEP draft) over HTTP.

``POST /whip/{room}`` with an SDP offer (``application/sdp``) and ``Authorization:
Bearer <access token>`` joins the room as a publishing participant and answers
``201 Created`` with the SDP answer, the session's ``Location``, an ``ETag`` for its
ICE session and a ``Link`` header per ICE server (TURN credentials as ``joined``
gives them). ``POST /whep/{room}`` (``?participant=<identity>`` for one publisher's
tracks) does the same for a receive-only viewer. On the session URL, ``PATCH`` with
``application/trickle-ice-sdpfrag`` trickles candidates (ICE restarts are refused
with 422: the media plane has none) and ``DELETE`` ends the session. Every error is
an RFC 9457 problem document. CORS headers allow browser clients on any origin: the
bearer token, not a cookie, is the credential.

This router talks to the media plane only through the :class:`MediaWorker` calls
``open_http_session``, ``patch_http_session`` and ``close_http_session``.
"""

from __future__ import annotations

import json
import logging
from typing import Annotated, Literal
from urllib.parse import quote

from fastapi import APIRouter, Query, Request, Response

from sfu.access_token import check_id, verify_token
from sfu.config import Settings
from sfu.protocol import MAX_MESSAGE_BYTES, ErrorCode
from sfu.worker_api import Grant, HttpSessionOffer, MediaWorker, ProtocolError
from signaling import SettingsDep
from signaling.turn import turn_ice_servers

logger = logging.getLogger(__name__)

MAX_OFFER_BYTES = MAX_MESSAGE_BYTES
"""Largest SDP offer accepted (the limit of a ``publish_offer`` on the socket)."""
MAX_FRAGMENT_BYTES = 16 * 1024
"""Largest trickle ICE fragment accepted."""
SDP = "application/sdp"
SDP_FRAGMENT = "application/trickle-ice-sdpfrag"

CORS_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "POST, PATCH, DELETE, OPTIONS",
    "Access-Control-Allow-Headers": "Authorization, Content-Type, If-Match",
    "Access-Control-Expose-Headers": "Location, ETag, Link, Accept-Patch, Accept-Post",
    "Access-Control-Max-Age": "600",
}

_STATUS = {
    ErrorCode.BAD_TOKEN: 401,
    ErrorCode.TOKEN_EXPIRED: 401,
    ErrorCode.NOT_ALLOWED: 403,
    ErrorCode.BAD_SDP: 400,
    ErrorCode.BAD_CANDIDATE: 400,
    ErrorCode.BAD_MESSAGE: 400,
    ErrorCode.TOO_MANY_TRACKS: 400,
    ErrorCode.UNKNOWN_SESSION: 404,
    ErrorCode.NOT_JOINED: 404,
    ErrorCode.PRECONDITION_FAILED: 412,
    ErrorCode.TOO_LARGE: 413,
    ErrorCode.UNSUPPORTED: 422,
    ErrorCode.ROOM_FULL: 503,
    ErrorCode.WORKER_UNAVAILABLE: 503,
}

router = APIRouter()
Kind = Literal["whip", "whep"]


class _HttpError(Exception):
    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail


def _problem(status: int, code: str, detail: str) -> Response:
    """An RFC 9457 problem document with the same stable code as the socket's errors."""
    body = {
        "type": f"urn:pysfu:error:{code}",
        "title": code.replace("_", " "),
        "status": status,
        "detail": detail,
        "code": code,
    }
    headers = dict(CORS_HEADERS)
    if status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="pysfu"'
    return Response(
        json.dumps(body), status, headers=headers, media_type="application/problem+json"
    )


def _error_response(exc: ProtocolError | _HttpError) -> Response:
    if isinstance(exc, _HttpError):
        return _problem(exc.status, exc.code, exc.detail)
    return _problem(_STATUS.get(exc.code, 500), exc.code.value, exc.message)


def _worker(request: Request) -> MediaWorker:
    worker: MediaWorker = request.state.worker
    return worker


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def _require_type(request: Request, wanted: str) -> None:
    got = _media_type(request)
    if got != wanted:
        raise _HttpError(415, "unsupported_media_type", f"the body must be {wanted}, not {got!r}")


async def _body(request: Request, limit: int) -> str:
    """The request body as text, read no further than ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _HttpError(413, "too_large", f"the body is {declared} bytes; at most {limit}")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _HttpError(413, "too_large", f"the body is over {limit} bytes")
        chunks.append(chunk)
    try:
        return b"".join(chunks).decode()
    except UnicodeDecodeError:
        raise _HttpError(400, "bad_sdp", "the body is not UTF-8 text") from None


def _grant(request: Request, settings: Settings, room: str) -> Grant:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise _HttpError(401, "bad_token", "an 'Authorization: Bearer <access token>' is needed")
    if not settings.has_secret:
        raise _HttpError(
            401, "bad_token", "this server has no API secret configured (not in dev mode)"
        )
    grant = verify_token(
        token.strip(),
        settings.api_key,
        settings.api_secret,
        max_lifetime=settings.token_max_lifetime,
    )
    if grant.room != room:
        raise _HttpError(403, "not_allowed", f"the token is for room {grant.room!r}, not {room!r}")
    return grant


def ice_server_links(settings: Settings, identity: str) -> str:
    """The ICE servers as RFC 9725 section 4.4 ``Link`` values (RFC 8288)."""
    links = [f'<{url}>; rel="ice-server"' for url in settings.ice_servers]
    # A header is ASCII, and a quoted-string has no '"': the TURN username names the
    # identity URL-encoded (coturn reads only the expiry before the colon).
    for server in turn_ice_servers(settings, quote(identity, safe="")):
        for url in server.urls:
            links.append(
                f'<{url}>; rel="ice-server"; username="{server.username}";'
                f' credential="{server.credential}"; credential-type="password"'
            )
    return ", ".join(links)


async def _open(
    kind: Kind, request: Request, settings: Settings, room: str, publisher: str | None
) -> Response:
    try:
        check_id(room, "room")
        if publisher is not None:
            check_id(publisher, "participant")
    except ValueError as exc:
        return _problem(400, "bad_message", str(exc))
    try:
        grant = _grant(request, settings, room)
        _require_type(request, SDP)
        sdp = await _body(request, MAX_OFFER_BYTES)
        session = await _worker(request).open_http_session(
            grant, HttpSessionOffer(kind=kind, sdp=sdp, publisher=publisher)
        )
    except (ProtocolError, _HttpError) as exc:
        return _error_response(exc)
    headers = {
        **CORS_HEADERS,
        # Room names may be any printable Unicode: the header carries them URL-encoded.
        "Location": f"/{kind}/{quote(room, safe='')}/{session.session_id}",
        "ETag": session.etag,
        "Accept-Patch": SDP_FRAGMENT,
    }
    link = ice_server_links(settings, grant.identity)
    if link:
        headers["Link"] = link
    logger.info("%s session of %s in %s opened", kind, session.participant_id, room)
    return Response(session.sdp, 201, headers=headers, media_type=SDP)


async def _patch(request: Request, session: str) -> Response:
    try:
        _require_type(request, SDP_FRAGMENT)
        fragment = await _body(request, MAX_FRAGMENT_BYTES)
        await _worker(request).patch_http_session(
            session, fragment, request.headers.get("if-match")
        )
    except (ProtocolError, _HttpError) as exc:
        return _error_response(exc)
    return Response(status_code=204, headers=CORS_HEADERS)


async def _delete(request: Request, session: str) -> Response:
    try:
        await _worker(request).close_http_session(session)
    except ProtocolError as exc:
        return _error_response(exc)
    return Response(status_code=200, headers=CORS_HEADERS)


ParticipantQuery = Annotated[str | None, Query()]
"""Checked in :func:`_open` (by :func:`check_id`: printable, 128 characters), so that a
bad one gets a problem document like every other error."""


@router.post("/whip/{room}")
async def whip_post(request: Request, settings: SettingsDep, room: str) -> Response:
    """Publish into ``room`` (RFC 9725)."""
    return await _open("whip", request, settings, room, None)


@router.post("/whep/{room}")
async def whep_post(
    request: Request, settings: SettingsDep, room: str, participant: ParticipantQuery = None
) -> Response:
    """Receive ``room``'s tracks, or those of the publisher with identity ``participant``."""
    return await _open("whep", request, settings, room, participant)


@router.patch("/whip/{room}/{session}")
@router.patch("/whep/{room}/{session}")
async def session_patch(request: Request, room: str, session: str) -> Response:
    """Trickle ICE candidates (RFC 8840 fragments)."""
    return await _patch(request, session)


@router.delete("/whip/{room}/{session}")
@router.delete("/whep/{room}/{session}")
async def session_delete(request: Request, room: str, session: str) -> Response:
    """End the session: the participant leaves the room."""
    return await _delete(request, session)


@router.options("/whip/{room}")
@router.options("/whep/{room}")
async def endpoint_options(room: str) -> Response:
    """CORS preflight for the endpoint."""
    return Response(status_code=204, headers={**CORS_HEADERS, "Accept-Post": SDP})


@router.options("/whip/{room}/{session}")
@router.options("/whep/{room}/{session}")
async def session_options(room: str, session: str) -> Response:
    """CORS preflight for a session."""
    return Response(status_code=204, headers={**CORS_HEADERS, "Accept-Patch": SDP_FRAGMENT})
