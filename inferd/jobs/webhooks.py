"""Webhook delivery for finished RunPod jobs, as the platform does it: the final job JSON is
POSTed to the job's ``webhook``; anything but a 2xx is retried twice, 10 s apart.

Deliveries run in the background, bounded in number, so a slow or dead receiver never holds up
the queue or the client that asked for the job.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from inferd.logs import get_logger

log = get_logger()

ATTEMPTS = 3
RETRY_DELAY = 10.0      # seconds between attempts (RunPod: "up to 2 more tries, 10 s apart")
ATTEMPT_TIMEOUT = 10.0
MAX_PENDING = 256       # deliveries in progress; beyond it new ones are dropped, with a log line


class WebhookSender:
    def __init__(self, retry_delay: float = RETRY_DELAY) -> None:
        self.retry_delay = retry_delay
        self._client: httpx.AsyncClient | None = None
        self._pending: set[asyncio.Task[None]] = set()

    def deliver(self, api: str, job_id: str, url: str, payload: dict[str, Any]) -> None:
        if len(self._pending) >= MAX_PENDING:
            log.warning("webhook_dropped", api=api, request_id=job_id, url=url, reason=f"{MAX_PENDING} deliveries pending")
            return
        task = asyncio.get_running_loop().create_task(self._deliver(api, job_id, url, payload))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _deliver(self, api: str, job_id: str, url: str, payload: dict[str, Any]) -> None:
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=ATTEMPT_TIMEOUT, follow_redirects=False)
        problem = ""
        for attempt in range(1, ATTEMPTS + 1):
            try:
                response = await self._client.post(url, json=payload)
            except httpx.HTTPError as exc:
                problem = f"{type(exc).__name__}: {exc}"
            except (httpx.InvalidURL, ValueError) as exc:  # a URL stored before it was checked: no retry helps
                problem = f"{type(exc).__name__}: {exc}"
                break
            else:
                if response.is_success:
                    log.info("webhook_delivered", api=api, request_id=job_id, url=url, attempt=attempt)
                    return
                problem = f"answered {response.status_code}"
            if attempt < ATTEMPTS:
                await asyncio.sleep(self.retry_delay)
        log.warning("webhook_failed", api=api, request_id=job_id, url=url, attempts=attempt, error=problem)

    async def close(self) -> None:
        for task in list(self._pending):
            task.cancel()
        await asyncio.gather(*self._pending, return_exceptions=True)
        if self._client is not None:
            await self._client.aclose()
