"""Settings for every process, from flags, environment (``SFU_*``) or defaults."""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

DEV_API_KEY = "devkey"
DEV_API_SECRET = "devsecret-change-me-in-production-0123456789"


class Settings(BaseSettings):
    """One settings model shared by the signaling tier and the media worker."""

    model_config = SettingsConfigDict(env_prefix="SFU_", env_file=None, extra="ignore")

    host: str = Field(default="0.0.0.0", description="HTTP/WebSocket bind address")
    port: int = Field(default=8080, description="HTTP/WebSocket port")
    ice_addresses: list[str] = Field(
        default_factory=list,
        description="addresses the worker gathers ICE host candidates on; "
        "empty means every interface address plus 127.0.0.1",
    )
    announced_ip: str | None = Field(
        default=None, description="public address written into candidates (behind NAT)"
    )
    udp_port_min: int | None = Field(
        default=None, description="lowest UDP port of media transports (with udp_port_max)"
    )
    udp_port_max: int | None = Field(
        default=None, description="highest UDP port of media transports; unset: any port"
    )
    metrics_port: int = Field(
        default=9091,
        description="port of /metrics for a process without an HTTP app (`sfu worker`, "
        "see sfu.metrics.http.metrics_server)",
    )
    api_key: str = DEV_API_KEY
    api_secret: str = DEV_API_SECRET
    dev_tokens: bool = Field(
        default=True,
        description="serve /api/dev-token so the demo page can mint its own tokens",
    )
    allow_h264: bool = Field(
        default=True, description="pass H.264 through when publisher and subscriber offer it"
    )
    ice_servers: list[str] = Field(
        default_factory=list, description="STUN/TURN URLs handed to clients"
    )
    turn_urls: list[str] = Field(
        default_factory=list,
        description="TURN URLs (turn:host:3478?transport=udp, turns:...) handed to clients "
        "with time-limited credentials minted from turn_secret",
    )
    turn_secret: str | None = Field(
        default=None, description="coturn's static-auth-secret (TURN REST API credentials)"
    )
    turn_ttl_seconds: int = Field(
        default=6 * 3600, description="lifetime of the TURN credentials handed to a client"
    )
    reconnect_grace_seconds: float = Field(
        default=10.0,
        description="seconds a session whose socket dropped waits to be resumed (cluster)",
    )
    redis_url: str = Field(
        default="redis://127.0.0.1:6379/0",
        description="the cluster's Redis (registry, placement, bus); `sfu signaling`/`worker`",
    )
    node_id: str | None = Field(
        default=None, description="this signaling node's id (default: random per process)"
    )
    worker_id: str | None = Field(
        default=None, description="this media worker's id (default: random per process)"
    )
    capacity: int = Field(
        default=500, ge=1, description="participants a worker accepts before placement skips it"
    )
    heartbeat_interval: float = Field(
        default=1.0, gt=0, description="seconds between a worker's (and a node's) heartbeats"
    )
    heartbeat_ttl: float = Field(
        default=3.0, gt=0, description="seconds a missed heartbeat keeps a process registered"
    )
    room_lease: float = Field(
        default=30.0, gt=0, description="seconds a room's placement outlives its worker's renewals"
    )
    rpc_timeout: float = Field(
        default=5.0, gt=0, description="seconds a signaling node waits for a worker's reply"
    )
    monitor_interval: float = Field(
        default=0.5, gt=0, description="seconds between a node's checks that workers are alive"
    )
    drain_timeout: float = Field(
        default=3600.0,
        ge=0,
        description="seconds a draining worker waits for its rooms to end before moving them",
    )
    log_level: str = "info"


@lru_cache
def get_settings() -> Settings:
    return Settings()
