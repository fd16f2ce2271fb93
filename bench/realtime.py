"""RealtimeAPI benchmarks: inferd vs a bare server calling the same handler in-process.

    python bench/realtime.py [--case http|bytes|grpc|all] [--duration 10] [--connections 32] [--rounds 1]

http: a no-op JSON handler behind inferd vs the same handler in a bare starlette app on
uvicorn, both loaded by wrk. bytes: 1 MiB application/octet-stream POST bodies to a handler
that answers {"n": len(payload)}, same pairing. grpc: a no-op unary RPC behind inferd vs a
bare grpc.aio server, both loaded by bench/grpc_load.py (or h2load). Both sides of a case run
in this one invocation at the same concurrency, so the ratio means something on a shared,
noisy machine even when absolute numbers do not.

inferd (the daemon and, through PYTHONPATH, its workers) runs from the tree this script lives
in, not from whatever copy of the package is installed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
LUA = 'wrk.method = "POST"\nwrk.body = \'{"n": 1}\'\nwrk.headers["Content-Type"] = "application/json"\n'
BYTES_SIZE = 1 << 20
BYTES_LUA = (f'wrk.method = "POST"\nwrk.body = string.rep("x", {BYTES_SIZE})\n'
             'wrk.headers["Content-Type"] = "application/octet-stream"\n')
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


def make_project(root: Path, api: str = "noop", handler: str = "noop_handler.py") -> Path:
    project = root / f"project-{api}"
    project.mkdir()
    shutil.copy(HERE / handler, project / "handler.py")
    (project / "cortex.yaml").write_text(
        f"- name: {api}\n  kind: RealtimeAPI\n  handler:\n    type: python\n    path: handler.py\n"
    )
    return project


CLK_TCK = os.sysconf("SC_CLK_TCK")


def run_wrk(url: str, args: argparse.Namespace, script: Path) -> dict[str, float]:
    out = subprocess.run(["wrk", f"-t{args.threads}", f"-c{args.connections}", f"-d{args.duration}s",
                          "--latency", "-s", str(script), url], capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    latency = {p: float(v) * UNITS[u] for p, v, u in re.findall(r"\s(50|99)%\s+([\d.]+)(us|ms|s)\b", out)}
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"rps": rps, "p50": latency["50"], "p99": latency["99"], "errors": int(errors.group(1)) if errors else 0}


def start(cmd: list[str], log: Path, extra_env: dict[str, str] | None = None) -> subprocess.Popen:
    # this tree first, for the daemon and (inherited through the environment) its workers
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    return subprocess.Popen(cmd, stdout=open(log, "wb"), stderr=subprocess.STDOUT, start_new_session=True,
                            env={**env, **(extra_env or {})}, cwd=ROOT)


def stop(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)


def group_pids(pgid: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rpartition(")")[2].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                pids.append(int(entry))
    return pids


def group_cpu(pgid: int) -> float:
    """CPU seconds (user + system) used so far by the live processes of a process group."""
    total = 0
    for pid in group_pids(pgid):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / CLK_TCK


def print_case(title: str, rounds: list[dict[str, dict[str, float]]], target: float) -> None:
    """One table; with several rounds, each column is the median over the rounds, and so is the ratio."""
    print(f"\n{title}, {os.cpu_count()} CPUs" + (f", median of {len(rounds)} rounds" if len(rounds) > 1 else "") + "\n")
    print(f"{'server':<8} {'req/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'errors':>8}")
    for name in rounds[0]:
        r = {key: statistics.median(one[name][key] for one in rounds) for key in ("rps", "p50", "p99")}
        errors = sum(one[name]["errors"] for one in rounds)
        print(f"{name:<8} {r['rps']:>10.0f} {r['p50']:>8.2f} {r['p99']:>8.2f} {errors:>8}")
    ratios = [one["inferd"]["rps"] / one["bare"]["rps"] for one in rounds]
    overhead = statistics.median(one["inferd"]["p50"] - one["bare"]["p50"] for one in rounds)
    each = f" (rounds: {', '.join(f'{r:.2f}' for r in ratios)})" if len(rounds) > 1 else ""
    print(f"\ninferd/bare throughput ratio: {statistics.median(ratios):.2f}x (target >= {target:.2f}){each}")
    print(f"p50 overhead: {overhead:+.2f} ms")


def wrk_rounds(targets: dict[str, str], args: argparse.Namespace, script: Path,
               measure: Callable[[str, argparse.Namespace, Path], dict[str, float]] | None = None
               ) -> list[dict[str, dict[str, float]]]:
    """wrk on each of ``targets`` (name: URL) once it answers and is warmed up; ``--rounds`` times,
    the order swapped every round. ``measure``: run_wrk, or a wrapper adding its own readings."""
    measure = measure or run_wrk
    for url in targets.values():
        wait_for(url)
        run_wrk(url, argparse.Namespace(threads=1, connections=4, duration=2), script)  # warm-up
    rounds = []
    for n in range(args.rounds):
        order = list(targets) if n % 2 == 0 else list(reversed(targets))
        results = {name: measure(targets[name], args, script) for name in order}
        rounds.append({name: results[name] for name in targets})
    return rounds


def wrk_pair(root: Path, args: argparse.Namespace, api: str, handler: str,
             lua: str) -> list[dict[str, dict[str, float]]]:
    """inferd serving ``handler`` as API ``api`` vs bare_app.py's route of the same name, under wrk;
    ``--rounds`` times, the order of the two swapped every round."""
    if shutil.which("wrk") is None:
        raise SystemExit("wrk not found: apt-get install -y wrk")
    script = root / f"{api}.lua"
    script.write_text(lua)
    project = make_project(root, api, handler)
    inferd_port, bare_port = free_port(), free_port()
    inferd = start([sys.executable, "-m", "inferd", "run", "--project", str(project), "--port", str(inferd_port),
                    "--grpc-port", str(free_port()), "--state-dir", str(root / f"state-{api}"),
                    "--log-level", "warning"], root / f"inferd-{api}.log")
    bare = start([sys.executable, str(HERE / "bare_app.py"), str(bare_port), str(HERE)], root / f"bare-{api}.log")
    try:
        return wrk_rounds({"inferd": f"http://127.0.0.1:{inferd_port}/{api}",
                           "bare": f"http://127.0.0.1:{bare_port}/{api}"}, args, script)
    finally:
        stop(inferd)
        stop(bare)


def http_case(root: Path, args: argparse.Namespace) -> None:
    rounds = wrk_pair(root, args, "noop", "noop_handler.py", LUA)
    print_case(f"HTTP no-op JSON POST, wrk -t{args.threads} -c{args.connections} -d{args.duration}s", rounds, 0.7)


def bytes_case(root: Path, args: argparse.Namespace) -> None:
    rounds = wrk_pair(root, args, "bytes", "bytes_handler.py", BYTES_LUA)
    print_case(f"HTTP 1 MiB application/octet-stream POST, wrk -t{args.threads} -c{args.connections} "
               f"-d{args.duration}s", rounds, 0.8)


def grpc_stubs(root: Path) -> Path:
    from grpc_tools import protoc

    out = root / "stubs"
    out.mkdir()
    protoc.main(["protoc", f"-I{HERE}", f"--python_out={out}", f"--grpc_python_out={out}", str(HERE / "noop.proto")])
    return out


GRPC_FRAME = b"\x00\x00\x00\x00\x02\x08\x01"  # uncompressed gRPC frame of noop.Sample(n=1)


def run_h2load(address: str, args: argparse.Namespace, body: Path) -> dict[str, float]:
    """h2load (C, nghttp2) as the gRPC client: it leaves the CPU to the servers under test.
    It reports mean latency, not percentiles: p50/p99 columns show mean and max."""
    out = subprocess.run(["h2load", "-D", str(args.duration), "-c", "4", "-m", str(max(args.connections // 4, 1)),
                          "-d", str(body), "-H", "content-type: application/grpc", "-H", "te: trailers",
                          f"http://{address}/noop.Noop/Predict"], capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"finished in [\d.]+m?s, ([\d.]+) req/s", out).group(1))
    row = re.search(r"time for request:\s+(\S+)\s+(\S+)\s+(\S+)", out)
    to_ms = lambda v: float(re.match(r"[\d.]+", v).group()) * UNITS[re.search(r"(us|ms|s)$", v).group(1)]  # noqa: E731
    failed = int(re.search(r"(\d+) failed", out).group(1))
    return {"rps": rps, "p50": to_ms(row.group(3)), "p99": to_ms(row.group(2)), "errors": failed}


def run_grpc_load(address: str, connections: int, seconds: float) -> dict[str, float]:
    out = subprocess.run([sys.executable, str(HERE / "grpc_load.py"), address, "/noop.Noop/Predict",
                          str(connections), str(seconds)], capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def wait_for_grpc(address: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if run_grpc_load(address, 1, 0.2)["errors"] == 0:
                return
        except subprocess.CalledProcessError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"{address} did not come up")


def grpc_case(root: Path, args: argparse.Namespace) -> None:
    project = root / "grpc_project"
    project.mkdir()
    shutil.copy(HERE / "noop.proto", project / "noop.proto")
    shutil.copy(HERE / "noop_grpc_handler.py", project / "handler.py")
    (project / "cortex.yaml").write_text("- name: noop\n  kind: RealtimeAPI\n  handler:\n    type: python\n"
                                         "    path: handler.py\n    protobuf_path: noop.proto\n")
    inferd_port, bare_port = free_port(), free_port()
    inferd = start([sys.executable, "-m", "inferd", "run", "--project", str(project), "--port", str(free_port()),
                    "--grpc-port", str(inferd_port), "--state-dir", str(root / "gstate"), "--log-level", "warning"],
                   root / "inferd-grpc.log")
    bare = start([sys.executable, str(HERE / "bare_grpc.py"), str(grpc_stubs(root)), str(bare_port), str(HERE)],
                 root / "bare-grpc.log")
    rounds = []
    try:
        targets = {"inferd": f"127.0.0.1:{inferd_port}", "bare": f"127.0.0.1:{bare_port}"}
        for address in targets.values():
            wait_for_grpc(address)
            run_grpc_load(address, 4, 1)  # warm-up, and a real grpc client proves the call succeeds
        body = root / "grpc_frame.bin"
        body.write_bytes(GRPC_FRAME)
        h2load = shutil.which("h2load") is not None
        for n in range(args.rounds):
            order = list(targets) if n % 2 == 0 else list(reversed(targets))
            results = {name: run_h2load(targets[name], args, body) if h2load else
                       run_grpc_load(targets[name], args.connections, args.duration) for name in order}
            rounds.append({name: results[name] for name in targets})
    finally:
        stop(inferd)
        stop(bare)
    client = ("h2load (p50 column = mean, p99 column = max)" if h2load
              else "grpc.aio client (apt-get install nghttp2-client for h2load)")
    print_case(f"gRPC no-op unary, {args.connections} concurrent streams for {args.duration}s, {client}", rounds, 0.6)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", choices=("http", "bytes", "grpc", "all"), default="all")
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=1,
                        help="measure each pair this many times, alternating which goes first; report medians")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if args.case in ("http", "all"):
            http_case(root, args)
        if args.case in ("bytes", "all"):
            bytes_case(root, args)
        if args.case in ("grpc", "all"):
            grpc_case(root, args)


if __name__ == "__main__":
    main()
