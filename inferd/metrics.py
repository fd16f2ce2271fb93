"""The daemon's Prometheus registry: inferd's own series and the handlers' ``metrics_client`` ones."""

from __future__ import annotations

import bisect
import itertools
import re
import time
from collections import deque
from collections.abc import Awaitable, Coroutine, Iterator
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from inferd.logs import get_logger
from inferd.worker.models.report import METRIC_LOAD_SECONDS, METRIC_LOADS

RECENT = 4096  # latency samples kept per API for `inferd status`
_NAME_OK = re.compile(r"[^a-zA-Z0-9_:]")
_USER_KINDS = {"gauge": Gauge, "increment": Counter, "histogram": Histogram}
_RECORD = {"gauge": "set", "increment": "inc", "histogram": "observe"}
BOUNDS = Histogram.DEFAULT_BUCKETS  # the request latency buckets (seconds), +Inf last
_BOUND_LABELS = ["+Inf" if bound == float("inf") else repr(float(bound)) for bound in BOUNDS]  # le, as Go writes it


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.recorders: dict[str, RequestRecorder] = {}
        self.registry.register(RequestSeries(self.recorders))
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
            self.recorders[api] = RequestRecorder(api)
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
    """One API's request series: plain numbers, made Prometheus samples only when scraped
    (``RequestSeries``), so a request costs a few additions instead of five locked updates."""

    def __init__(self, api: str) -> None:
        self.api = api
        self.in_flight = 0
        self.counts: dict[int | str, int] = {}
        self.buckets = [0] * len(BOUNDS)  # observations per latency bucket (not cumulative)
        self.seconds = 0.0
        self.recent: deque[tuple[float, float]] = deque(maxlen=RECENT)

    def record(self, serve: Awaitable[int]) -> Coroutine[Any, Any, None]:
        """Run one request's ``serve`` (which returns the status answered, 0 when the client
        left first) counted in flight, then by status and latency. Not a coroutine of its own:
        ``end_after``'s, begun now (one coroutine less on every request)."""
        return self.end_after(self.begin(), serve)

    async def end_after(self, started: float, serve: Awaitable[int]) -> None:
        """``record`` for a request counted in flight since ``started`` (``begin``)."""
        status = 0
        try:
            status = await serve
        finally:
            self.end(started, status)

    def begin(self) -> float:
        """One request in flight (``end`` it in any case); returns when it began."""
        self.in_flight += 1
        return time.perf_counter()

    def end(self, started: float, status: int) -> None:
        self.in_flight -= 1
        if status:
            self.observe(status, time.perf_counter() - started)

    def observe(self, code: int | str, seconds: float) -> None:
        self.counts[code] = self.counts.get(code, 0) + 1
        self.buckets[bisect.bisect_left(BOUNDS, seconds)] += 1
        self.seconds += seconds
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


class RequestSeries:
    """The collector of every API's request series: requests by status, latency, in flight."""

    def __init__(self, recorders: dict[str, RequestRecorder]) -> None:
        self.recorders = recorders

    def describe(self) -> Iterator[Metric]:
        """The series' names, so the registry refuses a handler metric that would clash with them."""
        return self._families()

    def collect(self) -> Iterator[Metric]:
        return self._families(self.recorders)

    @staticmethod
    def _families(recorders: dict[str, RequestRecorder] | None = None) -> Iterator[Metric]:
        requests = CounterMetricFamily("inferd_requests", "Requests answered, by API and status code",
                                       labels=["api", "code"])
        latency = HistogramMetricFamily("inferd_request_duration_seconds", "Time from request to response",
                                        labels=["api"])
        in_flight = GaugeMetricFamily("inferd_requests_in_flight", "Requests being handled", labels=["api"])
        for api, recorder in (recorders or {}).items():
            for code, count in recorder.counts.items():
                requests.add_metric([api, str(code)], count)
            cumulative = itertools.accumulate(recorder.buckets)
            latency.add_metric([api], list(zip(_BOUND_LABELS, cumulative, strict=True)), recorder.seconds)
            in_flight.add_metric([api], recorder.in_flight)
        yield requests
        yield latency
        yield in_flight
