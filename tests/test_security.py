"""Safe defaults and the limits of the signaling tier, against the real server
(``python -m sfu serve``: uvicorn, the WebSocket protocol, the media worker)."""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from server import ServerUrl, run_sfu_server
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from sfu.access_token import mint_token
from sfu.app import cli
from sfu.config import DEV_API_KEY, DEV_API_SECRET, DEV_HOST, Settings, exposure_problem
from sfu.protocol import (
    CLOSE_DUPLICATE_IDENTITY,
    CLOSE_SESSION_FAILED,
    MAX_FRAME_BYTES,
    MAX_MESSAGE_BYTES,
    ErrorCode,
)

SECRET = "s3cret-of-this-test-0123456789abcdef"
FIXTURES = Path(__file__).parent / "fixtures" / "sdp"
REPLY_TIMEOUT = 5.0
LIMITS = {
    "SFU_MAX_CONNECTIONS": "6",
    "SFU_MAX_CONNECTIONS_PER_IP": "4",
    "SFU_JOIN_TIMEOUT": "1.0",
    "SFU_HTTP_REQUEST_TIMEOUT": "1.0",
    "SFU_MESSAGE_RATE": "20",
    "SFU_MESSAGE_BURST": "10",
}
"""The ``limits_server``'s settings: small, so that the tests reach them quickly."""


@pytest.fixture(scope="module")
def limits_server() -> Iterator[ServerUrl]:
    with run_sfu_server(env=LIMITS) as url:
        yield url


def ws_url(base: str) -> str:
    return base.replace("http://", "ws://") + "/ws"


def dev_token(room: str, identity: str, **kwargs: Any) -> str:
    return mint_token(DEV_API_KEY, DEV_API_SECRET, room, identity, **kwargs)


def signed(claims: dict[str, Any], secret: str = DEV_API_SECRET) -> str:
    now = int(time.time())
    base = {"iss": DEV_API_KEY, "can_publish": True, "can_subscribe": True, "exp": now + 60}
    return jwt.encode({**base, **claims}, secret, algorithm="HS256")


async def request(ws: ClientConnection, message: dict[str, Any] | str) -> dict[str, Any]:
    await ws.send(message if isinstance(message, str) else json.dumps(message))
    return await receive(ws)


PERIODIC_EVENTS = {"connection_quality", "active_speakers"}
"""Room events the server sends on its own schedule, between the replies."""


async def receive(ws: ClientConnection) -> dict[str, Any]:
    """The next message that is not a periodic room event."""
    while True:
        reply: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), REPLY_TIMEOUT))
        if reply["type"] not in PERIODIC_EVENTS:
            return reply


async def assert_alive(ws: ClientConnection) -> None:
    assert await request(ws, {"type": "ping"}) == {"type": "pong", "v": 1}


async def closed_with(ws: ClientConnection) -> int | None:
    """Read until the server closes the socket; its close code."""
    with pytest.raises(ConnectionClosed):
        while True:
            await asyncio.wait_for(ws.recv(), REPLY_TIMEOUT)
    assert ws.close_code is not None
    return ws.close_code


def http(url: str, auth: tuple[str, str] | None = None) -> int:
    req = urllib.request.Request(url)
    if auth is not None:
        req.add_header(
            "Authorization", "Basic " + base64.b64encode(":".join(auth).encode()).decode()
        )
    try:
        with urllib.request.urlopen(req, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


# --- defaults -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        pytest.param(["serve"], "no API secret configured", id="serve"),
        pytest.param(["serve", "--api-secret", "short"], "at least 32", id="short-secret"),
        pytest.param(["serve", "--api-secret", DEV_API_SECRET], "no API secret", id="dev-secret"),
        pytest.param(["signaling"], "no API secret configured", id="signaling"),
        pytest.param(["token", "--room", "r", "--identity", "i"], "--dev", id="token"),
    ],
)
def test_no_secret_no_server(monkeypatch, capsys, args, expected):
    """``main`` returns before it serves anything (or fails to, leaving the test hanging)."""
    monkeypatch.delenv("SFU_API_SECRET", raising=False)
    monkeypatch.delenv("SFU_DEV", raising=False)
    assert cli.main(args) == 2
    error = capsys.readouterr().err
    assert expected in error
    assert "openssl rand" in error


