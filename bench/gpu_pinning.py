"""Check, on a real machine, that inferd pins each worker to the GPUs it was assigned.

    python bench/gpu_pinning.py [--timeout 180] [--keep]

Run it from anywhere: the daemon and its workers run from the tree this script lives in
(through PYTHONPATH), with the interpreter running the script. It needs inferd's own
dependencies and, for the device checks, nvidia-ml-py; torch is optional (without it the
workers report no CUDA view and nothing shows up in NVML's process list).

What it does:

1. reads the GPU inventory from NVML (and compares it with ``inferd.gpu.read_inventory``);
2. writes a temporary project of RealtimeAPIs — ``gpu1`` (``compute.gpu: 1``), ``gpu0``
   (``compute.gpu: 0``), ``two`` (``compute.gpu: 1``, ``processes_per_replica: 2``) — whose
   handler records, in its constructor, the worker's pid, ``CUDA_VISIBLE_DEVICES``,
   ``NVIDIA_VISIBLE_DEVICES``, ``CUDA_DEVICE_ORDER`` and torch's view (device count, UUIDs),
   and, when it sees a GPU, keeps a small tensor on ``cuda:0`` so the process appears in
   NVML's list of compute processes;
3. starts ``python -m inferd run`` on kernel-picked ports with a temporary state dir, and
   with ``CUDA_VISIBLE_DEVICES=0`` / ``NVIDIA_VISIBLE_DEVICES=all`` in the daemon's own
   environment (a worker must not inherit them);
4. prints the inventory, every worker's environment and torch view, NVML's compute
   processes matched against the worker pids, and ``/-/apis``'s GPU fields;
5. writes a second project whose API asks for one GPU more than the machine has, prints what
   ``inferd validate`` and the daemon say of it;
6. stops each daemon and checks that none of its workers is left.

It exits 1 when a check fails (a ``compute.gpu: 1`` worker that does not see exactly its one
device, a ``compute.gpu: 0`` worker that sees any, a worker left behind...). On a machine with
no GPU it checks what can be checked there (GPU APIs refused with a clear error, the
``compute.gpu: 0`` API served and blind to GPUs) and says so.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent

HANDLER = '''\
import json
import os
import pathlib

_KEEP = []  # the tensor that makes this process one of NVML's compute processes


def probe(report_dir):
    report = {
        "pid": os.getpid(),
        "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "NVIDIA_VISIBLE_DEVICES": os.environ.get("NVIDIA_VISIBLE_DEVICES"),
        "CUDA_DEVICE_ORDER": os.environ.get("CUDA_DEVICE_ORDER"),
        "torch": None,
    }
    try:
        import torch
    except Exception as exc:
        report["torch_error"] = f"{type(exc).__name__}: {exc}"
    else:
        view = {"version": torch.__version__, "device_count": torch.cuda.device_count(), "uuids": [],
                "names": []}
        for index in range(view["device_count"]):
            props = torch.cuda.get_device_properties(index)
            view["names"].append(props.name)
            uuid = getattr(props, "uuid", None)
            view["uuids"].append(None if uuid is None else "GPU-" + str(uuid))
        if view["device_count"]:
            _KEEP.append(torch.ones(1 << 20, device="cuda:0"))
            torch.cuda.synchronize()
            view["allocated_on"] = str(_KEEP[0].device)
        report["torch"] = view
    path = pathlib.Path(report_dir) / f"{os.environ.get('CORTEX_API_NAME')}-{os.getpid()}.json"
    path.write_text(json.dumps(report))
    return report


class Handler:
    def __init__(self, config):
        self.report = probe(config["report_dir"])

    def handle_get(self):
        return self.report
'''

NO_GPU = "no NVIDIA GPU"


# --------------------------------------------------------------------------- NVML


@dataclass
class Gpu:
    index: int
    uuid: str
    name: str
    memory_total: int


@dataclass
class Nvml:
    devices: list[Gpu] = field(default_factory=list)
    note: str = ""


def _text(value: str | bytes) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _uuid(value: str | None) -> str:
    """A GPU UUID as NVML ("GPU-xxxx") and torch ("xxxx") both write it, compared alike."""
    text = (value or "").lower()
    return text.removeprefix("gpu-")


def nvml_inventory() -> Nvml:
    try:
        import pynvml
    except Exception as exc:
        return Nvml(note=f"pynvml not importable ({exc})")
    try:
        pynvml.nvmlInit()
    except Exception as exc:
        return Nvml(note=f"NVML not available ({exc})")
    try:
        found = Nvml()
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            found.devices.append(Gpu(index, _text(pynvml.nvmlDeviceGetUUID(handle)),
                                     _text(pynvml.nvmlDeviceGetName(handle)), int(memory.total)))
        found.note = f"driver {_text(pynvml.nvmlSystemGetDriverVersion())}"
        return found
    finally:
        pynvml.nvmlShutdown()


def nvml_processes() -> tuple[dict[int, list[tuple[int, int | None]]], str]:
    """GPU index -> [(pid, bytes used)] of NVML's compute processes, and a note on failures."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception as exc:
        return {}, f"NVML not available ({exc})"
    found: dict[int, list[tuple[int, int | None]]] = {}
    notes = []
    try:
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            try:
                running = pynvml.nvmlDeviceGetComputeRunningProcesses(handle)
            except Exception as exc:
                notes.append(f"GPU {index}: nvmlDeviceGetComputeRunningProcesses failed ({exc})")
                continue
            found[index] = [(int(p.pid), p.usedGpuMemory) for p in running]
    finally:
        pynvml.nvmlShutdown()
    return found, "; ".join(notes)


