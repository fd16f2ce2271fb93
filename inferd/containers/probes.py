"""Probe and pre_stop actions, with Kubernetes' rules: ``http_get`` succeeds on 200-399,
``tcp_socket`` when the port accepts a connection, ``exec`` when the command exits 0 (run
without a shell, in the container's working directory and environment; for an image container,
inside it). A port equal to ``pod.port`` is the replica's own port. Each attempt is bounded
by ``timeout_seconds``; a value of 0 in a timing field means Kubernetes' default for it."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from inferd.spec.model import ProbeSpec
from inferd.worker.process import signal_group

HOST = "127.0.0.1"
OUTPUT_LIMIT = 400  # characters of an exec probe's output kept in its failure reason


@dataclass(frozen=True)
class Timing:
    initial_delay: float
    timeout: float
    period: float
    success_threshold: int
    failure_threshold: int


def timing(probe: ProbeSpec) -> Timing:
    return Timing(float(probe.initial_delay_seconds), float(probe.timeout_seconds or 1),
                  float(probe.period_seconds or 10), probe.success_threshold or 1, probe.failure_threshold or 3)


@dataclass(frozen=True)
class ProbeTarget:
    """Where a container's probes go: its replica's port for pod.port, and how it execs."""

    pod_port: int
    replica_port: int
    exec_prefix: Sequence[str]  # [] for a local process; "<engine> exec <name>" for an image container
    env: Mapping[str, str]
    cwd: Path

    def port(self, port: int) -> int:
        return self.replica_port if port == self.pod_port else port


async def http_get(port: int, path: str, timeout: float) -> str | None:
    """None when it answered 200-399, else why not."""
    writer = None
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(HOST, port)
            writer.write(f"GET {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nUser-Agent: kube-probe/inferd\r\n"
                         "Accept: */*\r\nConnection: close\r\n\r\n".encode("latin-1"))
            status_line = await reader.readline()
    except TimeoutError:
        return f"GET {path} on port {port}: no answer within {timeout:g}s"
    except OSError as exc:
        return f"GET {path} on port {port}: {exc.strerror or exc}"
    finally:
        if writer is not None:
            writer.close()
    parts = status_line.split(None, 2)
    if len(parts) < 2 or not parts[1].isdigit():
        return f"GET {path} on port {port}: not an HTTP answer"
    status = int(parts[1])
    return None if 200 <= status < 400 else f"GET {path} on port {port} answered {status}"


async def tcp_socket(port: int, timeout: float) -> str | None:
    try:
        async with asyncio.timeout(timeout):
            _, writer = await asyncio.open_connection(HOST, port)
    except TimeoutError:
        return f"port {port}: no connection within {timeout:g}s"
    except OSError as exc:
        return f"port {port}: {exc.strerror or exc}"
    writer.close()
    return None


async def run_exec(argv: Sequence[str], env: Mapping[str, str], cwd: Path, timeout: float) -> str | None:
    try:
        proc = await asyncio.create_subprocess_exec(*argv, env=dict(env), cwd=cwd, start_new_session=True,
                                                    stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                                                    stderr=asyncio.subprocess.STDOUT)
    except OSError as exc:
        return f"{argv[0]}: {exc.strerror or exc}"
    try:
        output, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        signal_group(proc.pid, signal.SIGKILL)
        await proc.wait()
        return f"{' '.join(argv)}: still running after {timeout:g}s"
    if proc.returncode == 0:
        return None
    said = output.decode("utf-8", "replace").strip()[-OUTPUT_LIMIT:]
    return f"{' '.join(argv)} exited with code {proc.returncode}" + (f": {said}" if said else "")


async def attempt(action: Mapping[str, Any], target: ProbeTarget, timeout: float) -> str | None:
    """One attempt of a probe or pre_stop action (``{"http_get": ...}`` and the like)."""
    if action.get("http_get") is not None:
        get = action["http_get"]
        return await http_get(target.port(int(get["port"])), str(get.get("path", "/")), timeout)
    if action.get("tcp_socket") is not None:
        return await tcp_socket(target.port(int(action["tcp_socket"]["port"])), timeout)
    if action.get("exec") is not None:
        return await run_exec([*target.exec_prefix, *action["exec"]["command"]], target.env, target.cwd, timeout)
    return "the probe has no action"


def probe_action(probe: ProbeSpec) -> dict[str, Any]:
    return {"http_get": probe.http_get, "tcp_socket": probe.tcp_socket, "exec": probe.exec}


class ProbeState:
    """Consecutive results of one probe, against its thresholds."""

    def __init__(self, probe: ProbeSpec) -> None:
        self.timing = timing(probe)
        self.action = probe_action(probe)
        self.successes = 0
        self.failures = 0
        self.last_failure: str | None = None

    async def run_once(self, target: ProbeTarget) -> str | None:
        failure = await attempt(self.action, target, self.timing.timeout)
        if failure is None:
            self.successes, self.failures = self.successes + 1, 0
        else:
            self.successes, self.failures, self.last_failure = 0, self.failures + 1, failure
        return failure

    @property
    def passed(self) -> bool:
        return self.successes >= self.timing.success_threshold

    @property
    def failed(self) -> bool:
        return self.failures >= self.timing.failure_threshold
