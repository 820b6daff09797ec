"""The voice agent: turn detection, espeak-ng answers, interruption.

The end-to-end test runs ``examples/voice_agent.py`` as written against the embedded
server, and a Chromium tab whose fake microphone plays a WAV made here with espeak-ng:
silence, a question, a pause (the agent answers), then more speech while the agent is
still talking (it must stop). The page measures audio energy with WebAudio: its own
microphone (when the user starts speaking) and the agent's track (when the answer
stops), which gives the interruption latency as the listener hears it.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import time
import uuid
import wave
from pathlib import Path

import pytest
from async_browser import chromium, open_demo
from browser import chromium_available

from sfu.client.agent import (
    VAD_FRAME_BYTES,
    VAD_SAMPLE_RATE,
    EspeakTts,
    SpeakerTrack,
    TurnDetector,
    wav_to_pcm,
)
from sfu.client.media import AUDIO_FRAME_SAMPLES

pytest.importorskip("webrtcvad", reason="the agents extra (webrtcvad-wheels) is not installed")
pytestmark = pytest.mark.skipif(
    shutil.which("espeak-ng") is None, reason="needs espeak-ng (Debian package 'espeak-ng')"
)

ROOT = Path(__file__).resolve().parent.parent
ENERGY_THRESHOLD = 0.01
"""RMS (full scale 1.0) above which the page counts audio as sound, not silence."""
INTERRUPTION_BUDGET = 0.2
"""Seconds the agent may take from the first speech frame to stopping its answer."""
AGENT_QUIET = 0.5
"""Seconds without energy that count as the agent having stopped talking."""
"""Seconds the agent may take from the first speech frame to stopping its answer."""


def espeak_pcm(text: str, rate: int) -> bytes:
    wav = subprocess.run(["espeak-ng", "--stdout", text], capture_output=True, check=True).stdout
    return wav_to_pcm(wav, rate)


def silence(seconds: float, rate: int) -> bytes:
    return bytes(2 * round(seconds * rate))


# --- units ------------------------------------------------------------------------------


def test_turn_detector_finds_speech_start_and_turn_end():
    speech = espeak_pcm("Hello agent, how is the weather today?", VAD_SAMPLE_RATE)
    audio = silence(0.5, VAD_SAMPLE_RATE) + speech + silence(1.0, VAD_SAMPLE_RATE)
    detector = TurnDetector()
    starts, turns = [], []
    for offset in range(0, len(audio) - VAD_FRAME_BYTES + 1, VAD_FRAME_BYTES):
        at = offset / 2 / VAD_SAMPLE_RATE
        started, turn = detector.process(audio[offset : offset + VAD_FRAME_BYTES], at)
        if started is not None:
            starts.append(started)
        if turn is not None:
            turns.append((at, turn))
    assert len(starts) == 1 and 0.45 <= starts[0] <= 0.7
    ((ended_at, turn),) = turns
    speech_end = 0.5 + len(speech) / 2 / VAD_SAMPLE_RATE
    assert speech_end - 0.5 < ended_at < speech_end + 0.8
    assert 1.0 < turn.speech_seconds < len(speech) / 2 / VAD_SAMPLE_RATE + 0.1


async def test_speaker_track_stops_at_the_next_frame():
    pcm = await EspeakTts().synthesize("One two three.")
    speaker = SpeakerTrack()
    speaker.play(pcm)
    first = await speaker.recv()
    assert speaker.speaking and any(bytes(first.planes[0])[: AUDIO_FRAME_SAMPLES * 2])
    speaker.stop()
    after = await speaker.recv()
    assert not speaker.speaking and not any(bytes(after.planes[0])[: AUDIO_FRAME_SAMPLES * 2])
    await asyncio.wait_for(speaker.wait_done(), 1)


# --- end to end ---------------------------------------------------------------------------

MONITOR = """() => {
  const context = new AudioContext();
  context.resume();
  const buffer = new Float32Array(512);
  const analyser = (tracks) => {
    const node = context.createAnalyser();
    node.fftSize = 512;
    context.createMediaStreamSource(new MediaStream(tracks)).connect(node);
    return node;
  };
  const rms = (node) => {
    if (!node) return 0;
    node.getFloatTimeDomainData(buffer);
    let sum = 0;
    for (const v of buffer) sum += v * v;
    return Math.sqrt(sum / buffer.length);
  };
  let mic = null;
  let agent = null;
  window.energy = [];
  setInterval(() => {
    const session = window.sfu.session;
    if (!mic && session && session.localStream) {
      mic = analyser(session.localStream.getAudioTracks());
    }
    if (!agent) {
      for (const p of window.sfu.participants.values()) {
        const tracks = p.stream.getAudioTracks();
        if (p.identity === "agent" && tracks.length) agent = analyser(tracks);
      }
    }
    window.energy.push([performance.now() / 1000, rms(mic), rms(agent)]);
  }, 10);
}"""


def write_user_speech(path: Path) -> None:
    """Silence, a question, a pause for the answer, speech that interrupts it."""
    rate = 22050
    audio = (
        silence(2.0, rate)
        + espeak_pcm("Hello agent. Can you tell me something?", rate)
        + silence(2.2, rate)
        + espeak_pcm("Wait, stop talking please.", rate)
        + silence(4.0, rate)
    )
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(audio)


def interruption_in_page(samples: list[list[float]]) -> tuple[float, float] | None:
    """(user speech onset, agent silent again) for the first time the user speaks over
    the agent's answer, from the page's energy samples; None if it has not happened.

    The user "speaks over" the agent when the microphone turns loud after a second of
    quiet while the agent was audible in the half second before; the agent is "silent
    again" from the start of the first stretch of ``AGENT_QUIET`` seconds without
    energy (longer than espeak's pauses between words and sentences).
    """
    quiet_since = None
    for i, (at, mic, _) in enumerate(samples):
        if mic < ENERGY_THRESHOLD:
            quiet_since = quiet_since if quiet_since is not None else at
            continue
        onset_after_pause = quiet_since is not None and at - quiet_since > 1.0
        quiet_since = None
        agent_before = [agent for t, _, agent in samples[:i] if at - t <= 0.5]
        if not onset_after_pause or max(agent_before, default=0.0) < ENERGY_THRESHOLD:
            continue
        silent_from = None
        for later, _, agent in samples[i:]:
            if agent >= ENERGY_THRESHOLD:
                silent_from = None
            elif silent_from is None:
                silent_from = later
            elif later - silent_from >= AGENT_QUIET:
                return at, silent_from
    return None


@pytest.mark.browser
@pytest.mark.skipif(not chromium_available(), reason="needs Chromium at /usr/bin/chromium")
async def test_voice_agent_answers_and_stops_when_interrupted(sfu_server, tmp_path):
    wav = tmp_path / "user.wav"
    write_user_speech(wav)
    room = f"agent-{uuid.uuid4().hex[:8]}"
    agent = await asyncio.create_subprocess_exec(
        *(sys.executable, str(ROOT / "examples" / "voice_agent.py"), "--url", sfu_server),
        *("--room", room, "--listen-to", "user", "--loopback-only"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        async with chromium([f"--use-file-for-fake-audio-capture={wav}"]) as browser:
            page = await open_demo(browser, sfu_server, room, "User", identity="user")
            await page.evaluate(MONITOR)
            # The WAV loops: wait for a cycle where the page heard the answer and its
            # interruption (a busy machine may delay the first answer too much).
            measured = None
            deadline = time.monotonic() + 60
            while measured is None and time.monotonic() < deadline:
                await page.wait_for_timeout(1000)
                measured = interruption_in_page(await page.evaluate("() => window.energy"))
            log = await page.evaluate(
                "() => window.sfu.dataMessages.filter((m) => m.topic === 'agent')"
            )
            samples = await page.evaluate("() => window.energy")
    finally:
        if agent.returncode is None:
            agent.terminate()
        output = (await agent.communicate())[0].decode(errors="replace")
    events = [m["data"] for m in log]
    assert events, f"no turn log from the agent (exit code {agent.returncode}):\n{output}"
    assert all(m["from"]["identity"] == "agent" for m in log)
    first_turn = next(e for e in events if e["event"] == "turn")
    assert first_turn["speech_seconds"] > 1.0, events
    interruptions = [e for e in events if e["event"] == "interrupted"]
    assert interruptions and interruptions[0]["turn"] == first_turn["turn"], events
    agent_latency = max(e["latency_ms"] for e in interruptions)
    assert max(agent for _, _, agent in samples) > ENERGY_THRESHOLD, "no answer heard"
    assert measured is not None, f"no interruption seen in the page's audio\n{output[-3000:]}"
    onset, silent = measured
    page_latency = silent - onset
    print(
        f"\ninterruption latency: agent {agent_latency:.0f} ms"
        f" (first speech frame received -> playback stopped);"
        f" page {1000 * page_latency:.0f} ms (user speech onset at the microphone ->"
        " agent audio silent at the listener, network and jitter buffers included)"
    )
    assert agent_latency < 1000 * INTERRUPTION_BUDGET
    assert page_latency < 1.0
