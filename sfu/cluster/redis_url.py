"""The cluster's Redis URL: a plain server, or a primary found through Redis Sentinel.

``SFU_REDIS_URL`` takes redis-py's URLs (``redis://host:6379/0``, ``rediss://…``,
``unix://…``) and one more scheme for a highly available Redis::

    redis+sentinel://[[user]:password@]host[:port][,host[:port]…]/service[/db]

the Sentinel addresses (port 26379 unless given; IPv6 in brackets), the monitored
primary's name (``sentinel monitor <service> …``) and the database (0 unless given).
The user and password, percent-encoded, are the primary's (and its replicas'); the
Sentinels themselves are reached without authentication.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote

SENTINEL_SCHEME = "redis+sentinel"
SENTINEL_PORT = 26379
MAX_SENTINELS = 16
"""More addresses than any deployment has: a longer list is a mistake."""


@dataclass(frozen=True)
class SentinelUrl:
    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int = 0
    username: str | None = None
    password: str | None = None


def is_sentinel_url(url: str) -> bool:
    return url.lower().startswith(SENTINEL_SCHEME + "://")


def parse_sentinel_url(url: str) -> SentinelUrl:
    """Parse a ``redis+sentinel://`` URL; raises ValueError saying what is wrong."""
    # Split by hand: urllib's parser takes a host list for one malformed IPv6 host.
    if not is_sentinel_url(url):
        raise ValueError(f"not a {SENTINEL_SCHEME}:// URL: {url[:80]!r}")
    rest = url[len(SENTINEL_SCHEME) + 3 :]
    if "?" in rest or "#" in rest:
        raise ValueError(f"a {SENTINEL_SCHEME} URL takes no ?query or #fragment")
    netloc, slash, path_text = rest.partition("/")
    userinfo, _, hosts = netloc.rpartition("@")
    username = password = None
    if userinfo:
        user, has_password, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if has_password else None
    if not hosts:
        raise ValueError(f"{SENTINEL_SCHEME} URL without Sentinel addresses")
    addresses = hosts.split(",")
    if len(addresses) > MAX_SENTINELS:
        raise ValueError(f"{len(addresses)} Sentinel addresses; at most {MAX_SENTINELS}")
    sentinels = tuple(_address(address) for address in addresses)
    path = [segment for segment in path_text.split("/") if segment]
    if not path:
        raise ValueError(f"{SENTINEL_SCHEME} URL without a service name (…/mymaster/0)")
    if len(path) > 2:
        raise ValueError(f"{SENTINEL_SCHEME} URL path is /service[/db], not {slash + path_text!r}")
    db = 0
    if len(path) == 2:
        if not path[1].isdigit() or len(path[1]) > 5:
            raise ValueError(f"database {path[1]!r} is not a number")
        db = int(path[1])
    return SentinelUrl(sentinels, unquote(path[0]), db, username, password)


def _address(text: str) -> tuple[str, int]:
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise ValueError(f"bad Sentinel address {text!r}")
        port_text = rest[1:]
    else:
        host, _, port_text = text.partition(":")
    if not host:
        raise ValueError(f"Sentinel address {text!r} has no host")
    if not port_text:
        return host, SENTINEL_PORT
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"Sentinel address {text!r} has a bad port")
    return host, int(port_text)
