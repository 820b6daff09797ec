"""The signaling tier against a small in-test media worker."""

import asyncio
import json
import logging
import subprocess
import sys
import threading
import time
from pathlib import Path

import jwt
import pytest
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from sfu.access_token import mint_token, verify_token
from sfu.config import Settings
from sfu.protocol import (
    MAX_MESSAGE_BYTES,
    CandidateMessage,
    ErrorCode,
    JoinedMessage,
    MuteMessage,
    Participant,
    ParticipantJoinedMessage,
    PublishAnswerMessage,
    PublishOfferMessage,
    SubscribeAnswerMessage,
    TrackMutedMessage,
)
from sfu.worker_api import EventSink, Grant, ProtocolError
from signaling.app import create_app
from signaling.ws import SEND_QUEUE_LIMIT, MessageBudget, Session, Sessions

ROOT = Path(__file__).resolve().parent.parent
KEY = "test-key"
SECRET = "test-secret-0123456789-0123456789-0123456789"


class FakeWorker:
    """Answers every call at once and records it; ``fail_with`` makes the next call raise.

    Like the real worker, ``join`` sends the ``joined`` reply through the sink itself.

    ``mute`` doubles as a remote control for the sink: ``track_id`` "burst-N" pushes N
    events, "flood" pushes more than the send queue holds, "unencodable" an event no
    JSON encoder takes (a name with a lone surrogate).
    """

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, object]] = []
        self.sinks: dict[str, EventSink] = {}
        self.left: list[str] = []
        self.left_event = threading.Event()
        self.fail_with: BaseException | None = None

    def _record(self, method: str, participant_id: str, payload: object) -> None:
        self.calls.append((method, participant_id, payload))
        if self.fail_with is not None:
            error, self.fail_with = self.fail_with, None
            raise error

    async def join(self, participant_id: str, grant: Grant, sink: EventSink) -> JoinedMessage:
        self._record("join", participant_id, grant)
        self.sinks[participant_id] = sink
        joined = JoinedMessage(
            room=grant.room,
            participant_id=participant_id,
            identity=grant.identity,
            can_publish=grant.can_publish,
            can_subscribe=grant.can_subscribe,
            participants=[],
        )
        sink(joined)  # the worker sends the reply itself, ahead of what the join triggers
        return joined

    async def publish_offer(
        self, participant_id: str, message: PublishOfferMessage
    ) -> PublishAnswerMessage:
        self._record("publish_offer", participant_id, message)
        return PublishAnswerMessage(sdp=f"answer to {message.sdp}", tracks={"0": "TR_a"})

    async def subscribe_answer(self, participant_id: str, message: SubscribeAnswerMessage) -> None:
        self._record("subscribe_answer", participant_id, message)

    async def add_candidate(self, participant_id: str, message: CandidateMessage) -> None:
        self._record("add_candidate", participant_id, message)

    async def mute(self, participant_id: str, message: MuteMessage) -> None:
        self._record("mute", participant_id, message)
        sink = self.sinks[participant_id]
        if message.track_id.startswith("burst-"):
            count = int(message.track_id.removeprefix("burst-"))
        elif message.track_id == "flood":
            count = SEND_QUEUE_LIMIT + 10
        elif message.track_id == "unencodable":
            stranger = Participant(participant_id="PA_x", identity="x", name="\ud800")
            sink(ParticipantJoinedMessage(participant=stranger))
            return
        else:
            return
        for index in range(count):
            sink(
                TrackMutedMessage(
                    track_id=f"TR_{index}", participant_id=participant_id, muted=message.muted
                )
            )

    async def leave(self, participant_id: str) -> None:
        self.left.append(participant_id)
        self.left_event.set()


def settings(**overrides) -> Settings:
    return Settings(api_key=KEY, api_secret=SECRET, **{"dev_tokens": True, **overrides})


def token(room: str = "lobby", identity: str = "alice", **kwargs) -> str:
    return mint_token(KEY, SECRET, room, identity, **kwargs)


@pytest.fixture
def worker() -> FakeWorker:
    return FakeWorker()


@pytest.fixture
def client(worker):
    with TestClient(create_app(worker, settings())) as test_client:
        yield test_client


def send(ws, message: dict) -> None:
    ws.send_text(json.dumps(message))


def join(ws, **kwargs) -> dict:
    send(ws, {"type": "join", "token": token(**kwargs)})
    reply = ws.receive_json()
    assert reply["type"] == "joined", reply
    return reply


