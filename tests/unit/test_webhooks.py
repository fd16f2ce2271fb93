"""RunPod webhooks: a URL the sender could never encode is refused when the job is submitted, and
one that got into the store anyway fails its delivery with a log line, not a stray task error."""

from __future__ import annotations

import asyncio
import json

import pytest
from structlog.testing import capture_logs

from inferd.http.runpod import JobRequestError, QueueSettings, parse_job_request
from inferd.jobs.webhooks import WebhookSender


def job(webhook: object) -> bytes:
    return json.dumps({"input": {}, "webhook": webhook}).encode()


@pytest.mark.parametrize("webhook", ["http://\u00ad/hook", "http://xn--/hook", "http://a\u200b.example/hook",
                                     "https://[::1/hook", "http:///hook", "ftp://example.com/hook", 7])
def test_a_webhook_the_sender_cannot_post_to_is_refused_at_submission(webhook: object) -> None:
    with pytest.raises(JobRequestError, match='"webhook"'):
        parse_job_request(job(webhook), QueueSettings())


def test_a_good_webhook_is_kept_as_sent() -> None:
    assert parse_job_request(job("https://hooks.example/a?b=1"), QueueSettings()).webhook == "https://hooks.example/a?b=1"


def test_a_stored_webhook_that_cannot_be_encoded_fails_once_with_a_log_line() -> None:
    async def scenario() -> None:
        sender = WebhookSender(retry_delay=0)
        sender.deliver("api", "job-1", "http://xn--/hook", {"id": "job-1"})
        await asyncio.gather(*sender._pending)  # raises if the delivery's task failed
        await sender.close()

    with capture_logs() as logs:
        asyncio.run(scenario())
    (failed,) = [entry for entry in logs if entry["event"] == "webhook_failed"]
    assert failed["attempts"] == 1 and failed["error"].startswith("IDNAError: ")
