"""The validated, immutable shape of a cortex.yaml project.

Everything here is frozen: mappings are `FrozenMap`, sequences are tuples. `plain()` turns any of
it back into ordinary dicts and lists, for user code and JSON.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path, PurePath
from typing import Any

KINDS = ("RealtimeAPI", "AsyncAPI", "BatchAPI", "TaskAPI", "TrafficSplitter", "RunPodAPI")


class FrozenMap(Mapping[Any, Any]):
    """A read-only, hashable, picklable mapping (MappingProxyType is neither of the last two)."""

    __slots__ = ("_data", "_hash")
    _data: dict[Any, Any]
    _hash: int | None

    def __init__(self, data: Mapping[Any, Any] | None = None) -> None:
        object.__setattr__(self, "_data", dict(data or {}))
        object.__setattr__(self, "_hash", None)

    def __getitem__(self, key: Any) -> Any:
        return self._data[key]

    def __iter__(self) -> Iterator[Any]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __hash__(self) -> int:
        cached = self._hash
        if cached is None:
            cached = hash(frozenset(self._data.items()))
            object.__setattr__(self, "_hash", cached)
        return cached

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Mapping):
            return self._data == dict(other.items())
        return NotImplemented

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("FrozenMap is read-only")

    def __repr__(self) -> str:
        return f"FrozenMap({self._data!r})"

    def __reduce__(self) -> tuple[type[FrozenMap], tuple[dict[Any, Any]]]:
        return (FrozenMap, (self._data,))

    # Immutable all the way down (see freeze), so a copy may share everything.
    def __copy__(self) -> FrozenMap:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> FrozenMap:
        return self


def freeze(value: Any) -> Any:
    """Recursively turn dicts into FrozenMap and lists into tuples."""
    if isinstance(value, Mapping):
        return FrozenMap({k: freeze(v) for k, v in value.items()})
    if isinstance(value, (list, tuple)):
        return tuple(freeze(v) for v in value)
    return value


def plain(obj: Any) -> Any:
    """Recursively turn frozen mappings, tuples and spec dataclasses into dicts and lists.

    Paths become strings so the result can go straight to `json.dumps`.
    """
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return {k: plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    if isinstance(obj, PurePath):
        return str(obj)
    return obj


EMPTY = FrozenMap()


@dataclass(frozen=True)
class DependenciesSpec:
    pip: str = "requirements.txt"
    conda: str = "conda-packages.txt"
    shell: str = "dependencies.sh"


@dataclass(frozen=True)
class BatchingSpec:
    max_batch_size: int
    batch_interval: float  # seconds


SINGLE_MODEL = "default"  # the name of multi_model_reloading.path's one model


@dataclass(frozen=True)
class ModelPath:
    name: str
    path: str  # an absolute local directory, or an s3:// or gs:// URL without a trailing "/"


@dataclass(frozen=True, kw_only=True)
class MultiModelSpec:
    """``handler.multi_model_reloading``: ``path`` (one model, named SINGLE_MODEL), ``paths``
    (named models) or ``dir`` (one model per subdirectory, found while running)."""

    form: str  # "path", "paths" or "dir"
    models: tuple[ModelPath, ...] = ()  # path and paths
    dir: str | None = None
    cache_size: int | None = None  # both or neither
    disk_cache_size: int | None = None

    def local_roots(self) -> tuple[str, ...]:
        """The local directories models are read from (object stores left out)."""
        locations = [self.dir] if self.dir is not None else [model.path for model in self.models]
        return tuple(location for location in locations if location and "://" not in location)


@dataclass(frozen=True, kw_only=True)
class HandlerSpec:
    type: str = "python"
    path: str
    protobuf_path: str | None = None
    dependencies: DependenciesSpec = DependenciesSpec()
    multi_model_reloading: MultiModelSpec | None = None
    models: Mapping[str, Any] | None = None
    server_side_batching: BatchingSpec | None = None
    processes_per_replica: int = 1
    threads_per_process: int = 1
    config: Mapping[str, Any] = EMPTY
    python_path: str | None = None
    image: str | None = None
    tensorflow_serving_image: str | None = None
    env: Mapping[str, str] = EMPTY
    log_level: str = "info"
    shm_size: str | None = None
    request_timeout: float | None = None  # inferd's own: seconds before 504 and a new worker
    args: tuple[str, ...] = ()  # RunPodAPI: the worker's sys.argv[1:]
    runner: str = "direct"  # RunPodAPI: "direct" or "sdk" (how the worker file is run)


@dataclass(frozen=True, kw_only=True)
class TaskDefinition:
    path: str
    config: Mapping[str, Any] = EMPTY
    dependencies: DependenciesSpec = DependenciesSpec()
    python_path: str | None = None
    image: str | None = None
    env: Mapping[str, str] = EMPTY
    log_level: str = "info"
    shm_size: str | None = None


@dataclass(frozen=True)
class ComputeSpec:
    cpu: str | None = "200m"  # as the user wrote it; a single node does not enforce it
    gpu: int = 0
    inf: int = 0
    mem: str | None = None
    node_groups: tuple[str, ...] | None = None
    shm: str | None = None  # container generation: compute.shm


@dataclass(frozen=True)
class AutoscalingSpec:
    min_replicas: int = 1
    max_replicas: int = 100
    init_replicas: int = 1
    max_replica_concurrency: int = 1024
    target_replica_concurrency: float = 1.0
    window: float = 60.0
    downscale_stabilization_period: float = 300.0
    upscale_stabilization_period: float = 60.0
    max_downscale_factor: float = 0.75
    max_upscale_factor: float = 1.5
    downscale_tolerance: float = 0.05
    upscale_tolerance: float = 0.05
    target_in_flight: float | None = None


@dataclass(frozen=True)
class UpdateStrategySpec:
    max_surge: str = "25%"
    max_unavailable: str = "25%"


@dataclass(frozen=True)
class NetworkingSpec:
    endpoint: str
    allow_origins: tuple[str, ...] = ()  # inferd's own: browser origins answered with CORS headers


@dataclass(frozen=True, kw_only=True)
class ProbeSpec:
    http_get: Mapping[str, Any] | None = None
    tcp_socket: Mapping[str, Any] | None = None
    exec: Mapping[str, Any] | None = None
    initial_delay_seconds: int = 0
    timeout_seconds: int = 1
    period_seconds: int = 10
    success_threshold: int = 1
    failure_threshold: int = 3


@dataclass(frozen=True, kw_only=True)
class ContainerSpec:
    name: str
    image: str
    command: tuple[str, ...] | None = None
    args: tuple[str, ...] | None = None
    env: Mapping[str, str] = EMPTY
    compute: ComputeSpec = ComputeSpec()
    readiness_probe: ProbeSpec | None = None
    liveness_probe: ProbeSpec | None = None
    pre_stop: Mapping[str, Any] | None = None


@dataclass(frozen=True, kw_only=True)
class PodSpec:
    port: int = 8080
    max_concurrency: int = 1
    max_queue_length: int = 100
    containers: tuple[ContainerSpec, ...] = ()


@dataclass(frozen=True)
class TrafficTarget:
    name: str
    weight: int
    shadow: bool = False


MIB = 1024 * 1024


@dataclass(frozen=True)
class RunPodSpec:
    """A RunPodAPI's queue settings (cortex.yaml `runpod:`), with RunPod's defaults.

    Durations are seconds, sizes bytes. RunPod documents its body limits as "10 MB" and
    "20 MB"; MiB is the generous reading, so inferd never refuses what RunPod would take.
    The API's routes live under networking.endpoint (default /v2/<name>): <endpoint>/run,
    /runsync, /status/<id>, /stream/<id>, /cancel/<id>, /retry/<id>, /purge-queue, /health.
    """

    execution_timeout: float = 600.0
    ttl: float = 86400.0
    run_retention: float = 1800.0
    runsync_retention: float = 60.0
    max_run_body: int = 10 * MIB
    max_runsync_body: int = 20 * MIB
    api_keys: tuple[str, ...] = ()  # empty: any Authorization header (or none) is accepted

    # The job store keeps retention as timedeltas.
    @property
    def run_retention_delta(self) -> timedelta:
        return timedelta(seconds=self.run_retention)

    @property
    def runsync_retention_delta(self) -> timedelta:
        return timedelta(seconds=self.runsync_retention)


@dataclass(frozen=True, kw_only=True)
class ApiSpec:
    name: str
    kind: str
    line: int  # line of this API's list entry
    handler: HandlerSpec | None = None  # handler generation: Realtime/Async/Batch
    definition: TaskDefinition | None = None  # handler generation: TaskAPI
    pod: PodSpec | None = None  # container generation
    compute: ComputeSpec = ComputeSpec()  # pods: GPUs summed over containers
    autoscaling: AutoscalingSpec | None = None  # RealtimeAPI/AsyncAPI only
    update_strategy: UpdateStrategySpec | None = None
    networking: NetworkingSpec
    traffic_splits: tuple[TrafficTarget, ...] = ()
    node_groups: tuple[str, ...] | None = None
    runpod: RunPodSpec | None = None  # RunPodAPI only
    # compute.gpu came from .runpod/hub.json's gpuCount, a hint: on a node with fewer GPUs the
    # workers start with what there is, and say so. From cortex.yaml, compute.gpu is strict.
    gpu_hint: bool = False

    @property
    def is_grpc(self) -> bool:
        return self.handler is not None and self.handler.protobuf_path is not None

    @property
    def gpus_per_replica(self) -> int:
        return self.compute.gpu

    @property
    def processes_per_replica(self) -> int:
        return self.handler.processes_per_replica if self.handler is not None else 1

    @property
    def replicas(self) -> int:
        """Replicas on this one node: min_replicas (at least 1); there is no autoscaler."""
        return 1 if self.autoscaling is None else max(self.autoscaling.min_replicas, 1)

    @property
    def worker_count(self) -> int:
        return self.replicas * self.processes_per_replica


@dataclass(frozen=True)
class ProjectSpec:
    project_dir: Path  # absolute, resolved
    config_file: Path  # absolute
    apis: tuple[ApiSpec, ...]
    ignored: tuple[str, ...] = field(default=())

    def api(self, name: str) -> ApiSpec:
        for api in self.apis:
            if api.name == name:
                return api
        raise KeyError(name)
