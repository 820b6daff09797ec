"""Webhook events: which room events become webhooks, and their JSON payload.

A payload is one JSON object::

    {"id": "EV_6c1f…", "event": "track_published", "created_at": 1764766000.125,
     "room": {"name": "demo"}, "track": {"track_id": "…", "participant_id": "…", …}}

``id`` is unique per event (a receiver deduplicates on it: a delivery that timed out
after the receiver got it is sent again), ``created_at`` the Unix time (seconds, ms
resolution) at which the hosting worker saw the event. The other fields are those of
the room event the worker broadcasts to participants (see :mod:`sfu.protocol`), so an
event added there (``recording_finished`` from :mod:`sfu.recording`) becomes a webhook
by being named in :data:`WEBHOOK_EVENTS`, with nothing else to write.
"""

from __future__ import annotations

import json
import secrets
from typing import Any, Literal

from pydantic import BaseModel

WEBHOOK_EVENTS = frozenset(
    {
        "room_started",
        "room_finished",
        "participant_joined",
        "participant_left",
        "track_published",
        "track_unpublished",
        "recording_finished",
    }
)
"""Room event types sent to webhook receivers; every other room event is not."""


class RoomStarted(BaseModel):
    """A room's first participant joined on this worker (after a placement)."""

    type: Literal["room_started"] = "room_started"


class RoomFinished(BaseModel):
    """A room's last participant left this worker; the room is gone."""

    type: Literal["room_finished"] = "room_finished"


def new_event_id() -> str:
    """A unique event id (96 random bits, as LiveKit's ``EV_`` ids)."""
    return "EV_" + secrets.token_hex(12)


def webhook_body(room: str, message: BaseModel, event_id: str, created_at: float) -> bytes:
    """The JSON body of the webhook for ``message`` (a room event with a ``type``)."""
    fields: dict[str, Any] = message.model_dump(mode="json", exclude_none=True)
    payload: dict[str, Any] = {
        "id": event_id,
        "event": fields.pop("type"),
        "created_at": round(created_at, 3),
        "room": {"name": room},
    }
    # An event's own ``room`` (the room's name, as recording_finished carries it) or
    # ``id`` must not replace the envelope's.
    for name, value in fields.items():
        payload.setdefault(name, value)
    return json.dumps(payload, separators=(",", ":")).encode()
