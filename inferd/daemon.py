"""The inferd daemon: one asyncio process wiring spec, deployment, servers and signals.

Like uvicorn's and gunicorn's supervisors, signals (and control-socket requests) only put
events on a queue; one explicit loop reads them and acts, so every state change — reloads
included — happens in one place, in order.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import os
import resource
import signal
import socket
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

import uvicorn

from inferd import heap
from inferd.containers.launch import scratch_root, sweep_scratch
from inferd.control.schema import load_schema
from inferd.control.server import ControlServer
from inferd.control.target import DaemonControl
from inferd.deployment import Deployment
from inferd.gpu import GpuDevice, read_inventory
from inferd.grpc.server import GrpcServer
from inferd.grpc.services import compile_project
from inferd.http.app import InferdApp
from inferd.http.hosts import host_policy
from inferd.http.protocol import ConnectionLimits, IdleConnections, InferdHttpProtocol
from inferd.http.system import system_app
from inferd.jobs.lifecycle import open_job_store, sweep_forever
from inferd.kinds import needs_store
from inferd.kinds.base import ApiRuntime, KindContext
from inferd.logbook import LogBook
from inferd.logs import get_logger
from inferd.metrics import Metrics
from inferd.notify import SystemdNotifier
from inferd.protos import CompiledProto
from inferd.reload import ReloadReport, api_digests, apply_reload, model_roots, under
from inferd.settings import Settings
from inferd.spec import ProjectSpec, SpecError, load_project
from inferd.store import AsyncJobStore
from inferd.telemetry import follow_gauges

log = get_logger()

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CONFIG = 2


def proto_cache_dir(settings: Settings) -> Path:
    return settings.state_dir / "protos"


def listen_socket(host: str, port: int) -> socket.socket:
    """Bound by us rather than uvicorn, so a busy port is a clear error and not a sys.exit."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.listen(2048)
    sock.set_inheritable(False)
    return sock


class HttpServer(uvicorn.Server):
    """uvicorn without its own signal handling (the daemon's loop owns signals), with inferd's
    connection protocol (``inferd.http.protocol``) for size, time and connection limits."""

    def __init__(self, app: InferdApp, settings: Settings) -> None:
        limits = ConnectionLimits(settings.max_header_size, settings.header_timeout, settings.body_timeout,
                                  settings.max_connections)
        protocol = functools.partial(InferdHttpProtocol, limits=limits, idle=IdleConnections(), direct=app)
        config = uvicorn.Config(app, loop="none", http=cast(type[asyncio.Protocol], protocol), lifespan="off",
                                log_config=None, access_log=False, server_header=False, proxy_headers=False,
                                timeout_keep_alive=settings.keepalive_timeout,  # type: ignore[arg-type]
                                timeout_graceful_shutdown=int(settings.shutdown_grace_period) or 1)
        config.load()
        super().__init__(config)
        self.lifespan = config.lifespan_class(config)


FILES_PER_WORKER = 8      # socket pairs, pipes and /proc reads a worker costs the daemon
FILES_RESERVED = 256      # the store, gRPC, logs, the control socket


