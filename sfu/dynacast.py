"""Dynacast: pause the simulcast layers of a publisher that no subscriber wants.

Encoding a layer nobody receives costs the publisher CPU and uplink. The SFU collects,
per published track, the layers its subscribers may want and tells the publisher which
RIDs to keep active (the ``publisher_layers`` message; the client applies it with
``RTCRtpSender.setParameters``), as LiveKit's dynacast does.

"Wanted" is what the subscribers' preferences allow (every layer up to their
:func:`~sfu.allocator.preferred_max_layer`), not what the allocator currently gives
them: a layer paused because a subscriber's bandwidth is low right now would stop
flowing, and the allocator could then never climb back to it.

A layer resumes as soon as it is wanted and pauses only after being unwanted for
:data:`PAUSE_DELAY`, so a subscriber toggling its preferences (a video element resized,
a tab hidden for a moment) does not make the publisher's encoder restart layers. The
lowest layer is never paused: every subscriber can fall back to it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

PAUSE_DELAY = 3.0
"""Seconds a layer must stay unwanted before the publisher pauses it."""


def wanted_layers(preferred: Iterable[Mapping[str, int | None]]) -> dict[str, set[int]]:
    """Layers wanted per track, from every subscriber's preferred maximum layer per track.

    Each mapping is one subscriber's ``track_id -> preferred maximum layer`` (None: the
    subscriber has the track paused); a subscriber wants every layer up to its maximum,
    because the allocator may need to step down to them.
    """
    wanted: dict[str, set[int]] = {}
    for subscriber in preferred:
        for track_id, max_layer in subscriber.items():
            layers = wanted.setdefault(track_id, set())
            if max_layer is not None:
                layers.update(range(max_layer + 1))
    return wanted


class DynacastManager:
    """The active flags of one published track's simulcast layers.

    ``rids`` are the track's RIDs from the lowest layer (index 0) up. All layers start
    active, as the publisher starts sending them.
    """

    __slots__ = ("_active", "_rids", "_unwanted_since")

    def __init__(self, rids: list[str]) -> None:
        self._rids = list(rids)
        self._active = dict.fromkeys(self._rids, True)
        self._unwanted_since: dict[str, float] = {}

    @property
    def active(self) -> dict[str, bool]:
        """The flags the publisher was last told (or starts with)."""
        return dict(self._active)

    def update(self, wanted_layers: set[int], now: float) -> dict[str, bool] | None:
        """Apply the layers wanted now; the full RID -> active map when it changed.

        Call it when the wanted layers change and periodically (about once a second),
        since pausing is delayed.
        """
        changed = False
        for layer, rid in enumerate(self._rids):
            if layer == 0 or layer in wanted_layers:
                self._unwanted_since.pop(rid, None)
                if not self._active[rid]:
                    self._active[rid] = True
                    changed = True
                continue
            since = self._unwanted_since.setdefault(rid, now)
            if self._active[rid] and now - since >= PAUSE_DELAY:
                self._active[rid] = False
                changed = True
        return dict(self._active) if changed else None
