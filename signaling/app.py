"""The FastAPI application: HTTP API, the signaling socket and the static demo client."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Annotated, TypedDict

from fastapi import APIRouter, FastAPI, HTTPException, Query, Request, Response, status
from fastapi.staticfiles import StaticFiles
from pydantic import AfterValidator, BaseModel

from sfu.cluster.admin import LocalAdmin, RoomAdmin
from sfu.config import Settings, get_settings
from sfu.metrics import WorkerMetrics, render
from sfu.worker_api import MediaWorker
from signaling import SettingsDep, admin, ws
from signaling.auth import MAX_ID_LENGTH, check_id, mint_token

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


def create_app(
    settings: Settings | None = None,
    worker: MediaWorker | None = None,
    room_admin: RoomAdmin | None = None,
) -> FastAPI:
    """Build the application.

    ``settings`` overrides :func:`get_settings` for every route. Without ``worker``
    the lifespan handler creates, starts and stops a :class:`sfu.worker.Worker`; a
    given worker is used as it is and its life is the caller's business; so is
    ``room_admin``, which serves ``/api/rooms`` (the embedded worker's own otherwise).
    """
    resolved = settings if settings is not None else get_settings()
    app = FastAPI(title="pysfu signaling", lifespan=_lifespan(resolved, worker, room_admin))
    if settings is not None:
        app.dependency_overrides[get_settings] = lambda: settings
    app.include_router(router)
    app.include_router(ws.router)
    app.include_router(admin.router)
    # Mounted last: it answers every path the routers do not. Without the directory
    # (a checkout before the client is written) there is nothing to serve.
    if STATIC_DIR.is_dir():
        app.mount("/", StaticFiles(directory=STATIC_DIR, html=True), name="static")
    return app


def _lifespan(
    settings: Settings, worker: MediaWorker | None, room_admin: RoomAdmin | None
) -> Callable[[FastAPI], AbstractAsyncContextManager[LifespanState]]:
    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[LifespanState]:
        if worker is not None:
            yield {"worker": worker, "admin": room_admin}
            return
        from sfu.worker import Worker  # imported here: written separately from this module

        owned = Worker(settings)
        await owned.start()
        worker_metrics = WorkerMetrics(owned)
        worker_metrics.start()
        try:
            yield {"worker": owned, "admin": LocalAdmin(owned)}
        finally:
            await worker_metrics.stop()
            await owned.stop()

    return lifespan
