"""Audio RED and Opus DTX with real Chromium, and connection quality over lossy links.

- RED (RFC 2198): a Chromium publisher in its own network namespace, whose uplink loses
  10 % of its UDP packets at random (nftables), offers ``audio/red``; the server accepts
  it. A Chromium subscriber that negotiates RED gets the RED packets; a Python
  subscriber (aiortc, no RED) gets plain Opus, with lost packets refilled from the next
  packet's redundant block. Both decode the microphone's beeps.
- DTX: a Chromium publisher of digital silence with ``usedtx=1`` sends a few packets a
  second; it is not lost, not dead (its audio comes back the moment it makes a sound),
  and not an active speaker until it does.
- Connection quality: a subscriber in a namespace whose downlink loses 20 % is ``poor``,
  a publisher on loopback ``excellent``; the demo page shows it on the tiles and
  ``/metrics`` counts it.

Needs root and nftables for the namespaces; skips otherwise. Run with ``-s`` to see the
measured figures.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest
from async_browser import chromium, open_demo
from browser import CHROMIUM_PATH, chromium_available
from netns import (
    VethNamespace,
    netns_unavailable_reason,
    nftables_unavailable_reason,
    veth_namespace,
)
from server import ServerUrl, serve_module
from test_metrics import scrape

from sfu.client import RemoteTrack, connect, dev_token

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not chromium_available(),
        reason="browser tests need Chromium at /usr/bin/chromium (Debian package 'chromium')",
    ),
]

UPLINK_LOSS = 10
DOWNLINK_LOSS = 20
LISTEN_SECONDS = 6.0
TIMEOUT = 20.0

PUBLISH_MICROPHONE_JS = """async () => {
    const stream = await navigator.mediaDevices.getUserMedia({ audio: true });
    await window.sfu.session.publish(stream, { source: "microphone" });
}"""
PUBLISH_SILENCE_JS = """async () => {
    // Digital silence from Web Audio: a tone through a gain of 0 (a destination with no
    // source sends no audio at all); SPEAK_JS turns the gain up.
    const context = new AudioContext();
    await context.resume();
    const destination = context.createMediaStreamDestination();
    const gain = context.createGain();
    gain.gain.value = 0;
    const oscillator = context.createOscillator();
    oscillator.frequency.value = 440;
    oscillator.connect(gain).connect(destination);
    oscillator.start();
    window.silence = gain;
    await window.sfu.session.publish(destination.stream, { source: "microphone", dtx: true });
}"""
SPEAK_JS = "() => { window.silence.gain.value = 0.5; }"
AUDIO_SENT_JS = """async () => {
    let sent = 0;
    for (const s of (await window.sfu.publishPc.getStats()).values()) {
        if (s.type === "outbound-rtp" && s.kind === "audio") sent += s.packetsSent;
    }
    return sent;
}"""


@pytest.fixture(scope="module")
def link() -> Iterator[VethNamespace]:
    reason = netns_unavailable_reason() or nftables_unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    with veth_namespace("sfuaud") as created:
        yield created


@pytest.fixture(scope="module")
def sfu_server(link: VethNamespace) -> Iterator[ServerUrl]:
    yield from serve_module(host="0.0.0.0", ice_addresses=["127.0.0.1", link.host_address])


@pytest.fixture
async def browsers(
    link: VethNamespace, sfu_server: ServerUrl
) -> AsyncIterator[tuple[Any, Any, str]]:
    """(a Chromium inside the namespace, one on loopback, the server's URL as the
    namespace reaches it); the loss rule is lifted afterwards."""
    remote = f"http://{link.host_address}:{sfu_server.rsplit(':', 1)[1]}"
    secure = f"--unsafely-treat-insecure-origin-as-secure={remote}"
    try:
        async with (
            chromium([secure], executable=link.wrapper(CHROMIUM_PATH)) as far,
            chromium() as near,
        ):
            yield far, near, remote
    finally:
        link.undrop_downlink()


async def poll(check: Callable[[], Awaitable[Any]], what: str, timeout: float = TIMEOUT) -> Any:
    deadline = time.monotonic() + timeout
    while not (result := await check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        await asyncio.sleep(0.25)
    return result


async def inbound_audio(page: Any, participant_id: str) -> dict[str, Any] | None:
    stats = await page.evaluate("() => window.sfu.stats()")
    return next(
        (
            s
            for s in stats["inbound"]
            if s["kind"] == "audio" and s["participantId"] == participant_id
        ),
        None,
    )


async def listen(remote: RemoteTrack, seconds: float) -> tuple[int, float]:
    """(frames, their peak amplitude 0..1) the Python subscriber decodes in ``seconds``."""
    frames = 0
    peak = 0.0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        frame = await asyncio.wait_for(remote.track.recv(), 2.0)
        frames += 1
        samples = memoryview(bytes(frame.planes[0])).cast("h")  # s16, what aiortc decodes
        peak = max(peak, max(samples, default=0) / 32768, -min(samples, default=0) / 32768)
    return frames, peak


def counter(url: str, name: str, **labels: str) -> float:
    return scrape(url)[1].get((name, tuple(sorted(labels.items()))), 0.0)


async def test_red_publisher_heard_by_a_red_and_a_plain_subscriber(
    browsers: tuple[Any, Any, str], link: VethNamespace, sfu_server: ServerUrl
) -> None:
    far, near, remote = browsers
    room = f"red-{uuid.uuid4().hex[:8]}"
    publisher = await open_demo(far, remote, room, "pub", "pub", "&publish=0")
    await publisher.evaluate(PUBLISH_MICROPHONE_JS)
    publisher_id = await publisher.evaluate("() => window.sfu.participantId")
    subscriber = await open_demo(near, sfu_server, room, "red", "red", "&publish=0")
    token = await dev_token(sfu_server, room, "plain")
    async with await connect(sfu_server, token, loopback_only=True) as plain:
        track = await plain.wait_for_track(
            kind="audio", participant_id=publisher_id, timeout=TIMEOUT
        )
        await poll(
            lambda: inbound_audio(subscriber, publisher_id),
            "the Chromium subscriber to receive the publisher's audio",
        )
        answer = await subscriber.evaluate("() => window.sfu.subscribePc.localDescription.sdp")
        assert "red/48000/2" in answer, "the Chromium subscriber did not negotiate RED"
        recovered_before = counter(sfu_server, "sfu_rtp_red_recovered_packets_total")
        lost_before = counter(sfu_server, "sfu_rtp_lost_packets_total", kind="audio")
        link.drop_uplink(UPLINK_LOSS)
        before = await inbound_audio(subscriber, publisher_id)
        frames, peak = await listen(track, LISTEN_SECONDS)
        after = await inbound_audio(subscriber, publisher_id)
        dropped = link.dropped_packets()
        link.undrop_downlink()
    await asyncio.sleep(2.5)  # the metrics' next sample
    recovered = counter(sfu_server, "sfu_rtp_red_recovered_packets_total") - recovered_before
    lost = counter(sfu_server, "sfu_rtp_lost_packets_total", kind="audio") - lost_before
    assert before is not None and after is not None
    delta = {
        k: after[k] - before[k] for k in ("totalSamplesReceived", "concealedSamples", "packetsLost")
    }
    energy = after["totalAudioEnergy"] - before["totalAudioEnergy"]
    concealed = delta["concealedSamples"] / max(1, delta["totalSamplesReceived"])
    print(
        f"\n{UPLINK_LOSS} % uplink loss for {LISTEN_SECONDS:.0f}s: {dropped} packets dropped,"
        f" {lost:.0f} lost to the server;"
        f" Python subscriber (no RED): {frames} frames, peak {peak:.2f},"
        f" {recovered:.0f} packets refilled from redundancy;"
        f" Chromium subscriber (RED, {after['mimeType']}): {delta}, concealed"
        f" {100 * concealed:.1f} %, energy {energy:.3f}"
    )
    assert dropped > 0, "the loss rule dropped nothing"
    assert recovered > 0, "no lost packet was refilled from RED's redundancy"
    assert frames >= 30 * LISTEN_SECONDS, "the Python subscriber stopped decoding"
    assert peak > 0.05, "the Python subscriber heard no beep"
    assert delta["totalSamplesReceived"] > 40_000 * LISTEN_SECONDS
    assert concealed < UPLINK_LOSS / 100 / 2, "RED should repair most of the loss"


async def test_dtx_silence_is_neither_lost_nor_dead_nor_a_speaker(
    browsers: tuple[Any, Any, str], sfu_server: ServerUrl
) -> None:
    _, near, _ = browsers
    room = f"dtx-{uuid.uuid4().hex[:8]}"
    publisher = await open_demo(near, sfu_server, room, "quiet", "quiet", "&publish=0")
    await publisher.evaluate(PUBLISH_SILENCE_JS)
    publisher_id = await publisher.evaluate("() => window.sfu.participantId")
    subscriber = await open_demo(near, sfu_server, room, "ear", "ear", "&publish=0")
    await poll(
        lambda: inbound_audio(subscriber, publisher_id),
        "the subscriber to receive the silent publisher's audio",
    )
    await asyncio.sleep(1.0)  # DTX starts after a few frames of silence
    sent_before = await publisher.evaluate(AUDIO_SENT_JS)
    before = await inbound_audio(subscriber, publisher_id)
    speakers: set[str] = set()
    for _ in range(16):
        await asyncio.sleep(0.25)
        speakers.update(await subscriber.evaluate("() => window.sfu.activeSpeakers"))
    sent = await publisher.evaluate(AUDIO_SENT_JS) - sent_before
    after = await inbound_audio(subscriber, publisher_id)
    qualities = await subscriber.evaluate("() => window.sfu.connectionQualities")
    assert before is not None and after is not None
    received = after["packetsReceived"] - before["packetsReceived"]
    lost = after["packetsLost"] - before["packetsLost"]
    await publisher.evaluate(SPEAK_JS)
    start = time.monotonic()

    async def speaking() -> bool:
        return publisher_id in await subscriber.evaluate("() => window.sfu.activeSpeakers")

    await poll(speaking, "the publisher to become an active speaker once it makes a sound")
    spoke_after = time.monotonic() - start
    print(
        f"\nDTX silence for 4s: {sent} packets sent, {received} received, {lost} lost;"
        f" speakers {sorted(speakers)}; quality {qualities.get(publisher_id)};"
        f" a speaker {spoke_after:.1f}s after the sound started"
    )
    assert sent < 40, f"DTX is not on: {sent} packets in 4 s of silence"
    assert received > 0, "a silent DTX publisher still sends a packet every 400 ms"
    assert lost == 0
    assert publisher_id not in speakers
    assert qualities.get(publisher_id) == "excellent", qualities
    assert spoke_after < 3.0


async def test_a_subscriber_behind_a_lossy_link_is_poor_a_clean_publisher_excellent(
    browsers: tuple[Any, Any, str], link: VethNamespace, sfu_server: ServerUrl
) -> None:
    far, near, remote = browsers
    room = f"quality-{uuid.uuid4().hex[:8]}"
    publisher = await open_demo(near, sfu_server, room, "clean", "clean", "&publish=0")
    await publisher.evaluate(PUBLISH_MICROPHONE_JS)
    publisher_id = await publisher.evaluate("() => window.sfu.participantId")
    lossy = await open_demo(far, remote, room, "lossy", "lossy", "&publish=0")
    lossy_id = await lossy.evaluate("() => window.sfu.participantId")
    await poll(lambda: inbound_audio(lossy, publisher_id), "the lossy subscriber to get audio")
    link.drop_downlink(DOWNLINK_LOSS)
    start = time.monotonic()

    async def scored() -> dict[str, str] | None:
        qualities = await publisher.evaluate("() => window.sfu.connectionQualities")
        wanted = qualities.get(lossy_id) == "poor" and qualities.get(publisher_id) == "excellent"
        return qualities if wanted else None

    await poll(scored, "the lossy subscriber to be poor and the clean publisher excellent")
    took = time.monotonic() - start
    badge = await publisher.evaluate(
        """(id) => document.querySelector(
            `.tile[data-participant-id="${id}"] .connection-quality`).textContent""",
        lossy_id,
    )
    own = await lossy.evaluate(
        "() => document.querySelector('#local-tile .connection-quality').textContent"
    )
    poor = counter(sfu_server, "sfu_participants_by_connection_quality", quality="poor")
    print(f"\n{DOWNLINK_LOSS} % downlink loss: poor after {took:.1f}s; badges {badge!r}, {own!r}")
    assert badge == "poor" and own == "poor"
    assert poor >= 1
