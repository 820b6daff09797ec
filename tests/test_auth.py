import base64
import hashlib
import hmac
import json
import time

import jwt
import pytest

from sfu.access_token import NBF_LEEWAY_SECONDS, mint_token, verify_token
from sfu.protocol import ErrorCode
from sfu.worker_api import Grant, ProtocolError

KEY = "test-key"
SECRET = "test-secret-0123456789-0123456789-0123456789"
OTHER_SECRET = "other-secret-0123456789-0123456789-012345678"


def claims(**overrides):
    now = int(time.time())
    base = {
        "iss": KEY,
        "sub": "alice",
        "room": "lobby",
        "can_publish": True,
        "can_subscribe": True,
        "iat": now,
        "nbf": now,
        "exp": now + 600,
    }
    base.update(overrides)
    return {key: value for key, value in base.items() if value is not ...}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def sign(payload, secret=SECRET):
    """HS256 by hand: PyJWT's encoder refuses some of the ill-typed claims tested here."""
    header = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64(json.dumps(payload).encode())
    mac = hmac.new(secret.encode(), f"{header}.{body}".encode(), hashlib.sha256).digest()
    return f"{header}.{body}.{b64(mac)}"


def rejected(token, code=ErrorCode.BAD_TOKEN, **kwargs) -> str:
    with pytest.raises(ProtocolError) as info:
        verify_token(token, KEY, SECRET, **kwargs)
    assert info.value.code == code
    return info.value.message


def test_round_trip():
    token = mint_token(KEY, SECRET, "lobby", "alice", name="Alice", can_publish=False)
    assert verify_token(token, KEY, SECRET) == Grant(
        room="lobby", identity="alice", name="Alice", can_publish=False, can_subscribe=True
    )


def test_name_defaults_to_identity():
    grant = verify_token(mint_token(KEY, SECRET, "lobby", "alice"), KEY, SECRET)
    assert grant.name == "alice"
    assert grant.can_publish and grant.can_subscribe


def test_hand_signed_token_accepted():
    assert verify_token(sign(claims()), KEY, SECRET).identity == "alice"


def test_claims_written():
    token = mint_token(KEY, SECRET, "lobby", "alice", can_subscribe=False, ttl_seconds=60)
    payload = jwt.decode(token, SECRET, algorithms=["HS256"], issuer=KEY)
    assert payload["sub"] == "alice"
    assert payload["room"] == "lobby"
    assert payload["can_subscribe"] is False
    assert payload["exp"] - payload["iat"] == 60
    assert payload["nbf"] == payload["iat"]
    assert "name" not in payload


def test_expired():
    token = mint_token(KEY, SECRET, "lobby", "alice", ttl_seconds=60)
    message = rejected(token, ErrorCode.TOKEN_EXPIRED, now=time.time() + 3600)
    assert "expired" in message
    assert "expired" in rejected(sign(claims(exp=int(time.time()) - 5)), ErrorCode.TOKEN_EXPIRED)


def test_not_yet_valid():
    token = mint_token(KEY, SECRET, "lobby", "alice")
    assert "not valid" in rejected(token, now=time.time() - 3600)
    # a little clock skew is tolerated
    assert verify_token(token, KEY, SECRET, now=time.time() - NBF_LEEWAY_SECONDS / 2)


def test_wrong_secret():
    token = mint_token(KEY, OTHER_SECRET, "lobby", "alice")
    assert "signature" in rejected(token)


def test_wrong_issuer():
    token = mint_token("someone-else", SECRET, "lobby", "alice")
    assert "someone-else" in rejected(token)


def test_tampered_payload():
    header, payload, signature = mint_token(KEY, SECRET, "lobby", "alice").split(".")
    decoded = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    decoded["room"] = "vip"
    forged = b64(json.dumps(decoded).encode())
    assert "signature" in rejected(f"{header}.{forged}.{signature}")


@pytest.mark.parametrize("token", ["", "garbage", "a.b.c", "a.b"])
def test_malformed(token):
    assert "malformed" in rejected(token)


def test_unsigned_token_refused():
    token = jwt.encode(claims(), None, algorithm="none")
    assert "HS256" in rejected(token)


@pytest.mark.parametrize("claim", ["iss", "sub", "room", "exp", "can_publish", "can_subscribe"])
def test_missing_claim(claim):
    assert f"no '{claim}' claim" in rejected(sign(claims(**{claim: ...})))


def test_optional_claims():
    grant = verify_token(sign(claims(nbf=..., iat=..., name=...)), KEY, SECRET)
    assert grant.identity == grant.name == "alice"


@pytest.mark.parametrize(
    ("claim", "value", "expected"),
    [
        ("iss", 7, "'iss' must be a string, not a number"),
        ("sub", ["alice"], "'sub' must be a string, not an array"),
        ("room", None, "'room' must be a string, not null"),
        ("name", 1, "'name' must be a string, not a number"),
        ("can_publish", 1, "'can_publish' must be a boolean, not a number"),
        ("can_subscribe", "yes", "'can_subscribe' must be a boolean, not a string"),
        ("exp", "tomorrow", "'exp' must be a number, not a string"),
        ("exp", True, "'exp' must be a number, not a boolean"),
        ("nbf", {}, "'nbf' must be a number, not an object"),
        ("iat", "now", "'iat' must be a number, not a string"),
    ],
)
def test_ill_typed_claim(claim, value, expected):
    assert expected in rejected(sign(claims(**{claim: value})))


@pytest.mark.parametrize(
    ("claim", "value", "expected"),
    [
        ("room", "", "'room' must not be empty"),
        ("sub", "", "'sub' must not be empty"),
        ("room", "r" * 129, "the limit is 128"),
        ("sub", "a" * 129, "the limit is 128"),
        ("sub", "al\nice", "non-printable"),
        ("name", "n" * 129, "the limit is 128"),
        ("name", "\ud800", "non-printable"),
        ("name", "Al\x1bice", "non-printable"),
        ("room", "lo\udfffbby", "non-printable"),
    ],
)
def test_bad_claim_value(claim, value, expected):
    assert expected in rejected(sign(claims(**{claim: value})))


def test_longest_ids_accepted():
    grant = verify_token(mint_token(KEY, SECRET, "r" * 128, "a" * 128), KEY, SECRET)
    assert (grant.room, grant.identity) == ("r" * 128, "a" * 128)


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"room": ""}, "room must not be empty"),
        ({"identity": "x" * 129}, "identity is 129 characters"),
        ({"ttl_seconds": 0}, "ttl_seconds must be positive"),
        ({"name": "\ud800"}, "name contains non-printable"),
        ({"name": "a\nb"}, "name contains non-printable"),
    ],
)
def test_mint_refuses_bad_input(kwargs, expected):
    arguments = {"room": "lobby", "identity": "alice", **kwargs}
    with pytest.raises(ValueError, match=expected):
        mint_token(KEY, SECRET, **arguments)


@pytest.mark.parametrize("token", ["\ud800", "é.é.é", "a.b.\u2028"])
def test_non_ascii_token_is_malformed(token):
    assert "malformed token" in rejected(token)


def test_lifetime_is_bounded():
    now = time.time()
    day = verify_token(sign(claims(exp=now + 86400)), KEY, SECRET, now=now, max_lifetime=86400)
    assert day.identity == "alice"
    for exp in (now + 86401, 1e300):
        message = rejected(sign(claims(exp=exp)), now=now, max_lifetime=86400)
        assert "accepts at most 86400 s" in message
