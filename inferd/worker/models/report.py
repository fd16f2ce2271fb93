"""One API's models for ``/-/apis`` and ``inferd status``, merged from what each worker reported
(each worker process holds its own models)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

# inferd's own series, sent by the worker as Metric frames and recorded by inferd.metrics
METRIC_LOADS = "inferd_model_loads"
METRIC_LOAD_SECONDS = "inferd_model_load_seconds"


def merge_reports(reports: Iterable[dict[str, Any] | None]) -> dict[str, Any] | None:
    """Per model: versions and loaded versions in any worker, the highest ``latest``, failures;
    None when no worker reports models (the API has no multi_model_reloading)."""
    merged: dict[str, dict[str, Any]] = {}
    seen = False
    for report in reports:
        if report is None:
            continue
        seen = True
        for name, model in report.items():
            into = merged.setdefault(name, {"versions": set(), "loaded": set(), "latest": None, "failed": {}})
            into["versions"].update(model.get("versions") or ())
            into["loaded"].update(model.get("loaded") or ())
            latest = model.get("latest")
            if latest is not None and (into["latest"] is None or latest > into["latest"]):
                into["latest"] = latest
            into["failed"].update(model.get("failed") or {})
    if not seen:
        return None
    return {name: {**model, "versions": sorted(model["versions"]), "loaded": sorted(model["loaded"])}
            for name, model in sorted(merged.items())}
