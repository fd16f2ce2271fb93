"""BatchAPI: ``POST /<endpoint>`` submits a job whose batches are stored in the job store, and
``GET``/``DELETE /<endpoint>?jobID=<id>`` report and stop it (``inferd.http.batch``). The API
has no standing workers: each job starts its own ``workers`` worker processes and stops them
when it ends (``inferd.jobs.batch_dispatch``), so an API with no running job is ready.
TaskAPI (``inferd.kinds.task``) is the same with a ``definition`` block and one ``task.run``."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any

from inferd.http.batch import JobEndpoint
from inferd.http.cors import with_cors
from inferd.http.routing import BaseRoute, Mount
from inferd.jobs.batch_jobs import JobManager
from inferd.jobs.batch_launch import JobLaunch
from inferd.jobs.job_gpus import LEDGER
from inferd.kinds.base import ApiRuntime, Front, Kind, KindContext, Peers
from inferd.spec import ApiSpec, ProjectSpec
from inferd.spec.model import HandlerSpec, plain
from inferd.store.batch import BatchJobStore
from inferd.worker.launch import init_message, read_dotenv, worker_environment

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
    spec_envs: tuple[str, ...] = ("CORTEX_JOB_SPEC",)
    batched = True  # jobs are cut into batches (a TaskAPI's job is one call)

    def code(self, api: ApiSpec) -> HandlerSpec | None:
        """The block that names the user's code, as the worker launch reads it."""
        return api.handler

    def runner(self, runtime: ApiRuntime, context: KindContext) -> tuple[str, dict[str, Any]]:
        return RUNNER, {}

    def launch(self, runtime: ApiRuntime, context: KindContext) -> JobLaunch:
        """How this API's job workers start: the same init frame and environment as any worker."""
        settings = context.settings
        api = dataclasses.replace(runtime.spec, handler=self.code(runtime.spec))
        project_dir = settings.project
        project = ProjectSpec(project_dir, project_dir / "cortex.yaml", (api,))
        runner, options = self.runner(runtime, context)
        init = init_message(project, api, runner, options, settings.max_body_size)
        env = worker_environment(os.environ, project, api, read_dotenv(project_dir), ())
        metrics, name = context.metrics, api.name
        return JobLaunch(
            api=name, single_call=not self.batched, init=init, env=env, cwd=str(project_dir),
            gpus_per_worker=api.compute.gpu, spec_envs=self.spec_envs,
            jobs_dir=settings.state_dir / "jobs" / name,
            liveness_timeout=settings.worker_liveness_timeout, stop_timeout=settings.shutdown_grace_period,
            on_metric=lambda frame: metrics.record_user(name, frame),
            on_log=lambda line: context.on_log(name, line),
        )

    def api_spec(self, api: ApiSpec) -> dict[str, Any]:
        """The ``api_spec`` of a job status answer: the API's entry as inferd read it."""
        code = "definition" if api.definition is not None else "handler"
        block = api.definition if api.definition is not None else api.handler
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
        networking = runtime.spec.networking
        return (Mount(networking.endpoint, with_cors(front, networking.allow_origins, runtime.name)),)

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