def assert_error(ws, code: ErrorCode, request_type: str | None = None) -> dict:
    reply = ws.receive_json()
    assert reply["type"] == "error", reply
    assert reply["code"] == code, reply
    assert reply.get("request_type") == request_type, reply
    assert reply["message"]
    assert not reply["fatal"]
    return reply


def assert_alive(ws) -> None:
    send(ws, {"type": "ping"})
    assert ws.receive_json() == {"type": "pong", "v": 1}


def wait_for_leave(worker: FakeWorker) -> None:
    assert worker.left_event.wait(5), "worker.leave was not called"
    time.sleep(0.05)  # a second call would come right after the first


# --- HTTP ---------------------------------------------------------------------------


def test_healthz(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_dev_token(client):
    response = client.get("/api/dev-token", params={"room": "lobby", "identity": "bob"})
    assert response.status_code == 200
    body = response.json()
    assert body["url"] == "/ws"
    grant = verify_token(body["token"], KEY, SECRET)
    assert (grant.room, grant.identity, grant.name) == ("lobby", "bob", "bob")


def test_dev_token_defaults_and_name(client):
    body = client.get("/api/dev-token", params={"room": "lobby", "name": "Bob B."}).json()
    grant = verify_token(body["token"], KEY, SECRET)
    assert grant.identity.startswith("user-")
    assert len(grant.identity) == len("user-") + 4
    assert grant.name == "Bob B."


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"room": ""},
        {"room": "r" * 129},
        {"room": "lob\x00by"},
        {"room": "lobby", "identity": ""},
        {"room": "lobby", "identity": "a" * 129},
        {"room": "lobby", "identity": "tab\there"},
    ],
)
def test_dev_token_validation(client, params):
    assert client.get("/api/dev-token", params=params).status_code == 422


@pytest.mark.parametrize("overrides", [{"dev_tokens": False}, {}], ids=["off", "default"])
def test_dev_token_disabled(worker, overrides):
    with TestClient(create_app(worker, Settings(api_secret=SECRET, **overrides))) as client:
        response = client.get("/api/dev-token", params={"room": "lobby"})
    assert response.status_code == 403
    assert "disabled" in response.json()["detail"]


def test_unknown_static_path_is_404(client):
    assert client.get("/no-such-file.js").status_code == 404


# --- the signaling socket -------------------------------------------------------------


def test_join(client, worker):
    with client.websocket_connect("/ws") as ws:
        reply = join(ws, name="Alice A.", can_publish=False)
        assert reply["room"] == "lobby"
        assert reply["identity"] == "alice"
        assert reply["can_publish"] is False
        participant_id = reply["participant_id"]
        assert participant_id.startswith("PA_")
        assert len(participant_id) == 15
        method, called_id, grant = worker.calls[0]
        assert (method, called_id) == ("join", participant_id)
        assert grant == Grant("lobby", "alice", "Alice A.", can_publish=False)


def test_join_name_overrides_token(client, worker):
    with client.websocket_connect("/ws") as ws:
        send(ws, {"type": "join", "token": token(name="Token Name"), "name": "Chosen"})
        assert ws.receive_json()["type"] == "joined"
    assert worker.calls[0][2].name == "Chosen"


def test_ping_before_join(client):
    with client.websocket_connect("/ws") as ws:
        assert_alive(ws)


