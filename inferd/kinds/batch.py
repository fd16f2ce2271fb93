"""BatchAPI: ``POST /<endpoint>`` submits a job whose batches are stored in the job store, and
``GET``/``DELETE /<endpoint>?jobID=<id>`` report and stop it (``inferd.http.batch``). The API
has no standing workers: each job starts its own ``workers`` worker processes and stops them
when it ends (``inferd.jobs.batch_dispatch``), so an API with no running job is ready.
TaskAPI (``inferd.kinds.task``) is the same with a ``definition`` block and one ``task.run``.
With ``pod.containers`` a job's workers are replicas of the user's containers
(``inferd.containers.jobs``) instead of inferd's worker processes."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any

from inferd.containers.engine import find_engine
from inferd.containers.jobs import ContainerJobWorkers
from inferd.containers.launch import BASE_URL_ENV, scratch_root
from inferd.http.batch import JobEndpoint
from inferd.http.routing import BaseRoute
from inferd.jobs.batch_jobs import JobManager
from inferd.jobs.batch_launch import JobLaunch, JobWorkers, PythonJobWorkers
from inferd.jobs.job_gpus import LEDGER
from inferd.kinds.base import ApiRuntime, Front, Kind, KindContext, Peers, endpoint_mount
from inferd.kinds.containers import base_url, unrunnable
from inferd.spec import ApiSpec, ProjectSpec
from inferd.spec.model import HandlerSpec, plain
from inferd.store.batch import BatchJobStore
from inferd.worker.launch import container_slots, init_message, read_dotenv, worker_environment
from inferd.worker.runners.batch import JOB_SPEC_ENV

RUNNER = "inferd.worker.runners.batch:BatchRunner"


class JobsHandle:
    """The runtime's queue consumer, as the deployment sees it. Stopping it stops jobs only
    when the API itself goes: a reload that replaced it leaves them to the new version, and a
    daemon that stops leaves them in progress, to resume at its next start."""

    def __init__(self, manager: JobManager, runtime: ApiRuntime, peers: Peers | None) -> None:
        self.manager, self.runtime, self.peers = manager, runtime, peers

    def start(self) -> None:
        pass  # the manager resumes this API's unfinished jobs as soon as it is switched to

    async def stop(self, timeout: float) -> None:
        if self.manager.served is not self.runtime:
            return  # replaced by a reload: running jobs carry on
        installed = self.peers is not None and self.peers.runtime(self.runtime.name) is self.runtime
        if installed:
            await self.manager.shutdown(timeout)  # the daemon is stopping
        else:
            await self.manager.remove()  # the API left cortex.yaml


def manager_of(runtime: ApiRuntime) -> JobManager | None:
    manager = runtime.extra.get("manager")
    return manager if isinstance(manager, JobManager) else None


class BatchKind(Kind):
    name = "BatchAPI"
    needs_store = True
    has_workers = False  # workers exist per job, not per API
    spec_envs: tuple[str, ...] = (JOB_SPEC_ENV,)  # what the runner reads
    batched = True  # jobs are cut into batches (a TaskAPI's job is one call)

    def unsupported(self, api: ApiSpec) -> str | None:
        if api.pod is not None:
            return unrunnable(api)
        return super().unsupported(api)

    def code(self, api: ApiSpec) -> HandlerSpec | None:
        """The block that names the user's code, as the worker launch reads it."""
        return api.handler

    def runner(self, runtime: ApiRuntime, context: KindContext) -> tuple[str, dict[str, Any]]:
        return RUNNER, {}

    def launch(self, runtime: ApiRuntime, context: KindContext) -> JobLaunch:
        """How this API's jobs start their workers: inferd's worker processes (the same init
        frame and environment as any worker) or replicas of the API's containers."""
        settings = context.settings
        workers = (self._containers(runtime, context) if runtime.spec.pod is not None
                   else self._processes(runtime, context))
        return JobLaunch(
            api=runtime.name, single_call=not self.batched, workers=workers,
            gpus_per_worker=runtime.spec.compute.gpu, jobs_dir=settings.state_dir / "jobs" / runtime.name,
            liveness_timeout=settings.worker_liveness_timeout, stop_timeout=settings.shutdown_grace_period,
        )

    def _project(self, runtime: ApiRuntime, context: KindContext) -> ProjectSpec:
        project_dir = context.settings.project
        api = dataclasses.replace(runtime.spec, handler=self.code(runtime.spec))
        return ProjectSpec(project_dir, project_dir / "cortex.yaml", (api,))

    def _processes(self, runtime: ApiRuntime, context: KindContext) -> JobWorkers:
        project = self._project(runtime, context)
        api = project.apis[0]
        runner, options = self.runner(runtime, context)
        init = init_message(project, api, runner, options, context.settings.max_body_size)
        # the chaining URL in job workers too, as in every standing worker and container
        base = {**os.environ, BASE_URL_ENV: base_url(context.settings)}
        env = worker_environment(base, project, api, read_dotenv(project.project_dir), ())
        metrics, name = context.metrics, api.name
        return PythonJobWorkers(api=name, init=init, env=env, cwd=str(project.project_dir), spec_envs=self.spec_envs,
                                on_metric=lambda frame: metrics.record_user(name, frame),
                                on_log=lambda line: context.on_log(name, line))

    def _containers(self, runtime: ApiRuntime, context: KindContext) -> JobWorkers:
        pod, name, settings = runtime.spec.pod, runtime.name, context.settings
        assert pod is not None
        project = self._project(runtime, context)
        env = container_slots(os.environ, project, [()])[0].env
        return ContainerJobWorkers(api=name, pod=pod, env=env, project_dir=project.project_dir,
                                   base_url=base_url(settings), scratch_root=scratch_root(settings.state_dir),
                                   engine=find_engine(), spec_envs=self.spec_envs, one_shot=not self.batched,
                                   on_log=lambda line: context.on_log(name, line))

    def api_spec(self, api: ApiSpec) -> dict[str, Any]:
        """The ``api_spec`` of a job status answer: the API's entry as inferd read it."""
        block: Any = api.handler
        code = "handler"
        if api.definition is not None:
            code, block = "definition", api.definition
        elif api.pod is not None:
            code, block = "pod", api.pod
        return {"name": api.name, "kind": api.kind, code: plain(block), "compute": plain(api.compute),
                "networking": plain(api.networking)}

    def front(self, runtime: ApiRuntime, context: KindContext, current: Front | None) -> Front | None:
        if context.store is None:
            return None
        endpoint, api_spec = runtime.spec.networking.endpoint, self.api_spec(runtime.spec)
        if isinstance(current, JobEndpoint) and current.kind == self.name:
            front = current
            front.switch(endpoint, api_spec)
        else:
            manager = JobManager(runtime.name, self.batched, BatchJobStore(context.store), context.metrics, LEDGER,
                                 context.settings.max_job_workers)
            front = JobEndpoint(runtime.name, self.name, endpoint, manager, api_spec, context.metrics)
        front.manager.switch(self.launch(runtime, context), runtime.digest, runtime)
        runtime.extra["manager"] = front.manager
        runtime.consumer = JobsHandle(front.manager, runtime, context.peers)
        return front

    def routes(self, runtime: ApiRuntime, front: Front) -> Sequence[BaseRoute]:
        if not isinstance(front, JobEndpoint):
            return ()
        return endpoint_mount(runtime, front)

    def describe(self, runtime: ApiRuntime) -> dict[str, Any]:
        manager = manager_of(runtime)
        return {"running_jobs": len(manager.runs) if manager is not None else 0}

    async def status(self, runtime: ApiRuntime, context: KindContext) -> dict[str, Any]:
        manager = manager_of(runtime)
        return {} if manager is None else {"jobs": await manager.progress()}

    async def refresh_gauges(self, runtime: ApiRuntime, context: KindContext) -> None:
        manager = manager_of(runtime)
        if manager is not None:
            await manager.refresh_gauges()

    async def jobs(self, runtime: ApiRuntime, job_id: str, limit: int) -> dict[str, Any] | None:
        manager = manager_of(runtime)
        if manager is None:
            raise LookupError(f"api {runtime.name} is not serving: {runtime.error or 'no job store'}")
        if job_id:
            job = await manager.get(job_id)
            return None if job is None else {"job": manager.status_of(job)}
        return {"jobs": [manager.status_of(job) for job in await manager.recent(limit)]}
