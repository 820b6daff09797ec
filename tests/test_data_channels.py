"""Data channels through the server: SDP, the relay's checks, and end to end with a
Chromium tab and two SDK participants (real SCTP over DTLS over ICE on loopback)."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import replace

import aioice.ice
import pytest
from async_browser import chromium, open_demo
from browser import chromium_available
from test_sdp import LOCAL, load

from sfu.client import DataMessage, RoomClient, connect, dev_token
from sfu.data_channel import MAX_MESSAGE_BYTES, DataError, TokenBucket, parse_envelope
from sfu.sdp import SessionDescription, accepted_data_channel, create_publish_answer

MESSAGE_TIMEOUT = 5.0


# --- SDP ---------------------------------------------------------------------------


def with_data_section(offer: SessionDescription, bundled: bool = True) -> SessionDescription:
    offer.media.append(
        replace(
            offer.media[0],
            kind="application",
            protocol="UDP/DTLS/SCTP",
            formats=["webrtc-datachannel"],
            codecs=[],
            header_extensions=[],
            ssrcs={},
            ssrc_groups=[],
            mid="dc",
            sctp_port=5000,
            max_message_size=262144,
        )
    )
    if bundled:
        offer.bundle_groups[0].append("dc")
    return SessionDescription.parse(str(offer))


def test_publish_answer_accepts_the_data_channel_section():
    offer = with_data_section(load("chrome-plain-offer"))
    answer, published = create_publish_answer(offer, LOCAL)
    section = answer.media_by_mid("dc")
    assert section is not None and not section.rejected
    assert (section.sctp_port, section.max_message_size) == (5000, 262144)
    assert section.setup == "passive" and section.ice_ufrag == LOCAL.ice_ufrag
    assert "dc" in answer.bundle_groups[0]
    assert [p.mid for p in published] == ["0", "1"]
    sctp = accepted_data_channel(offer, answer)
    assert sctp is not None and (sctp.mid, sctp.port, sctp.max_message_size) == (
        "dc",
        5000,
        262144,
    )
    assert SessionDescription.parse(str(answer)) == answer


def test_data_channel_only_offer_is_bundled_alone():
    offer = with_data_section(load("chrome-plain-offer"))
    offer.media = [m for m in offer.media if m.kind == "application"]
    offer.bundle_groups = [["dc"]]
    answer, published = create_publish_answer(SessionDescription.parse(str(offer)), LOCAL)
    assert published == [] and answer.bundle_groups == [["dc"]]


def test_unbundled_data_channel_section_is_rejected():
    offer = with_data_section(load("chrome-plain-offer"), bundled=False)
    answer, _ = create_publish_answer(offer, LOCAL)
    assert answer.media_by_mid("dc").rejected  # type: ignore[union-attr]
    assert accepted_data_channel(offer, answer) is None


# --- the relay's checks --------------------------------------------------------------


def test_envelope_validation():
    envelope = parse_envelope('{"type":"data","data":{"x":1},"topic":"t","from":"mallory"}')
    assert (envelope.data, envelope.topic, envelope.payload) == ({"x": 1}, "t", None)
    binary = parse_envelope(b'{"type":"data","id":"m1"}\x00\x00\x01')
    assert (binary.payload, binary.message_id) == (b"\x00\x01", "m1")
    for raw, code in [
        ("not json", "bad_json"),
        ("[1]", "bad_message"),
        ('{"type":"chat","data":1}', "bad_message"),
        ('{"type":"data"}', "bad_message"),
        ('{"type":"data","data":1,"topic":5}', "bad_message"),
        ('{"type":"data","data":1,"destination_identities":"bob"}', "bad_message"),
        (b'{"type":"data"}', "bad_message"),
    ]:
        with pytest.raises(DataError) as caught:
            parse_envelope(raw)
        assert caught.value.code == code, raw


def test_token_bucket():
    now = [0.0]
    bucket = TokenBucket(rate=10, burst=20, clock=lambda: now[0])
    assert all(bucket.take(1) for _ in range(20))
    assert not bucket.take(1)
    now[0] += 0.5
    assert all(bucket.take(1) for _ in range(5))
    assert not bucket.take(1)


# --- end to end ----------------------------------------------------------------------


@pytest.fixture(autouse=True)
def loopback_ice(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(aioice.ice, "get_host_addresses", lambda use_ipv4, use_ipv6: ["127.0.0.1"])


async def join(server: str, room: str, identity: str) -> RoomClient:
    token = await dev_token(server, room, identity, name=identity.title())
    return await connect(server, token, name=identity.title())


async def receive(client: RoomClient) -> DataMessage:
    return await client.data.recv(timeout=MESSAGE_TIMEOUT)


async def test_sdk_limits_and_destinations(sfu_server):
    room = f"dc-{uuid.uuid4().hex[:8]}"
    alice, bob, carol = [await join(sfu_server, room, n) for n in ("alice", "bob", "carol")]
    try:
        await alice.data.send("to bob only", destination_identities=["bob"], id="m1")
        await alice.data.send("to everyone")
        assert (await receive(bob)).data == "to bob only"
        assert (await receive(bob)).data == "to everyone"
        assert (await receive(carol)).data == "to everyone"  # carol never got the first

        await alice.data.send("x" * MAX_MESSAGE_BYTES, id="big")
        error = await alice.data.next_error(timeout=MESSAGE_TIMEOUT)
        assert (error.code, error.id) == ("too_large", None)
        await alice.data.send(b"\x00binary\xff", reliable=False)
        message = await receive(bob)
        assert (message.data, message.reliable, message.identity) == (
            b"\x00binary\xff",
            False,
            "alice",
        )

        for i in range(150):  # above the burst of 100 messages
            await alice.data.send(i, topic="flood", destination_identities=["carol"])
        error = await alice.data.next_error(timeout=MESSAGE_TIMEOUT)
        assert error.code == "rate_limited"
    finally:
        await asyncio.gather(alice.leave(), bob.leave(), carol.leave())


@pytest.mark.browser
@pytest.mark.skipif(not chromium_available(), reason="needs Chromium at /usr/bin/chromium")
async def test_browser_and_sdk_exchange_data_both_ways(sfu_server):
    room = f"dc-{uuid.uuid4().hex[:8]}"
    async with chromium() as browser:
        page = await open_demo(browser, sfu_server, room, "Tab", identity="tab")
        alice = await join(sfu_server, room, "alice")
        bob = await join(sfu_server, room, "bob")
        try:
            await page.wait_for_function("() => window.sfu.dataReady", timeout=20_000)

            # Page → both SDK participants, reliable and unreliable.
            await page.evaluate("() => window.sfu.sendData({n: 1}, {topic: 'chat'})")
            await page.evaluate("() => window.sfu.sendData({n: 2}, {reliable: false})")
            for client in (alice, bob):
                first, second = await receive(client), await receive(client)
                assert (first.data, first.topic, first.reliable) == ({"n": 1}, "chat", True)
                assert (second.data, second.reliable) == ({"n": 2}, False)
                assert first.identity == second.identity == "tab"

            # SDK → page and the other SDK participant, reliable and unreliable.
            await alice.data.send({"text": "hi from alice"}, topic="chat")
            await bob.data.send({"state": 7}, reliable=False)
            await page.wait_for_function("() => window.sfu.dataMessages.length >= 2")
            seen = await page.evaluate("() => window.sfu.dataMessages")
            assert {(m["from"]["identity"], m["reliable"]) for m in seen} == {
                ("alice", True),
                ("bob", False),
            }
            assert (await receive(bob)).data == {"text": "hi from alice"}
            assert (await receive(alice)).data == {"state": 7}
            chat = page.locator("#chat-log .chat-line")
            await chat.filter(has_text="hi from alice").wait_for(timeout=5000)

            # A spoofed sender is overwritten with the identity from the token.
            spoofed = {
                "type": "data",
                "data": "i am alice",
                "from": {"identity": "alice", "participant_id": alice.participant_id},
            }
            await page.evaluate(
                "(m) => window.sfu.session.data.reliable.send(JSON.stringify(m))", spoofed
            )
            for client in (alice, bob):
                message = await receive(client)
                assert (message.data, message.identity) == ("i am alice", "tab")
                assert message.participant_id != alice.participant_id

            # An oversized message gets an error; the channel keeps working.
            size = MAX_MESSAGE_BYTES + 1
            await page.evaluate(f"() => window.sfu.sendData('x'.repeat({size}), {{id: 'big'}})")
            await page.wait_for_function("() => window.sfu.dataErrors.length >= 1")
            errors = await page.evaluate("() => window.sfu.dataErrors")
            assert errors[0]["code"] == "too_large"
            await page.locator("#chat-input").fill("still here")
            await page.locator("#chat-send").click()
            message = await receive(alice)
            assert (message.data, message.topic) == ({"text": "still here"}, "chat")
            assert (await receive(bob)).data == {"text": "still here"}

            # Binary both ways.
            await alice.data.send(b"\x01\x02\x03", topic="bin")
            await page.wait_for_function(
                "() => window.sfu.dataMessages.some((m) => m.topic === 'bin')"
            )
            payload = await page.evaluate(
                "() => Array.from(window.sfu.dataMessages.find((m) => m.topic === 'bin').payload)"
            )
            assert payload == [1, 2, 3]
            await page.evaluate("() => window.sfu.sendData(new Uint8Array([9, 8]))")
            assert (await receive(alice)).data == b"\x09\x08"
            assert page.uncaught_errors == []
        finally:
            await asyncio.gather(alice.leave(), bob.leave())
