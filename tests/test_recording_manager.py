"""The recording manager in-process, before any file is written: the storage checks
and the limit on tracks recorded at once (the API around them: tests/test_recording.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from aiortc.rtcdtlstransport import RTCCertificate

from sfu.config import Settings
from sfu.participant import Participant
from sfu.producer import Producer
from sfu.protocol import ErrorCode
from sfu.room import Room
from sfu.sdp import Codec
from sfu.worker import Worker, WorkerContext
from sfu.worker_api import Grant, ProtocolError


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({}, "recording is off on this server: set --recording-dir (SFU_RECORDING_DIR)"),
        (
            {"recording_min_free_bytes": 10**18},
            "bytes free in {dir}, below recording_min_free_bytes=1000000000000000000",
        ),
    ],
)
async def test_recording_refused_without_storage(
    tmp_path: Path, settings: dict[str, Any], message: str
) -> None:
    """The worker's own checks, before any file: no directory configured, a disk below
    the free-space floor."""
    if settings:
        settings["recording_dir"] = tmp_path
    worker = Worker(Settings(**settings))
    worker.rooms["r"] = Room("r", worker)
    with pytest.raises(ProtocolError) as refused:
        await worker.recordings.start("r", None)
    assert refused.value.code is ErrorCode.STORAGE_UNAVAILABLE
    assert message.format(dir=tmp_path) in refused.value.message
    assert list(tmp_path.iterdir()) == []


async def test_recording_limit(tmp_path: Path) -> None:
    """A room with more tracks than max_recordings leaves free is refused as a whole,
    with the numbers; one track still fits."""
    worker = Worker(Settings(recording_dir=tmp_path, max_recordings=1))
    room = worker.rooms["r"] = Room("r", worker)
    context = WorkerContext(worker.settings, RTCCertificate.generateCertificate())
    participant = Participant("PA_a", Grant("r", "a", "a"), room, lambda message: None, context)
    room.participants[participant.id] = participant
    for mid, (kind, codec) in enumerate(
        [("video", Codec(96, "VP8", 90000)), ("audio", Codec(111, "opus", 48000, 2))]
    ):
        participant.producers[str(mid)] = Producer(
            f"TR_{kind}", participant.id, kind, str(mid), [codec], [], "unknown", lambda s: None
        )
    with pytest.raises(ProtocolError) as refused:
        await worker.recordings.start("r", None)
    assert refused.value.code is ErrorCode.RECORDING_LIMIT
    assert refused.value.message == "2 tracks to record, 1 of max_recordings=1 free on this worker"
    started = await worker.recordings.start("r", "TR_audio")
    assert [t.track_id for t in started.tracks] == ["TR_audio"]
    with pytest.raises(ProtocolError) as full:
        await worker.recordings.start("r", "TR_video")
    assert full.value.code is ErrorCode.RECORDING_LIMIT
    (stopped,) = await worker.recordings.stop("r", started.recording_id)
    assert [(f.track_id, f.file, f.reason) for f in stopped.finished] == [
        ("TR_audio", None, "stopped")
    ]