@pytest.mark.parametrize("taken", ["http", "udp"])
def test_a_taken_port_is_one_clear_line(capsys, taken):
    """``sfu serve`` on a port another process holds says so and exits 2, without
    uvicorn's startup traceback (the media ports are bound before the HTTP server runs)."""
    kind = socket.SOCK_STREAM if taken == "http" else socket.SOCK_DGRAM
    with socket.socket(socket.AF_INET, kind) as holder:
        holder.bind(("127.0.0.1", 0))
        if taken == "http":
            holder.listen()
        port = holder.getsockname()[1]
        if taken == "http":
            args = ["serve", "--dev", "--port", str(port), "--udp-port", "0"]
        else:
            args = ["serve", "--dev", "--port", "0", "--udp-port", str(port)]
        args += ["--ice-address", "127.0.0.1"]
        assert cli.main(args) == 2
    error = capsys.readouterr().err
    assert f"sfu serve: cannot {'listen on' if taken == 'http' else 'bind UDP port'}" in error
    assert "Traceback" not in error


def test_dev_mode_is_asked_for_and_binds_loopback():
    assert not Settings().dev_tokens
    assert exposure_problem(Settings()) is not None
    dev = Settings(dev=True)
    assert (dev.dev_tokens, dev.host, dev.api_secret) == (True, DEV_HOST, DEV_API_SECRET)
    assert exposure_problem(dev) is None
    given = Settings(dev=True, host="0.0.0.0", dev_tokens=False)
    assert (given.host, given.dev_tokens) == ("0.0.0.0", False)
    assert exposure_problem(Settings(api_secret=SECRET)) is None


def test_dev_server_warns():
    with run_sfu_server() as url:
        assert "WARNING: development mode" in url.log()
        assert http(f"{url}/api/dev-token?room=r") == 200


async def test_a_server_with_a_secret_refuses_the_development_credentials():
    with run_sfu_server(dev=False, extra_args=["--api-secret", SECRET]) as url:
        assert "WARNING" not in url.log()
        assert http(f"{url}/api/dev-token?room=r") == 403
        assert http(f"{url}/api/rooms", (DEV_API_KEY, DEV_API_SECRET)) == 401
        assert http(f"{url}/api/rooms", (DEV_API_KEY, SECRET)) == 200
        async with connect(ws_url(url)) as ws:
            reply = await request(ws, {"type": "join", "token": dev_token("r", "a")})
            assert reply["code"] == ErrorCode.BAD_TOKEN, reply
            token = mint_token(DEV_API_KEY, SECRET, "r", "a")
            assert (await request(ws, {"type": "join", "token": token}))["type"] == "joined"


# --- bad input ------------------------------------------------------------------------


async def test_surrogate_names_are_refused_and_the_room_keeps_working(limits_server):
    async with connect(ws_url(limits_server)) as bystander:
        assert (await request(bystander, {"type": "join", "token": dev_token("sur", "b")}))[
            "type"
        ] == "joined"
        async with connect(ws_url(limits_server)) as attacker:
            token = signed({"sub": "evil", "room": "sur", "name": "\ud800"})
            reply = await request(attacker, {"type": "join", "token": token})
            assert reply["code"] == ErrorCode.BAD_TOKEN, reply
            assert "non-printable" in reply["message"]
            join = {"type": "join", "token": dev_token("sur", "evil"), "name": "\ud800"}
            reply = await request(attacker, json.dumps(join))
            assert (reply["code"], reply["request_type"]) == (ErrorCode.BAD_MESSAGE, "join")
            await assert_alive(attacker)
        await assert_alive(bystander)
    with pytest.raises(ValueError, match="non-printable"):
        dev_token("sur", "evil", name="\ud800")


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        pytest.param('{"type": []}', ErrorCode.BAD_MESSAGE, id="type-array"),
        pytest.param('{"type": {"a": 1}}', ErrorCode.BAD_MESSAGE, id="type-object"),
        pytest.param('{"type": "join", "token": "\\ud800"}', ErrorCode.BAD_TOKEN, id="token"),
        pytest.param('{"type": "join", "token": "é.é.é"}', ErrorCode.BAD_TOKEN, id="token-utf8"),
        pytest.param('{"type": "ping", "\\ud800": 1}', ErrorCode.BAD_MESSAGE, id="key"),
        pytest.param(
            '{"type": "mute", "track_id": "\\ud800", "muted": true}',
            ErrorCode.BAD_MESSAGE,
            id="track-id",
        ),
    ],
)
async def test_bad_frames_get_an_error_over_the_real_socket(limits_server, frame, code):
    async with connect(ws_url(limits_server)) as ws:
        reply = await request(ws, frame)
        assert reply["code"] == code, reply
        await assert_alive(ws)


