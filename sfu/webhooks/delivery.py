"""Sending webhooks: one bounded queue and one sender task per receiver URL.

Room events arrive from the media worker's event loop through
:meth:`WebhookDispatcher.room_event`, which only builds the body and puts it on each
URL's queue (never awaits): a slow or dead receiver delays nothing but its own queue.
Each URL's sender posts its events in order, one at a time, retrying a failure with
:class:`~sfu.webhooks.backoff.Backoff`; when a queue is full (a receiver down for
long) new events for that URL are dropped and counted
(``sfu_webhook_events_total{outcome="dropped"}``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence

import httpx
from prometheus_client import Counter
from pydantic import BaseModel

from sfu.config import Settings
from sfu.webhooks.backoff import Backoff
from sfu.webhooks.event import WEBHOOK_EVENTS, new_event_id, webhook_body
from sfu.webhooks.signing import CONTENT_TYPE, sign_webhook

logger = logging.getLogger(__name__)

QUEUE_SIZE = 1000
"""Events waiting per receiver URL; beyond that new ones are dropped."""
REQUEST_TIMEOUT = 5.0
"""Seconds one POST may take (connect, send, response headers)."""
CLOSE_GRACE = 2.0
"""Seconds a stopping process keeps sending what is queued (its last rooms'
``participant_left`` and ``room_finished``)."""

OUTCOMES = ("delivered", "rejected", "gave_up", "dropped")
WEBHOOK_EVENTS_TOTAL = Counter(
    "sfu_webhook_events",
    "Webhook events per receiver URL by outcome: delivered (2xx), rejected (4xx other than "
    "408/429, not retried), gave_up (attempts used up), dropped (the URL's queue was full)",
    ["outcome"],
)
for _outcome in OUTCOMES:
    WEBHOOK_EVENTS_TOTAL.labels(_outcome)  # exported from the start, at 0
WEBHOOK_FAILED_ATTEMPTS = Counter(
    "sfu_webhook_failed_attempts",
    "Webhook POSTs that failed (network error, timeout, 5xx, 408, 429) and were retried "
    "or given up",
)

Post = Callable[[str, bytes, dict[str, str]], Awaitable[int]]
"""POST ``body`` with ``headers`` to a URL; returns the status code, raises OSError or
:class:`httpx.HTTPError` when no response came."""
Sleep = Callable[[float], Awaitable[None]]
Clock = Callable[[], float]


def _retryable(status: int) -> bool:
    return status >= 500 or status in (408, 429)


class WebhookTarget:
    """One receiver URL: its queue of bodies and the task that posts them in order."""

    def __init__(
        self,
        url: str,
        post: Post,
        sign: Callable[[bytes, float], str],
        *,
        backoff: Backoff,
        queue_size: int,
        sleep: Sleep,
        clock: Clock,
    ) -> None:
        self.url = url
        self._post = post
        self._sign = sign
        self._backoff = backoff
        self._sleep = sleep
        self._clock = clock
        self._queue: asyncio.Queue[bytes] = asyncio.Queue(queue_size)

    def enqueue(self, body: bytes) -> bool:
        """Queue ``body``; False (and counted) if the queue is full."""
        try:
            self._queue.put_nowait(body)
        except asyncio.QueueFull:
            WEBHOOK_EVENTS_TOTAL.labels("dropped").inc()
            logger.warning("webhook queue of %s full: event dropped", self.url)
            return False
        return True

    async def join(self) -> None:
        """Wait until every queued event is sent, rejected or given up."""
        await self._queue.join()

    async def run(self) -> None:
        while True:
            body = await self._queue.get()
            try:
                WEBHOOK_EVENTS_TOTAL.labels(await self.deliver(body)).inc()
            finally:
                self._queue.task_done()

    async def deliver(self, body: bytes) -> str:
        """Post ``body`` until it is accepted, rejected or out of attempts; the outcome."""
        failed = 0
        while True:
            headers = {
                "Content-Type": CONTENT_TYPE,
                "Authorization": self._sign(body, self._clock()),
            }
            try:
                status = await self._post(self.url, body, headers)
                problem = f"HTTP {status}"
            except (OSError, httpx.HTTPError) as exc:
                status, problem = 0, f"{type(exc).__name__}: {exc}"
            if 200 <= status < 300:
                return "delivered"
            if status and not _retryable(status):
                logger.warning("webhook receiver %s rejected an event: %s", self.url, problem)
                return "rejected"
            failed += 1
            WEBHOOK_FAILED_ATTEMPTS.inc()
            delay = self._backoff.delay(failed)
            if delay is None:
                logger.warning(
                    "webhook %s: giving up after %d attempts (%s)", self.url, failed, problem
                )
                return "gave_up"
            logger.info(
                "webhook %s: attempt %d failed (%s), retry in %.1f s",
                self.url,
                failed,
                problem,
                delay,
            )
            await self._sleep(delay)


class WebhookDispatcher:
    """Room events → signed webhook POSTs to every configured URL."""

    def __init__(
        self,
        urls: Sequence[str],
        api_key: str,
        api_secret: str,
        *,
        backoff: Backoff | None = None,
        queue_size: int = QUEUE_SIZE,
        timeout: float = REQUEST_TIMEOUT,
        post: Post | None = None,
        sleep: Sleep = asyncio.sleep,
        clock: Clock = time.time,
    ) -> None:
        self._clock = clock
        self._client: httpx.AsyncClient | None = None
        if post is None:
            self._client = httpx.AsyncClient(timeout=timeout, follow_redirects=False)
            post = self._http_post

        def sign(body: bytes, now: float) -> str:
            return sign_webhook(body, api_key, api_secret, now)

        self.targets = [
            WebhookTarget(
                url,
                post,
                sign,
                backoff=backoff or Backoff(),
                queue_size=queue_size,
                sleep=sleep,
                clock=clock,
            )
            for url in urls
        ]
        self._tasks: list[asyncio.Task[None]] = []

    @classmethod
    def from_settings(cls, settings: Settings) -> WebhookDispatcher:
        return cls(
            settings.webhook_urls,
            settings.api_key,
            settings.api_secret,
            backoff=Backoff(max_attempts=settings.webhook_max_attempts),
            queue_size=settings.webhook_queue_size,
        )

    async def _http_post(self, url: str, body: bytes, headers: dict[str, str]) -> int:
        assert self._client is not None
        # Streamed and never read: a receiver's response body costs nothing.
        async with self._client.stream("POST", url, content=body, headers=headers) as response:
            return response.status_code

    def start(self) -> None:
        self._tasks = [
            asyncio.get_running_loop().create_task(target.run(), name=f"webhook {target.url}")
            for target in self.targets
        ]

    def room_event(self, room: str, message: BaseModel) -> None:
        """A room event on this worker: queued for every URL if it is a webhook event."""
        if getattr(message, "type", None) not in WEBHOOK_EVENTS:
            return
        body = webhook_body(room, message, new_event_id(), self._clock())
        for target in self.targets:
            target.enqueue(body)

    async def close(self, grace: float = CLOSE_GRACE) -> None:
        """Send what is queued for up to ``grace`` seconds, then stop."""
        if self._tasks:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(grace):
                    await asyncio.gather(*(target.join() for target in self.targets))
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        if self._client is not None:
            await self._client.aclose()
