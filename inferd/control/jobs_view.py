"""What ``inferd status`` and ``inferd jobs`` print about BatchAPI and TaskAPI jobs."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

BAR_WIDTH = 24


def progress_bar(done: int, total: int, width: int = BAR_WIDTH) -> str:
    """``[#########...............]  38/100`` (a job with no batches is full)."""
    filled = width if total <= 0 else min(width, done * width // total)
    return f"[{'#' * filled}{'.' * (width - filled)}] {done:>{len(str(total))}}/{total}"


def progress_lines(api: str, jobs: list[dict[str, Any]]) -> list[str]:
    """One line per running job of ``api``: its batches done / total (BatchAPI) and status."""
    lines = []
    for job in jobs:
        line = f"  {api} job {job['job_id']} {job['status']}"
        if job.get("total"):
            failed = f", {job['failed']} failed" if job.get("failed") else ""
            line += f"  {progress_bar(job['done'], job['total'])} batches{failed}"
        if job.get("reason"):
            line += f"  ({job['reason']})"
        lines.append(line)
    return lines


def status_progress(details: list[dict[str, Any]]) -> str:
    """The running-jobs block under ``inferd status``'s table ('' when no job runs)."""
    lines = [line for detail in details for line in progress_lines(detail["name"], detail.get("jobs") or [])]
    return "\nrunning jobs:\n" + "\n".join(lines) if lines else ""


def text_table(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """``columns`` over ``rows``, each column as wide as its widest cell (trailing spaces cut)."""
    widths = [max(len(cell) for cell in column) for column in zip(columns, *rows, strict=False)]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False)).rstrip()
                     for row in (columns, *rows))


def _batches(job: dict[str, Any]) -> tuple[dict[str, Any], int, int]:
    """A job status's batch_metrics, its batches finished and its total."""
    metrics = job.get("batch_metrics") or {}
    return metrics, metrics.get("succeeded", 0) + metrics.get("failed", 0), job.get("total_batch_count", 0)


COLUMNS = ("JOB ID", "STATUS", "BATCHES", "FAILED", "WORKERS", "STARTED", "ENDED")


def jobs_table(jobs: list[dict[str, Any]]) -> str:
    if not jobs:
        return "no jobs"
    rows = []
    for job in jobs:
        metrics, done, total = _batches(job)
        batched = "batches_in_queue" in job  # a TaskAPI job has no batches
        rows.append((job["job_id"], job["status"], f"{done}/{total}" if batched else "-",
                     str(metrics.get("failed", 0)) if batched else "-", str(job["workers"]),
                     job.get("start_time", "-"), job.get("end_time", "-")))
    return text_table(COLUMNS, rows)


def job_detail(job: dict[str, Any]) -> str:
    lines = [f"job {job['job_id']} of {job['api_name']} ({job['kind']}): {job['status']}",
             f"workers {job['workers']}, timeout {job.get('timeout') or '-'}",
             f"started {job.get('start_time', '-')}, ended {job.get('end_time', '-')}"]
    if "batches_in_queue" in job:
        metrics, done, total = _batches(job)
        average = metrics.get("average_time_per_batch")
        lines.append(f"batches {progress_bar(done, total)}: {metrics.get('succeeded', 0)} succeeded, "
                     f"{metrics.get('failed', 0)} failed, {job.get('batches_in_queue', 0)} in queue, "
                     f"average {'-' if average is None else f'{average:.3f}s'}")
    if job.get("worker_counts"):
        lines.append("worker counts " + ", ".join(f"{k} {v}" for k, v in job["worker_counts"].items()))
    if job.get("reason"):
        lines.append(f"reason: {job['reason']}")
    lines.append(f"config: {json.dumps(job.get('config'))}")
    if job.get("error"):
        lines.append("error:")
        lines.extend(f"  {line}" for line in str(job["error"]).splitlines())
    return "\n".join(lines)
