"""Job store benchmark, run by hand:  python bench/store_bench.py [--seconds 5] [--jobs 100000]

(a) durable submissions/s with 64 concurrent submitters: the group-commit store against a
    baseline of one transaction per submission through the same writer engine;
(b) get() latency p50/p99 on a store holding --jobs jobs, idle and under 64 submitters;
(c) the dispatcher's writes: completing those --jobs jobs, 5,000 complete() calls at a time,
    and claim_next() + complete() by 8 consumers while the 64 submitters run.
Prints a table; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from inferd.store import AsyncJobStore  # noqa: E402
from inferd.store.engine import prepare_file, writer_engine  # noqa: E402
from inferd.store.queries import INSERT  # noqa: E402
from inferd.store.schema import IN_QUEUE, migrate  # noqa: E402

SUBMITTERS = 64
CONSUMERS = 8
PAYLOAD = b'{"text": "' + b"x" * 200 + b'"}'
HEADERS = {"x-request-id": "bench"}


async def submit_for(store: AsyncJobStore, seconds: float) -> int:
    deadline, done = time.perf_counter() + seconds, 0
    while time.perf_counter() < deadline:
        await store.submit("bench", PAYLOAD, "application/json", HEADERS)
        done += 1
    return done


async def consume_for(store: AsyncJobStore, seconds: float) -> int:
    """A dispatcher slot with an instant worker: claim the oldest job, complete it."""
    deadline, done = time.perf_counter() + seconds, 0
    while time.perf_counter() < deadline:
        job = await store.claim_next("bench")
        if job is None:
            await asyncio.sleep(0.001)
            continue
        await store.complete(job.id, b'{"ok": true}')
        done += 1
    return done


async def group_commit_rate(path: Path, seconds: float) -> tuple[float, float]:
    store = await AsyncJobStore.open(path)
    try:
        start = time.perf_counter()
        counts = await asyncio.gather(*[submit_for(store, seconds) for _ in range(SUBMITTERS)])
        rate = sum(counts) / (time.perf_counter() - start)
        return rate, store.stats.ops / max(store.stats.commits, 1)
    finally:
        await store.close()


async def baseline_rate(path: Path, seconds: float) -> float:
    """The same engine and pragmas, but each submission is its own transaction (serialised by a
    lock, since one connection carries one transaction at a time)."""
    prepare_file(path)
    engine = writer_engine(path)
    conn = await engine.connect()
    await conn.run_sync(migrate)
    lock = asyncio.Lock()

    async def submitter() -> int:
        deadline, done = time.perf_counter() + seconds, 0
        while time.perf_counter() < deadline:
            async with lock, conn.begin():
                await conn.execute(INSERT, row())
            done += 1
        return done

    try:
        start = time.perf_counter()
        counts = await asyncio.gather(*[submitter() for _ in range(SUBMITTERS)])
        return sum(counts) / (time.perf_counter() - start)
    finally:
        await conn.close()
        await engine.dispose()


def row() -> dict[str, object]:
    now = time.time_ns() // 1000
    return {
        "id": uuid.uuid4().hex, "api": "bench", "status": IN_QUEUE, "content_type": "application/json",
        "headers": '{"x-request-id":"bench"}', "payload": PAYLOAD, "result": None, "error": None,
        "attempts": 0, "created_at": now, "started_at": None, "finished_at": None,
    }  # fmt: skip


async def fill(store: AsyncJobStore, jobs: int) -> list[str]:
    ids: list[str] = []
    for start in range(0, jobs, 5000):
        chunk = min(5000, jobs - start)
        submits = [store.submit("bench", PAYLOAD, "application/json", HEADERS) for _ in range(chunk)]
        ids += await asyncio.gather(*submits)
    return ids


async def get_latencies(store: AsyncJobStore, ids: list[str], samples: int) -> list[float]:
    latencies = []
    for job_id in random.sample(ids, samples):
        start = time.perf_counter()
        job = await store.get(job_id)
        latencies.append(time.perf_counter() - start)
        assert job is not None
    return latencies


async def get_bench(path: Path, jobs: int, seconds: float) -> dict[str, object]:
    store = await AsyncJobStore.open(path)
    try:
        start = time.perf_counter()
        ids = await fill(store, jobs)
        fill_s = time.perf_counter() - start
        count = await store.count()
        start = time.perf_counter()
        for at in range(0, jobs, 5000):
            await asyncio.gather(*[store.complete(job_id, b'{"ok": true}') for job_id in ids[at : at + 5000]])
        complete_s = time.perf_counter() - start
        idle = await get_latencies(store, ids, 5000)
        load = asyncio.gather(*[submit_for(store, seconds) for _ in range(SUBMITTERS)])
        consumers = asyncio.gather(*[consume_for(store, seconds) for _ in range(CONSUMERS)])
        busy = await get_latencies(store, ids, 2000)
        await load
        consumed = sum(await consumers) / seconds
        return {"fill_s": fill_s, "complete_s": complete_s, "idle": idle, "busy": busy, "count": count,
                "consumed": consumed}
    finally:
        await store.close()


def pct(values: list[float], q: int) -> float:
    """q-th percentile in milliseconds."""
    return statistics.quantiles(values, n=100)[q - 1] * 1000


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--jobs", type=int, default=100_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="inferd-store-bench-") as tmp:
        grouped, per_commit = await group_commit_rate(Path(tmp) / "grouped.db", args.seconds)
        baseline = await baseline_rate(Path(tmp) / "baseline.db", args.seconds)
        got = await get_bench(Path(tmp) / "get.db", args.jobs, args.seconds)
    print(f"{'measure':<52} {'value':>12}")
    print("-" * 65)
    print(f"{'submit/s, group commit, 64 submitters':<52} {grouped:>12,.0f}")
    print(f"{'  submissions per commit (mean)':<52} {per_commit:>12.1f}")
    print(f"{'submit/s, one commit per submission (baseline)':<52} {baseline:>12,.0f}")
    print(f"{'  ratio group / baseline':<52} {grouped / baseline:>11.1f}x")
    print(f"{'fill ' + format(args.jobs, ',') + ' jobs (s)':<52} {got['fill_s']:>12.2f}")
    print(f"{'complete ' + format(args.jobs, ',') + ' jobs (s)':<52} {got['complete_s']:>12.2f}")
    print(f"{'rows in store for get()':<52} {got['count']:>12,}")
    for label in ("idle", "busy"):
        values = got[label]
        what = "idle" if label == "idle" else "during 64 submitters"
        print(f"{'get p50 ms, ' + what:<52} {pct(values, 50):>12.3f}")
        print(f"{'get p99 ms, ' + what:<52} {pct(values, 99):>12.3f}")
    print(f"{'claim+complete/s, 8 consumers during 64 submitters':<52} {got['consumed']:>12,.0f}")


if __name__ == "__main__":
    asyncio.run(main())
