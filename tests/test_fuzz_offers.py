"""A bounded fuzz run of publish offers against a live ``sfu serve``.

Mutations of real Chrome and Firefox offers (dropped, duplicated, truncated, swapped
and moved lines, numbers grown to 5,000 digits, random characters and bytes) go over
one WebSocket session; every reply must be a ``publish_answer`` or a ``bad_sdp`` error
(``bad_candidate`` for a malformed a=candidate line in the offer that starts the
transport), never ``internal`` and never a closed socket, and the server must still
answer a ping at once afterwards. Seeded, so a failure repeats; a few seconds of CI.
Lone surrogates are not tried here: the message layer refuses them (``bad_message``).
"""

from __future__ import annotations

import json
import random
import re
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect

from sfu.client import dev_token
from sfu.client.signaling import websocket_url
from sfu.sdp import SessionDescription

FIXTURES = Path(__file__).parent / "fixtures" / "sdp"
OFFERS = [
    "chrome-plain-offer",
    "chrome-simulcast-offer",
    "firefox-simulcast-offer",
    "firefox-max-bundle-offer",
]
SEED = 20261202
INPUTS = 2000
WINDOW = 16
"""Offers in flight at once: the server answers one socket's messages in order."""
EXPECTED_ERRORS = {"bad_sdp", "bad_candidate"}
PING_DEADLINE = 0.5
"""Seconds the ping after the run may take (it answers in about a millisecond)."""
JUNK = "\x00\x7f\t\r\u00e9\u200b\U0001f600\ufffd\\\"'<>%;:/=,~ "


def _lines(name: str) -> list[str]:
    return (FIXTURES / f"{name}.sdp").read_text().splitlines()


def mutate(lines: list[str], rng: random.Random) -> str:
    """One to four mutations of an offer's lines, as CRLF text."""
    lines = list(lines)
    for _ in range(rng.randint(1, 4)):
        i = rng.randrange(len(lines))
        op = rng.randrange(9)
        if op == 0 and len(lines) > 1:
            del lines[i]
        elif op == 1:
            lines.insert(i, lines[i])
        elif op == 2:
            lines[i] = lines[i][: rng.randrange(len(lines[i]) + 1)]
        elif op == 3:  # two lines trade places (an attribute moves to another m-section)
            j = rng.randrange(len(lines))
            lines[i], lines[j] = lines[j], lines[i]
        elif op == 4:  # a number grows to 5,000 digits
            numbers = list(re.finditer(r"[0-9]+", lines[i]))
            if numbers:
                m = rng.choice(numbers)
                lines[i] = lines[i][: m.start()] + "9" * 5000 + lines[i][m.end() :]
        elif op == 5:  # random characters inside a line
            at = rng.randrange(len(lines[i]) + 1)
            junk = "".join(rng.choice(JUNK) for _ in range(rng.randint(1, 8)))
            lines[i] = lines[i][:at] + junk + lines[i][at:]
        elif op == 6:  # random bytes, read as Latin-1 text
            at = rng.randrange(len(lines[i]) + 1)
            junk = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
            lines[i] = lines[i][:at] + junk.decode("latin-1") + lines[i][at:]
        elif op == 7:  # a token of the line replaced by another line's token
            tokens = lines[i].split(" ")
            other = rng.choice(lines).split(" ")
            tokens[rng.randrange(len(tokens))] = rng.choice(other)
            lines[i] = " ".join(tokens)
        else:  # an empty attribute value
            name, sep, _ = lines[i].partition(":")
            if sep:
                lines[i] = name + ":"
    return "\r\n".join(lines) + "\r\n"


def offers() -> Iterator[str]:
    rng = random.Random(SEED)
    fixtures = [_lines(name) for name in OFFERS]
    for n in range(INPUTS):
        if n % 100 == 0:
            yield "\r\n".join(rng.choice(fixtures)) + "\r\n"  # a valid offer now and then
        elif n % 97 == 0:
            yield bytes(rng.randrange(256) for _ in range(rng.randint(1, 600))).decode("latin-1")
        else:
            yield mutate(rng.choice(fixtures), rng)


@pytest.fixture(scope="module")
def fuzz_server() -> Iterator[str]:
    from server import run_sfu_server

    # Thousands of messages in seconds: lift the per-socket message rate limit.
    env = {"SFU_MESSAGE_RATE": "1000000", "SFU_MESSAGE_BURST": "1000000"}
    with run_sfu_server(env=env) as url:
        yield url


