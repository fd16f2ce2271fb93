"""Cortex's ``metrics_client`` for handler code, recording into the daemon's Prometheus registry.

Each call becomes one ``Metric`` message; the daemon owns the registry and serves it at /-/metrics.
As in Cortex, names starting with ``cortex_`` or ``istio_`` are refused, and a failure to send
never raises into handler code.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from inferd.worker import protocol

RESERVED_PREFIXES = ("cortex_", "istio_")

Send = Callable[[protocol.Metric], None]


class MetricsClient:
    def __init__(self, send: Send) -> None:
        self._send = send

    def gauge(self, metric: str, value: float, tags: Mapping[str, str] | None = None) -> None:
        self._record("gauge", metric, value, tags)

    def increment(self, metric: str, value: float = 1, tags: Mapping[str, str] | None = None) -> None:
        self._record("increment", metric, value, tags)

    def histogram(self, metric: str, value: float, tags: Mapping[str, str] | None = None) -> None:
        self._record("histogram", metric, value, tags)

    def _record(self, kind: str, metric: str, value: float, tags: Mapping[str, str] | None) -> None:
        if metric.startswith(RESERVED_PREFIXES):
            raise ValueError(f"metric name {metric!r} is reserved: names may not start with cortex_ or istio_")
        message = protocol.Metric(metric, kind, float(value), {str(k): str(v) for k, v in (tags or {}).items()})
        try:
            self._send(message)
        except Exception:  # noqa: BLE001 - metrics must never break a request
            pass
