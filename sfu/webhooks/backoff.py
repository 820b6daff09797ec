"""When to try a failed webhook delivery again: exponential backoff, bounded attempts.

Sans-I/O: :meth:`Backoff.delay` maps the number of failed attempts to the seconds to
wait (or ``None``: give up); the sender sleeps.
"""

from __future__ import annotations

from dataclasses import dataclass

BASE_DELAY = 0.5
"""Seconds before the second attempt."""
FACTOR = 2.0
MAX_DELAY = 30.0
"""Longest wait between two attempts."""
MAX_ATTEMPTS = 8
"""Attempts per event and receiver (about a minute of retries with the defaults)."""


@dataclass(frozen=True)
class Backoff:
    base: float = BASE_DELAY
    factor: float = FACTOR
    max_delay: float = MAX_DELAY
    max_attempts: int = MAX_ATTEMPTS

    def __post_init__(self) -> None:
        if self.base <= 0 or self.factor < 1 or self.max_delay < self.base:
            raise ValueError(f"unusable backoff {self}")
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, not {self.max_attempts}")

    def delay(self, failed_attempts: int) -> float | None:
        """Seconds to wait after ``failed_attempts`` (≥ 1) failures before the next
        attempt, or ``None`` when the last allowed attempt has failed."""
        if failed_attempts >= self.max_attempts:
            return None
        return min(self.max_delay, self.base * self.factor ** (failed_attempts - 1))
