"""The room administration API, ``/api/rooms`` (recordings included) and ``/api/workers``.

Served by every signaling node; in a cluster the node asks the workers over the bus,
so any node answers for every room. Protected by HTTP Basic authentication with the
API key as user name and the API secret as password; the published development secret
opens it in dev mode only.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Coroutine
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request, Response, status
from fastapi.routing import APIRoute
from fastapi.security import HTTPBasic, HTTPBasicCredentials
from pydantic import BaseModel

from sfu.cluster.admin import ClusterAdmin, RoomAdmin, RoomSummary
from sfu.cluster.backend import WorkerInfo
from sfu.protocol import ErrorCode, Participant, RecordingInfo
from sfu.worker_api import ProtocolError
from signaling import SettingsDep

_basic = HTTPBasic(realm="sfu", auto_error=False)


def require_api_key(
    settings: SettingsDep,
    credentials: Annotated[HTTPBasicCredentials | None, Depends(_basic)],
) -> None:
    """401 unless the request carries ``api_key:api_secret`` (HTTP Basic), and the
    secret is not the development one outside dev mode."""
    ok = (
        settings.has_secret
        and credentials is not None
        and (
            secrets.compare_digest(credentials.username.encode(), settings.api_key.encode())
            & secrets.compare_digest(credentials.password.encode(), settings.api_secret.encode())
        )
    )
    if not ok:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "send the API key and secret with HTTP Basic authentication",
            headers={"WWW-Authenticate": 'Basic realm="sfu"'},
        )


def get_admin(request: Request) -> RoomAdmin:
    admin: RoomAdmin | None = getattr(request.state, "admin", None)
    if admin is None:
        raise HTTPException(status.HTTP_501_NOT_IMPLEMENTED, "no room administration here")
    return admin


AdminDep = Annotated[RoomAdmin, Depends(get_admin)]


class _AdminRoute(APIRoute):
    """A route whose :class:`ProtocolError` (from the room admin) is an HTTP error."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            try:
                return await handler(request)
            except ProtocolError as exc:
                raise _http_error(exc) from exc

        return handle


router = APIRouter(prefix="/api", dependencies=[Depends(require_api_key)], route_class=_AdminRoute)


class MuteRequest(BaseModel):
    track_id: str
    muted: bool = True


class StartRecordingRequest(BaseModel):
    track_id: str | None = None
    """The track to record; none: every track of the room, those published later too."""


class DrainRequest(BaseModel):
    timeout: float | None = None
    """Seconds before remaining participants are moved; default: the worker's setting."""


_STATUS = {
    ErrorCode.NOT_JOINED: status.HTTP_404_NOT_FOUND,
    ErrorCode.UNKNOWN_TRACK: status.HTTP_404_NOT_FOUND,
    ErrorCode.UNKNOWN_RECORDING: status.HTTP_404_NOT_FOUND,
    ErrorCode.WORKER_UNAVAILABLE: status.HTTP_503_SERVICE_UNAVAILABLE,
    ErrorCode.ALREADY_RECORDING: status.HTTP_409_CONFLICT,
    ErrorCode.RECORDING_LIMIT: status.HTTP_429_TOO_MANY_REQUESTS,
    ErrorCode.STORAGE_UNAVAILABLE: status.HTTP_507_INSUFFICIENT_STORAGE,
}
"""HTTP status of the errors that have one of their own (the rest are 400)."""


def _http_error(exc: ProtocolError) -> HTTPException:
    code = _STATUS.get(exc.code)
    if code is not None:
        return HTTPException(code, exc.message)
    return HTTPException(status.HTTP_400_BAD_REQUEST, f"{exc.code}: {exc.message}")


@router.get("/rooms")
async def list_rooms(admin: AdminDep) -> list[RoomSummary]:
    return await admin.list_rooms()


@router.get("/rooms/{room}/participants")
async def list_participants(admin: AdminDep, room: str) -> list[Participant]:
    return await admin.list_participants(room)


@router.delete("/rooms/{room}/participants/{participant_id}", status_code=204)
async def remove_participant(admin: AdminDep, room: str, participant_id: str) -> None:
    await admin.remove_participant(room, participant_id)


@router.post("/rooms/{room}/participants/{participant_id}/mute", status_code=204)
async def mute_track(admin: AdminDep, room: str, participant_id: str, body: MuteRequest) -> None:
    await admin.mute_track(room, participant_id, body.track_id, body.muted)


@router.post("/rooms/{room}/recordings", status_code=201)
async def start_recording(admin: AdminDep, room: str, body: StartRecordingRequest) -> RecordingInfo:
    return await admin.start_recording(room, body.track_id)


@router.get("/rooms/{room}/recordings")
async def list_recordings(admin: AdminDep, room: str) -> list[RecordingInfo]:
    return await admin.list_recordings(room)


@router.delete("/rooms/{room}/recordings/{recording_id}")
async def stop_recording(admin: AdminDep, room: str, recording_id: str) -> RecordingInfo:
    """Stop one recording; it comes back with its finished files."""
    stopped = await admin.stop_recording(room, recording_id)
    return stopped[0]


@router.delete("/rooms/{room}/recordings")
async def stop_recordings(admin: AdminDep, room: str) -> list[RecordingInfo]:
    """Stop every recording of the room."""
    return await admin.stop_recording(room, None)


@router.get("/workers")
async def list_workers(admin: AdminDep) -> list[WorkerInfo]:
    if not isinstance(admin, ClusterAdmin):
        raise HTTPException(status.HTTP_501_NOT_IMPLEMENTED, "not a cluster node")
    return await admin.workers()


@router.post("/workers/{worker_id}/drain", status_code=202)
async def drain_worker(admin: AdminDep, worker_id: str, body: DrainRequest) -> dict[str, Any]:
    if not isinstance(admin, ClusterAdmin):
        raise HTTPException(status.HTTP_501_NOT_IMPLEMENTED, "not a cluster node")
    await admin.drain_worker(worker_id, body.timeout)
    return {"worker_id": worker_id, "draining": True}
