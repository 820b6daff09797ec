"""Settings for every process, from flags, environment (``SFU_*``) or defaults."""

from __future__ import annotations

import ipaddress
from functools import lru_cache
from pathlib import Path
from typing import Self
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from sfu.cluster.redis_url import is_sentinel_url, parse_sentinel_url

DEV_API_KEY = "devkey"
DEV_API_SECRET = "devsecret-change-me-in-production-0123456789"
"""The development credentials: published in the README, so accepted only in dev mode."""
DEV_HOST = "127.0.0.1"
"""Where dev mode binds unless a host is given: the demo is for this machine."""
MIN_SECRET_LENGTH = 32
"""Shortest API secret a server starts with outside dev mode (256 bits of hex)."""


class Settings(BaseSettings):
    """One settings model shared by the signaling tier and the media worker."""

    model_config = SettingsConfigDict(env_prefix="SFU_", env_file=None, extra="ignore")

    dev: bool = Field(
        default=False,
        description="development mode: the published key and secret (DEV_API_KEY, "
        "DEV_API_SECRET) unless others are given, /api/dev-token, and a loopback bind "
        "unless a host is given; never on a public server",
    )
    host: str = Field(
        default="0.0.0.0", description="HTTP/WebSocket bind address (dev mode: 127.0.0.1)"
    )
    port: int = Field(default=8080, description="HTTP/WebSocket port")
    ice_addresses: list[str] = Field(
        default_factory=list,
        description="IPv4 or IPv6 addresses the worker gathers ICE host candidates on; "
        "empty means every interface address (global IPv6 ones included) plus 127.0.0.1",
    )
    announced_ip: str | None = Field(
        default=None, description="public address written into candidates (behind NAT)"
    )
    udp_port: int = Field(
        default=0,
        ge=0,
        le=65535,
        description="the one UDP port every transport of the worker shares (one socket "
        "per ICE address); 0: a free port chosen at start and logged; not used when "
        "udp_port_min and udp_port_max are set",
    )
    udp_port_min: int | None = Field(
        default=None,
        description="lowest UDP port of a socket per transport (with udp_port_max), "
        "instead of the single udp_port",
    )
    udp_port_max: int | None = Field(
        default=None, description="highest UDP port of a socket per transport"
    )
    tcp_port: int | None = Field(
        default=None,
        ge=0,
        le=65535,
        description="the worker's ICE-TCP port (RFC 6544 passive candidates, for clients "
        "whose UDP is blocked); 0: a free port; unset: no ICE-TCP",
    )
    metrics_port: int = Field(
        default=9091,
        description="port of /metrics for a process without an HTTP app (`sfu worker`, "
        "see sfu.app.metrics_server)",
    )
    api_key: str = Field(default=DEV_API_KEY, description="API key: the tokens' issuer")
    api_secret: str = Field(
        default=DEV_API_SECRET,
        description="API secret: signs tokens and opens the room API; the default, the "
        "published development secret, is accepted only in dev mode",
    )
    dev_tokens: bool = Field(
        default=False,
        description="serve /api/dev-token, which mints a token for any room and identity "
        "(so the demo page can join); on by default in dev mode only",
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
        description="the cluster's Redis (registry, placement, bus); `sfu signaling`/`worker`; "
        "redis+sentinel://host:26379[,host:port…]/service[/db] finds the primary through "
        "Redis Sentinel",
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
    webhook_urls: list[str] = Field(
        default_factory=list,
        description="URLs that receive room events as signed POSTs (README, Webhooks); "
        "JSON list in SFU_WEBHOOK_URLS; sent by the process hosting the room",
    )
    webhook_queue_size: int = Field(
        default=1000, ge=1, description="webhook events waiting per URL; beyond, new ones drop"
    )
    webhook_max_attempts: int = Field(
        default=8, ge=1, description="POSTs per webhook event and URL before it is given up"
    )
    # Limits: what one client can make the server hold or do (README, "Limits").
    http_request_timeout: float = Field(
        default=10.0,
        gt=0,
        description="seconds an HTTP request (a WebSocket handshake included) may take to "
        "arrive in full; a slower connection is closed",
    )
    max_connections: int = Field(
        default=2000, ge=1, description="WebSocket connections one signaling process holds"
    )
    max_connections_per_ip: int = Field(
        default=64, ge=1, description="WebSocket connections from one client address"
    )
    forwarded_allow_ips: str = Field(
        default="127.0.0.1",
        description="comma-separated addresses of proxies whose X-Forwarded-For names the "
        "client (the address max_connections_per_ip counts); '*' when only a load "
        "balancer can reach this process",
    )
    join_timeout: float = Field(
        default=10.0, gt=0, description="seconds a socket may stay open before a successful join"
    )
    message_rate: float = Field(
        default=50.0, gt=0, description="WebSocket messages per second one socket may send"
    )
    message_burst: int = Field(
        default=100, ge=1, description="WebSocket messages one socket may send in a burst"
    )
    max_participants_per_room: int = Field(
        default=100, ge=1, description="participants in one room; a join beyond is refused"
    )
    max_tracks_per_participant: int = Field(
        default=16, ge=1, description="tracks one participant may publish at once"
    )
    max_mlines_per_offer: int = Field(
        default=32, ge=1, description="m-lines in one publish offer; a larger offer is bad_sdp"
    )
    renegotiation_timeout: float = Field(
        default=20.0,
        gt=0,
        description="seconds a subscriber has to answer a subscribe offer before it is dropped",
    )
    http_session_idle_timeout: float = Field(
        default=30.0,
        gt=0,
        description="seconds without RTCP after which a WHIP/WHEP session ends (its client "
        "went away without DELETE, or never connected)",
    )
    token_max_lifetime: float = Field(
        default=24 * 3600.0,
        gt=0,
        description="longest accepted token lifetime (exp - now); longer tokens are bad_token",
    )
    rtcp_budget: float = Field(
        default=0.02,
        gt=0,
        description="seconds of event-loop time per second a participant's RTCP may use; "
        "beyond it the participant's RTCP is dropped (and counted) until the next second",
    )
    recording_dir: Path | None = Field(
        default=None,
        description="directory recordings are written to (room API); unset: recording is off",
    )
    max_recordings: int = Field(
        default=16, ge=1, description="tracks one worker records at once (one file each)"
    )
    recording_min_free_bytes: int = Field(
        default=1 << 30,
        ge=0,
        description="free space the recording disk must keep: below it no recording "
        "starts and running ones stop",
    )
    log_level: str = "info"

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, url: str) -> str:
        if is_sentinel_url(url):
            parse_sentinel_url(url)
        return url

    @field_validator("webhook_urls")
    @classmethod
    def _check_webhook_urls(cls, urls: list[str]) -> list[str]:
        for url in urls:
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(f"webhook URL {url!r} is not an http:// or https:// URL")
        return urls

    @field_validator("ice_addresses")
    @classmethod
    def _ip_addresses(cls, values: list[str]) -> list[str]:
        """Numeric addresses only (IPv6 too), normalised: candidates carry them."""
        return [str(ipaddress.ip_address(value)) for value in values]

    @property
    def single_udp_port(self) -> bool:
        """Whether transports share :attr:`udp_port` (no per-transport range set)."""
        return self.udp_port_min is None or self.udp_port_max is None

    @model_validator(mode="after")
    def _dev_defaults(self) -> Self:
        """Dev mode changes the defaults of what was not set (flag or environment)."""
        if self.dev:
            if "dev_tokens" not in self.model_fields_set:
                self.dev_tokens = True
            if "host" not in self.model_fields_set:
                self.host = DEV_HOST
        return self

    @property
    def has_secret(self) -> bool:
        """Whether tokens and room API calls may be checked against ``api_secret``:
        outside dev mode the published development secret opens nothing."""
        return self.dev or self.api_secret != DEV_API_SECRET


