"""Access tokens: JWT (HS256) signed with the API secret, naming one room and identity.

Claims: ``iss`` (the API key), ``sub`` (identity), ``room``, ``can_publish``,
``can_subscribe`` and ``exp`` are required; ``name``, ``nbf`` and ``iat`` are optional.
"""

from __future__ import annotations

import math
import time
from typing import Any, TypeVar

import jwt

from sfu.protocol import ErrorCode
from sfu.worker_api import Grant, ProtocolError

_T = TypeVar("_T", bool, str)

ALGORITHM = "HS256"
MAX_ID_LENGTH = 128
"""Longest room name, identity or display name a token may carry."""
DEFAULT_TTL_SECONDS = 6 * 3600
NBF_LEEWAY_SECONDS = 10
"""Tolerated clock skew between the machine that minted a token and this one."""

_DECODE_OPTIONS: dict[str, Any] = {
    # Only the signature is checked by PyJWT; every claim is checked below, against
    # the caller's clock and with messages that say exactly what is wrong.
    "verify_signature": True,
    "verify_exp": False,
    "verify_nbf": False,
    "verify_iat": False,
    "verify_iss": False,
    "verify_aud": False,
    "verify_sub": False,
    "verify_jti": False,
}


def check_id(value: str, what: str) -> str:
    """Return ``value`` if it is a usable room name or identity, else raise ValueError."""
    if not value:
        raise ValueError(f"{what} must not be empty")
    return check_name(value, what)


def check_name(value: str, what: str) -> str:
    """Return ``value`` if it is a usable display name, else raise ValueError.

    Every one of these strings is repeated to other participants: a lone surrogate
    (no character, and not encodable) or a control character must stop here.
    """
    if len(value) > MAX_ID_LENGTH:
        raise ValueError(f"{what} is {len(value)} characters; the limit is {MAX_ID_LENGTH}")
    # Surrogates are not printable: this refuses them too.
    if not value.isprintable():
        raise ValueError(f"{what} contains non-printable characters")
    return value


def mint_token(
    api_key: str,
    api_secret: str,
    room: str,
    identity: str,
    name: str | None = None,
    can_publish: bool = True,
    can_subscribe: bool = True,
    ttl_seconds: int = DEFAULT_TTL_SECONDS,
) -> str:
    """Sign an access token for ``identity`` in ``room``, valid from now for ``ttl_seconds``."""
    check_id(room, "room")
    check_id(identity, "identity")
    if name is not None:
        check_name(name, "name")
    if ttl_seconds <= 0:
        raise ValueError(f"ttl_seconds must be positive, not {ttl_seconds}")
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": api_key,
        "sub": identity,
        "room": room,
        "can_publish": can_publish,
        "can_subscribe": can_subscribe,
        "iat": now,
        "nbf": now,
        "exp": now + ttl_seconds,
    }
    if name is not None:
        claims["name"] = name
    return jwt.encode(claims, api_secret, algorithm=ALGORITHM)


def verify_token(
    token: str,
    api_key: str,
    api_secret: str,
    now: float | None = None,
    max_lifetime: float = math.inf,
) -> Grant:
    """Check ``token`` and return what it grants.

    Raises :class:`ProtocolError` with ``token_expired`` for an expired token and
    ``bad_token`` for every other problem, a token valid for longer than
    ``max_lifetime`` seconds from ``now`` included (a stolen token must not last).
    """
    if not token.isascii():
        raise _bad("malformed token: a JWT is ASCII")
    claims = _decode(token, api_secret)
    now = time.time() if now is None else now

    issuer = _claim(claims, "iss", str)
    if issuer != api_key:
        raise _bad(f"token was issued for API key {issuer!r}, not this server's")

    expires = _time_claim(claims, "exp", required=True)
    if expires is not None and now >= expires:
        raise ProtocolError(
            ErrorCode.TOKEN_EXPIRED, f"token expired {int(now - expires)} s ago; get a new one"
        )
    if expires is not None and expires - now > max_lifetime:
        raise _bad(
            f"token is valid for {expires - now:.0f} s; this server accepts at most "
            f"{max_lifetime:.0f} s"
        )
    not_before = _time_claim(claims, "nbf", required=False)
    if not_before is not None and now + NBF_LEEWAY_SECONDS < not_before:
        raise _bad(f"token is not valid for another {math.ceil(not_before - now)} s")
    _time_claim(claims, "iat", required=False)

    identity = _id_claim(claims, "sub")
    room = _id_claim(claims, "room")
    name = claims.get("name")
    if name is not None and not isinstance(name, str):
        raise _bad(f"claim 'name' must be a string, not {_json_type(name)}")
    if name is not None:
        try:
            check_name(name, "claim 'name'")
        except ValueError as exc:
            raise _bad(str(exc)) from None
    return Grant(
        room=room,
        identity=identity,
        name=name or identity,
        can_publish=_claim(claims, "can_publish", bool),
        can_subscribe=_claim(claims, "can_subscribe", bool),
    )


def _decode(token: str, api_secret: str) -> dict[str, Any]:
    try:
        return jwt.decode(token, api_secret, algorithms=[ALGORITHM], options=_DECODE_OPTIONS)
    except jwt.InvalidSignatureError:
        raise _bad("token signature does not match this server's API secret") from None
    except jwt.InvalidAlgorithmError:
        raise _bad(f"token is not signed with {ALGORITHM}") from None
    except jwt.InvalidTokenError as exc:
        raise _bad(f"malformed token: {exc}") from None


def _bad(message: str) -> ProtocolError:
    return ProtocolError(ErrorCode.BAD_TOKEN, message)


def _json_type(value: object) -> str:
    match value:
        case None:
            return "null"
        case bool():
            return "a boolean"
        case int() | float():
            return "a number"
        case str():
            return "a string"
        case list():
            return "an array"
        case _:
            return "an object"


def _claim(claims: dict[str, Any], key: str, kind: type[_T]) -> _T:
    if key not in claims:
        raise _bad(f"token has no {key!r} claim")
    value = claims[key]
    # bool is a subclass of int: the exact type is what the JSON said.
    if type(value) is not kind:
        expected = _json_type(kind())  # the JSON name of bool/str, from their zero value
        raise _bad(f"claim {key!r} must be {expected}, not {_json_type(value)}")
    return value


def _time_claim(claims: dict[str, Any], key: str, *, required: bool) -> float | None:
    if key not in claims:
        if required:
            raise _bad(f"token has no {key!r} claim")
        return None
    value = claims[key]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _bad(f"claim {key!r} must be a number, not {_json_type(value)}")
    if not math.isfinite(value):
        raise _bad(f"claim {key!r} must be a finite number")
    return value


def _id_claim(claims: dict[str, Any], key: str) -> str:
    value = _claim(claims, key, str)
    try:
        return check_id(value, f"claim {key!r}")
    except ValueError as exc:
        raise _bad(str(exc)) from None
