"""RealtimeAPI HTTP benchmark: inferd vs a bare starlette app calling the same handler in-process.

    python bench/realtime.py [--duration 10] [--connections 32] [--threads 2]

Both servers run in this one invocation, loaded by wrk at the same concurrency, so the ratio
is meaningful on a shared, noisy machine even when the absolute numbers are not.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
LUA = 'wrk.method = "POST"\nwrk.body = \'{"n": 1}\'\nwrk.headers["Content-Type"] = "application/json"\n'
UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.post(url, json={"n": 0}).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"{url} did not come up")


def make_project(root: Path) -> Path:
    project = root / "project"
    project.mkdir()
    shutil.copy(HERE / "noop_handler.py", project / "handler.py")
    (project / "cortex.yaml").write_text(
        "- name: noop\n  kind: RealtimeAPI\n  handler:\n    type: python\n    path: handler.py\n"
    )
    return project


def run_wrk(url: str, args: argparse.Namespace, script: Path) -> dict[str, float]:
    out = subprocess.run(["wrk", f"-t{args.threads}", f"-c{args.connections}", f"-d{args.duration}s",
                          "--latency", "-s", str(script), url], capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    latency = {p: float(v) * UNITS[u] for p, v, u in re.findall(r"\s(50|99)%\s+([\d.]+)(us|ms|s)\b", out)}
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"rps": rps, "p50": latency["50"], "p99": latency["99"], "errors": int(errors.group(1)) if errors else 0}


def start(cmd: list[str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(cmd, stdout=open(log, "wb"), stderr=subprocess.STDOUT, start_new_session=True)


def stop(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk not found: apt-get install -y wrk")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        script = root / "post.lua"
        script.write_text(LUA)
        project = make_project(root)
        inferd_port, bare_port = free_port(), free_port()
        inferd = start([sys.executable, "-m", "inferd", "run", "--project", str(project), "--port", str(inferd_port),
                        "--state-dir", str(root / "state"), "--log-level", "warning"], root / "inferd.log")
        bare = start([sys.executable, str(HERE / "bare_app.py"), str(bare_port), str(HERE)], root / "bare.log")
        results = {}
        try:
            targets = {"inferd": f"http://127.0.0.1:{inferd_port}/noop", "bare": f"http://127.0.0.1:{bare_port}/noop"}
            for url in targets.values():
                wait_for(url)
            for name, url in targets.items():
                run_wrk(url, argparse.Namespace(threads=1, connections=4, duration=2), script)  # warm-up
                results[name] = run_wrk(url, args, script)
        finally:
            stop(inferd)
            stop(bare)
    print(f"\nno-op JSON POST, wrk -t{args.threads} -c{args.connections} -d{args.duration}s, {os.cpu_count()} CPUs\n")
    print(f"{'server':<8} {'req/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'non-2xx':>8}")
    for name, r in results.items():
        print(f"{name:<8} {r['rps']:>10.0f} {r['p50']:>8.2f} {r['p99']:>8.2f} {r['errors']:>8}")
    ratio = results["inferd"]["rps"] / results["bare"]["rps"]
    overhead = results["inferd"]["p50"] - results["bare"]["p50"]
    print(f"\ninferd/bare throughput ratio: {ratio:.2f}x (target >= 0.70)")
    print(f"p50 overhead: {overhead:+.2f} ms (target < 1 ms)")


if __name__ == "__main__":
    main()