BAD_FRAMES = [
    pytest.param("{not json", ErrorCode.BAD_JSON, None, id="bad-json"),
    pytest.param("[" * 10_000 + "]" * 10_000, ErrorCode.BAD_JSON, None, id="deeply-nested"),
    pytest.param("[1, 2]", ErrorCode.BAD_MESSAGE, None, id="not-an-object"),
    pytest.param('{"v": 1}', ErrorCode.UNKNOWN_TYPE, None, id="no-type"),
    pytest.param('{"type": "dance"}', ErrorCode.UNKNOWN_TYPE, None, id="unknown-type"),
    pytest.param('{"type": 7}', ErrorCode.BAD_MESSAGE, None, id="type-not-a-string"),
    pytest.param('{"type": []}', ErrorCode.BAD_MESSAGE, None, id="type-array"),
    pytest.param('{"type": {}}', ErrorCode.BAD_MESSAGE, None, id="type-object"),
    pytest.param(
        '{"type": "join", "token": "\\ud800"}', ErrorCode.BAD_TOKEN, "join", id="token-surrogate"
    ),
    pytest.param(
        '{"type": "join", "token": "t", "name": "a\\nb"}',
        ErrorCode.BAD_MESSAGE,
        "join",
        id="name-control-character",
    ),
    pytest.param('{"type": "ping", "v": 2}', ErrorCode.UNSUPPORTED_VERSION, "ping", id="v2"),
    pytest.param('{"type": "ping", "v": "1"}', ErrorCode.BAD_MESSAGE, "ping", id="v-string"),
    pytest.param('{"type": "ping", "v": true}', ErrorCode.BAD_MESSAGE, "ping", id="v-bool"),
    pytest.param('{"type": "join"}', ErrorCode.BAD_MESSAGE, "join", id="join-no-token"),
    pytest.param('{"type": "ping", "x": 1}', ErrorCode.BAD_MESSAGE, "ping", id="extra-field"),
    pytest.param(
        json.dumps({"type": "publish_offer", "sdp": "x" * 100}),
        ErrorCode.NOT_JOINED,
        "publish_offer",
        id="publish-before-join",
    ),
    pytest.param('{"type": "leave"}', ErrorCode.NOT_JOINED, "leave", id="leave-before-join"),
    pytest.param(
        json.dumps({"type": "mute", "track_id": "t", "muted": True}),
        ErrorCode.NOT_JOINED,
        "mute",
        id="mute-before-join",
    ),
    pytest.param(
        json.dumps({"type": "join", "token": "garbage"}),
        ErrorCode.BAD_TOKEN,
        "join",
        id="bad-token",
    ),
]


@pytest.mark.parametrize(("frame", "code", "request_type"), BAD_FRAMES)
def test_bad_frames(client, worker, frame, code, request_type):
    with client.websocket_connect("/ws") as ws:
        ws.send_text(frame)
        assert_error(ws, code, request_type)
        assert_alive(ws)
    assert worker.calls == []


def test_too_large(client):
    with client.websocket_connect("/ws") as ws:
        send(ws, {"type": "ping", "padding": "x" * MAX_MESSAGE_BYTES})
        reply = assert_error(ws, ErrorCode.TOO_LARGE)
        assert str(MAX_MESSAGE_BYTES) in reply["message"]
        ws.send_bytes(b"x" * (MAX_MESSAGE_BYTES + 1))
        assert_error(ws, ErrorCode.TOO_LARGE)
        assert_alive(ws)


def test_binary_frame(client):
    with client.websocket_connect("/ws") as ws:
        ws.send_bytes(b'{"type": "ping"}')
        assert_error(ws, ErrorCode.BAD_MESSAGE)
        assert_alive(ws)


def test_validation_error_is_summarised(client):
    with client.websocket_connect("/ws") as ws:
        join(ws)
        send(ws, {"type": "candidate", "target": "sideways", "candidate": None})
        reply = assert_error(ws, ErrorCode.BAD_MESSAGE, "candidate")
        assert reply["message"].startswith("invalid candidate message: target:")
        assert_alive(ws)


def test_expired_token_then_retry(client):
    now = int(time.time())
    claims = {"iss": KEY, "sub": "alice", "room": "lobby", "exp": now - 1}
    expired = jwt.encode({**claims, "can_publish": True, "can_subscribe": True}, SECRET)
    with client.websocket_connect("/ws") as ws:
        send(ws, {"type": "join", "token": expired})
        assert_error(ws, ErrorCode.TOKEN_EXPIRED, "join")
        send(ws, {"type": "join", "token": mint_token(KEY, "x" * 44, "lobby", "alice")})
        assert_error(ws, ErrorCode.BAD_TOKEN, "join")
        join(ws)


def test_second_join(client, worker):
    with client.websocket_connect("/ws") as ws:
        join(ws)
        send(ws, {"type": "join", "token": token()})
        assert_error(ws, ErrorCode.ALREADY_JOINED, "join")
        assert_alive(ws)
    assert [call[0] for call in worker.calls] == ["join"]


def test_requests_reach_the_worker(client, worker):
    with client.websocket_connect("/ws") as ws:
        participant_id = join(ws)["participant_id"]
        send(ws, {"type": "publish_offer", "sdp": "v=0 offer"})
        assert ws.receive_json() == {
            "type": "publish_answer",
            "v": 1,
            "sdp": "answer to v=0 offer",
            "tracks": {"0": "TR_a"},
        }
        send(ws, {"type": "subscribe_answer", "sdp": "v=0 answer", "revision": 3})
        send(ws, {"type": "candidate", "target": "publish", "candidate": None})
        send(ws, {"type": "mute", "track_id": "TR_a", "muted": True})
        assert_alive(ws)
    methods = [(method, called_id) for method, called_id, _ in worker.calls]
    assert methods == [
        ("join", participant_id),
        ("publish_offer", participant_id),
        ("subscribe_answer", participant_id),
        ("add_candidate", participant_id),
        ("mute", participant_id),
    ]
    assert worker.calls[2][2] == SubscribeAnswerMessage(sdp="v=0 answer", revision=3)


