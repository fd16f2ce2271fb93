"""RunPodAPI benchmarks: inferd serving an unchanged RunPod worker file vs the RunPod SDK's own
dev server (``python handler.py --rp_serve_api``) running the same file.

    python bench/runpod.py [--case runsync|stream|all] [--duration 8] [--connections 32] [--rounds 2]

runsync: a no-op handler (``return {"ok": True}``), wrk -t2 -c<connections> POSTing
``{"input": {"x": 1}}`` to inferd's /v2/noop/runsync and to the dev server's /runsync, rounds
alternating which goes first. The project is a directory ``noop/`` holding only ``handler.py``
(no cortex.yaml): inferd discovers it as API ``noop`` with one worker (direct runner), and the
dev server is started from that same file. The two are not doing the same work: the dev server
runs the handler inline in its HTTP request (no queue, nothing stored, a simulation by RunPod's
own description); inferd commits the job to SQLite, a dispatcher claims it (another commit),
runs it in a worker process and commits its result before /runsync answers. After each inferd
run the rows created in <state dir>/async.db during it are counted: every request wrk got a
2xx for must be a COMPLETED row (there can be up to <connections> more: jobs wrk sent but
stopped waiting for when its time was up). "CPU ms/req" is the CPU time of the server's whole
process group (daemon and worker for inferd) over the run divided by the requests answered; it
is less sensitive to other load on a shared machine than req/s. The issue's target: the direct
runner >= 1x the dev server (which answered ~4,400 no-op runsync/s to 16 Python clients on the
issue author's machine). The third column is inferd with ``handler.runner: sdk``: the same file
in the SDK's own production loop, taking jobs from inferd's emulated platform; that loop waits
about 1 s between jobs at concurrency 1, so it is measured with --sdk-jobs sequential /runsync
calls rather than wrk (whose requests would mostly time out in its queue), and the "sequential"
row measures all three sides the same way. Target there: the direct runner >= 50x the SDK runner.

stream: a generator handler yielding 50 items ``{"i": i, "t": time.time()}``, 20 ms apart.
inferd: POST /v2/gen/run, then GET /v2/gen/stream/<id> every ~5 ms; per item, the latency is
(time first seen by the client) - (its "t"), i.e. how long after the handler yielded it a
polling client has it. Time to first item is from the POST /run to the first item seen. The dev
server has no live stream: its POST /stream/<id> runs the generator to the end and answers
every item at once, so its time to first item is the whole generator's time (~1 s) and its
per-item latency is the same measurement made on that one answer. Each side runs --stream-jobs
jobs one after another (after one warm-up job).

Both sides of a case run in this one invocation, so the ratios mean something on a shared,
noisy machine even when absolute numbers do not. inferd (the daemon and its workers) runs from
the tree this script lives in. Both servers get RUNPOD_LOG_LEVEL=ERROR so SDK logging does not
dominate. This file must not import the ``runpod`` package: its own name shadows it here.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from asyncapi import run_wrk  # noqa: E402  (wrk's rate, latency and error counts)
from realtime import free_port, group_cpu, group_pids, start  # noqa: E402  (start runs inferd from this tree)

LOG_ENV = {"RUNPOD_LOG_LEVEL": "ERROR", "UVICORN_LOG_LEVEL": "warning"}
INPUT = '{"input": {"x": 1}}'
LUA = f"wrk.method = \"POST\"\nwrk.body = '{INPUT}'\nwrk.headers[\"Content-Type\"] = \"application/json\"\n"
NOOP_HANDLER = '''import runpod


def handler(job):
    return {"ok": True}


runpod.serverless.start({"handler": handler})
'''
GEN_HANDLER = '''import time

import runpod


def handler(job):
    count, gap = job["input"]["n"], job["input"]["gap_ms"] / 1000
    for i in range(count):
        yield {"i": i, "t": time.time()}
        if i < count - 1:
            time.sleep(gap)


runpod.serverless.start({"handler": handler})
'''
STREAM_ITEMS, STREAM_GAP_MS, POLL_S = 50, 20, 0.005
INFERD, SDK, SDK_RUNNER = "inferd (direct runner)", "SDK dev server", "SDK runner (handler.runner: sdk)"
RUNSYNC_TARGET = 1.0
SDK_RUNNER_TARGET = 50.0


# --- processes ---


def make_project(root: Path, api: str, source: str) -> Path:
    """A RunPod worker repository as it would be cloned: ``<api>/handler.py``, no cortex.yaml."""
    project = root / api
    project.mkdir()
    (project / "handler.py").write_text(source)
    return project


def start_inferd(root: Path, project: Path) -> tuple[subprocess.Popen, str, Path]:
    port, state = free_port(), root / f"state-{project.name}"
    cmd = [sys.executable, "-m", "inferd", "run", "--project", str(project), "--port", str(port),
           "--grpc-port", str(free_port()), "--state-dir", str(state), "--log-level", "warning"]
    return start(cmd, root / f"inferd-{project.name}.log", LOG_ENV), f"http://127.0.0.1:{port}", state / "async.db"


def start_sdk(root: Path, project: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [sys.executable, str(project / "handler.py"), "--rp_serve_api", "--rp_api_port", str(port),
           "--rp_api_host", "127.0.0.1", "--rp_log_level", "ERROR"]
    return start(cmd, root / f"sdk-{project.name}.log", LOG_ENV), f"http://127.0.0.1:{port}"


def stop(proc: subprocess.Popen) -> None:
    """The whole process group (inferd's workers included), even when its leader already exited."""
    for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
        except subprocess.TimeoutExpired:
            continue
        if not group_pids(proc.pid):
            return


def wait_until_up(name: str, proc: subprocess.Popen, post_url: str, body: dict, timeout: float = 90) -> None:
    """Until a POST of ``body`` answers 200 (inferd: its worker is up and ran a job)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            answer = httpx.post(post_url, json=body, timeout=30)
            if answer.status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"{name} at {post_url} did not come up (exit code {proc.poll()})")


def print_logs(root: Path) -> None:
    for log in sorted(root.glob("*.log")):
        print(f"--- {log.name} (last 30 lines)\n" + "\n".join(log.read_text(errors="replace").splitlines()[-30:]),
              file=sys.stderr)


# --- runsync case ---


def measured_wrk(proc: subprocess.Popen, url: str, args: argparse.Namespace, script: Path) -> dict[str, float]:
    cpu = group_cpu(proc.pid)
    result = run_wrk(url, args.threads, args.connections, args.duration, script)
    answered = result["requests"] - result["non2xx"]
    result["cpu_ms"] = (group_cpu(proc.pid) - cpu) * 1000 / max(answered, 1)
    return result


def settle(health_url: str, timeout: float = 15) -> dict[str, int]:
    """Until inferd has no job queued or running (wrk may leave some behind); its /health jobs."""
    deadline = time.monotonic() + timeout
    while True:
        jobs: dict[str, int] = httpx.get(health_url).json()["jobs"]
        if jobs["inQueue"] + jobs["inProgress"] == 0 or time.monotonic() > deadline:
            return jobs
        time.sleep(0.1)


def stored_rows(db: Path, api: str, since_us: int) -> dict[str, int]:
    """Rows of ``api`` created since ``since_us`` (µs, UTC) by status, read from the live file."""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30) as conn:
        rows = conn.execute("SELECT status, count(*) FROM runpod_jobs WHERE api = ? AND created_at >= ? GROUP BY status",
                            (api, since_us)).fetchall()
    conn.close()
    return dict(rows)


def sequential_rate(url: str, jobs: int) -> float:
    """Round trips per second of ``jobs`` /runsync calls made one after another by one client."""
    with httpx.Client(timeout=60) as client:
        client.post(url, json={"input": {"x": 1}}).raise_for_status()  # warm
        started = time.perf_counter()
        for _ in range(jobs):
            client.post(url, json={"input": {"x": 1}}).raise_for_status()
        return jobs / (time.perf_counter() - started)


def sdk_runner_project(root: Path) -> Path:
    project = make_project(root, "noopsdk", NOOP_HANDLER)
    (project / "cortex.yaml").write_text("- name: noopsdk\n  kind: RunPodAPI\n  handler:\n    path: handler.py\n"
                                         "    runner: sdk\n")
    return project


def runsync_case(root: Path, args: argparse.Namespace) -> None:
    project = make_project(root, "noop", NOOP_HANDLER)
    script = root / "runsync.lua"
    script.write_text(LUA)
    inferd, inferd_url, db = start_inferd(root, project)
    sdk, sdk_url = start_sdk(root, project)
    runner, runner_url, _ = start_inferd(root, sdk_runner_project(root))
    rounds: list[dict[str, dict[str, float]]] = []
    sequential: dict[str, float] = {}
    try:
        wait_until_up(SDK_RUNNER, runner, f"{runner_url}/v2/noopsdk/runsync", {"input": {"x": 1}})
        sequential[SDK_RUNNER] = sequential_rate(f"{runner_url}/v2/noopsdk/runsync", args.sdk_jobs)
        stop(runner)
        targets = {INFERD: (inferd, f"{inferd_url}/v2/noop/runsync"), SDK: (sdk, f"{sdk_url}/runsync")}
        for name, (proc, url) in targets.items():
            wait_until_up(name, proc, url, {"input": {"x": 1}})
            run_wrk(url, 1, 4, 2, script)  # warm-up
        settle(f"{inferd_url}/v2/noop/health")
        sequential[INFERD] = sequential_rate(f"{inferd_url}/v2/noop/runsync", 200)
        sequential[SDK] = sequential_rate(f"{sdk_url}/runsync", 200)
        for n in range(args.rounds):
            order = list(targets) if n % 2 == 0 else list(reversed(targets))
            results = {}
            for name in order:
                proc, url = targets[name]
                since_us = time.time_ns() // 1000 - 1000  # 1 ms of slack: the store's clock is the same one
                results[name] = measured_wrk(proc, url, args, script)
                if name == INFERD:
                    jobs = settle(f"{inferd_url}/v2/noop/health")
                    # the sync retention is 1 min: counted long before any of these rows can be swept
                    rows = stored_rows(db, "noop", since_us)
                    results[name].update(rows=sum(rows.values()), completed=rows.get("COMPLETED", 0),
                                         health_completed=jobs["completed"])
            rounds.append(results)
    finally:
        stop(inferd)
        stop(sdk)
        stop(runner)
    print_runsync(rounds, args)
    print_sequential(sequential, args)


def print_sequential(rates: dict[str, float], args: argparse.Namespace) -> None:
    print(f"\nsequential /runsync round trips per second, one client (SDK runner: {args.sdk_jobs} jobs, others: 200)")
    for name in (INFERD, SDK, SDK_RUNNER):
        print(f"  {name:<36}{rates[name]:>10.1f}")
    ratio = rates[INFERD] / rates[SDK_RUNNER]
    verdict = "met" if ratio >= SDK_RUNNER_TARGET else "NOT met"
    print(f"direct runner / SDK runner: {ratio:.0f}x; target >= {SDK_RUNNER_TARGET:.0f}x: {verdict}; "
          f"direct runner / SDK dev server: {rates[INFERD] / rates[SDK]:.2f}x")


def print_runsync(rounds: list[dict[str, dict[str, float]]], args: argparse.Namespace) -> None:
    """One table, servers as columns; with several rounds each value is the median over the rounds
    (errors and stored rows: summed)."""
    print(f"\nRunPod /runsync, no-op handler, wrk -t{args.threads} -c{args.connections} -d{args.duration}s, "
          f"body {INPUT}, {os.cpu_count()} CPUs" + (f", median of {len(rounds)} rounds" if len(rounds) > 1 else "")
          + "\n")

    def median(name: str, key: str) -> float:
        return statistics.median(one[name][key] for one in rounds)

    def total(name: str, key: str) -> int:
        return sum(int(one[name][key]) for one in rounds)

    rows = [
        ("req/s", lambda n: f"{median(n, 'rps'):.0f}"),
        ("p50 ms", lambda n: f"{median(n, 'p50'):.2f}"),
        ("p99 ms", lambda n: f"{median(n, 'p99'):.2f}"),
        ("errors (non-2xx)", lambda n: f"{total(n, 'non2xx')}"),
        ("socket errors", lambda n: f"{total(n, 'sockerr')}"),
        ("CPU ms/req (server)", lambda n: f"{median(n, 'cpu_ms'):.2f}"),
        ("2xx answered (wrk)", lambda n: f"{total(n, 'requests') - total(n, 'non2xx')}"),
        ("jobs stored (rows)", lambda n: f"{total(n, 'rows')}" if n == INFERD else "none (inline)"),
        ("  of them COMPLETED", lambda n: f"{total(n, 'completed')}" if n == INFERD else "-"),
    ]
    width = [22, 24, 16, 34]
    print(f"{'':<{width[0]}}{INFERD:>{width[1]}}{SDK:>{width[2]}}{SDK_RUNNER:>{width[3]}}")
    for label, cell in rows:
        print(f"{label:<{width[0]}}{cell(INFERD):>{width[1]}}{cell(SDK):>{width[2]}}{'(sequential, below)':>{width[3]}}")
    answered = total(INFERD, "requests") - total(INFERD, "non2xx")
    stored, completed = total(INFERD, "rows"), total(INFERD, "completed")
    check = "ok" if answered <= completed <= stored <= answered + args.connections * len(rounds) else "MISMATCH"
    print(f"\njobs stored: rows created in inferd's async.db during its wrk runs, counted once its queue was empty "
          f"(/health jobs.completed, warm-up included: {', '.join(str(one[INFERD]['health_completed']) for one in rounds)});"
          f"\nevery 2xx must be a COMPLETED row, and at most -c more rows (jobs wrk gave up waiting for): {check}")
    ratios = [one[INFERD]["rps"] / one[SDK]["rps"] for one in rounds]
    each = f" (rounds: {', '.join(f'{r:.2f}' for r in ratios)})" if len(rounds) > 1 else ""
    ratio = statistics.median(ratios)
    print(f"inferd/SDK dev server throughput ratio: {ratio:.2f}x{each}; "
          f"CPU per request ratio: {median(INFERD, 'cpu_ms') / median(SDK, 'cpu_ms'):.2f}x")
    verdict = "met" if ratio >= RUNSYNC_TARGET else "NOT met"
    print(f"target: direct runner >= {RUNSYNC_TARGET:.0f}x the SDK dev server: {verdict}")


# --- stream case ---


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def stream_job_inferd(client: httpx.Client, base: str) -> tuple[list[float], float, float]:
    """(per-item latency ms, time to first item ms, time to last item ms) of one job, polled every POLL_S."""
    submitted = time.time()
    answer = client.post(f"{base}/run", json={"input": {"n": STREAM_ITEMS, "gap_ms": STREAM_GAP_MS}})
    answer.raise_for_status()
    job_id = answer.json()["id"]
    latencies: list[float] = []
    first = last = 0.0
    next_poll = time.monotonic()
    deadline = next_poll + 60
    while time.monotonic() < deadline:
        polled = client.get(f"{base}/stream/{job_id}")
        polled.raise_for_status()
        seen = time.time()
        state = polled.json()
        for chunk in state["stream"]:
            latencies.append((seen - chunk["output"]["t"]) * 1000)
            first = first or (seen - submitted) * 1000
            last = (seen - submitted) * 1000
        if state["status"] in ("COMPLETED", "FAILED", "TIMED_OUT", "CANCELLED") and not state["stream"]:
            if state["status"] != "COMPLETED" or len(latencies) != STREAM_ITEMS:
                raise SystemExit(f"inferd stream job {job_id}: {state['status']}, {len(latencies)} items: {state}")
            return latencies, first, last
        next_poll += POLL_S
        time.sleep(max(0.0, next_poll - time.monotonic()))
    raise SystemExit(f"inferd stream job {job_id} did not finish in 60 s ({len(latencies)} items seen)")


def stream_job_sdk(client: httpx.Client, base: str) -> tuple[list[float], float, float]:
    """The dev server: POST /run stores the job, POST /stream/<id> runs it to the end."""
    submitted = time.time()
    answer = client.post(f"{base}/run", json={"input": {"n": STREAM_ITEMS, "gap_ms": STREAM_GAP_MS}})
    answer.raise_for_status()
    state = client.post(f"{base}/stream/{answer.json()['id']}")
    seen = time.time()
    state.raise_for_status()
    items = state.json().get("stream", [])
    if len(items) != STREAM_ITEMS:
        raise SystemExit(f"SDK dev server stream: {len(items)} items: {state.text[:300]}")
    latencies = [(seen - item["output"]["t"]) * 1000 for item in items]
    return latencies, (seen - submitted) * 1000, (seen - submitted) * 1000


def stream_case(root: Path, args: argparse.Namespace) -> None:
    project = make_project(root, "gen", GEN_HANDLER)
    inferd, inferd_url, _ = start_inferd(root, project)
    sdk, sdk_url = start_sdk(root, project)
    body = {"input": {"n": 2, "gap_ms": 1}}
    results: dict[str, dict[str, list[float]]] = {}
    try:
        wait_until_up(INFERD, inferd, f"{inferd_url}/v2/gen/runsync", body)
        wait_until_up(SDK, sdk, f"{sdk_url}/runsync", body)
        sides = {INFERD: (stream_job_inferd, f"{inferd_url}/v2/gen"), SDK: (stream_job_sdk, sdk_url)}
        with httpx.Client(timeout=60) as client:
            for name, (job, base) in sides.items():
                job(client, base)  # warm-up
                runs = [job(client, base) for _ in range(args.stream_jobs)]
                results[name] = {"items": [x for run in runs for x in run[0]], "first": [run[1] for run in runs],
                                 "last": [run[2] for run in runs]}
    finally:
        stop(inferd)
        stop(sdk)
    print_stream(results, args)


def print_stream(results: dict[str, dict[str, list[float]]], args: argparse.Namespace) -> None:
    print(f"\nRunPod stream, generator of {STREAM_ITEMS} items {STREAM_GAP_MS} ms apart, {args.stream_jobs} jobs "
          f"one after another, {os.cpu_count()} CPUs")
    print(f"(inferd: GET /v2/gen/stream/<id> every {POLL_S * 1000:.0f} ms; SDK dev server: POST /stream/<id> "
          "answers once the generator has ended)\n")
    rows = [
        ("items received", lambda r: f"{len(r['items'])}"),
        ("item latency p50 ms", lambda r: f"{statistics.median(r['items']):.1f}"),
        ("item latency p99 ms", lambda r: f"{percentile(r['items'], 0.99):.1f}"),
        ("item latency max ms", lambda r: f"{max(r['items']):.1f}"),
        ("first item ms (median)", lambda r: f"{statistics.median(r['first']):.1f}"),
        ("last item ms (median)", lambda r: f"{statistics.median(r['last']):.1f}"),
    ]
    width = [24, 24, 16]
    print(f"{'':<{width[0]}}{INFERD:>{width[1]}}{SDK:>{width[2]}}")
    for label, cell in rows:
        print(f"{label:<{width[0]}}{cell(results[INFERD]):>{width[1]}}{cell(results[SDK]):>{width[2]}}")
    ideal = (STREAM_ITEMS - 1) * STREAM_GAP_MS
    print(f"\nfirst/last item: from POST /run to the client having it (the generator itself takes ~{ideal} ms)")
    inferd, sdk = results[INFERD], results[SDK]
    print(f"inferd/SDK dev server ratio, time to first item: "
          f"{statistics.median(inferd['first']) / statistics.median(sdk['first']):.3f}x, "
          f"item latency p50: {statistics.median(inferd['items']) / statistics.median(sdk['items']):.3f}x (lower is better)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", choices=("runsync", "stream", "all"), default="all")
    parser.add_argument("--duration", type=int, default=8)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2,
                        help="runsync: measure each side this many times, alternating which goes first; report medians")
    parser.add_argument("--stream-jobs", type=int, default=5, help="stream: generator jobs per side")
    parser.add_argument("--sdk-jobs", type=int, default=5, help="runsync: sequential jobs through the SDK runner")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk not found: apt-get install -y wrk")
    with tempfile.TemporaryDirectory(prefix="inferd-runpod-bench-") as tmp:
        try:
            if args.case in ("runsync", "all"):
                runsync_case(Path(tmp), args)
            if args.case in ("stream", "all"):
                stream_case(Path(tmp), args)
        except BaseException:
            print_logs(Path(tmp))  # the servers' logs go away with the temp dir
            raise


if __name__ == "__main__":
    main()