@pytest.fixture
async def session(fuzz_server: str) -> AsyncIterator[ClientConnection]:
    token = await dev_token(fuzz_server, f"fuzz-{uuid.uuid4().hex[:8]}", "fuzzer")
    async with ws_connect(websocket_url(fuzz_server), max_size=None) as ws:
        await ws.send(json.dumps({"type": "join", "token": token}))
        joined = json.loads(await ws.recv())
        assert joined["type"] == "joined", joined
        yield ws


async def reply_to(ws: ClientConnection, request_type: str) -> dict[str, Any]:
    """The next reply to ``request_type``, skipping events."""
    while True:
        message = json.loads(await ws.recv())
        if message["type"] == "error" and message.get("request_type") == request_type:
            return message
        if message["type"] == {"publish_offer": "publish_answer", "ping": "pong"}[request_type]:
            return message
        assert message["type"] != "error", message


async def test_mutated_publish_offers_get_answers_or_bad_sdp(session: ClientConnection):
    ws = session
    sent: list[str] = []
    answers = errors = 0
    started = time.monotonic()

    async def read_one() -> None:
        nonlocal answers, errors
        sdp = sent.pop(0)
        reply = await reply_to(ws, "publish_offer")
        if reply["type"] == "publish_answer":
            answers += 1
        else:
            assert reply["code"] in EXPECTED_ERRORS, (reply, sdp[:2000])
            assert len(reply["message"]) < 500  # hostile values are quoted cut short
            errors += 1

    for sdp in offers():
        await ws.send(json.dumps({"type": "publish_offer", "sdp": sdp}))
        sent.append(sdp)
        if len(sent) >= WINDOW:
            await read_one()
    while sent:
        await read_one()
    elapsed = time.monotonic() - started

    ping_started = time.monotonic()
    await ws.send(json.dumps({"type": "ping"}))
    assert (await reply_to(ws, "ping"))["type"] == "pong"
    ping = time.monotonic() - ping_started
    print(
        f"{INPUTS} offers in {elapsed:.2f} s: {answers} answers, {errors} errors;"
        f" ping after {ping * 1000:.1f} ms"
    )
    assert answers + errors == INPUTS
    assert answers >= INPUTS // 100  # the valid ones at least
    assert ping < PING_DEADLINE


def _chrome_offer() -> str:
    return "\r\n".join(_lines("chrome-plain-offer")) + "\r\n"


def _many_mlines(count: int) -> str:
    """An offer of ``count`` small audio m-lines in one BUNDLE group."""
    offer = SessionDescription.parse(_chrome_offer())
    audio = offer.media[0]
    audio.candidates, audio.header_extensions, audio.ssrcs, audio.ssrc_groups = [], [], {}, []
    audio.codecs, audio.formats, audio.attributes = audio.codecs[:1], audio.formats[:1], []
    offer.media = [replace(audio, mid=str(i)) for i in range(count)]
    offer.bundle_groups = [[str(i) for i in range(count)]]
    return str(offer)


HUGE = "9" * 5000
HOSTILE = [
    pytest.param(_chrome_offer().replace("2653330898438536983", HUGE), "5000 digits", id="o-id"),
    pytest.param(_chrome_offer().replace("m=audio 44076", f"m=audio {HUGE}"), "port", id="port"),
    pytest.param(_chrome_offer().replace("opus/48000", f"opus/{HUGE}"), "clock rate", id="clock"),
    pytest.param(
        _chrome_offer().replace("a=extmap:1 ", f"a=extmap:{HUGE} "), "extmap", id="extmap"
    ),
    pytest.param(_chrome_offer().replace("a=group:BUNDLE 0 1", "a=group:"), "group", id="group"),
    pytest.param(_many_mlines(33), "more than 32 m= sections", id="33-mlines"),
]


@pytest.mark.parametrize(("sdp", "reason"), HOSTILE)
async def test_hostile_publish_offers_are_bad_sdp(session: ClientConnection, sdp: str, reason: str):
    """Issue 14's offers: each got ``internal`` before; the session goes on after."""
    await session.send(json.dumps({"type": "publish_offer", "sdp": sdp}))
    reply = await reply_to(session, "publish_offer")
    assert (reply["type"], reply.get("code")) == ("error", "bad_sdp"), reply
    assert reason in reply["message"] and len(reply["message"]) < 400
    await session.send(json.dumps({"type": "publish_offer", "sdp": _chrome_offer()}))
    assert (await reply_to(session, "publish_offer"))["type"] == "publish_answer"
