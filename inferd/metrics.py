"""The daemon's Prometheus registry: inferd's own series and the handlers' ``metrics_client`` ones."""

from __future__ import annotations

import re
import time
from collections import deque
from collections.abc import Awaitable
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from inferd.logs import get_logger
from inferd.worker.models.report import METRIC_LOAD_SECONDS, METRIC_LOADS

RECENT = 4096  # latency samples kept per API for `inferd status`
_NAME_OK = re.compile(r"[^a-zA-Z0-9_:]")
_USER_KINDS = {"gauge": Gauge, "increment": Counter, "histogram": Histogram}
_RECORD = {"gauge": "set", "increment": "inc", "histogram": "observe"}


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("inferd_requests", "Requests answered, by API and status code",
                                ["api", "code"], registry=self.registry)
        self.latency = Histogram("inferd_request_duration_seconds", "Time from request to response",
                                 ["api"], registry=self.registry)
        self.in_flight = Gauge("inferd_requests_in_flight", "Requests being handled", ["api"],
                               registry=self.registry)
        self.queue_length = Gauge("inferd_queue_length", "AsyncAPI and RunPodAPI jobs waiting", ["api"], registry=self.registry)
        self.jobs = Gauge("inferd_async_jobs", "AsyncAPI jobs in the store, by status", ["api", "status"],
                          registry=self.registry)
        self.runpod_jobs = Gauge("inferd_runpod_jobs", "RunPodAPI jobs in the store, by status", ["api", "status"],
                                 registry=self.registry)
        self.runpod_queue_delay = Histogram("inferd_runpod_queue_delay_seconds", "RunPodAPI jobs: time queued (delayTime)",
                                            ["api"], registry=self.registry)
        self.runpod_execution = Histogram("inferd_runpod_execution_seconds", "RunPodAPI jobs: time running (executionTime)",
                                          ["api"], registry=self.registry)
        self.batch_jobs = Gauge("inferd_batch_jobs", "BatchAPI and TaskAPI jobs in the store, by status",
                                ["api", "status"], registry=self.registry)
        self.batches = Counter("inferd_batches", "BatchAPI batches run, by outcome (succeeded, failed, retried)",
                               ["api", "outcome"], registry=self.registry)
        self.batch_duration = Histogram("inferd_batch_duration_seconds", "BatchAPI: time in handle_batch per batch",
                                        ["api"], registry=self.registry)
        self.gpu_utilization = Gauge("inferd_gpu_utilization_ratio", "GPU busy fraction (NVML)", ["gpu"],
                                     registry=self.registry)
        self.gpu_memory_used = Gauge("inferd_gpu_memory_used_bytes", "GPU memory in use (NVML)", ["gpu"],
                                     registry=self.registry)
        self.gpu_memory_total = Gauge("inferd_gpu_memory_total_bytes", "GPU memory (NVML)", ["gpu"],
                                      registry=self.registry)
        self.recorders: dict[str, RequestRecorder] = {}
        self.worker_restarts = Counter("inferd_worker_restarts", "Worker processes restarted",
                                       ["api"], registry=self.registry)
        self.model_loads = Counter(METRIC_LOADS, "multi_model_reloading: load_model calls, by model and "
                                   "outcome (loaded, failed)", ["api", "model", "outcome"], registry=self.registry)
        self.model_load_seconds = Histogram(METRIC_LOAD_SECONDS, "multi_model_reloading: time in load_model",
                                            ["api", "model"], registry=self.registry)
        self._user: dict[str, tuple[Any, tuple[str, ...]]] = {}
        self.log = get_logger()

    def recorder(self, api: str) -> RequestRecorder:
        """One per API, shared by its fronts across reloads so recent figures survive a swap."""
        if api not in self.recorders:
            self.recorders[api] = RequestRecorder(self, api)
        return self.recorders[api]

    def record_user(self, api: str, frame: dict[str, Any]) -> None:
        """A handler's ``metrics_client`` call, tagged with its API like Cortex did; or one of
        inferd's own worker-side series (``inferd_`` names, which ``metrics_client`` refuses)."""
        if frame["name"] in (METRIC_LOADS, METRIC_LOAD_SECONDS):
            self._record_model_load(api, frame)
            return
        name = _NAME_OK.sub("_", frame["name"])
        kind = frame["kind"]
        tags = {"api_name": api, **frame.get("tags", {})}
        label_names = tuple(sorted(_NAME_OK.sub("_", k) for k in tags))
        known = self._user.get(name)
        if known is None:
            metric = _USER_KINDS[kind](name, f"{kind} from handler metrics_client", label_names,
                                       registry=self.registry)
            known = self._user[name] = (metric, label_names)
        metric, expected = known
        if expected != label_names or not isinstance(metric, _USER_KINDS[kind]):
            self.log.warning("user_metric_rejected", metric=name, api=api,
                             reason=f"{name} was first recorded as {type(metric).__name__} with tags {list(expected)}")
            return
        child = metric.labels(**{_NAME_OK.sub("_", k): v for k, v in tags.items()})
        try:
            getattr(child, _RECORD[kind])(frame["value"])
        except ValueError as exc:  # e.g. a negative increment: the handler's bug, not ours
            self.log.warning("user_metric_rejected", metric=name, api=api, reason=str(exc))

    def _record_model_load(self, api: str, frame: dict[str, Any]) -> None:
        tags = frame.get("tags") or {}
        model = str(tags.get("model", ""))
        if frame["name"] == METRIC_LOADS:
            self.model_loads.labels(api, model, str(tags.get("outcome", ""))).inc(frame["value"])
        else:
            self.model_load_seconds.labels(api, model).observe(frame["value"])

    def render(self) -> bytes:
        return generate_latest(self.registry)


