"""Webhooks: signing and retry schedule over bytes and a fake clock; real deliveries
from ``sfu serve`` to HTTP receivers in the test (one of them down until the room is
over); a 3-worker cluster behind two signaling nodes sends each event once."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import aioice.ice
import pytest
from cluster import Cluster, cluster_available, wait_for
from prometheus_client import REGISTRY
from server import free_port, run_sfu_server
from test_metrics import scrape, total

from sfu.access_token import mint_token
from sfu.client import RoomClient, ToneAudioTrack, connect
from sfu.config import DEV_API_KEY, DEV_API_SECRET
from sfu.protocol import Participant, ParticipantJoinedMessage, RecordingFinishedMessage
from sfu.webhooks import (
    CONTENT_TYPE,
    RoomStarted,
    WebhookDispatcher,
    WebhookSignatureError,
    verify_webhook,
)
from sfu.webhooks.backoff import Backoff
from sfu.webhooks.event import webhook_body
from sfu.webhooks.signing import SIGNATURE_TTL_SECONDS, sign_webhook

DELIVERY_TIMEOUT = 15.0
NOW = 1_764_766_000.0


# --- signing ----------------------------------------------------------------------------


def test_signed_body_verifies_and_a_tampered_one_does_not():
    body = webhook_body("demo", RoomStarted(), "EV_1", NOW)
    header = sign_webhook(body, DEV_API_KEY, DEV_API_SECRET, NOW)
    payload = verify_webhook(body, header, DEV_API_KEY, DEV_API_SECRET, NOW + 1)
    assert payload == {
        "id": "EV_1",
        "event": "room_started",
        "created_at": NOW,
        "room": {"name": "demo"},
    }
    assert verify_webhook(body, f"Bearer {header}", DEV_API_KEY, DEV_API_SECRET, NOW)
    tampered = body.replace(b"demo", b"dem0")
    with pytest.raises(WebhookSignatureError, match="sha256"):
        verify_webhook(tampered, header, DEV_API_KEY, DEV_API_SECRET, NOW)


@pytest.mark.parametrize(
    ("header_of", "key", "secret", "now", "error"),
    [
        (lambda b: None, DEV_API_KEY, DEV_API_SECRET, NOW, "no Authorization"),
        (lambda b: "garbage", DEV_API_KEY, DEV_API_SECRET, NOW, "bad signature"),
        (
            lambda b: sign_webhook(b, DEV_API_KEY, "another-secret-" * 3, NOW),
            DEV_API_KEY,
            DEV_API_SECRET,
            NOW,
            "bad signature",
        ),
        (
            lambda b: sign_webhook(b, "other-key", DEV_API_SECRET, NOW),
            DEV_API_KEY,
            DEV_API_SECRET,
            NOW,
            "issuer",
        ),
        (
            lambda b: sign_webhook(b, DEV_API_KEY, DEV_API_SECRET, NOW),
            DEV_API_KEY,
            DEV_API_SECRET,
            NOW + SIGNATURE_TTL_SECONDS + 60,
            "expired",
        ),
        (
            lambda b: sign_webhook(b, DEV_API_KEY, DEV_API_SECRET, NOW + 600),
            DEV_API_KEY,
            DEV_API_SECRET,
            NOW,
            "not valid yet",
        ),
        (
            lambda b: sign_webhook(b"[1]", DEV_API_KEY, DEV_API_SECRET, NOW),
            DEV_API_KEY,
            DEV_API_SECRET,
            NOW,
            "sha256",
        ),
    ],
)
def test_verification_refuses(header_of, key, secret, now, error):
    body = webhook_body("demo", RoomStarted(), "EV_1", NOW)
    with pytest.raises(WebhookSignatureError, match=error):
        verify_webhook(body, header_of(body), key, secret, now)


def test_signed_non_object_body_is_refused():
    body = b"[1]"
    header = sign_webhook(body, DEV_API_KEY, DEV_API_SECRET, NOW)
    with pytest.raises(WebhookSignatureError, match="not a JSON object"):
        verify_webhook(body, header, DEV_API_KEY, DEV_API_SECRET, NOW)


def test_payload_carries_the_room_event_fields():
    joined = ParticipantJoinedMessage(
        participant=Participant(participant_id="p1", identity="alice", name="Alice")
    )
    payload = json.loads(webhook_body("r", joined, "EV_2", NOW + 0.1234))
    assert payload["event"] == "participant_joined"
    assert payload["created_at"] == round(NOW + 0.1234, 3)
    assert payload["participant"] == {
        "participant_id": "p1",
        "identity": "alice",
        "name": "Alice",
        "tracks": [],
    }


def test_recording_finished_keeps_the_envelope_and_its_own_fields():
    finished = RecordingFinishedMessage(
        recording_id="RE_1",
        room="demo",
        track_id="TR_1",
        participant_id="PA_1",
        identity="alice",
        kind="video",
        codec="video/VP8",
        file="demo/RE_1/alice.webm",
        segment=1,
        started_at=NOW,
        duration=9.99,
        bytes=585800,
        frames=198,
        frames_lost=0,
        reason="stopped",
    )
    payload = json.loads(webhook_body("demo", finished, "EV_3", NOW))
    assert payload["event"] == "recording_finished"
    assert payload["id"] == "EV_3" and payload["room"] == {"name": "demo"}
    assert payload["recording_id"] == "RE_1" and payload["frames"] == 198


# --- retry schedule and queues (fake clock and sleep) -----------------------------------


@pytest.mark.parametrize(
    ("failed", "delay"),
    [(1, 0.5), (2, 1.0), (3, 2.0), (6, 16.0), (7, 30.0), (8, None), (9, None)],
)
def test_backoff_doubles_up_to_its_cap_then_gives_up(failed, delay):
    assert Backoff().delay(failed) == delay


def test_backoff_refuses_unusable_settings():
    with pytest.raises(ValueError):
        Backoff(max_attempts=0)
    with pytest.raises(ValueError):
        Backoff(base=2.0, max_delay=1.0)


def counter(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


class FakeTime:
    """A clock that only sleeping advances."""

    def __init__(self) -> None:
        self.now = NOW
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)


class ScriptedReceiver:
    """Answers each POST with the next status of a script (0: connection refused)."""

    def __init__(self, statuses: list[int]) -> None:
        self.statuses = statuses
        self.requests: list[tuple[str, bytes, dict[str, str]]] = []

    async def post(self, url: str, body: bytes, headers: dict[str, str]) -> int:
        self.requests.append((url, body, headers))
        status = self.statuses.pop(0) if self.statuses else 200
        if status == 0:
            raise ConnectionRefusedError(111, "Connection refused")
        return status


async def dispatch(statuses: list[int], events: int = 1, **options: Any) -> Any:
    fake = FakeTime()
    receiver = ScriptedReceiver(statuses)
    dispatcher = WebhookDispatcher(
        ["http://receiver.test/hook"],
        DEV_API_KEY,
        DEV_API_SECRET,
        post=receiver.post,
        sleep=fake.sleep,
        clock=fake.clock,
        **options,
    )
    dispatcher.start()
    for _ in range(events):
        dispatcher.room_event("demo", RoomStarted())
    await dispatcher.close(grace=5.0)
    return fake, receiver


async def test_failed_posts_are_retried_with_backoff_and_resigned():
    delivered = counter("sfu_webhook_events_total", outcome="delivered")
    fake, receiver = await dispatch([0, 503, 429, 200])
    assert fake.sleeps == [0.5, 1.0, 2.0]
    assert len(receiver.requests) == 4
    bodies = {body for _, body, _ in receiver.requests}
    assert len(bodies) == 1, "every attempt sends the same event"
    for attempt, (_, body, headers) in enumerate(receiver.requests):
        assert headers["Content-Type"] == CONTENT_TYPE
        # Each attempt is signed at its own time: a long retry never sends a stale JWT.
        sent_at = NOW + sum(fake.sleeps[:attempt])
        verify_webhook(body, headers["Authorization"], DEV_API_KEY, DEV_API_SECRET, sent_at)
    assert counter("sfu_webhook_events_total", outcome="delivered") == delivered + 1


async def test_gives_up_after_the_last_attempt_and_rejected_events_are_not_retried():
    gave_up = counter("sfu_webhook_events_total", outcome="gave_up")
    rejected = counter("sfu_webhook_events_total", outcome="rejected")
    fake, receiver = await dispatch([500, 500, 500, 400], events=2, backoff=Backoff(max_attempts=3))
    assert fake.sleeps == [0.5, 1.0]
    assert len(receiver.requests) == 4, "3 attempts for the first event, 1 for the second"
    assert counter("sfu_webhook_events_total", outcome="gave_up") == gave_up + 1
    assert counter("sfu_webhook_events_total", outcome="rejected") == rejected + 1


async def test_full_queue_drops_new_events_and_counts_them():
    dropped = counter("sfu_webhook_events_total", outcome="dropped")
    # Nothing runs between the room events: the first 3 fill the queue.
    _, receiver = await dispatch([], events=5, queue_size=3)
    assert len(receiver.requests) == 3
    assert counter("sfu_webhook_events_total", outcome="dropped") == dropped + 2


async def test_a_hanging_receiver_delays_no_other_url():
    hang = asyncio.Event()
    got: list[bytes] = []

    async def post(url: str, body: bytes, headers: dict[str, str]) -> int:
        if "slow" in url:
            await hang.wait()
        got.append(body)
        return 204

    dispatcher = WebhookDispatcher(
        ["http://slow.test/", "http://fast.test/"], DEV_API_KEY, DEV_API_SECRET, post=post
    )
    dispatcher.start()
    for _ in range(3):
        dispatcher.room_event("demo", RoomStarted())
    async with asyncio.timeout(2):
        while len(got) < 3:
            await asyncio.sleep(0.01)
    await dispatcher.close(grace=0.1)


# --- real deliveries --------------------------------------------------------------------


class Receiver:
    """A real HTTP server on a port of its own that records every webhook POST and
    answers 200; :meth:`stop` and :meth:`start` take it down and back on that port."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/webhook"
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    def start(self) -> None:
        requests, lock = self.requests, self._lock

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with lock:
                    requests.append((dict(self.headers), body))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def events(self) -> list[dict[str, Any]]:
        """Every received payload, checked the documented way (a bad one fails)."""
        with self._lock:
            received = list(self.requests)
        payloads = []
        for headers, body in received:
            assert headers["Content-Type"] == CONTENT_TYPE
            payloads.append(
                verify_webhook(
                    body, headers["Authorization"], DEV_API_KEY, DEV_API_SECRET, time.time()
                )
            )
        return payloads


