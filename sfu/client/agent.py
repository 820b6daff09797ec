"""Voice agents: a participant that listens to someone's microphone and speaks back.

An agent joins a room like any client (:func:`sfu.client.connect`), publishes a
:class:`SpeakerTrack` (the audio it says) and receives one participant's audio as PCM.
:class:`TurnDetector` runs a voice activity detector (WebRTC's, from the
``webrtcvad-wheels`` package, which ships its model) over that audio: the user's turn
ends after a stretch of silence, and speech that starts while the agent is talking
interrupts it (playback stops at the next 20 ms frame). Each finished turn goes through
a pluggable pipeline, :class:`SpeechToText` → :class:`ReplyGenerator` →
:class:`TextToSpeech`; :class:`EspeakTts` synthesizes locally with the ``espeak-ng``
program (Debian package ``espeak-ng``). The agent logs every turn and interruption on
the data channel (topic ``agent``), so a page can show what it heard and did.

Install the extra: ``pip install 'pysfu[agents]'``. ``examples/voice_agent.py`` is a
complete offline agent.
"""

from __future__ import annotations

import asyncio
import collections
import io
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Protocol

import av
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from sfu.client.media import AUDIO_FRAME_SAMPLES, AUDIO_SAMPLE_RATE, _Pacer
from sfu.client.room import RoomClient
from sfu.client.tracks import RemoteTrack

logger = logging.getLogger(__name__)

VAD_SAMPLE_RATE = 16_000
VAD_FRAME_MS = 20
VAD_FRAME_BYTES = VAD_SAMPLE_RATE * VAD_FRAME_MS // 1000 * 2
"""One 20 ms frame of 16-bit mono PCM at 16 kHz, as the VAD takes it."""
AGENT_TOPIC = "agent"
"""Data channel topic of the agent's turn log."""
_SILENT_FRAME = bytes(AUDIO_FRAME_SAMPLES * 2)


# --- what the agent says -------------------------------------------------------------


class SpeakerTrack(MediaStreamTrack):
    """The agent's voice: 48 kHz mono ``s16`` audio, 20 ms frames, silence when idle.

    :meth:`play` queues PCM; :meth:`stop` drops whatever is left, so the next frame
    sent is silence (that is the interruption).
    """

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self._pacer = _Pacer(AUDIO_SAMPLE_RATE, AUDIO_FRAME_SAMPLES)
        self._time_base = Fraction(1, AUDIO_SAMPLE_RATE)
        self._pending = bytearray()
        self._finished = asyncio.Event()
        self._finished.set()

    @property
    def speaking(self) -> bool:
        return bool(self._pending)

    def play(self, pcm: bytes) -> None:
        """Queue ``pcm`` (s16 mono at 48 kHz) after whatever is playing."""
        self._pending += pcm[: len(pcm) - len(pcm) % 2]
        if self._pending:
            self._finished.clear()

    def stop(self) -> None:  # type: ignore[override]
        """Stop speaking now (the track itself keeps running)."""
        self._pending.clear()
        self._finished.set()

    async def wait_done(self) -> None:
        """Return once everything queued was played or stopped."""
        await self._finished.wait()

    def end(self) -> None:
        """End the track for good (the peer connection stops sending it)."""
        super().stop()

    async def recv(self) -> av.AudioFrame:
        pts = await self._pacer.next_pts()
        size = AUDIO_FRAME_SAMPLES * 2
        chunk = bytes(self._pending[:size])
        del self._pending[:size]
        if len(chunk) < size:
            chunk += _SILENT_FRAME[len(chunk) :]
            self._finished.set()
        frame = av.AudioFrame(format="s16", layout="mono", samples=AUDIO_FRAME_SAMPLES)
        frame.planes[0].update(chunk)
        frame.pts = pts
        frame.sample_rate = AUDIO_SAMPLE_RATE
        frame.time_base = self._time_base
        return frame


# --- what the user says ---------------------------------------------------------------


@dataclass(frozen=True)
class Turn:
    """One finished user turn."""

    index: int
    pcm: bytes
    """The turn's audio, s16 mono at 16 kHz (speech plus the trailing silence)."""
    speech_seconds: float
    started_at: float
    """``time.monotonic()`` of the first speech frame."""


