"""The room administration API, ``/api/rooms`` and ``/api/workers``.

Served by every signaling node; in a cluster the node asks the workers over the bus,
so any node answers for every room. Protected by HTTP Basic authentication with the
API key as user name and the API secret as password.
"""

from __future__ import annotations

import secrets
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request, status
from fastapi.security import HTTPBasic, HTTPBasicCredentials
from pydantic import BaseModel

from sfu.cluster.admin import ClusterAdmin, RoomAdmin, RoomSummary
from sfu.cluster.backend import WorkerInfo
from sfu.protocol import ErrorCode, Participant
from sfu.worker_api import ProtocolError
from signaling import SettingsDep

_basic = HTTPBasic(realm="sfu", auto_error=False)


def require_api_key(
    settings: SettingsDep,
    credentials: Annotated[HTTPBasicCredentials | None, Depends(_basic)],
) -> None:
    """401 unless the request carries ``api_key:api_secret`` (HTTP Basic)."""
    ok = credentials is not None and (
        secrets.compare_digest(credentials.username.encode(), settings.api_key.encode())
        & secrets.compare_digest(credentials.password.encode(), settings.api_secret.encode())
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

router = APIRouter(prefix="/api", dependencies=[Depends(require_api_key)])


class MuteRequest(BaseModel):
    track_id: str
    muted: bool = True


class DrainRequest(BaseModel):
    timeout: float | None = None
    """Seconds before remaining participants are moved; default: the worker's setting."""


def _http_error(exc: ProtocolError) -> HTTPException:
    if exc.code in (ErrorCode.NOT_JOINED, ErrorCode.UNKNOWN_TRACK):
        return HTTPException(status.HTTP_404_NOT_FOUND, exc.message)
    if exc.code is ErrorCode.WORKER_UNAVAILABLE:
        return HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, exc.message)
    return HTTPException(status.HTTP_400_BAD_REQUEST, f"{exc.code}: {exc.message}")


@router.get("/rooms")
async def list_rooms(admin: AdminDep) -> list[RoomSummary]:
    try:
        return await admin.list_rooms()
    except ProtocolError as exc:
        raise _http_error(exc) from exc


@router.get("/rooms/{room}/participants")
async def list_participants(admin: AdminDep, room: str) -> list[Participant]:
    try:
        return await admin.list_participants(room)
    except ProtocolError as exc:
        raise _http_error(exc) from exc


@router.delete("/rooms/{room}/participants/{participant_id}", status_code=204)
async def remove_participant(admin: AdminDep, room: str, participant_id: str) -> None:
    try:
        await admin.remove_participant(room, participant_id)
    except ProtocolError as exc:
        raise _http_error(exc) from exc


@router.post("/rooms/{room}/participants/{participant_id}/mute", status_code=204)
async def mute_track(admin: AdminDep, room: str, participant_id: str, body: MuteRequest) -> None:
    try:
        await admin.mute_track(room, participant_id, body.track_id, body.muted)
    except ProtocolError as exc:
        raise _http_error(exc) from exc


@router.get("/workers")
async def list_workers(admin: AdminDep) -> list[WorkerInfo]:
    if not isinstance(admin, ClusterAdmin):
        raise HTTPException(status.HTTP_501_NOT_IMPLEMENTED, "not a cluster node")
    try:
        return await admin.workers()
    except ProtocolError as exc:
        raise _http_error(exc) from exc


@router.post("/workers/{worker_id}/drain", status_code=202)
async def drain_worker(admin: AdminDep, worker_id: str, body: DrainRequest) -> dict[str, Any]:
    if not isinstance(admin, ClusterAdmin):
        raise HTTPException(status.HTTP_501_NOT_IMPLEMENTED, "not a cluster node")
    try:
        await admin.drain_worker(worker_id, body.timeout)
    except ProtocolError as exc:
        raise _http_error(exc) from exc
    return {"worker_id": worker_id, "draining": True}
