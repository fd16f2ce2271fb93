"""BatchAPI benchmark: one job of 100,000 small items through inferd vs the same batches fed to
the handler in a plain Python loop in one process (the limit).

    python bench/batch.py [--items 100000] [--batch-size 100] [--workers 2]

inferd: POST the job (answered once the job and all its batches are committed: "submission"),
then poll until it has succeeded. The handler is a no-op, so nearly all of the time is inferd's:
claiming a batch from the store, sending it to a worker, committing its outcome. The time the
handler itself spent is read from ``inferd_batch_duration_seconds_sum`` (each worker reports it).

Scheduling overhead per batch = (wall time - handler time) / batches, where the wall time runs
from the first batch claimed to the last one finished (from the store's own timestamps, read
after the daemon stopped; worker start-up is shown apart) and handler time is the handlers'
total divided by the workers that ran in parallel.

The loop: the same batches, cut the same way, each decoded from its JSON array and passed to
``handle_batch(payload, batch_id)`` of the same handler class in this process.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from realtime import free_port, start  # noqa: E402  (start runs inferd from this tree)
from realtime import stop as stop_group  # noqa: E402

from inferd.jobs.batch_submission import make_batches, parse_submission  # noqa: E402

API = "batch"
TARGET_MS = 1.0  # scheduling overhead per batch
HANDLER = ("class Handler:\n    def __init__(self, config):\n        pass\n\n"
           "    def handle_batch(self, payload, batch_id):\n        pass\n")
CORTEX = f"- name: {API}\n  kind: BatchAPI\n  handler:\n    type: python\n    path: handler.py\n"


def make_project(root: Path) -> Path:
    project = root / "project"
    project.mkdir()
    (project / "cortex.yaml").write_text(CORTEX)
    (project / "handler.py").write_text(HANDLER)
    return project


def submission(args: argparse.Namespace) -> bytes:
    items = [{"id": i, "text": "hello"} for i in range(args.items)]
    return json.dumps({"workers": args.workers, "item_list": {"items": items, "batch_size": args.batch_size}}).encode()


def handler_seconds(client: httpx.Client) -> float:
    text = client.get("/-/metrics").text
    found = re.search(r'inferd_batch_duration_seconds_sum\{api="batch"\} ([0-9.e+-]+)', text)
    return float(found.group(1)) if found else 0.0


def run_inferd(root: Path, body: bytes, args: argparse.Namespace) -> dict[str, float]:
    project, state, port = make_project(root), root / "state", free_port()
    proc = start([sys.executable, "-m", "inferd", "run", "--project", str(project), "--port", str(port),
                  "--grpc-port", str(free_port()), "--state-dir", str(state), "--log-level", "warning"],
                 root / "inferd.log")
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as client:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if client.get("/-/ready").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise SystemExit(f"inferd did not start; see {root / 'inferd.log'}")
                time.sleep(0.1)
            started = time.perf_counter()
            reply = client.post(f"/{API}", content=body, headers={"content-type": "application/json"})
            submitted = time.perf_counter()
            reply.raise_for_status()
            job_id = reply.json()["job_id"]
            while True:
                status = client.get(f"/{API}", params={"jobID": job_id}).json()["job_status"]
                if status["status"] not in ("pending", "enqueuing", "running"):
                    break
                time.sleep(0.02)
            finished = time.perf_counter()
            if status["status"] != "succeeded":
                raise SystemExit(f"the job ended {status['status']}: {status.get('error')}")
            handler = handler_seconds(client)
    finally:
        stop_group(proc)
    with sqlite3.connect(state / "async.db") as db:
        first, last, batches = db.execute("SELECT min(started_at), max(finished_at), count(*) FROM job_batches"
                                          " WHERE job_id = ?", (job_id,)).fetchone()
        created, = db.execute("SELECT started_at FROM batch_jobs WHERE id = ?", (job_id,)).fetchone()
    return {"submit": submitted - started, "total": finished - submitted, "batches": batches,
            "phase": (last - first) / 1e6, "startup": (first - created) / 1e6, "handler": handler}


def run_loop(body: bytes, project: Path) -> dict[str, float]:
    spec = importlib.util.spec_from_file_location("bench_handler", project / "handler.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    started = time.perf_counter()
    batches = make_batches(parse_submission(body, "BatchAPI"))
    cut = time.perf_counter()
    handler = module.Handler(config={})
    for index, payload in enumerate(batches):
        handler.handle_batch(json.loads(payload), f"job-{index}")
    done = time.perf_counter()
    return {"cut": cut - started, "run": done - cut, "batches": len(batches)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    body = submission(args)
    with tempfile.TemporaryDirectory(prefix="inferd-bench-batch-") as tmp:
        root = Path(tmp)
        inferd = run_inferd(root, body, args)
        loop = run_loop(body, root / "project")
    items, batches = args.items, inferd["batches"]
    overhead_ms = (inferd["phase"] - inferd["handler"] / args.workers) / batches * 1000
    print(f"\nBatchAPI job: {items:,} items, batch_size {args.batch_size} ({batches:.0f} batches), "
          f"workers {args.workers}, no-op handler, {len(body) / 1e6:.1f} MB submission\n")
    print(f"{'':<34} {'inferd':>12} {'plain loop':>12}")
    print(f"{'submission (s)':<34} {inferd['submit']:>12.3f} {loop['cut']:>12.3f}")
    print(f"{'  items committed/s':<34} {items / inferd['submit']:>12,.0f} {'-':>12}")
    print(f"{'worker start-up (s)':<34} {inferd['startup']:>12.3f} {'-':>12}")
    print(f"{'batches, first claimed to last (s)':<34} {inferd['phase']:>12.3f} {loop['run']:>12.3f}")
    print(f"{'  items/s':<34} {items / inferd['phase']:>12,.0f} {items / loop['run']:>12,.0f}")
    print(f"{'submission answered to done (s)':<34} {inferd['total']:>12.3f} {'-':>12}")
    print(f"{'  items/s, start-up included':<34} {items / inferd['total']:>12,.0f} {'-':>12}")
    print(f"{'handler time (s, all workers)':<34} {inferd['handler']:>12.3f} {loop['run']:>12.3f}")
    print(f"\nscheduling overhead per batch: {overhead_ms:.3f} ms (target < {TARGET_MS:g} ms)")
    print(f"inferd/loop throughput ratio (batch phase): {loop['run'] / inferd['phase']:.3f}x")


if __name__ == "__main__":
    main()
