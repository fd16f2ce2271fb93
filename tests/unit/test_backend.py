"""WorkerProcess, the Python subprocess backend, without a daemon: a real child process
answering calls and heartbeats, and the reasons it reports when it ends."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from inferd.worker import protocol
from inferd.worker.backend import WorkerGone
from inferd.worker.process import WorkerProcess

HANDLER = '''
import os, time

class Handler:
    def __init__(self, config):
        self.config = config

    def handle_post(self, payload):
        if payload.get("sidecar"):  # a helper process that inherits the worker's stdout and stderr
            import subprocess
            return {"sidecar": subprocess.Popen(["sleep", "60"]).pid}
        if payload.get("sleep"):
            time.sleep(payload["sleep"])
        return {"pid": os.getpid(), "got": payload, "config": self.config}
'''


def start_worker(tmp_path: Path) -> WorkerProcess:
    (tmp_path / "handler.py").write_text(HANDLER)
    init = protocol.Init("api", "inferd.worker.runners.http:HttpRunner", str(tmp_path), "handler.py",
                         config={"k": "v"})
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": os.pathsep.join(sys.path)}
    return WorkerProcess("api", 0, init, env, str(tmp_path), (), lambda metric: None)


def post(payload: dict) -> protocol.Call:
    return protocol.Call(0, "rid", "post", "application/json", body=json.dumps(payload).encode())


async def busy_worker(tmp_path: Path) -> tuple[WorkerProcess, asyncio.Future[object]]:
    """A ready worker with one call in flight that would take 30 s."""
    worker = start_worker(tmp_path)
    await worker.start()
    assert await worker.wait_ready()
    pending = asyncio.ensure_future(worker.call(post({"sleep": 30})))
    await asyncio.sleep(0.2)
    assert worker.pid is not None
    return worker, pending


def test_a_worker_answers_calls_and_heartbeats_then_drains_on_stop(tmp_path: Path) -> None:
    async def scenario() -> None:
        worker = start_worker(tmp_path)
        await worker.start()
        assert await worker.wait_ready()
        assert worker.info == {"verbs": {"post": ["payload"]}}
        reply = await worker.call(post({"n": 1}))
        assert reply.status == 200 and json.loads(reply.body) == {"pid": worker.pid, "got": {"n": 1},
                                                                  "config": {"k": "v"}}
        before = worker.last_seen
        await asyncio.sleep(0.01)
        worker.ping()
        for _ in range(200):
            if worker.last_seen > before:
                break
            await asyncio.sleep(0.01)
        assert worker.last_seen > before
        exit_code = asyncio.ensure_future(worker.wait_exit())
        await worker.stop(10)
        assert await exit_code == 0 and worker.error is None

    asyncio.run(scenario())


async def stopped(pid: int) -> None:
    """Until SIGSTOP took effect on every thread: before, its heartbeat thread may still answer a ping."""
    def state(stat: Path) -> str:
        return stat.read_text().rsplit(")", 1)[1].split()[0]

    while any(state(stat) != "T" for stat in Path(f"/proc/{pid}/task").glob("*/stat")):
        await asyncio.sleep(0.01)


def test_a_stopped_worker_is_silent_and_abort_fails_its_calls_with_the_reason(tmp_path: Path) -> None:
    async def scenario() -> None:
        worker, pending = await busy_worker(tmp_path)
        os.kill(worker.pid, signal.SIGSTOP)
        await stopped(worker.pid)
        worker.ping()
        asked = worker.last_seen  # the time of the first unanswered ping
        await asyncio.sleep(0.3)
        worker.ping()
        await asyncio.sleep(0.3)
        assert worker.last_seen == asked  # a stopped process answers nothing
        started = time.monotonic()
        worker.abort("no heartbeat for 2s")
        with pytest.raises(WorkerGone, match="no heartbeat for 2s"):
            await pending
        code = await worker.wait_exit()
        assert code == -signal.SIGKILL  # SIGABRT stays pending on a stopped process; SIGKILL ends it
        assert time.monotonic() - started < 10
        assert worker.error == "no heartbeat for 2s"

    asyncio.run(scenario())


def test_a_worker_killed_by_sigkill_says_out_of_memory(tmp_path: Path) -> None:
    async def scenario() -> None:
        worker, pending = await busy_worker(tmp_path)
        os.kill(worker.pid, signal.SIGKILL)
        with pytest.raises(WorkerGone, match="died while handling the request|killed by SIGKILL"):
            await pending
        assert await worker.wait_exit() == -signal.SIGKILL

    asyncio.run(scenario())


def test_a_dead_worker_is_reported_at_once_even_if_its_child_keeps_the_pipes(tmp_path: Path) -> None:
    async def scenario() -> None:
        worker = start_worker(tmp_path)
        await worker.start()
        assert await worker.wait_ready()
        sidecar = json.loads((await worker.call(post({"sidecar": True}))).body)["sidecar"]
        try:
            pending = asyncio.ensure_future(worker.call(post({"sleep": 30})))
            await asyncio.sleep(0.2)
            assert worker.pid is not None
            os.kill(worker.pid, signal.SIGKILL)
            started = time.monotonic()
            assert await asyncio.wait_for(worker.wait_exit(), 10) == -signal.SIGKILL
            with pytest.raises(WorkerGone, match="died while handling the request|killed by SIGKILL"):
                await pending
            assert time.monotonic() - started < 5 and worker.state == "exited"
        finally:
            os.kill(sidecar, signal.SIGKILL)
            await asyncio.sleep(0.5)  # its end of the pipes closes; the transport can finish

    asyncio.run(scenario())
