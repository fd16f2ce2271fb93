"""The request series of /-/metrics: counted as plain numbers per request, exposed as
Prometheus counter, histogram and gauge samples when scraped."""

from __future__ import annotations

import re

from inferd.metrics import Metrics


def sample(text: str, name: str, labels: str) -> float:
    found = re.search(rf"^{re.escape(name)}{{{re.escape(labels)}}} (\S+)$", text, re.M)
    assert found, f"{name}{{{labels}}} not in:\n{text}"
    return float(found.group(1))


def test_counts_latency_buckets_and_in_flight() -> None:
    metrics = Metrics()
    web = metrics.recorder("web")
    assert metrics.recorder("web") is web  # one per API, kept across reloads
    for seconds in (0.003, 0.005, 0.2, 20.0):
        web.observe(200, seconds)
    web.observe("DEADLINE_EXCEEDED", 0.01)
    started = web.begin()
    web.begin()
    web.end(started, 0)  # a client that left first: no longer in flight, not counted
    text = metrics.render().decode()
    assert sample(text, "inferd_requests_total", 'api="web",code="200"') == 4
    assert sample(text, "inferd_requests_total", 'api="web",code="DEADLINE_EXCEEDED"') == 1
    bucket = "inferd_request_duration_seconds_bucket"
    assert sample(text, bucket, 'api="web",le="0.005"') == 2  # a bound holds what equals it
    assert sample(text, bucket, 'api="web",le="0.01"') == 3
    assert sample(text, bucket, 'api="web",le="0.25"') == 4
    assert sample(text, bucket, 'api="web",le="10.0"') == 4
    assert sample(text, bucket, 'api="web",le="+Inf"') == 5
    assert sample(text, "inferd_request_duration_seconds_count", 'api="web"') == 5
    assert abs(sample(text, "inferd_request_duration_seconds_sum", 'api="web"') - 20.218) < 1e-9
    assert sample(text, "inferd_requests_in_flight", 'api="web"') == 1
    assert web.summary()["p50_ms"] > 0