class RequestRecorder:
    """One API's request series, with label lookups done once instead of per request."""

    def __init__(self, metrics: Metrics, api: str) -> None:
        self._metrics = metrics
        self.api = api
        self.in_flight = metrics.in_flight.labels(api)
        self._latency = metrics.latency.labels(api)
        self._by_code: dict[int | str, Any] = {}
        self.recent: deque[tuple[float, float]] = deque(maxlen=RECENT)

    async def record(self, serve: Awaitable[int]) -> None:
        """Run one request's ``serve`` (which returns the status answered, 0 when the client
        left first) counted in flight, then by status and latency."""
        started = self.begin()
        status = 0
        try:
            status = await serve
        finally:
            self.end(started, status)

    def begin(self) -> float:
        """One request in flight (``end`` it in any case); returns when it began."""
        self.in_flight.inc()
        return time.perf_counter()

    def end(self, started: float, status: int) -> None:
        self.in_flight.dec()
        if status:
            self.observe(status, time.perf_counter() - started)

    def observe(self, code: int | str, seconds: float) -> None:
        counter = self._by_code.get(code)
        if counter is None:
            counter = self._by_code[code] = self._metrics.requests.labels(self.api, str(code))
        counter.inc()
        self._latency.observe(seconds)
        self.recent.append((time.monotonic(), seconds))

    def summary(self, window: float = 60.0) -> dict[str, float]:
        """Requests/s and p50/p99 latency (ms) over the last ``window`` seconds, for ``inferd status``."""
        since = time.monotonic() - window
        samples = sorted(seconds for at, seconds in self.recent if at >= since)
        if not samples:
            return {"requests_per_second": 0.0, "p50_ms": 0.0, "p99_ms": 0.0}
        oldest = min(at for at, _ in self.recent if at >= since)
        span = max(time.monotonic() - oldest, 1.0)

        def pick(q: float) -> float:
            return samples[min(len(samples) - 1, int(q * len(samples)))] * 1000

        return {"requests_per_second": len(samples) / span, "p50_ms": pick(0.5), "p99_ms": pick(0.99)}
