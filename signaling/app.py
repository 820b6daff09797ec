"""The FastAPI application: HTTP API, the signaling socket and the static demo client."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager, nullcontext
from pathlib import Path
from typing import Annotated, TypedDict

from fastapi import APIRouter, FastAPI, HTTPException, Query, Request, Response, status
from fastapi.staticfiles import StaticFiles
from pydantic import AfterValidator, BaseModel

from sfu.access_token import MAX_ID_LENGTH, check_id, mint_token
from sfu.cluster.admin import RoomAdmin
from sfu.config import Settings, get_settings
from sfu.metrics.exposition import render
from sfu.worker_api import MediaWorker
from signaling import SettingsDep, admin, whip, ws

STATIC_DIR = Path(__file__).parent / "static"


class LifespanState(TypedDict):
    worker: MediaWorker
    admin: RoomAdmin | None


class DevToken(BaseModel):
    token: str
    url: str


RoomQuery = Annotated[
    str,
    Query(min_length=1, max_length=MAX_ID_LENGTH),
    AfterValidator(lambda v: check_id(v, "room")),
]
IdentityQuery = Annotated[
    str | None,
    Query(min_length=1, max_length=MAX_ID_LENGTH),
    AfterValidator(lambda v: v if v is None else check_id(v, "identity")),
]
NameQuery = Annotated[str | None, Query(max_length=64)]

router = APIRouter()


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/metrics", include_in_schema=False)
async def metrics() -> Response:
    """Prometheus metrics of this process (``async``: collection must run on the loop
    that owns the media worker, never in the thread pool)."""
    body, content_type = render()
    return Response(body, media_type=content_type)


@router.get("/api/dev-token")
async def dev_token(
    request: Request,
    settings: SettingsDep,
    room: RoomQuery,
    identity: IdentityQuery = None,
    name: NameQuery = None,
) -> DevToken:
    """Mint a token for the demo page; only when ``settings.dev_tokens`` is on."""
    if not settings.dev_tokens:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "dev tokens are disabled on this server")
    token = mint_token(
        settings.api_key,
        settings.api_secret,
        room=room,
        identity=identity or f"user-{secrets.token_hex(2)}",
        name=name or None,
    )
    return DevToken(token=token, url=request.app.url_path_for("signaling_socket"))


MediaLifespan = Callable[[], AbstractAsyncContextManager[None]]
"""Starts the media side when the app starts and stops it when the app stops (the
embedded server's in-process worker: :mod:`sfu.app.embedded`)."""


def create_app(
    worker: MediaWorker,
    settings: Settings | None = None,
    room_admin: RoomAdmin | None = None,
    media_lifespan: MediaLifespan | None = None,
) -> FastAPI:
    """Build the application around ``worker``, which it never builds itself.

    ``settings`` overrides :func:`get_settings` for every route; ``room_admin`` serves
    ``/api/rooms`` (the room API answers 503 without one); ``media_lifespan`` runs
    around the app's life (without it, the worker's life is the caller's business).
    """
    resolved = settings if settings is not None else get_settings()
    app = FastAPI(title="pysfu signaling", lifespan=_lifespan(worker, room_admin, media_lifespan))
    if settings is not None:
        app.dependency_overrides[get_settings] = lambda: settings
    app.state.sessions = ws.Sessions(resolved)
    app.include_router(router)
    app.include_router(ws.router)
    app.include_router(admin.router)
    app.include_router(whip.router)
    # Mounted last: it answers every path the routers do not. Without the directory
    # (a checkout before the client is written) there is nothing to serve.
    if STATIC_DIR.is_dir():
        app.mount("/", StaticFiles(directory=STATIC_DIR, html=True), name="static")
    return app


def _lifespan(
    worker: MediaWorker, room_admin: RoomAdmin | None, media_lifespan: MediaLifespan | None
) -> Callable[[FastAPI], AbstractAsyncContextManager[LifespanState]]:
    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[LifespanState]:
        async with media_lifespan() if media_lifespan is not None else nullcontext():
            yield {"worker": worker, "admin": room_admin}

    return lifespan