@pytest.fixture
def receivers() -> Iterator[list[Receiver]]:
    made: list[Receiver] = []
    yield made
    for receiver in made:
        receiver.stop()


@pytest.fixture(autouse=True)
def loopback_ice(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(aioice.ice, "get_host_addresses", lambda use_ipv4, use_ipv6: ["127.0.0.1"])


def token(room: str, identity: str) -> str:
    return mint_token(DEV_API_KEY, DEV_API_SECRET, room=room, identity=identity)


async def room_session(url: str, room: str) -> list[tuple[str, str | None]]:
    """alice joins and publishes audio, bob joins and leaves, alice leaves; the webhook
    events (event, participant id) this must cause, in order."""
    alice = await connect(url, token(room, "alice"), data=False)
    try:
        await alice.publish_tracks([(ToneAudioTrack(), "microphone")])
        bob: RoomClient = await connect(url, token(room, "bob"), data=False)
        await bob.leave()
    finally:
        await alice.leave()
    a, b = alice.participant_id, bob.participant_id
    return [
        ("room_started", None),
        ("participant_joined", a),
        ("track_published", a),
        ("participant_joined", b),
        ("participant_left", b),
        ("track_unpublished", a),
        ("participant_left", a),
        ("room_finished", None),
    ]


def summary(payload: dict[str, Any]) -> tuple[str, str | None]:
    """(event, the participant it concerns)."""
    participant = (
        payload.get("participant", {}).get("participant_id")
        or payload.get("track", {}).get("participant_id")
        or payload.get("participant_id")
    )
    return payload["event"], participant


def wait_events(receiver: Receiver, count: int, what: str) -> list[dict[str, Any]]:
    wait_for(lambda: len(receiver.requests) >= count, what, DELIVERY_TIMEOUT)
    return receiver.events()


async def test_receivers_get_every_event_in_order_signed_and_a_down_one_after_it_is_back(
    receivers,
):
    up, down = Receiver(), Receiver()
    receivers.extend([up, down])
    up.start()
    room = f"hooks-{uuid.uuid4().hex[:8]}"
    with run_sfu_server(["--webhook-url", up.url, "--webhook-url", down.url]) as url:
        expected = await room_session(url, room)
        events = await asyncio.to_thread(wait_events, up, len(expected), "the up receiver")
        assert [summary(e) for e in events] == expected
        assert {e["room"]["name"] for e in events} == {room}
        assert len({e["id"] for e in events}) == len(events)
        created = [e["created_at"] for e in events]
        assert created == sorted(created) and abs(created[-1] - time.time()) < 30
        published = events[2]["track"]
        assert published["kind"] == "audio" and published["source"] == "microphone"
        assert not down.requests, "the down receiver cannot have received anything"

        # Its retries are under way (0.5 s, 1 s, 2 s, … apart); once it listens again,
        # the same events arrive, in order.
        await asyncio.sleep(1.0)
        _, samples = await asyncio.to_thread(scrape, url)
        assert total(samples, "sfu_webhook_failed_attempts_total") >= 2
        assert total(samples, "sfu_webhook_events_total", outcome="delivered") == len(expected)
        came_back = time.monotonic()
        down.start()
        again = await asyncio.to_thread(wait_events, down, len(expected), "the receiver back up")
        print(f"\nevents reached the restarted receiver {time.monotonic() - came_back:.1f} s later")
        assert [e["id"] for e in again] == [e["id"] for e in events]
        _, samples = await asyncio.to_thread(scrape, url)
        assert total(samples, "sfu_webhook_events_total", outcome="delivered") == 2 * len(expected)

    # A body changed on the way fails verification with the header it came with.
    headers, body = up.requests[1]
    with pytest.raises(WebhookSignatureError):
        verify_webhook(
            body.replace(b"alice", b"mallory"),
            headers["Authorization"],
            DEV_API_KEY,
            DEV_API_SECRET,
            time.time(),
        )


def test_worker_refuses_webhooks_signed_with_the_published_secret():
    result = subprocess.run(
        [sys.executable, "-m", "sfu", "worker", "--webhook-url", "http://127.0.0.1:9/"],
        capture_output=True,
        text=True,
        timeout=30,
        env={"PATH": "/usr/bin:/bin", "SFU_REDIS_URL": "redis://127.0.0.1:1/0"},
    )
    assert result.returncode == 2
    assert "no API secret configured" in result.stderr


@pytest.mark.skipif(not cluster_available(), reason="needs redis-server and haproxy")
async def test_three_worker_cluster_sends_each_event_once(receivers):
    receiver = Receiver()
    receivers.append(receiver)
    receiver.start()
    env = {"SFU_WEBHOOK_URLS": json.dumps([receiver.url]), "SFU_DEV": "true"}
    cluster = await asyncio.to_thread(Cluster, 3, 2, env)
    try:
        rooms = [f"once-{i}-{uuid.uuid4().hex[:6]}" for i in range(3)]
        # Three rooms at once: on three idle workers they land one per worker.
        alices = [await connect(cluster.lb_url, token(room, "alice"), data=False) for room in rooms]
        hosts = {await asyncio.to_thread(cluster.worker_of, room) for room in rooms}
        assert len(hosts) == 3, f"three rooms on three workers, got {hosts}"
        for alice in alices:
            await alice.publish_tracks([(ToneAudioTrack(), "microphone")])
        for room in rooms:
            bob = await connect(cluster.lb_url, token(room, "bob"), data=False)
            await bob.leave()
        for alice in alices:
            await alice.leave()
        expected_count = 8 * len(rooms)
        events = await asyncio.to_thread(wait_events, receiver, expected_count, "every event")
        await asyncio.sleep(1.5)  # a duplicate from another process would arrive by now
        events = receiver.events()
        assert len(events) == expected_count, [summary(e) for e in events]
        assert len({e["id"] for e in events}) == expected_count
        for room in rooms:
            mine = [summary(e) for e in events if e["room"]["name"] == room]
            assert [event for event, _ in mine] == [
                "room_started",
                "participant_joined",
                "track_published",
                "participant_joined",
                "participant_left",
                "track_unpublished",
                "participant_left",
                "room_finished",
            ], mine
    finally:
        await asyncio.to_thread(cluster.close)