class TurnDetector:
    """Voice activity → speech start and end-of-turn events.

    ``start_frames`` speech frames among the last ``start_frames + 1`` start speech
    (a single click does not); ``end_silence`` seconds without speech end the turn;
    turns with less than ``min_speech`` seconds of speech are ignored.
    """

    def __init__(
        self,
        aggressiveness: int = 2,
        start_frames: int = 3,
        end_silence: float = 0.6,
        min_speech: float = 0.25,
    ) -> None:
        import webrtcvad  # the ``agents`` extra

        self._vad = webrtcvad.Vad(aggressiveness)
        self.start_frames = start_frames
        self.end_frames = round(end_silence * 1000 / VAD_FRAME_MS)
        self.min_speech_frames = round(min_speech * 1000 / VAD_FRAME_MS)
        self._recent: collections.deque[bool] = collections.deque(maxlen=start_frames + 1)
        self._arrivals: collections.deque[float] = collections.deque(maxlen=start_frames + 1)
        self._in_speech = False
        self._silent_frames = 0
        self._speech_frames = 0
        self._audio = bytearray()
        self._started_at = 0.0
        self._turns = 0

    @property
    def in_speech(self) -> bool:
        return self._in_speech

    def process(self, frame: bytes, arrived_at: float) -> tuple[float | None, Turn | None]:
        """Feed one 20 ms frame (16 kHz mono s16) received at ``arrived_at``.

        Returns (the arrival time of the first speech frame, when speech starts with
        this frame; the finished turn, when this frame ends one).
        """
        speech = self._vad.is_speech(frame, VAD_SAMPLE_RATE)
        self._recent.append(speech)
        self._arrivals.append(arrived_at)
        if not self._in_speech:
            if sum(self._recent) < self.start_frames:
                return None, None
            first = next(i for i, s in enumerate(self._recent) if s)
            self._in_speech = True
            self._started_at = self._arrivals[first]
            self._speech_frames = sum(self._recent)
            self._silent_frames = 0
            self._audio = bytearray(frame)
            return self._started_at, None
        self._audio += frame
        if speech:
            self._speech_frames += 1
            self._silent_frames = 0
            return None, None
        self._silent_frames += 1
        if self._silent_frames < self.end_frames:
            return None, None
        self._in_speech = False
        self._recent.clear()
        if self._speech_frames < self.min_speech_frames:
            return None, None
        self._turns += 1
        turn = Turn(
            index=self._turns,
            pcm=bytes(self._audio),
            speech_seconds=self._speech_frames * VAD_FRAME_MS / 1000,
            started_at=self._started_at,
        )
        return None, turn


# --- the pipeline ------------------------------------------------------------------------


class SpeechToText(Protocol):
    async def transcribe(self, turn: Turn) -> str: ...


class ReplyGenerator(Protocol):
    async def reply(self, transcript: str, turn: Turn) -> str: ...


class TextToSpeech(Protocol):
    async def synthesize(self, text: str) -> bytes:
        """``text`` spoken, as s16 mono PCM at 48 kHz."""
        ...