# --------------------------------------------------------------------------- daemon


def pid_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def proc_environ(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    pairs = (item.split(b"=", 1) for item in raw.split(b"\0") if b"=" in item)
    return {k.decode(errors="replace"): v.decode(errors="replace") for k, v in pairs}


def descendants(pid: int) -> set[int]:
    """Every living process below ``pid``, read from /proc."""
    parent: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {child for child, ppid in parent.items() if ppid in frontier and child not in found}
        found |= frontier
    return {p for p in found if pid_alive(p)}


class Daemon:
    def __init__(self, project: Path, work: Path, env: dict[str, str]) -> None:
        work.mkdir(parents=True, exist_ok=True)
        self.log_path = work / "daemon.log"
        cmd = [sys.executable, "-m", "inferd", "run", "--project", str(project), "--port", "0", "--grpc-port", "0",
               "--state-dir", str(work / "state")]
        self._log = open(self.log_path, "wb")  # closed in stop()
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env)
        self.port = self._port()
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=30)
        self.workers_seen: set[int] = set()

    def events(self) -> list[dict[str, Any]]:
        found = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict):
                found.append(event)
        return found

    def _port(self, timeout: float = 60) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for event in self.events():
                if event.get("event") == "inferd_listening":
                    return int(event["port"])
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited with {self.proc.returncode}:\n{self.log_path.read_text()}")
            time.sleep(0.05)
        raise RuntimeError(f"daemon did not listen within {timeout}s:\n{self.log_path.read_text()}")

    def apis(self) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = self.client.get("/-/apis").json()["apis"]
        for row in rows:
            self.workers_seen |= {int(w["pid"]) for w in row.get("workers", []) if w.get("pid")}
        return rows

    def settle(self, timeout: float) -> list[dict[str, Any]]:
        """/-/apis once every API is ready or failed (or when ``timeout`` runs out)."""
        deadline = time.monotonic() + timeout
        rows = self.apis()
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited with {self.proc.returncode}:\n{self.log_path.read_text()}")
            rows = self.apis()
            if all(r["state"] in ("ready", "failed") for r in rows):
                return rows
            time.sleep(0.2)
        return rows

    def stop(self, timeout: float = 60) -> tuple[int, list[int]]:
        """The daemon's exit code, and its processes (workers included) still alive after it."""
        self.workers_seen |= descendants(self.proc.pid)
        self.client.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        deadline = time.monotonic() + 5
        left = [pid for pid in sorted(self.workers_seen) if pid_alive(pid)]
        while left and time.monotonic() < deadline:
            time.sleep(0.1)
            left = [pid for pid in left if pid_alive(pid)]
        return self.proc.returncode, left


# --------------------------------------------------------------------------- report


class Checks:
    def __init__(self) -> None:
        self.failed: list[str] = []

    def expect(self, ok: bool, what: str) -> None:
        print(f"  [{'ok' if ok else 'FAIL'}] {what}")
        if not ok:
            self.failed.append(what)


