"""Container RealtimeAPI benchmark: inferd's proxy in front of a container vs that container called
directly, in the same run.

    python bench/containers.py [--duration 10] [--connections 32] [--rounds 1]

The container is bench/noop_container.py (a no-op starlette app on uvicorn) run by inferd as a
container API (``pod.containers``, a local process); "bare" is wrk against the very same process
on its own port (read from ``/-/apis``), "inferd" is wrk against ``/<api>`` through the proxy.
Target: at least 0.7x of direct throughput, and p50 overhead under 1 ms.

Each run also reads the CPU time (user + system, from /proc) that inferd's daemon and the
container's process group used during it, per request answered: where a 2-core machine's
budget goes when wrk, the proxy and the container share it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from realtime import HERE, LUA, free_port, group_cpu, print_case, run_wrk, start, stop, wrk_rounds  # noqa: E402

API = "noop"


def make_project(root: Path) -> Path:
    project = root / "project-containers"
    project.mkdir()
    shutil.copy(HERE / "noop_container.py", project / "server.py")
    (project / "cortex.yaml").write_text(
        f"- name: {API}\n  kind: RealtimeAPI\n  pod:\n    max_concurrency: 64\n    containers:\n"
        f"      - name: api\n        command: [{sys.executable}, server.py]\n")
    return project


def replica(inferd_url: str, timeout: float = 60) -> tuple[int, int]:
    """The ready replica's (port, container pid)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            api = httpx.get(f"{inferd_url}/-/apis").json()["apis"][0]
            if api["state"] == "ready":
                worker = api["workers"][0]
                return int(worker["port"]), int(worker["containers"][0]["pid"])
        except (httpx.TransportError, KeyError, IndexError, ValueError):
            pass
        time.sleep(0.1)
    raise SystemExit("the container API did not become ready")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk not found: apt-get install -y wrk")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        script = root / "post.lua"
        script.write_text(LUA)
        project = make_project(root)
        port = free_port()
        inferd = start([sys.executable, "-m", "inferd", "run", "--project", str(project), "--port", str(port),
                        "--grpc-port", str(free_port()), "--state-dir", str(root / "state"), "--log-level", "warning"],
                       root / "inferd.log", {"INFERD_CONTAINER_ENGINE": "none"})
        try:
            inferd_url = f"http://127.0.0.1:{port}"
            direct, container = replica(inferd_url)
            groups = {"daemon": inferd.pid, "container": os.getpgid(container)}
            rounds = wrk_rounds({"inferd": f"{inferd_url}/{API}", "bare": f"http://127.0.0.1:{direct}/"}, args, script,
                                lambda url, args, script: with_cpu(url, args, script, groups))
        finally:
            stop(inferd)
    print_case(f"container RealtimeAPI: proxy vs the container directly, wrk -c{args.connections}", rounds, 0.7)
    print("CPU µs per request (median):", "; ".join(
        f"{name}: " + ", ".join(f"{group} {statistics.median(one[name][f'cpu_{group}'] for one in rounds):.0f}"
                                for group in groups) for name in rounds[0]))


def with_cpu(url: str, args: argparse.Namespace, script: Path, groups: dict[str, int]) -> dict[str, float]:
    """run_wrk, and the CPU each process group used during it, in µs per request answered."""
    before = {name: group_cpu(pgid) for name, pgid in groups.items()}
    result = run_wrk(url, args, script)
    answered = max(result["rps"] * args.duration, 1)
    for name, pgid in groups.items():
        result[f"cpu_{name}"] = (group_cpu(pgid) - before[name]) * 1e6 / answered
    return result


if __name__ == "__main__":
    main()
