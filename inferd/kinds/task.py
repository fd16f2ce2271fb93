"""TaskAPI: a BatchAPI-like job API (``inferd.kinds.batch``) whose job is one call of the
``Task`` class of ``definition.path``: ``POST /<endpoint>`` with ``{timeout, config}`` starts one
worker for it, ``GET``/``DELETE /<endpoint>?jobID=<id>`` report and stop it. The job spec file
is named in ``CORTEX_TASK_SPEC`` (and ``CORTEX_JOB_SPEC``). With ``pod.containers`` the job is
the containers running their command to its end (``inferd.containers.jobs``)."""

from __future__ import annotations

from typing import Any

from inferd.kinds.base import ApiRuntime, KindContext
from inferd.kinds.batch import BatchKind
from inferd.kinds.containers import unrunnable
from inferd.spec import ApiSpec
from inferd.spec.model import HandlerSpec
from inferd.worker.runners.task import SPEC_ENVS

RUNNER = "inferd.worker.runners.task:TaskRunner"


class TaskKind(BatchKind):
    name = "TaskAPI"
    spec_envs = SPEC_ENVS
    batched = False

    def unsupported(self, api: ApiSpec) -> str | None:
        if api.pod is not None:
            return unrunnable(api)
        if api.definition is None:
            return "the API has no definition block"
        return None

    def code(self, api: ApiSpec) -> HandlerSpec | None:
        """The definition block in the shape the worker launch reads (a handler block)."""
        definition = api.definition
        if definition is None:
            return None
        return HandlerSpec(type="python", path=definition.path, dependencies=definition.dependencies,
                           config=definition.config, python_path=definition.python_path, image=definition.image,
                           env=definition.env, log_level=definition.log_level, shm_size=definition.shm_size)

    def runner(self, runtime: ApiRuntime, context: KindContext) -> tuple[str, dict[str, Any]]:
        return RUNNER, {}
