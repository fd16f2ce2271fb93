"""``ContainerProcess``: one container of one replica as a supervised process.

No shell: the argv is exec'd as it is (the engine's CLI for an image container). The process
leads its own process group, so whatever it starts is signalled with it, and it is started
through a tiny launcher that asks Linux to SIGKILL it if the daemon dies, then execs the
command in place (same pid). Its output lines go to the daemon log and the API's log book.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections import deque
from collections.abc import Callable

from inferd.containers.launch import ContainerLaunch
from inferd.logs import get_logger
from inferd.worker.process import LAUNCHER_PRELUDE, LINE_LIMIT, drain_output, exit_code, relay_output, signal_group

STDERR_TAIL = 20

# ``python -I -S -c LAUNCHER <daemon pid> <argv...>``: die with the daemon, then become argv.
LAUNCHER = LAUNCHER_PRELUDE + """\
try:
    os.execvp(sys.argv[2], sys.argv[2:])
except OSError as exc:
    sys.stderr.write(f"inferd: cannot run {sys.argv[2]!r}: {exc.strerror}\\n")
    sys.exit(127 if isinstance(exc, FileNotFoundError) else 126)
"""


class ContainerProcess:
    def __init__(self, api: str, slot: int, launch: ContainerLaunch, on_log: Callable[[str], None]) -> None:
        self.api = api
        self.launch = launch
        self.name = launch.name
        self.pid: int | None = None
        self.stderr: deque[str] = deque(maxlen=STDERR_TAIL)
        self._on_log = on_log
        self._proc: asyncio.subprocess.Process | None = None
        self._pumps: list[asyncio.Task[None]] = []
        self.log = get_logger(api=api, slot=slot, container=launch.name)

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    @property
    def returncode(self) -> int | None:
        return None if self._proc is None else self._proc.returncode

    async def start(self) -> None:
        launch = self.launch
        self._proc = await asyncio.create_subprocess_exec(
            sys.executable, "-I", "-S", "-c", LAUNCHER, str(os.getpid()), *launch.argv,
            env=launch.env, cwd=launch.cwd, start_new_session=True, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, limit=LINE_LIMIT,
        )
        self.pid = self._proc.pid
        loop = asyncio.get_running_loop()
        self._pumps = [loop.create_task(self._pump(self._proc.stdout, "stdout")),
                       loop.create_task(self._pump(self._proc.stderr, "stderr"))]
        self.log.info("container_started", pid=self.pid, argv=launch.argv if launch.engine_name else launch.argv[:1],
                      engine_container=launch.engine_name)

    async def _pump(self, stream: asyncio.StreamReader | None, name: str) -> None:
        await relay_output(stream, name, self.api, self.pid, self.log, self._on_log, self.stderr.append)

    async def wait(self) -> int:
        assert self._proc is not None
        return await exit_code(self._proc)

    def signal(self, sig: int) -> None:
        """To the whole group: what it started goes with it (the group outlives its leader)."""
        signal_group(self.pid, sig)

    async def terminate(self, grace: float) -> None:
        """SIGTERM to the group, SIGKILL after ``grace`` seconds; then nothing of it is left."""
        if self._proc is None:
            return
        if self._proc.returncode is None:
            self.signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.wait(), max(grace, 0.0))
            except TimeoutError:
                self.log.warning("container_stop_timeout", pid=self.pid, grace=grace)
        self.signal(signal.SIGKILL)
        if self._proc.returncode is None:
            await self.wait()
        await drain_output(self._pumps)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)

    async def output_done(self) -> None:
        """Until its last output lines were read (bounded: what it started may hold the pipes)."""
        await drain_output(self._pumps)

    def last_words(self) -> str:
        return self.stderr[-1].strip() if self.stderr else ""