def test_publish_not_allowed(client, worker):
    with client.websocket_connect("/ws") as ws:
        join(ws, can_publish=False)
        send(ws, {"type": "publish_offer", "sdp": "v=0"})
        assert_error(ws, ErrorCode.NOT_ALLOWED, "publish_offer")
        assert_alive(ws)
    assert [call[0] for call in worker.calls] == ["join"]


def test_subscribe_not_allowed(client, worker):
    with client.websocket_connect("/ws") as ws:
        join(ws, can_subscribe=False)
        send(ws, {"type": "subscribe_answer", "sdp": "v=0", "revision": 1})
        assert_error(ws, ErrorCode.NOT_ALLOWED, "subscribe_answer")
        assert_alive(ws)


def test_worker_protocol_error(client, worker):
    with client.websocket_connect("/ws") as ws:
        join(ws)
        worker.fail_with = ProtocolError(ErrorCode.BAD_SDP, "no m-lines")
        send(ws, {"type": "publish_offer", "sdp": "v=0"})
        reply = assert_error(ws, ErrorCode.BAD_SDP, "publish_offer")
        assert reply["message"] == "no m-lines"
        assert_alive(ws)


def test_worker_exception(client, worker, caplog):
    with client.websocket_connect("/ws") as ws:
        join(ws)
        worker.fail_with = RuntimeError("secret detail")
        with caplog.at_level(logging.ERROR, logger="signaling.ws"):
            send(ws, {"type": "mute", "track_id": "TR_a", "muted": True})
            reply = assert_error(ws, ErrorCode.INTERNAL, "mute")
        assert "secret detail" not in reply["message"]
        assert_alive(ws)
        send(ws, {"type": "publish_offer", "sdp": "v=0"})
        assert ws.receive_json()["type"] == "publish_answer"
    assert any(record.exc_info and "mute" in record.getMessage() for record in caplog.records)


def test_failed_join_can_be_retried(client, worker):
    with client.websocket_connect("/ws") as ws:
        worker.fail_with = ProtocolError(ErrorCode.WORKER_UNAVAILABLE, "full")
        send(ws, {"type": "join", "token": token()})
        assert_error(ws, ErrorCode.WORKER_UNAVAILABLE, "join")
        join(ws)


def test_leave(client, worker):
    with client.websocket_connect("/ws") as ws:
        participant_id = join(ws)["participant_id"]
        send(ws, {"type": "leave"})
        with pytest.raises(WebSocketDisconnect) as info:
            ws.receive_json()
        assert info.value.code == 1000
        wait_for_leave(worker)
    assert worker.left == [participant_id]


def test_close_without_leave(client, worker):
    with client.websocket_connect("/ws") as ws:
        participant_id = join(ws)["participant_id"]
        ws.close()
        wait_for_leave(worker)
    assert worker.left == [participant_id]


def test_close_before_join_does_not_leave(client, worker):
    with client.websocket_connect("/ws") as ws:
        assert_alive(ws)
        ws.close()
        assert not worker.left_event.wait(0.2)


def test_sink_messages_in_order(client, worker):
    with client.websocket_connect("/ws") as ws:
        join(ws)
        send(ws, {"type": "mute", "track_id": "burst-50", "muted": True})
        events = [ws.receive_json() for _ in range(50)]
        assert [event["type"] for event in events] == ["track_muted"] * 50
        assert [event["track_id"] for event in events] == [f"TR_{i}" for i in range(50)]
        assert all(event["muted"] is True for event in events)
        assert_alive(ws)


def test_sink_overflow_closes_socket(client, worker):
    with client.websocket_connect("/ws") as ws:
        participant_id = join(ws)["participant_id"]
        send(ws, {"type": "mute", "track_id": "flood", "muted": True})
        with pytest.raises(WebSocketDisconnect) as info:
            while True:
                ws.receive_json()
        assert info.value.code == 1011
        wait_for_leave(worker)
    assert worker.left == [participant_id]


