"""The inferd daemon: one asyncio process wiring spec, deployment, HTTP server and signals.

Like uvicorn's and gunicorn's supervisors, signals only put events on a queue; one explicit
loop reads them and acts, so every state change happens in one place, in order.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
from datetime import timedelta
from collections.abc import Mapping

import uvicorn

from inferd.deployment import Deployment, proto_cache_dir
from inferd.grpc.protos import CompiledProto
from inferd.grpc.server import GrpcServer
from inferd.grpc.services import compile_project
from inferd.gpu import read_inventory
from inferd.http.app import InferdApp
from inferd.http.system import system_app
from inferd.logs import get_logger
from inferd.metrics import Metrics
from inferd.settings import Settings
from inferd.spec import ProjectSpec, SpecError, load_project
from inferd.store import AsyncJobStore

log = get_logger()

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CONFIG = 2


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
    """uvicorn without its own signal handling: the daemon's loop owns signals."""

    def __init__(self, app: InferdApp, settings: Settings) -> None:
        config = uvicorn.Config(app, loop="none", http="httptools", lifespan="off", log_config=None,
                                access_log=False, server_header=False, proxy_headers=False,
                                timeout_graceful_shutdown=int(settings.shutdown_grace_period) or 1)
        config.load()
        super().__init__(config)
        self.lifespan = config.lifespan_class(config)


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


class Daemon:
    def __init__(self, settings: Settings, environ: Mapping[str, str] | None = None) -> None:
        self.settings = settings
        self.environ = dict(os.environ if environ is None else environ)
        self.metrics = Metrics()
        self.deployment: Deployment | None = None
        self.app = InferdApp(system_app(self.describe_apis, self.metrics))
        self.events: asyncio.Queue[str] = asyncio.Queue()
        self.grpc: GrpcServer | None = None
        self.store: AsyncJobStore | None = None
        self._readiness_changed = asyncio.Event()

    def describe_apis(self) -> list[dict]:
        return self.deployment.describe() if self.deployment else []

    def load(self) -> tuple[ProjectSpec, dict[str, CompiledProto]]:
        """cortex.yaml and the protos it names; SpecError lists every problem."""
        project = load_project(self.settings.project)
        return project, compile_project(project, proto_cache_dir(self.settings))

    async def run(self) -> int:
        self.settings.state_dir.mkdir(parents=True, exist_ok=True, mode=0o750)
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
            await self.grpc.start()
        except OSError as exc:
            log.error("listen_failed", host=self.settings.host, port=self.settings.port,
                      grpc_port=self.settings.grpc_port, error=str(exc))
            return EXIT_FAILED
        inventory = read_inventory() if any(api.gpus_per_replica for api in project.apis) else ()
        self.deployment = Deployment(project, self.settings, self.environ, inventory, self.metrics, protos,
                                     on_change=self._readiness_changed.set)
        self.store = await self._open_store(project)
        self.deployment.start(self.store)
        self.app.set_routes(*self.deployment.routes(self.settings, self.metrics, self.store))
        self.grpc.route(self.deployment.rpc_routes(), protos)
        server = HttpServer(self.app, self.settings)
        await server.startup(sockets=[sock])
        loop = asyncio.get_running_loop()
        serving = loop.create_task(server.main_loop())
        health = loop.create_task(self._follow_health())
        sweeper = loop.create_task(self._sweep_forever()) if self.store else None
        log.info("inferd_started", host=self.settings.host, port=self.settings.port,
                 grpc_port=self.settings.grpc_port, pid=os.getpid(),
                 project=str(project.project_dir), apis=[api.name for api in project.apis])
        self._install_signals()
        await self._wait_for_stop()
        health.cancel()
        if sweeper is not None:
            sweeper.cancel()
        try:
            return await self._shutdown(server, serving)
        finally:
            if self.store is not None:
                await self.store.close()

    async def _open_store(self, project: ProjectSpec) -> AsyncJobStore | None:
        """The job store, when some API queues jobs; jobs a crash left running are requeued."""
        if not any(api.kind == "AsyncAPI" for api in project.apis):
            return None
        store = await AsyncJobStore.open(self.settings.state_dir / "async.db")
        requeued, failed = await store.recover()
        if requeued or failed:
            log.warning("async_jobs_recovered", requeued=requeued, failed=failed)
        return store

    async def _sweep_forever(self) -> None:
        retention = timedelta(days=self.settings.async_retention_days)
        while True:
            deleted = await self.store.sweep(retention)
            if deleted:
                log.info("async_jobs_swept", deleted=deleted, retention_days=self.settings.async_retention_days)
            await asyncio.sleep(self.settings.async_sweep_interval)

    async def _follow_health(self) -> None:
        """gRPC health mirrors worker readiness, updated on every worker change."""
        while True:
            self._readiness_changed.clear()
            if self.deployment is not None:
                await self.grpc.set_health(self.deployment.readiness())
            await self._readiness_changed.wait()

    def _install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        for sig, event in ((signal.SIGTERM, "stop"), (signal.SIGINT, "stop"), (signal.SIGHUP, "reload")):
            loop.add_signal_handler(sig, self.events.put_nowait, event)

    async def _wait_for_stop(self) -> None:
        while True:
            event = await self.events.get()
            if event == "stop":
                return
            if event == "reload":
                log.warning("reload_not_supported",
                            detail="this version of inferd applies cortex.yaml changes on restart only")

    async def _shutdown(self, server: HttpServer, serving: asyncio.Task[None]) -> int:
        log.info("inferd_stopping", grace_period=self.settings.shutdown_grace_period)
        graceful = asyncio.get_running_loop().create_task(self._drain(server, serving))
        while not graceful.done():
            next_event = asyncio.ensure_future(self.events.get())
            await asyncio.wait({graceful, next_event}, return_when=asyncio.FIRST_COMPLETED)
            if next_event.done() and next_event.result() == "stop":
                log.warning("inferd_forced_stop")
                return await self._force(server, graceful)
            next_event.cancel()
        log.info("inferd_stopped")
        return EXIT_OK

    async def _drain(self, server: HttpServer, serving: asyncio.Task[None]) -> None:
        server.should_exit = True
        await serving
        await asyncio.gather(server.shutdown(), self.grpc.stop(self.settings.shutdown_grace_period))
        if self.deployment is not None:
            await self.deployment.stop(self.settings.shutdown_grace_period)

    async def _force(self, server: HttpServer, graceful: asyncio.Task[None]) -> int:
        server.force_exit = True
        await self.grpc.stop(0)
        if self.deployment is not None:
            self.deployment.kill()
        graceful.cancel()
        await asyncio.gather(graceful, return_exceptions=True)
        if self.deployment is not None:
            await self.deployment.stop(1.0)  # reaps the killed processes: no zombie left
        return EXIT_FAILED