async def test_token_lifetime_is_bounded(limits_server):
    async with connect(ws_url(limits_server)) as ws:
        for exp in (time.time() + 2 * 24 * 3600, 1e300):
            reply = await request(
                ws, {"type": "join", "token": signed({"sub": "a", "room": "r", "exp": exp})}
            )
            assert reply["code"] == ErrorCode.BAD_TOKEN, reply
            assert "at most 86400 s" in reply["message"]


async def test_frame_sizes(limits_server):
    async with connect(ws_url(limits_server), max_size=None) as ws:
        padding = "x" * (MAX_MESSAGE_BYTES + 1000)
        reply = await request(ws, {"type": "ping", "padding": padding})
        assert reply["code"] == ErrorCode.TOO_LARGE, reply
        await assert_alive(ws)
        await ws.send(json.dumps({"type": "ping", "padding": "x" * MAX_FRAME_BYTES}))
        assert await closed_with(ws) == 1009


async def test_invalid_utf8_is_answered_and_logged_once(limits_server):
    async with connect(ws_url(limits_server)) as ws:
        for _ in range(8):
            await ws.send(b'{"type": "ping", "x": "\xff\xfe"}', text=True)
            reply = await receive(ws)
            assert reply["code"] == ErrorCode.BAD_JSON, reply
        await assert_alive(ws)
    log = limits_server.log()
    assert log.count("not UTF-8") == 1, log
    assert "Traceback" not in log


def no_candidates(sdp: str) -> str:
    """A publish offer whose ICE can never connect: no candidates, and no more to come."""
    lines = [line for line in sdp.splitlines() if not line.startswith("a=candidate")]
    first_mid = next(i for i, line in enumerate(lines) if line.startswith("a=mid:"))
    lines.insert(first_mid + 1, "a=end-of-candidates")
    return "\r\n".join(lines) + "\r\n"


async def test_failed_transport_ends_the_session(limits_server):
    offer = no_candidates((FIXTURES / "chrome-plain-offer.sdp").read_text())
    async with connect(ws_url(limits_server)) as ws:
        assert (await request(ws, {"type": "join", "token": dev_token("tf", "a")}))[
            "type"
        ] == "joined"
        await ws.send(json.dumps({"type": "publish_offer", "sdp": offer}))
        while (message := await receive(ws))["type"] != "error":
            pass
        assert (message["code"], message["fatal"]) == (ErrorCode.TRANSPORT_FAILED, True)
        assert await closed_with(ws) == CLOSE_SESSION_FAILED


# --- limits ---------------------------------------------------------------------------


async def test_a_socket_that_never_joins_is_closed(limits_server):
    async with connect(ws_url(limits_server)) as ws:
        await assert_alive(ws)
        started = time.monotonic()
        message = await receive(ws)
        assert (message["code"], message["fatal"]) == (ErrorCode.JOIN_TIMEOUT, True)
        assert await closed_with(ws) == CLOSE_SESSION_FAILED
        assert time.monotonic() - started < 2