def exposure_problem(settings: Settings) -> str | None:
    """Why a server with ``settings`` must not start, or None.

    Outside dev mode a server needs a secret of its own: the default one is in the
    README. Refusing to start (rather than generating a secret and printing it) keeps
    the secret where the operator's token-minting backend can read it, and the same
    across restarts and across the nodes of a cluster.
    """
    if settings.dev:
        return None
    if settings.api_secret == DEV_API_SECRET:
        return (
            "no API secret configured: pass --api-secret (or set SFU_API_SECRET) to a "
            f"random string of at least {MIN_SECRET_LENGTH} characters (openssl rand -hex 32), "
            "or --dev for a development server"
        )
    if len(settings.api_secret) < MIN_SECRET_LENGTH:
        return (
            f"the API secret is {len(settings.api_secret)} characters; at least "
            f"{MIN_SECRET_LENGTH} are needed (openssl rand -hex 32)"
        )
    return None


def exposure_warnings(settings: Settings) -> list[str]:
    """What a person starting a server with ``settings`` must be told."""
    warnings = []
    if settings.dev:
        warnings.append(
            "development mode: the API secret is the published development secret; do not "
            "expose this server"
        )
    if settings.dev_tokens:
        who = (
            "every program on this machine (and whatever a proxy forwards here)"
            if _is_loopback(settings.host)
            else f"anyone who reaches port {settings.port} of {settings.host}"
        )
        warnings.append(f"/api/dev-token is on: {who} can join any room as anyone")
    return warnings


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


@lru_cache
def get_settings() -> Settings:
    return Settings()