class EspeakTts:
    """Local speech synthesis with the ``espeak-ng`` program (no model download)."""

    def __init__(self, voice: str = "en-us", words_per_minute: int = 160) -> None:
        program = shutil.which("espeak-ng")
        if program is None:
            raise RuntimeError("espeak-ng is not installed (Debian package 'espeak-ng')")
        self.program = program
        self.voice = voice
        self.words_per_minute = words_per_minute

    async def synthesize(self, text: str) -> bytes:
        process = await asyncio.create_subprocess_exec(
            *(self.program, "-v", self.voice, "-s", str(self.words_per_minute), "--stdout"),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        wav, error = await process.communicate(text.encode())
        if process.returncode != 0:
            raise RuntimeError(f"espeak-ng failed: {error.decode(errors='replace').strip()}")
        return await asyncio.to_thread(wav_to_pcm, wav, AUDIO_SAMPLE_RATE)


def wav_to_pcm(data: bytes, sample_rate: int) -> bytes:
    """Decode a WAV file's bytes to s16 mono PCM at ``sample_rate``."""
    resampler = av.AudioResampler(format="s16", layout="mono", rate=sample_rate)
    pcm = bytearray()
    with av.open(io.BytesIO(data), format="wav") as container:
        for frame in container.decode(audio=0):
            for out in resampler.resample(frame):
                pcm += bytes(out.planes[0])[: out.samples * 2]
    for out in resampler.resample(None):
        pcm += bytes(out.planes[0])[: out.samples * 2]
    return bytes(pcm)


# --- the agent -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Interruption:
    """The user spoke while the agent was talking, and the agent stopped."""

    latency: float
    """Seconds from the arrival of the first speech frame to playback stopping."""
    turn: int
    """The user turn whose answer was cut."""


class VoiceAgent:
    """Listens to one participant, answers each turn, stops when interrupted.

    ``listen_to`` picks the participant (by identity; the first audio track that
    arrives when None). :meth:`run` returns when that track ends or the client closes.
    """

    def __init__(
        self,
        room: RoomClient,
        stt: SpeechToText,
        reply: ReplyGenerator,
        tts: TextToSpeech,
        *,
        listen_to: str | None = None,
        detector: TurnDetector | None = None,
        on_interruption: Callable[[Interruption], None] | None = None,
    ) -> None:
        self.room = room
        self.stt = stt
        self.reply = reply
        self.tts = tts
        self.listen_to = listen_to
        self.detector = detector or TurnDetector()
        self.speaker = SpeakerTrack()
        self.interruptions: list[Interruption] = []
        self.turns: list[Turn] = []
        self._on_interruption = on_interruption
        self._answering: asyncio.Task[None] | None = None
        self._answering_turn = 0

    async def run(self) -> None:
        """Publish the agent's voice, then listen until the user's audio ends."""
        await self.room.publish(self.speaker, "microphone")
        remote = await self.room.wait_for_track(self._wanted, kind="audio", timeout=None)
        logger.info("agent listens to %s", remote.participant_id)
        resampler = av.AudioResampler(format="s16", layout="mono", rate=VAD_SAMPLE_RATE)
        pending = bytearray()
        try:
            while True:
                frame = await remote.track.recv()
                arrived_at = time.monotonic()
                for out in resampler.resample(frame):
                    pending += bytes(out.planes[0])[: out.samples * 2]
                while len(pending) >= VAD_FRAME_BYTES:
                    chunk = bytes(pending[:VAD_FRAME_BYTES])
                    del pending[:VAD_FRAME_BYTES]
                    started, turn = self.detector.process(chunk, arrived_at)
                    if started is not None:
                        self._speech_started(started)
                    if turn is not None:
                        self._turn_ended(turn)
        except MediaStreamError:
            logger.info("the user's audio ended")
        finally:
            if self._answering is not None:
                self._answering.cancel()
            self.speaker.stop()

    def _wanted(self, remote: RemoteTrack) -> bool:
        if self.listen_to is None:
            return True
        participant = self.room.participants.get(remote.participant_id)
        return participant is not None and participant.identity == self.listen_to

    def _speech_started(self, first_frame_at: float) -> None:
        if not self.speaker.speaking and (self._answering is None or self._answering.done()):
            return
        if self._answering is not None:
            self._answering.cancel()
        self.speaker.stop()
        interruption = Interruption(time.monotonic() - first_frame_at, self._answering_turn)
        self.interruptions.append(interruption)
        logger.info("interrupted after %.0f ms", interruption.latency * 1000)
        self._log(
            {
                "event": "interrupted",
                "turn": interruption.turn,
                "latency_ms": round(interruption.latency * 1000, 1),
            }
        )
        if self._on_interruption is not None:
            self._on_interruption(interruption)

    def _turn_ended(self, turn: Turn) -> None:
        self.turns.append(turn)
        if self._answering is not None:
            self._answering.cancel()
        self._answering_turn = turn.index
        self._answering = asyncio.create_task(self._answer(turn))

    async def _answer(self, turn: Turn) -> None:
        transcript = await self.stt.transcribe(turn)
        text = await self.reply.reply(transcript, turn)
        pcm = await self.tts.synthesize(text)
        self.speaker.play(pcm)
        self._log(
            {
                "event": "turn",
                "turn": turn.index,
                "speech_seconds": turn.speech_seconds,
                "transcript": transcript,
                "reply": text,
                "reply_seconds": round(len(pcm) / 2 / AUDIO_SAMPLE_RATE, 2),
            }
        )
        await self.speaker.wait_done()

    def _log(self, entry: dict[str, Any]) -> None:
        if self.room.data.enabled:
            sending = asyncio.ensure_future(self.room.data.send(entry, topic=AGENT_TOPIC))
            sending.add_done_callback(_log_failure)


def _log_failure(task: asyncio.Future[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.warning("agent log not sent: %s", task.exception())