async def test_connection_limits(limits_server):
    """The connections come from loopback, a trusted proxy: X-Forwarded-For names the
    client address that is counted."""

    def from_address(address: str) -> Any:
        return connect(ws_url(limits_server), additional_headers={"X-Forwarded-For": address})

    held = [await from_address("10.0.0.1") for _ in range(4)]
    with pytest.raises(InvalidStatus) as refused:
        await from_address("10.0.0.1")
    assert refused.value.response.status_code == 503
    held += [await from_address("10.0.0.2") for _ in range(2)]
    with pytest.raises(InvalidStatus) as refused:
        await from_address("10.0.0.3")
    assert refused.value.response.status_code == 503
    assert b"too many connections" in refused.value.response.body
    for ws in held:
        await assert_alive(ws)
    await held.pop().close()
    held.append(await from_address("10.0.0.3"))
    for ws in held:
        await ws.close()


def healthz_over(sock: socket.socket) -> bytes:
    """Send one complete request on ``sock``; the whole response."""
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    response = b""
    while not response.endswith(b'{"status":"ok"}'):
        chunk = sock.recv(1024)
        assert chunk, response
        response += chunk
    return response


def test_a_request_that_never_ends_is_closed(limits_server):
    host, port = limits_server.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as slow:
        slow.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        started = time.monotonic()
        assert slow.recv(1024) == b""  # closed, without a response
        assert 0.8 < time.monotonic() - started < 3
    with socket.create_connection((host, int(port)), timeout=5) as quick:
        assert healthz_over(quick).startswith(b"HTTP/1.1 200")
        time.sleep(1.5)  # idle between requests: the keep-alive timeout's business
        assert healthz_over(quick).startswith(b"HTTP/1.1 200")


async def test_message_rate(limits_server):
    async with connect(ws_url(limits_server)) as ws:
        assert (await request(ws, {"type": "join", "token": dev_token("rate", "a")}))[
            "type"
        ] == "joined"
        await asyncio.sleep(0.5)  # the bucket refills after the join
        for _ in range(int(LIMITS["SFU_MESSAGE_BURST"])):
            await ws.send(json.dumps({"type": "ping"}))
        for _ in range(int(LIMITS["SFU_MESSAGE_BURST"])):
            assert (await receive(ws))["type"] == "pong"
        reply = await request(ws, {"type": "ping"})
        assert (reply["code"], reply["fatal"]) == (ErrorCode.RATE_LIMITED, False)
        await asyncio.sleep(0.2)  # four messages' worth
        await assert_alive(ws)
        for _ in range(100):  # persistent abuse
            await ws.send(json.dumps({"type": "ping"}))
        codes = []
        with pytest.raises(ConnectionClosed):
            while True:
                message = json.loads(await asyncio.wait_for(ws.recv(), REPLY_TIMEOUT))
                codes.append((message.get("code"), message.get("fatal")))
        assert ws.close_code == 1008
        assert codes[-1] == (ErrorCode.RATE_LIMITED, True)
        assert len(codes) < 40


async def test_a_second_session_of_an_identity_replaces_the_first(limits_server):
    token = dev_token("dup", "alice")
    async with connect(ws_url(limits_server)) as first, connect(ws_url(limits_server)) as second:
        joined = await request(first, {"type": "join", "token": token})
        assert joined["type"] == "joined"
        assert (await request(second, {"type": "join", "token": token}))["type"] == "joined"
        message = await receive(first)
        assert (message["code"], message["fatal"]) == (ErrorCode.DUPLICATE_IDENTITY, True)
        assert await closed_with(first) == CLOSE_DUPLICATE_IDENTITY
        await assert_alive(second)
        with urllib.request.urlopen(
            urllib.request.Request(
                f"{limits_server}/api/rooms/dup/participants",
                headers={
                    "Authorization": "Basic "
                    + base64.b64encode(f"{DEV_API_KEY}:{DEV_API_SECRET}".encode()).decode()
                },
            ),
            timeout=5,
        ) as response:
            participants = json.loads(response.read())
        assert [p["identity"] for p in participants] == ["alice"]
        assert participants[0]["participant_id"] != joined["participant_id"]