def table(rows: list[list[str]], header: list[str]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, ["-" * w for w in widths], *rows]:
        print("  " + "  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def daemon_env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("INFERD_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    env["INFERD_LOG_FORMAT"] = "json"  # the log lines this script reads (inferd_listening, gpu_shared...)
    env.update(extra)
    return env


def write_project(directory: Path, report_dir: Path, apis: list[tuple[str, int, int]]) -> None:
    """``apis``: (name, compute.gpu, processes_per_replica)."""
    directory.mkdir(parents=True)
    (directory / "probe.py").write_text(HANDLER)
    blocks = []
    for name, gpus, processes in apis:
        blocks.append(textwrap.dedent(f"""\
            - name: {name}
              kind: RealtimeAPI
              handler:
                type: python
                path: probe.py
                processes_per_replica: {processes}
                config:
                  report_dir: {json.dumps(str(report_dir))}
              compute:
                gpu: {gpus}
            """))
    (directory / "cortex.yaml").write_text("\n".join(blocks))


def read_reports(report_dir: Path) -> dict[int, dict[str, Any]]:
    reports = {}
    for path in report_dir.glob("*.json"):
        report = json.loads(path.read_text())
        reports[int(report["pid"])] = report
    return reports


def pinning_run(work: Path, inventory: Nvml, settle_timeout: float, checks: Checks) -> None:
    have_gpu = bool(inventory.devices)
    uuids = {gpu.index: gpu.uuid for gpu in inventory.devices}
    wanted = {"gpu1": (1, 1), "gpu0": (0, 1), "two": (1, 2)}  # name -> (compute.gpu, processes)
    report_dir = work / "reports"
    report_dir.mkdir(parents=True)
    project = work / "project"
    write_project(project, report_dir, [(name, gpus, procs) for name, (gpus, procs) in wanted.items()])

    print("\n== daemon 1: gpu1 (compute.gpu 1), gpu0 (compute.gpu 0), two (compute.gpu 1, 2 processes)")
    print("   daemon's own env: CUDA_VISIBLE_DEVICES=0 NVIDIA_VISIBLE_DEVICES=all (workers must not inherit them)")
    started = time.monotonic()
    daemon = Daemon(project, work / "d1", daemon_env({"CUDA_VISIBLE_DEVICES": "0", "NVIDIA_VISIBLE_DEVICES": "all"}))
    try:
        rows = daemon.settle(settle_timeout)
        print(f"   settled in {time.monotonic() - started:.1f}s")
        by_name = {row["name"]: row for row in rows}
        print("\n-- /-/apis")
        table([[r["name"], r["state"], str(r.get("gpus_per_replica")), str(r.get("desired_workers")),
                str(r.get("ready_workers")), " ".join(f"{w.get('pid')}:{w.get('gpus')}" for w in r.get("workers", [])),
                str(r.get("error") or "")] for r in rows],
              ["api", "state", "gpus/replica", "desired", "ready", "workers pid:gpus", "error"])

        # a GET through the daemon, so the handler is known to answer (not only to have started)
        answered: dict[str, Any] = {}
        for name in wanted:
            if by_name[name]["state"] == "ready":
                response = daemon.client.get(f"/{name}")
                answered[name] = response.json() if response.status_code == 200 else f"HTTP {response.status_code}"
        reports = read_reports(report_dir)
        processes, nvml_note = nvml_processes() if have_gpu else ({}, "no GPU")
        on_gpu = {pid: index for index, listed in processes.items() for pid, _ in listed}

        print("\n-- workers (env read from /proc/<pid>/environ; torch view from the handler's constructor)")
        rows_out = []
        for name in wanted:
            for worker in by_name[name].get("workers", []):
                pid = int(worker["pid"])
                env = proc_environ(pid)
                view = (reports.get(pid) or {}).get("torch") or {}
                rows_out.append([name, str(worker.get("slot")), str(pid), str(worker.get("gpus")),
                                 repr(env.get("CUDA_VISIBLE_DEVICES")), repr(env.get("NVIDIA_VISIBLE_DEVICES")),
                                 repr(env.get("CUDA_DEVICE_ORDER")), str(view.get("device_count", "-")),
                                 ",".join(str(u) for u in view.get("uuids", [])) or "-",
                                 str(on_gpu.get(pid, "-"))])
        table(rows_out, ["api", "slot", "pid", "/-/apis gpus", "CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES",
                         "CUDA_DEVICE_ORDER", "torch count", "torch uuids", "NVML gpu"])
        for pid, found in sorted(reports.items()):
            if found.get("torch_error"):
                print(f"  pid {pid}: torch not importable: {found['torch_error']}")
        for name, answer in answered.items():
            print(f"  GET /{name} -> {json.dumps(answer)[:200]}")

        print(f"\n-- NVML compute processes ({nvml_note or 'ok'})")
        worker_api = {int(w["pid"]): name for name in wanted for w in by_name[name].get("workers", [])}
        listed_rows = [[str(index), str(pid), str(used), worker_api.get(pid, "(not an inferd worker)")]
                       for index, listed in sorted(processes.items()) for pid, used in listed]
        table(listed_rows or [["-", "-", "-", "none listed"]], ["gpu", "pid", "used bytes", "api"])
        shared = [e.get("detail") for e in daemon.events() if e.get("event") == "gpu_shared"]
        for detail in shared:
            print(f"  log gpu_shared: {detail}")

        print("\n-- checks")
        torch_seen = any(r.get("torch") is not None for r in reports.values())
        nvml_lists = any(processes.values())
        for name, (gpus, procs) in wanted.items():
            row = by_name[name]
            workers = row.get("workers", [])
            if gpus and not have_gpu:
                checks.expect(row["state"] == "failed" and NO_GPU in str(row.get("error")),
                              f"{name}: refused on a GPU-less machine with a clear error ({row.get('error')!r})")
                continue
            checks.expect(row["state"] == "ready" and len(workers) == procs,
                          f"{name}: ready with {procs} worker(s) (state {row['state']}, {len(workers)} worker(s))")
            checks.expect(row.get("gpus_per_replica") == gpus, f"{name}: /-/apis gpus_per_replica == {gpus}")
            devices = {tuple(w.get("gpus", [])) for w in workers}
            if procs > 1:
                checks.expect(len(devices) == 1, f"{name}: the {procs} processes of its one replica share devices {devices}")
            for worker in workers:
                pid = int(worker["pid"])
                env = proc_environ(pid)
                report = reports.get(pid)
                listed = ",".join(str(i) for i in worker.get("gpus", []))
                checks.expect(report is not None, f"{name} pid {pid}: the handler reported")
                checks.expect(len(worker.get("gpus", [])) == gpus, f"{name} pid {pid}: /-/apis gpus {worker.get('gpus')}")
                checks.expect(env.get("CUDA_VISIBLE_DEVICES") == listed,
                              f"{name} pid {pid}: CUDA_VISIBLE_DEVICES {env.get('CUDA_VISIBLE_DEVICES')!r} == {listed!r}")
                checks.expect(env.get("NVIDIA_VISIBLE_DEVICES") == (listed or "void"),
                              f"{name} pid {pid}: NVIDIA_VISIBLE_DEVICES {env.get('NVIDIA_VISIBLE_DEVICES')!r}")
                checks.expect(env.get("CUDA_DEVICE_ORDER") == "PCI_BUS_ID", f"{name} pid {pid}: CUDA_DEVICE_ORDER=PCI_BUS_ID")
                torch_view = (report or {}).get("torch")
                if torch_view is not None and (have_gpu or gpus == 0):
                    checks.expect(torch_view["device_count"] == gpus,
                                  f"{name} pid {pid}: torch.cuda.device_count() {torch_view['device_count']} == {gpus}")
                    expected_uuids = [uuids.get(i) for i in worker.get("gpus", [])]
                    if torch_view["uuids"] and all(torch_view["uuids"]):
                        checks.expect([_uuid(u) for u in torch_view["uuids"]] == [_uuid(u) for u in expected_uuids],
                                      f"{name} pid {pid}: torch's device is NVML's {expected_uuids}")
                if have_gpu and torch_seen and nvml_lists:
                    if gpus:
                        checks.expect(on_gpu.get(pid) in worker.get("gpus", []),
                                      f"{name} pid {pid}: NVML lists it on GPU {on_gpu.get(pid)} (assigned {worker.get('gpus')})")
                    else:
                        checks.expect(pid not in on_gpu, f"{name} pid {pid}: absent from NVML's compute processes")
        if have_gpu and torch_seen and not nvml_lists:
            print("  note: NVML lists no compute processes at all (PID namespace?): process->GPU match skipped")
        if not torch_seen:
            print("  note: torch not importable in the workers: torch view and NVML process checks skipped")
    finally:
        code, left = daemon.stop()
        print(f"\n-- stop: daemon exit code {code}; processes seen {sorted(daemon.workers_seen)}; left {left}")
        checks.expect(code == 0, f"daemon 1 exits 0 on SIGTERM (got {code})")
        checks.expect(not left, f"daemon 1 leaves no worker behind ({left})")
        if have_gpu:
            time.sleep(0.5)
            after, _ = nvml_processes()
            ours = [pid for listed in after.values() for pid, _ in listed if pid in daemon.workers_seen]
            checks.expect(not ours, f"NVML lists no worker of daemon 1 after stop ({ours})")


def overask_run(work: Path, inventory: Nvml, settle_timeout: float, checks: Checks) -> None:
    count = len(inventory.devices)
    asked = count + 1
    project = work / "overask"
    report_dir = work / "overask-reports"
    report_dir.mkdir(parents=True)
    write_project(project, report_dir, [("toomany", asked, 1), ("cpu", 0, 1)])
    print(f"\n== project asking compute.gpu: {asked} on a machine with {count} GPU(s)")
    env = daemon_env({})
    validate = subprocess.run([sys.executable, "-m", "inferd", "validate", "--project", str(project)],
                              env=env, capture_output=True, text=True, timeout=120)
    print(f"-- inferd validate: exit {validate.returncode}")
    for line in (validate.stdout + validate.stderr).strip().splitlines():
        print(f"  | {line}")
    daemon = Daemon(project, work / "d2", env)
    try:
        rows = daemon.settle(settle_timeout)
        by_name = {row["name"]: row for row in rows}
        ready = daemon.client.get("/-/ready")
        print(f"-- daemon: /-/ready HTTP {ready.status_code}")
        for row in rows:
            print(f"  {row['name']}: state {row['state']}, error {row.get('error')!r}")
        for event in daemon.events():
            if event.get("event") == "api_not_started":
                print(f"  log api_not_started: {event.get('error')}")
        error = str(by_name["toomany"].get("error"))
        expected = f"only {count} NVIDIA GPU" if count else NO_GPU
        checks.expect(by_name["toomany"]["state"] == "failed" and expected in error,
                      f"toomany: failed with an error saying so ({expected!r} in the error)")
        checks.expect(by_name["cpu"]["state"] == "ready", "cpu: the other API of the project still served")
        checks.expect(ready.status_code != 200, "/-/ready is not 200 while an API failed")
    finally:
        code, left = daemon.stop()
        print(f"-- stop: daemon exit code {code}; left {left}")
        checks.expect(not left, f"daemon 2 leaves no worker behind ({left})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--timeout", type=float, default=180, help="seconds to wait for the APIs to settle")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (daemon logs)")
    args = parser.parse_args()

    sys.path.insert(0, str(ROOT))
    from inferd.gpu import read_inventory

    checks = Checks()
    inventory = nvml_inventory()
    print(f"== GPU inventory (NVML; {inventory.note})")
    if inventory.devices:
        table([[str(g.index), g.uuid, g.name, f"{g.memory_total / 2**30:.1f} GiB"] for g in inventory.devices],
              ["index", "uuid", "name", "memory"])
    else:
        print("  no GPU: the GPU APIs must be refused; the compute.gpu: 0 one is still checked")
    theirs = [(d.index, d.uuid) for d in read_inventory()]
    checks.expect(theirs == [(g.index, g.uuid) for g in inventory.devices],
                  f"inferd.gpu.read_inventory() agrees with NVML ({len(theirs)} device(s))")

    work = Path(tempfile.mkdtemp(prefix="inferd-gpu-pinning-"))
    try:
        pinning_run(work, inventory, args.timeout, checks)
        overask_run(work, inventory, args.timeout, checks)
    finally:
        if args.keep:
            print(f"\nkept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    print(f"\n== {'FAILED: ' + str(len(checks.failed)) + ' check(s)' if checks.failed else 'all checks passed'}")
    for what in checks.failed:
        print(f"  - {what}")
    return 1 if checks.failed else 0


if __name__ == "__main__":
    sys.exit(main())
