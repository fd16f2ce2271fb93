"""``python -m inferd.worker --fd N``: the child process the daemon starts for each worker."""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import faulthandler
import os
import resource
import signal
import sys

from inferd.logs import configure_logging
from inferd.worker.child import WorkerChild
from inferd.worker.heartbeat import answer_heartbeats


def die_with_parent() -> None:
    """Ask Linux to SIGKILL us if the daemon dies, so no worker outlives it, even after kill -9."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        return  # not Linux: the closed IPC socket still ends us


def _ignore(signum: int, frame: object) -> None:
    pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="inferd.worker")
    parser.add_argument("--fd", type=int, required=True, help="inherited socket to the daemon")
    parser.add_argument("--heartbeat-fd", type=int, default=-1, help="inherited socket answered by a thread")
    parser.add_argument("--parent", type=int, default=0, help="daemon pid, to detect a parent already gone")
    args = parser.parse_args(argv)
    die_with_parent()
    if args.parent and os.getppid() != args.parent:
        return 1
    # The daemon alone decides when a worker stops (a "stop" frame after draining). Ctrl-C in
    # a terminal, or a SIGTERM sent to the whole process group, reaches the daemon too, which
    # then drains us; acting on it here would only race that drain. SIGKILL still works.
    # A no-op handler rather than SIG_IGN: ignored signals would be inherited through exec by
    # any process the handler code starts; caught ones are reset to default there.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _ignore)
    # SIGABRT (sent by the daemon to a worker it found hung) dumps every thread's stack to
    # stderr, which the daemon logs: the operator sees where the handler was stuck. No core
    # file: a worker holding a model in memory would write gigabytes for nobody.
    resource.setrlimit(resource.RLIMIT_CORE, (0, resource.getrlimit(resource.RLIMIT_CORE)[1]))
    faulthandler.enable(all_threads=True)
    if args.heartbeat_fd >= 0:
        answer_heartbeats(args.heartbeat_fd)
    configure_logging(json_output=True, worker=os.getpid())
    try:
        import uvloop

        code = uvloop.run(WorkerChild(args.fd).run())
    except ImportError:
        code = asyncio.run(WorkerChild(args.fd).run())
    sys.stdout.flush()
    if sys.__stdout__ is not None:
        sys.__stdout__.flush()
    # Handler threads may still be blocked in user code; they must not keep the process alive.
    os._exit(code)


if __name__ == "__main__":
    raise SystemExit(main())