class StubSocket:
    """Just enough of a Starlette WebSocket to drive a :class:`Session` directly."""

    def __init__(self) -> None:
        self.incoming: asyncio.Queue[dict] = asyncio.Queue()
        self.sent: list[dict] = []
        self.close_code: int | None = None

    def push(self, message: dict) -> None:
        self.incoming.put_nowait({"type": "websocket.receive", "text": json.dumps(message)})

    async def receive(self) -> dict:
        return await self.incoming.get()

    async def send_text(self, text: str) -> None:
        self.sent.append(json.loads(text))

    async def close(self, code: int = 1000, reason: str | None = None) -> None:
        self.close_code = code


async def test_cancelled_session_still_leaves(worker):
    socket = StubSocket()
    socket.push({"type": "join", "token": token()})
    session = asyncio.create_task(Session(socket, worker, settings(), Sessions(settings())).run())
    while not socket.sent:
        await asyncio.sleep(0.01)
    assert socket.sent[0]["type"] == "joined"
    session.cancel()  # what a server shutdown does to the handler
    with pytest.raises(asyncio.CancelledError):
        await session
    for _ in range(100):
        if worker.left:
            break
        await asyncio.sleep(0.01)
    assert worker.left == [socket.sent[0]["participant_id"]]
    assert socket.close_code == 1001


def test_cli_token():
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "sfu",
            "token",
            "--room",
            "lobby",
            "--identity",
            "carol",
            "--name",
            "Carol",
            "--no-publish",
            "--ttl",
            "120",
            "--api-key",
            KEY,
            "--api-secret",
            SECRET,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    grant = verify_token(result.stdout.strip(), KEY, SECRET)
    assert grant == Grant("lobby", "carol", "Carol", can_publish=False, can_subscribe=True)
    with pytest.raises(ProtocolError) as info:
        verify_token(result.stdout.strip(), KEY, SECRET, now=time.time() + 121)
    assert info.value.code == ErrorCode.TOKEN_EXPIRED


async def test_a_message_that_cannot_be_encoded_closes_only_its_socket(worker, caplog):
    sessions = Sessions(settings())
    victim, bystander = StubSocket(), StubSocket()
    runs = [
        asyncio.create_task(Session(socket, worker, settings(), sessions).run())
        for socket in (victim, bystander)
    ]
    victim.push({"type": "join", "token": token(identity="victim")})
    bystander.push({"type": "join", "token": token(identity="bystander")})
    victim.push({"type": "mute", "track_id": "unencodable", "muted": True})
    await asyncio.wait_for(runs[0], 5)  # before: the writer died, the session went on
    assert victim.close_code == 1011
    assert "cannot be encoded" in caplog.text
    bystander.push({"type": "ping"})
    while bystander.sent[-1]["type"] != "pong":
        await asyncio.sleep(0.01)
    runs[1].cancel()
    await asyncio.gather(runs[1], return_exceptions=True)


@pytest.mark.parametrize(
    ("times", "expected"),
    [
        pytest.param([0.0] * 3, ["accept"] * 3, id="burst"),
        pytest.param([0.0] * 5, ["accept"] * 3 + ["refuse"] * 2, id="over"),
        pytest.param([0.0] * 7, ["accept"] * 3 + ["refuse"] * 3 + ["disconnect"], id="abuse"),
        pytest.param([0.0] * 4 + [0.5], ["accept"] * 3 + ["refuse", "accept"], id="refill"),
        pytest.param([0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6], ["accept"] * 7, id="at-the-rate"),
    ],
)
def test_message_budget(times, expected):
    budget = MessageBudget(rate=10.0, burst=3, now=0.0)
    assert [budget.take(now).value for now in times] == expected


def test_the_development_secret_opens_nothing_outside_dev_mode(worker):
    dev_only = Settings(dev_tokens=True)  # the default secret is the published one
    with TestClient(create_app(worker, dev_only)) as client:
        body = client.get("/api/dev-token", params={"room": "lobby"}).json()
        with client.websocket_connect("/ws") as ws:
            send(ws, {"type": "join", "token": body["token"]})
            assert "no API secret" in assert_error(ws, ErrorCode.BAD_TOKEN, "join")["message"]
        response = client.get("/api/rooms", auth=(dev_only.api_key, dev_only.api_secret))
        assert response.status_code == 401
    with TestClient(create_app(worker, Settings(dev=True))) as client:
        body = client.get("/api/dev-token", params={"room": "lobby"}).json()
        with client.websocket_connect("/ws") as ws:
            send(ws, {"type": "join", "token": body["token"]})
            assert ws.receive_json()["type"] == "joined"
