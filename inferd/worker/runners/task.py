"""TaskAPI, worker side: the ``Task`` class of ``definition.path``, called once for its job.

A TaskAPI worker process is started for one job. The job spec file is named in
``CORTEX_TASK_SPEC`` (or ``CORTEX_JOB_SPEC``); ``Task()`` is constructed (with ``metrics_client``
when it asks for it, spec §3.2) and ``__call__(self, config)`` gets ``definition.config`` (the
``Init`` config) deep-merged with the job's submission ``config``, the job's values winning (§3.8).

One call: ``Open(method="task.run", body=b"")``, answered by one ``End`` shaped as the BatchAPI
runner's (``inferd.worker.runners.batch``): ``OK`` ``{"seconds": ...}``, or ``INTERNAL`` with
``{"error", "traceback", "seconds"}``. As a Cortex task's process, a Task that calls
``sys.exit()`` or ``sys.exit(0)`` succeeded; any other exit code, ``KeyboardInterrupt`` or other
``BaseException`` fails with its traceback. The daemon enforces the job's timeout by killing the
process.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog

from inferd.worker import protocol
from inferd.worker.handler_class import (
    CONSTRUCTOR_PARAMS_BY_KIND,
    BoundMethod,
    HandlerLoadError,
    check_params,
    construct,
    find_class,
    load_module,
)
from inferd.worker.metrics_client import MetricsClient
from inferd.worker.runners.batch import JobRunner, Work, job_config, read_job_spec

TASK_METHOD = "task.run"
SPEC_ENVS = ("CORTEX_TASK_SPEC", "CORTEX_JOB_SPEC")
CALL_PARAMS = frozenset({"config"})


class TaskRunner(JobRunner):
    call: BoundMethod

    def load_handler(self, init: protocol.Init, project: Path) -> Any:
        spec = read_job_spec(SPEC_ENVS)
        self.job_id = str(spec.get("job_id", ""))
        self.config = job_config(init.config, spec)
        cls = find_class(load_module(project / init.handler_path), "Task")
        with structlog.contextvars.bound_contextvars(job_id=self.job_id):
            return construct(cls, {"metrics_client": MetricsClient(self.context.send_threadsafe)},
                             CONSTRUCTOR_PARAMS_BY_KIND["TaskAPI"])

    def bind(self, handler: Any) -> dict[str, Any]:
        if not callable(handler):
            raise HandlerLoadError("Task does not define __call__(self, config), which a TaskAPI requires")
        names = check_params("Task.__call__", type(handler).__call__, CALL_PARAMS)
        if "config" not in names:
            raise HandlerLoadError("Task.__call__ must take config: def __call__(self, config)")
        # the bound __call__, not the instance: BoundMethod tells an async one by the function
        self.call = BoundMethod(handler.__call__, ("config",))
        self.start_calls()
        return {"job_id": self.job_id}

    def preparers(self) -> dict[str, Callable[[bytes], Work]]:
        return {TASK_METHOD: self.task_work}

    def task_work(self, body: bytes) -> Work:
        return Work(self.call, {"config": self.config}, "Task", {"job_id": self.job_id}, exit_ok=True)
