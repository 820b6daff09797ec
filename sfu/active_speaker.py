"""ActiveSpeakerDetector: who is speaking, from the ssrc-audio-level header extension.

Every audio packet of a publisher carries its level in -dBov (RFC 6464: 0 is the
loudest, 127 silence) and a voice activity flag. Single packets are far too noisy to
highlight a speaker, so levels are averaged over :data:`SMOOTHING_WINDOW`; a participant
enters the active speakers after staying above :data:`LEVEL_THRESHOLD` for
:data:`ENTER_TIME` and leaves after staying below it for :data:`LEAVE_TIME`. The list
holds at most :data:`MAX_ACTIVE_SPEAKERS`; a newcomer waits for a free place rather
than pushing someone out, and members keep their order, so the list (a room event and
an allocator priority) changes only when someone starts or stops speaking.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

LEVEL_THRESHOLD = 50
"""-dBov: a smoothed level at or above -50 dBov is speech."""
SMOOTHING_WINDOW = 0.5
ENTER_TIME = 0.3
LEAVE_TIME = 1.0
MAX_ACTIVE_SPEAKERS = 3

_SILENCE = 127


@dataclass(slots=True)
class _Speaker:
    """One participant's recent levels and speaking state."""

    samples: deque[tuple[float, int]] = field(default_factory=deque)
    """(time, loudness) with loudness = 127 - level, 0 for non-voice."""
    total: int = 0
    loud_since: float | None = None
    quiet_since: float | None = None

    def loudness(self, now: float) -> float:
        """Mean loudness over the smoothing window (0 without samples)."""
        samples = self.samples
        while samples and samples[0][0] <= now - SMOOTHING_WINDOW:
            self.total -= samples.popleft()[1]
        return self.total / len(samples) if samples else 0.0


class ActiveSpeakerDetector:
    """Active speakers of one room."""

    __slots__ = ("_active", "_speakers")

    def __init__(self) -> None:
        self._speakers: dict[str, _Speaker] = {}
        self._active: list[str] = []

    @property
    def active_speakers(self) -> list[str]:
        return list(self._active)

    def add_level(self, participant_id: str, level_dbov: int, voice: bool, now: float) -> None:
        """One audio packet's level (0 loudest .. 127 silence) and voice activity flag."""
        speaker = self._speakers.get(participant_id)
        if speaker is None:
            speaker = self._speakers[participant_id] = _Speaker()
        loudness = _SILENCE - min(max(level_dbov, 0), _SILENCE) if voice else 0
        speaker.samples.append((now, loudness))
        speaker.total += loudness

    def remove(self, participant_id: str) -> list[str] | None:
        """The participant left (or unpublished its audio); the new list if it changed."""
        self._speakers.pop(participant_id, None)
        if participant_id not in self._active:
            return None
        self._active.remove(participant_id)
        return list(self._active)

    def update(self, now: float) -> list[str] | None:
        """Re-evaluate (every ~100 ms); the new list of active speakers when it changed,
        loudest newcomers first after the members who stay."""
        threshold = _SILENCE - LEVEL_THRESHOLD
        active = [pid for pid in self._active if pid in self._speakers]
        candidates: list[tuple[float, str]] = []
        for participant_id, speaker in self._speakers.items():
            loudness = speaker.loudness(now)
            speaking = loudness >= threshold
            if participant_id in active:
                if speaking:
                    speaker.quiet_since = None
                    continue
                if speaker.quiet_since is None:
                    speaker.quiet_since = now
                if now - speaker.quiet_since >= LEAVE_TIME:
                    active.remove(participant_id)
                    speaker.loud_since = None
                    speaker.quiet_since = None
                continue
            if not speaking:
                speaker.loud_since = None
                continue
            if speaker.loud_since is None:
                speaker.loud_since = now
            if now - speaker.loud_since >= ENTER_TIME:
                candidates.append((loudness, participant_id))
        candidates.sort(reverse=True)
        for _, participant_id in candidates[: MAX_ACTIVE_SPEAKERS - len(active)]:
            active.append(participant_id)
            self._speakers[participant_id].quiet_since = None
        if active == self._active:
            return None
        self._active = active
        return list(active)
