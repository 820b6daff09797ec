"""Time-limited TURN credentials (the TURN REST API scheme coturn implements).

coturn, started with ``use-auth-secret`` and ``static-auth-secret=S``, accepts the
username ``<expiry unix time>:<identity>`` with the password
``base64(HMAC-SHA1(S, username))`` until the expiry. The signaling tier holds the
secret and hands each joining client its own pair in ``joined.ice_servers``; the
media workers never see it, and a leaked pair expires on its own.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time

from sfu.config import Settings
from sfu.protocol import IceServer


def turn_credentials(secret: str, identity: str, ttl_seconds: int, now: float) -> tuple[str, str]:
    """(username, password) valid for ``ttl_seconds`` from ``now`` (unix seconds)."""
    username = f"{int(now) + ttl_seconds}:{identity}"
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return username, base64.b64encode(digest).decode()


def turn_ice_servers(settings: Settings, identity: str) -> list[IceServer]:
    """The TURN entry for ``joined.ice_servers``, or none when TURN is not configured."""
    if not settings.turn_urls or not settings.turn_secret:
        return []
    username, password = turn_credentials(
        settings.turn_secret, identity, settings.turn_ttl_seconds, time.time()
    )
    return [IceServer(urls=list(settings.turn_urls), username=username, credential=password)]
