"""Webhook signatures, as LiveKit signs its webhooks.

Every request carries ``Authorization: <JWT>``: HS256 with the API secret, ``iss`` the
API key, ``iat``/``exp`` around the send time, and ``sha256`` the base64 SHA-256 of
the exact body bytes. A receiver that knows the key and secret checks the signature,
the issuer, the expiry and the body hash (:func:`verify_webhook`): a body changed on
the way, or a request signed with another secret, fails.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any

import jwt

ALGORITHM = "HS256"
CONTENT_TYPE = "application/webhook+json"
SIGNATURE_TTL_SECONDS = 300
"""How long a signature is valid: long enough for retries of one attempt in flight
and clock skew, short enough that a captured request cannot be replayed for long."""
CLOCK_LEEWAY_SECONDS = 10
"""Tolerated clock skew between the sender and the receiver."""


class WebhookSignatureError(ValueError):
    """A webhook request whose signature does not hold (the message says why)."""


def body_digest(body: bytes) -> str:
    """The ``sha256`` claim: base64 (standard alphabet, padded) of SHA-256(body)."""
    return base64.b64encode(hashlib.sha256(body).digest()).decode()


def sign_webhook(body: bytes, api_key: str, api_secret: str, now: float) -> str:
    """The ``Authorization`` header value for ``body`` sent at ``now`` (Unix seconds)."""
    issued = int(now)
    claims = {
        "iss": api_key,
        "iat": issued,
        "nbf": issued,
        "exp": issued + SIGNATURE_TTL_SECONDS,
        "sha256": body_digest(body),
    }
    return jwt.encode(claims, api_secret, algorithm=ALGORITHM)


def verify_webhook(
    body: bytes, authorization: str | None, api_key: str, api_secret: str, now: float
) -> dict[str, Any]:
    """Check a received webhook and return its decoded JSON payload.

    ``body`` is the raw request body (before any JSON parsing), ``authorization`` the
    ``Authorization`` header (a bare JWT; a ``Bearer`` prefix is accepted too), ``now``
    the receiver's clock (``time.time()``). Raises :class:`WebhookSignatureError`.
    """
    if not authorization:
        raise WebhookSignatureError("no Authorization header")
    token = authorization.removeprefix("Bearer ").strip()
    try:
        claims = jwt.decode(
            token,
            api_secret,
            algorithms=[ALGORITHM],
            options={"verify_exp": False, "verify_nbf": False, "verify_iat": False},
        )
    except jwt.InvalidTokenError as exc:
        raise WebhookSignatureError(f"bad signature: {exc}") from exc
    if claims.get("iss") != api_key:
        raise WebhookSignatureError(f"issuer {claims.get('iss')!r} is not the API key")
    expires = claims.get("exp")
    if not isinstance(expires, int) or now > expires + CLOCK_LEEWAY_SECONDS:
        raise WebhookSignatureError("the signature has expired")
    not_before = claims.get("nbf", 0)
    if not isinstance(not_before, int) or now < not_before - CLOCK_LEEWAY_SECONDS:
        raise WebhookSignatureError("the signature is not valid yet")
    digest = claims.get("sha256")
    if not isinstance(digest, str) or not hmac.compare_digest(digest, body_digest(body)):
        raise WebhookSignatureError("the body does not match the signature's sha256")
    try:
        payload = json.loads(body)
    except ValueError as exc:
        raise WebhookSignatureError(f"the body is not JSON: {exc}") from exc
    if not isinstance(payload, dict):
        raise WebhookSignatureError("the body is not a JSON object")
    return payload