def raise_file_limit(settings: Settings) -> None:
    """Lift the soft open-files limit towards the hard one (as Go and nginx do), so open HTTP
    connections up to ``max_connections`` never starve worker restarts of descriptors."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = settings.max_connections + FILES_RESERVED + 64 * FILES_PER_WORKER
    if hard != resource.RLIM_INFINITY:
        wanted = min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        soft = wanted
    if soft != resource.RLIM_INFINITY and soft < settings.max_connections + FILES_RESERVED:
        log.warning("open_files_limit_low", limit=soft, max_connections=settings.max_connections,
                    detail="raise LimitNOFILE= (systemd) or ulimit -n, or lower max_connections")


def log_project(project: ProjectSpec) -> None:
    for note in project.ignored:
        log.info("config_field_ignored", detail=note)
    for api in project.apis:
        handler = api.handler
        requirements = project.project_dir / (handler.dependencies.pip if handler else "requirements.txt")
        if requirements.is_file():
            log.warning("requirements_not_installed", api=api.name, file=str(requirements),
                        detail="inferd does not pip-install project requirements; install them into inferd's environment")
            break


def _report_crash(task: asyncio.Task[Any]) -> None:
    """A background task must never die silently."""
    if not task.cancelled() and task.exception() is not None:
        log.error("background_task_crashed", task=getattr(task.get_coro(), "__qualname__", repr(task)), exc_info=task.exception())


class Daemon:
    def __init__(self, settings: Settings, environ: Mapping[str, str] | None = None, watch: bool = False) -> None:
        self.settings = settings
        self.watch = watch
        self.environ = dict(os.environ if environ is None else environ)
        self.metrics = Metrics()
        self.logbook = LogBook()
        self.notifier = SystemdNotifier(self.environ)
        self.deployment: Deployment | None = None
        self.app = InferdApp(system_app(self.describe_apis, self.metrics), host_policy(settings.host, settings.allowed_hosts))
        self.events: asyncio.Queue[tuple[str, asyncio.Future[Any] | None]] = asyncio.Queue()
        self.grpc: GrpcServer | None = None
        self.control: ControlServer | None = None
        self.store: AsyncJobStore | None = None
        self.project: ProjectSpec | None = None
        self.started_at = time.time()
        self.last_reload = "none since start"
        self._readiness_changed = asyncio.Event()
        self._background: set[asyncio.Task[Any]] = set()
        self._retiring: set[asyncio.Task[Any]] = set()

    def describe_apis(self) -> list[dict[str, Any]]:
        return self.deployment.describe() if self.deployment else []

    def kind_context(self) -> KindContext:
        return KindContext(self.settings, self.metrics, self.store, proto_cache_dir(self.settings),
                           on_log=self.logbook.add)

    def load(self) -> tuple[ProjectSpec, dict[str, CompiledProto]]:
        """cortex.yaml and the protos it names; SpecError lists every problem."""
        project = load_project(self.settings.project)
        return project, compile_project(project, proto_cache_dir(self.settings))

    # -- start ---------------------------------------------------------------------------------

    async def run(self) -> int:
        self.settings.state_dir.mkdir(parents=True, exist_ok=True, mode=0o750)
        raise_file_limit(self.settings)
        # created inside the running loop: grpc.aio binds to the loop current at construction
        self.grpc = GrpcServer(self.settings.host, self.settings.grpc_port, self.settings.max_body_size)
        try:
            project, protos = self.load()
        except SpecError as exc:
            for issue in exc.issues:
                log.error("config_invalid", detail=str(issue))
            return EXIT_CONFIG
        log_project(project)
        try:
            sock = listen_socket(self.settings.host, self.settings.port)
            grpc_port = await self.grpc.start()
            await self._start_control()
        except OSError as exc:
            log.error("listen_failed", host=self.settings.host, port=self.settings.port,
                      grpc_port=self.settings.grpc_port, error=str(exc))
            # a started grpc.aio server left to the garbage collector prints a traceback once the loop is closed
            await self.grpc.stop(0)
            if self.control is not None:
                await self.control.stop()
            return EXIT_FAILED
        swept = sweep_scratch(self.settings.state_dir)
        if swept:
            log.warning("scratch_swept", count=swept, path=str(scratch_root(self.settings.state_dir)),
                        detail="scratch directories a killed daemon left behind were removed")
        # the bound ports: with port 0 in the settings the kernel picked them (tests, side-by-side daemons)
        port = sock.getsockname()[1]
        # what the APIs' environments name as the daemon's address (container APIs' chaining URL)
        self.settings = dataclasses.replace(self.settings, port=port)
        log.info("inferd_listening", host=self.settings.host, port=port, grpc_port=grpc_port,
                 control_socket=str(self.settings.control_socket))
        deployment = await self._deploy(project, protos)
        server = HttpServer(self.app, self.settings)
        await server.startup(sockets=[sock])
        serving = asyncio.get_running_loop().create_task(server.main_loop())
        for job in (self.grpc.follow_health(deployment.readiness, self._readiness_changed), self._announce_ready(),
                    self._watchdog(), follow_gauges(self.metrics, deployment)):
            self._spawn(job)
        if self.watch:
            self._spawn(self._watch_project())
        log.info("inferd_started", host=self.settings.host, port=port, grpc_port=grpc_port, pid=os.getpid(),
                 project=str(project.project_dir), apis=[api.name for api in project.apis])
        self._install_signals()
        await self._serve_events()
        return await self._shutdown(server, serving)

    async def _start_control(self) -> None:
        schema = load_schema(proto_cache_dir(self.settings))
        target = DaemonControl(self.describe_apis, self._api_status, self.metrics, self.logbook, self.request_reload,
                               self.settings.project, self._daemon_meta, self._api_jobs)
        self.control = ControlServer(self.settings.control_socket, schema, target)
        await self.control.start()

    async def _deploy(self, project: ProjectSpec, protos: dict[str, CompiledProto]) -> Deployment:
        """The deployment, which lives as long as the daemon (reloads change what it runs)."""
        self.project = project
        await self._open_store(project)
        deployment = self.deployment = Deployment(self.kind_context(), self.environ,
                                                  on_change=self._readiness_changed.set, on_log=self.logbook.add)
        digests = api_digests(project)
        for runtime in deployment.build(project, protos, self._inventory(project), digests, digests).values():
            deployment.install(runtime)
        self._route()
        return deployment

    def _inventory(self, project: ProjectSpec) -> tuple[GpuDevice, ...]:
        return read_inventory() if any(api.gpus_per_replica for api in project.apis) else ()

    def _route(self) -> None:
        assert self.deployment is not None and self.grpc is not None
        self.app.set_routes(self.deployment.routes())
        self.grpc.route(self.deployment.rpc_routes(), self.deployment.protos())
        self._readiness_changed.set()

    async def _open_store(self, project: ProjectSpec) -> None:
        """The job store, once some API's kind keeps jobs; it stays open from then on."""
        if self.store is not None or not needs_store([api.kind for api in project.apis]):
            return
        self.store = await open_job_store(self.settings.state_dir / "async.db")
        self._spawn(sweep_forever(self.store, self.settings.async_retention_days, self.settings.async_sweep_interval))
        if self.deployment is not None:
            self.deployment.set_context(self.kind_context())

    def _spawn(self, job: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(job)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        task.add_done_callback(_report_crash)
        return task

    # -- events --------------------------------------------------------------------------------

    def _install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        for sig, event in ((signal.SIGTERM, "stop"), (signal.SIGINT, "stop"), (signal.SIGHUP, "reload")):
            loop.add_signal_handler(sig, self.events.put_nowait, (event, None))

    async def _api_status(self, name: str) -> dict[str, Any]:
        return await self.deployment.status(name) if self.deployment is not None else {}

    async def _api_jobs(self, name: str, job_id: str, limit: int) -> dict[str, Any]:
        """For ``inferd jobs``: the API's kind reports them; LookupError for what is unknown."""
        runtime = self.deployment.runtime(name) if self.deployment is not None else None
        if runtime is None or runtime.kind is None:
            raise LookupError(f"no api named {name!r}")
        report = await runtime.kind.jobs(runtime, job_id, limit)
        if report is None:
            raise LookupError(f"api {name} has no job {job_id}")
        return report

    def _daemon_meta(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "uptime": time.time() - self.started_at,
                "project": str(self.settings.project), "last_reload": self.last_reload}

    async def request_reload(self) -> ReloadReport:
        """For the control socket: queue a reload and wait for its report."""
        future: asyncio.Future[ReloadReport] = asyncio.get_running_loop().create_future()
        self.events.put_nowait(("reload", future))
        return await future

    async def _serve_events(self) -> None:
        while True:
            event, future = await self.events.get()
            if event == "stop":
                return
            report = await self.reload()
            if future is not None and not future.done():
                future.set_result(report)

    async def reload(self) -> ReloadReport:
        self.notifier.reloading()
        log.info("reload_started")
        try:
            report = await self._reconcile()
        except SpecError as exc:
            report = ReloadReport(errors={self.settings.project.name + "/cortex.yaml": str(exc)})
        except Exception as exc:  # noqa: BLE001 - a failed reload must never take the daemon down
            log.error("reload_crashed", exc_info=exc)
            report = ReloadReport(errors={"reload": f"{type(exc).__name__}: {exc}"})
        self.last_reload = f"{time.strftime('%Y-%m-%d %H:%M:%S')}: {'ok' if report.ok else 'FAILED'}: {report.summary()}"
        (log.info if report.ok else log.error)("reload_finished", ok=report.ok, summary=report.summary())
        self.notifier.ready(self._status_line())
        heap.settle()
        return report

    async def _reconcile(self) -> ReloadReport:
        project, protos = self.load()
        log_project(project)
        await self._open_store(project)
        assert self.deployment is not None
        report, retiring = await apply_reload(self.deployment, project, protos, self._inventory(project),
                                              self.settings.ready_wait)
        self.project = project
        try:
            self._route()
        finally:  # versions already out of the deployment must drain even if routing failed
            for runtime in retiring:
                self._retiring.add(self._spawn(self._retire(runtime)))
        return report

    async def _retire(self, runtime: ApiRuntime) -> None:
        assert self.deployment is not None
        await self.deployment.retire(runtime, self.settings.shutdown_grace_period)
        log.info("api_version_retired", api=runtime.spec.name)

    # -- background ----------------------------------------------------------------------------

    def _status_line(self) -> str:
        states = [row["state"] for row in self.describe_apis()]
        ready = states.count("ready")
        return f"{ready}/{len(states)} APIs ready" + (f", {len(states) - ready} not ready" if ready < len(states) else "")

    async def _announce_ready(self) -> None:
        """READY=1 once every API that can start has either started or failed trying."""
        assert self.deployment is not None
        await asyncio.gather(*(pool.wait_all_ready(self.settings.ready_wait) for pool in self.deployment.pools()))
        self.notifier.ready(self._status_line())
        log.info("inferd_ready", status=self._status_line())
        heap.settle()

    async def _watch_project(self) -> None:
        """--watch: a burst of edits (an editor saving several files) becomes one reload."""
        from watchfiles import awatch

        def relevant(change: Any, path: str) -> bool:
            parts = Path(path).relative_to(self.settings.project).parts
            if any(p.startswith(".") and p != ".env" or p == "__pycache__" for p in parts):
                return False
            # model versions are the workers' own to reload (multi_model_reloading)
            return self.project is None or not under(Path(path), model_roots(self.project))

        async for _ in awatch(self.settings.project, watch_filter=relevant, debounce=500, step=100):
            log.info("project_changed", detail="reloading (--watch)")
            self.events.put_nowait(("reload", None))

    async def _watchdog(self) -> None:
        interval = self.notifier.watchdog_interval
        while interval:
            self.notifier.watchdog()
            await asyncio.sleep(interval)

    # -- stop ----------------------------------------------------------------------------------

    async def _shutdown(self, server: HttpServer, serving: asyncio.Task[None]) -> int:
        log.info("inferd_stopping", grace_period=self.settings.shutdown_grace_period)
        self.notifier.stopping()
        graceful = asyncio.get_running_loop().create_task(self._drain(server, serving))
        code = EXIT_OK
        while not graceful.done():
            next_event = asyncio.ensure_future(self.events.get())
            await asyncio.wait({graceful, next_event}, return_when=asyncio.FIRST_COMPLETED)
            if next_event.done() and next_event.result()[0] == "stop":
                log.warning("inferd_forced_stop")
                code = await self._force(server, graceful)
                break
            next_event.cancel()
        await self._close()
        log.info("inferd_stopped", code=code)
        return code

    async def _drain(self, server: HttpServer, serving: asyncio.Task[None]) -> None:
        self.app.stopping = True
        server.should_exit = True
        await serving
        assert self.grpc is not None
        await asyncio.gather(server.shutdown(), self.grpc.stop(self.settings.shutdown_grace_period))
        if self.deployment is not None:
            await self.deployment.stop(self.settings.shutdown_grace_period)
        await asyncio.gather(*self._retiring, return_exceptions=True)  # versions a reload replaced

    async def _force(self, server: HttpServer, graceful: asyncio.Task[None]) -> int:
        server.force_exit = True
        if self.grpc is not None:
            await self.grpc.stop(0)
        if self.deployment is not None:
            self.deployment.kill()
        graceful.cancel()
        await asyncio.gather(graceful, return_exceptions=True)
        if self.deployment is not None:
            await self.deployment.stop(1.0)  # reaps the killed processes: no zombie left
        return EXIT_FAILED

    async def _close(self) -> None:
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        if self.control is not None:
            await self.control.stop()
        if self.store is not None:
            await self.store.close()
        self.notifier.close()
