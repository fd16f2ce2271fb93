"""AsyncAPI benchmarks: inferd vs a bare app that stores each submission the naive way.

    python bench/asyncapi.py [--duration 10] [--skip-get]

submit: wrk -t2 -c64 POSTs a small JSON body to inferd's /jobs (answered only once its row
committed, group commit) and to bench/async_bare_app.py (starlette on uvicorn, one INSERT
committed per request into its own SQLite file, WAL + synchronous=NORMAL like inferd's store).
wrk records every id it was given; once each server has stopped, every one of them is looked up
in its database file. inferd's worker runs the submitted jobs meanwhile, as in production.

get: GET /jobs/<random id> with wrk -t2 -c8 against inferd over a store prefilled with 100,000
completed jobs (through AsyncJobStore) vs the bare app SELECTing by id from its own file holding
100,000 rows.

Both sides of a case run in this one invocation at the same concurrency, so the ratio means
something on a shared, noisy machine even when absolute numbers do not.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from async_bare_app import INSERT as BARE_INSERT  # noqa: E402
from async_bare_app import create as create_bare_db  # noqa: E402
from realtime import UNITS, free_port, start  # noqa: E402  (start runs inferd from this tree)
from realtime import stop as stop_group  # noqa: E402

from inferd.store import AsyncJobStore  # noqa: E402

API = "jobs"
PREFILL = 100_000
SUBMIT_TARGET = 3_000  # durable submissions/s
GET_P99_TARGET = 10.0  # ms
BODY = '{"text": "hello", "n": 1}'
HANDLER = ("class Handler:\n    def __init__(self, config):\n        pass\n\n"
           "    def handle_async(self, payload, request_id):\n        return {\"ok\": True}\n")
PROBES = {"inferd": ("/-/ready", 200), "bare": (f"/{API}/not-a-job", 404)}  # path, status once up
CORTEX = f"- name: {API}\n  kind: AsyncAPI\n  handler:\n    type: python\n    path: handler.py\n"

POST_LUA = f"""wrk.method = "POST"
wrk.body = '{BODY}'
wrk.headers["Content-Type"] = "application/json"
"""
# The same POST, and every id a 200 answered is written to IDS_PATH when wrk finishes.
POST_RECORD_LUA = POST_LUA + """local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) ids = {} end
function response(status, headers, body)
  if status == 200 then ids[#ids + 1] = body:match('"id":%s*"(%w+)"') end
end
function done(summary, latency, requests)
  local out = io.open("IDS_PATH", "w")
  for _, thread in ipairs(threads) do
    for _, id in ipairs(thread:get("ids")) do out:write(id, "\\n") end
  end
  out:close()
end
"""
# GET /jobs/<id>, the id drawn at random from IDS_PATH (one per line) by each thread.
GET_LUA = """local count = 0
function setup(thread) count = count + 1; thread:set("seed", count) end
function init(args)
  ids = {}
  for line in io.lines("IDS_PATH") do ids[#ids + 1] = line end
  math.randomseed(os.time() * 1000 + seed)
end
function request() return wrk.format("GET", "/API/" .. ids[math.random(#ids)]) end
"""


# --- servers ---


def start_inferd(root: Path, state: Path, port: int) -> subprocess.Popen:
    project = root / "project"
    if not project.exists():
        project.mkdir()
        (project / "cortex.yaml").write_text(CORTEX)
        (project / "handler.py").write_text(HANDLER)
    cmd = [sys.executable, "-m", "inferd", "run", "--project", str(project), "--port", str(port),
           "--grpc-port", str(free_port()), "--state-dir", str(state), "--log-level", "warning"]
    # A queue-length limit that is never reached: no submission is refused with 503.
    return start(cmd, root / f"inferd-{state.name}.log", {"INFERD_ASYNC_MAX_QUEUE_LENGTH": "10000000"})


def start_bare(root: Path, db: Path, port: int) -> subprocess.Popen:
    return start([sys.executable, str(HERE / "async_bare_app.py"), str(port), str(db)], root / f"bare-{db.stem}.log")


def wait_for(name: str, url: str, proc: subprocess.Popen, timeout: float = 60) -> None:
    """inferd: until /-/ready says its worker is up; bare: until GET of an unknown id answers 404."""
    path, expected = PROBES[name]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(url + path).status_code == expected:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"{name} at {url} did not come up (exit code {proc.poll()})")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        stop_group(proc)


def print_logs(root: Path) -> None:
    for log in sorted(root.glob("*.log")):
        print(f"--- {log.name} (last 30 lines)\n" + "\n".join(log.read_text(errors="replace").splitlines()[-30:]),
              file=sys.stderr)


# --- wrk ---


def write_lua(root: Path, name: str, template: str, ids_path: Path) -> Path:
    script = root / name
    script.write_text(template.replace("IDS_PATH", str(ids_path)).replace("/API/", f"/{API}/"))
    return script


def run_wrk(url: str, threads: int, connections: int, seconds: int, script: Path) -> dict[str, float]:
    out = subprocess.run(["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency", "-s",
                          str(script), url], capture_output=True, text=True, check=True).stdout
    latency = {p: float(v) * UNITS[u] for p, v, u in re.findall(r"\s(50|99)%\s+([\d.]+)(us|ms|s)\b", out)}
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sockets = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
            "requests": int(re.search(r"(\d+) requests in", out).group(1)),
            "p50": latency["50"], "p99": latency["99"],
            "non2xx": int(non2xx.group(1)) if non2xx else 0,
            "sockerr": sum(map(int, sockets.groups())) if sockets else 0}


# --- submit case ---


def check_rows(db: Path, acked_ids: Path) -> dict[str, int]:
    """Read after the server stopped: are all the ids wrk was given in the file?"""
    acked = set(acked_ids.read_text().split())
    with contextlib.closing(sqlite3.connect(db)) as conn:
        stored = {row[0] for row in conn.execute("SELECT id FROM jobs")}
        statuses = dict(conn.execute("SELECT status, count(*) FROM jobs GROUP BY status").fetchall())
    return {"acked": len(acked), "rows": len(stored), "missing": len(acked - stored),
            "completed": statuses.get("completed", 0)}


def measure_submit(name: str, url: str, proc: subprocess.Popen, root: Path, args: argparse.Namespace
                   ) -> tuple[dict[str, float], Path]:
    wait_for(name, url, proc)
    warmup = write_lua(root, "post.lua", POST_LUA, Path("/dev/null"))
    run_wrk(f"{url}/{API}", 1, 4, 2, warmup)
    ids = root / f"acked-{name}.txt"
    result = run_wrk(f"{url}/{API}", 2, 64, args.duration, write_lua(root, f"post-{name}.lua", POST_RECORD_LUA, ids))
    return result, ids


def submit_case(root: Path, args: argparse.Namespace) -> None:
    state, bare_db = root / "submit-state", root / "bare-submit.db"
    servers = {"inferd": (lambda port: start_inferd(root, state, port), state / "async.db"),
               "bare": (lambda port: start_bare(root, bare_db, port), bare_db)}
    results = {}
    for name, (launch, db) in servers.items():  # one at a time, never sharing the CPUs
        port = free_port()
        proc = launch(port)
        try:
            result, ids = measure_submit(name, f"http://127.0.0.1:{port}", proc, root, args)
        finally:
            stop(proc)
        results[name] = {**result, **check_rows(db, ids)}
    print_submit(results, args)


def print_submit(results: dict[str, dict[str, float]], args: argparse.Namespace) -> None:
    print(f"\nDurable submissions: POST /{API} {BODY}, wrk -t2 -c64 -d{args.duration}s, {os.cpu_count()} CPUs")
    print("(inferd's AsyncAPI worker ran the submitted jobs during the run, as it would in production)\n")
    print(f"{'server':<8} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'non-2xx':>8} {'sock err':>8} "
          f"{'acked ids':>10} {'rows':>8} {'missing':>8} {'completed':>10}")
    for name, r in results.items():
        print(f"{name:<8} {r['rps']:>9.0f} {r['p50']:>8.2f} {r['p99']:>8.2f} {r['non2xx']:>8} {r['sockerr']:>8} "
              f"{r['acked']:>10} {r['rows']:>8} {r['missing']:>8} {r['completed']:>10}")
    print("\nacked ids: ids wrk received (200s; wrk counted "
          + ", ".join(f"{n} {r['requests'] - r['non2xx']:.0f}" for n, r in results.items())
          + "); rows: rows in the file after the server stopped, 2 s of warm-up included;"
          "\nmissing: acked ids not in the file (must be 0); completed: jobs already run by a worker")
    inferd = results["inferd"]
    verdict = "met" if inferd["rps"] >= SUBMIT_TARGET and inferd["missing"] == 0 else "NOT met"
    print(f"inferd/bare throughput ratio: {inferd['rps'] / results['bare']['rps']:.2f}x")
    print(f"target: >= {SUBMIT_TARGET:,} durable submissions/s, none missing: {verdict} ({inferd['rps']:,.0f}/s)")


# --- get case ---


async def prefill_inferd(db: Path, count: int) -> list[str]:
    """`count` completed jobs through the public store API: submit in concurrent batches (the
    writer group-commits them), then complete each one (complete() accepts a queued job)."""
    store = await AsyncJobStore.open(db)
    ids: list[str] = []
    try:
        for start_at in range(0, count, 5000):
            batch = min(5000, count - start_at)
            ids += await asyncio.gather(*[store.submit(API, BODY.encode(), "application/json", {})
                                          for _ in range(batch)])
        for start_at in range(0, count, 5000):
            await asyncio.gather(*[store.complete(job_id, b'{"ok": true}') for job_id in ids[start_at:start_at + 5000]])
    finally:
        await store.close()
    return ids


def prefill_bare(db: Path, count: int) -> list[str]:
    ids = [uuid.uuid4().hex for _ in range(count)]
    now = time.time_ns() // 1000
    conn = create_bare_db(str(db))
    try:
        conn.execute("BEGIN")
        conn.executemany(BARE_INSERT, [(job_id, "completed", None, b'{"ok": true}', now) for job_id in ids])
        conn.execute("COMMIT")
    finally:
        conn.close()
    return ids


def measure_get(name: str, url: str, proc: subprocess.Popen, root: Path, ids: list[str],
                args: argparse.Namespace) -> dict[str, float]:
    ids_path = root / f"get-ids-{name}.txt"
    ids_path.write_text("\n".join(ids) + "\n")
    script = write_lua(root, f"get-{name}.lua", GET_LUA, ids_path)
    wait_for(name, url, proc)
    job = httpx.get(f"{url}/{API}/{ids[0]}").json()
    if job.get("status") != "completed" or job.get("result") != {"ok": True}:
        raise SystemExit(f"{name}: a prefilled job reads back as {job}")
    run_wrk(url, 1, 4, 2, script)  # warm-up
    return run_wrk(url, 2, 8, args.duration, script)


def get_case(root: Path, args: argparse.Namespace) -> None:
    fill_start = time.perf_counter()
    ids = {"inferd": asyncio.run(prefill_inferd(root / "get-state" / "async.db", PREFILL))}
    fill_s = time.perf_counter() - fill_start
    ids["bare"] = prefill_bare(root / "bare-get.db", PREFILL)
    launch = {"inferd": lambda port: start_inferd(root, root / "get-state", port),
              "bare": lambda port: start_bare(root, root / "bare-get.db", port)}
    results = {}
    for name, start_server in launch.items():
        port = free_port()
        proc = start_server(port)
        try:
            results[name] = measure_get(name, f"http://127.0.0.1:{port}", proc, root, ids[name], args)
        finally:
            stop(proc)
    print_get(results, fill_s, args)


def print_get(results: dict[str, dict[str, float]], fill_s: float, args: argparse.Namespace) -> None:
    print(f"\nResult polls: GET /{API}/<random id of {PREFILL:,}>, wrk -t2 -c8 -d{args.duration}s, "
          f"{os.cpu_count()} CPUs")
    print(f"(inferd's store prefilled with {PREFILL:,} completed jobs through AsyncJobStore in {fill_s:.1f} s)\n")
    print(f"{'server':<8} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'non-2xx':>8} {'sock err':>8}")
    for name, r in results.items():
        print(f"{name:<8} {r['rps']:>9.0f} {r['p50']:>8.2f} {r['p99']:>8.2f} {r['non2xx']:>8} {r['sockerr']:>8}")
    inferd, bare = results["inferd"], results["bare"]
    print(f"\ninferd/bare throughput ratio: {inferd['rps'] / bare['rps']:.2f}x, "
          f"p99 ratio: {inferd['p99'] / bare['p99']:.2f}x")
    verdict = "met" if inferd["p99"] < GET_P99_TARGET and inferd["non2xx"] == 0 else "NOT met"
    print(f"target: p99 < {GET_P99_TARGET:.0f} ms, no errors: {verdict} ({inferd['p99']:.2f} ms)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--skip-get", action="store_true", help="only the submission case")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk not found: apt-get install -y wrk")
    with tempfile.TemporaryDirectory(prefix="inferd-async-bench-") as tmp:
        try:
            submit_case(Path(tmp), args)
            if not args.skip_get:
                get_case(Path(tmp), args)
        except BaseException:
            print_logs(Path(tmp))  # the servers' logs go away with the temp dir
            raise


if __name__ == "__main__":
    main()
