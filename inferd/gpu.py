"""GPU inventory (via NVML) and the assignment of devices to API workers.

Workers see their GPUs only through ``CUDA_VISIBLE_DEVICES`` /
``NVIDIA_VISIBLE_DEVICES``. An API asks for ``compute.gpu: N`` GPUs per
replica; every worker process of one replica shares that replica's devices
(as Cortex's ``processes_per_replica`` did).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:  # the spec is data only; the planner needs no import of it to run
    from inferd.spec import ApiSpec

log = logging.getLogger(__name__)
_T = TypeVar("_T")

# The NVIDIA container runtime's explicit value for "no GPU"; unlike "" it
# cannot be mistaken for "unset" by tools that fall back to a default.
NVIDIA_NONE = "void"


@dataclass(frozen=True)
class GpuDevice:
    index: int  # NVML index == CUDA index under CUDA_DEVICE_ORDER=PCI_BUS_ID
    uuid: str
    name: str
    memory_total: int  # bytes
    memory_free: int  # bytes

    def __post_init__(self) -> None:
        _require(self.index >= 0, f"GPU index must be >= 0, got {self.index}")
        _require(self.memory_total >= 0, f"GPU {self.index}: memory_total must be >= 0")
        _require(self.memory_free >= 0, f"GPU {self.index}: memory_free must be >= 0")


@dataclass(frozen=True)
class GpuRequest:
    api: str
    replicas: int  # >= 1
    processes: int  # worker processes per replica, >= 1
    gpus: int  # per replica, >= 0

    def __post_init__(self) -> None:
        _require(bool(self.api), "GpuRequest.api must not be empty")
        _require(self.replicas >= 1, f'api "{self.api}": replicas must be >= 1, got {self.replicas}')
        _require(self.processes >= 1, f'api "{self.api}": processes must be >= 1, got {self.processes}')
        _require(self.gpus >= 0, f'api "{self.api}": compute.gpu must be >= 0, got {self.gpus}')


@dataclass(frozen=True)
class GpuPlan:
    # api -> one device-index tuple per worker (len = replicas * processes);
    # worker w belongs to replica w // processes.
    devices: Mapping[str, tuple[tuple[int, ...], ...]] = field(default_factory=dict)
    # api -> why its request cannot be met; such APIs are absent from `devices`.
    errors: Mapping[str, str] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


# --------------------------------------------------------------------------- inventory


def read_inventory() -> tuple[GpuDevice, ...]:
    """Devices seen by NVML, ordered by index, limited to the daemon's own
    ``CUDA_VISIBLE_DEVICES`` when it was started with one (``CUDA_VISIBLE_DEVICES=1 inferd
    run`` keeps inferd to GPU 1, as it would any CUDA program).

    Returns () when pynvml, the driver or any GPU is absent: a GPU-less box is
    a normal state, so this never raises.
    """
    return limit_to_visible(_nvml_query(_read_devices), os.environ.get("CUDA_VISIBLE_DEVICES"))


def limit_to_visible(devices: Sequence[GpuDevice], visible: str | None) -> tuple[GpuDevice, ...]:
    """The devices a ``CUDA_VISIBLE_DEVICES`` value names, read as CUDA reads it: a list of
    indexes or UUIDs (``GPU-...``, a unique prefix is enough), up to the first entry that names
    no device; unset leaves all. Indexes stay NVML's, so workers are pinned by the same numbers."""
    if visible is None:
        return tuple(devices)
    chosen: list[GpuDevice] = []
    for entry in (part.strip() for part in visible.split(",")):
        matches = [d for d in devices if (d.index == int(entry) if entry.isdigit() else
                                          bool(entry) and d.uuid.startswith(entry))]
        if len(matches) != 1 or matches[0] in chosen:
            break  # CUDA stops at the first entry it cannot use: "-1", "", "void", an unknown id
        chosen.append(matches[0])
    if len(chosen) < len(devices):
        log.info("CUDA_VISIBLE_DEVICES=%r: inferd uses %d of %d GPU(s): %s", visible, len(chosen), len(devices),
                 [d.index for d in chosen])
    return tuple(chosen)


@dataclass(frozen=True)
class GpuUsage:
    index: int
    utilization: float  # 0..1 over NVML's last sample period
    memory_used: int  # bytes
    memory_total: int  # bytes


def read_usage() -> tuple[GpuUsage, ...]:
    """Per-device utilisation and memory, for /-/metrics; () without NVML, never raises."""
    return _nvml_query(_read_usage)


def _read_usage(nvml: Any) -> tuple[GpuUsage, ...]:
    usage = []
    for index in range(nvml.nvmlDeviceGetCount()):
        try:
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            memory = nvml.nvmlDeviceGetMemoryInfo(handle)
            rates = nvml.nvmlDeviceGetUtilizationRates(handle)
            usage.append(GpuUsage(index, rates.gpu / 100, int(memory.used), int(memory.total)))
        except Exception as exc:
            log.debug("skipping GPU %d usage: %s", index, exc)
    return tuple(usage)


def _nvml_query(query: Callable[[Any], tuple[_T, ...]]) -> tuple[_T, ...]:
    """Run ``query(pynvml)`` between nvmlInit and nvmlShutdown; () whenever NVML is unusable."""
    try:
        import pynvml  # imported lazily: optional at runtime, and patchable in tests
    except Exception:  # ImportError, or a broken install
        return ()
    try:
        pynvml.nvmlInit()
    except Exception as exc:  # no driver / libnvidia-ml.so: NVMLError, OSError...
        log.debug("NVML not available: %s", exc)
        return ()
    try:
        return query(pynvml)
    except Exception as exc:  # e.g. nvmlDeviceGetCount failing: treat as no GPU
        log.warning("cannot read the GPU inventory from NVML: %s", exc)
        return ()
    finally:
        _shutdown(pynvml)


def _read_devices(nvml: Any) -> tuple[GpuDevice, ...]:
    devices = []
    for index in range(nvml.nvmlDeviceGetCount()):
        try:
            devices.append(_read_device(nvml, index))
        except Exception as exc:
            # One lost/broken GPU must not hide the healthy ones; its index is
            # simply never assigned.
            log.warning("skipping GPU %d: NVML query failed: %s", index, exc)
    return tuple(devices)


def _read_device(nvml: Any, index: int) -> GpuDevice:
    handle = nvml.nvmlDeviceGetHandleByIndex(index)
    memory = nvml.nvmlDeviceGetMemoryInfo(handle)
    return GpuDevice(
        index=index,
        uuid=_text(nvml.nvmlDeviceGetUUID(handle)),
        name=_text(nvml.nvmlDeviceGetName(handle)),
        memory_total=int(memory.total),
        memory_free=int(memory.free),
    )


def _text(value: str | bytes) -> str:
    # Older nvml bindings return bytes, newer ones str.
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _shutdown(nvml: Any) -> None:
    try:
        nvml.nvmlShutdown()
    except Exception as exc:  # nothing useful to do; never mask the result
        log.debug("nvmlShutdown failed: %s", exc)


# --------------------------------------------------------------------------- assignment


def assign_gpus(inventory: Sequence[GpuDevice], requests: Sequence[GpuRequest],
                placed: Mapping[str, Sequence[tuple[int, ...]]] | None = None) -> GpuPlan:
    """Place every replica of every request on devices; pure and deterministic.

    Requests are served in the given order, replicas in order. Each replica
    takes the `gpus` devices with the fewest replicas already on them, then
    the most free memory, then the lowest index. Sharing a device between
    replicas is allowed (a single box: the user's choice) but warned about.
    `placed` holds replicas already running (api -> their device tuples, e.g.
    APIs a reload keeps): they count as load and are never moved.
    """
    _check_inputs(inventory, requests)
    load = {device.index: 0 for device in inventory}  # replicas placed per device
    owners: dict[int, list[str]] = {device.index: [] for device in inventory}
    for api, replicas in (placed or {}).items():
        for replica in replicas:
            for index in replica:
                if index in load:
                    load[index] += 1
                    owners[index].append(api)
    devices: dict[str, tuple[tuple[int, ...], ...]] = {}
    errors: dict[str, str] = {}
    warnings: list[str] = []
    for request in requests:
        if request.gpus == 0:
            devices[request.api] = ((),) * (request.replicas * request.processes)
            continue
        error = _unmeetable(request, len(inventory))
        if error:
            errors[request.api] = error
            continue
        replicas, shared_with = _place_replicas(request, inventory, load, owners)
        devices[request.api] = tuple(r for r in replicas for _ in range(request.processes))
        if shared_with is not None:
            warnings.append(_sharing_warning(request, len(inventory), shared_with))
    return GpuPlan(devices=devices, errors=errors, warnings=tuple(warnings))


def _check_inputs(inventory: Sequence[GpuDevice], requests: Sequence[GpuRequest]) -> None:
    indexes = [device.index for device in inventory]
    _require(len(set(indexes)) == len(indexes), f"duplicate GPU indexes in inventory: {indexes}")
    apis = [request.api for request in requests]
    _require(len(set(apis)) == len(apis), f"duplicate API names in GPU requests: {apis}")


def _unmeetable(request: GpuRequest, available: int) -> str | None:
    asked = (
        f'api "{request.api}" asks for {_n(request.gpus, "GPU")} per replica '
        f"(compute.gpu: {request.gpus})"
    )
    if available == 0:
        return f"{asked} but no NVIDIA GPU is visible (NVML not available or no device)"
    if request.gpus > available:
        return f"{asked} but only {_n(available, 'NVIDIA GPU')} {'is' if available == 1 else 'are'} visible"
    return None


def _place_replicas(
    request: GpuRequest,
    inventory: Sequence[GpuDevice],
    load: dict[int, int],
    owners: dict[int, list[str]],
) -> tuple[list[tuple[int, ...]], set[str] | None]:
    """Mutates `load`/`owners`; returns per-replica tuples and who was shared with (None: nobody)."""
    replicas: list[tuple[int, ...]] = []
    shared_with: set[str] | None = None
    for _ in range(request.replicas):
        ranked = sorted(inventory, key=lambda d: (load[d.index], -d.memory_free, d.index))
        chosen = sorted(device.index for device in ranked[: request.gpus])
        for index in chosen:
            if load[index] > 0:
                shared_with = (shared_with or set()) | set(owners[index])
            load[index] += 1
            owners[index].append(request.api)
        replicas.append(tuple(chosen))
    return replicas, shared_with


def _sharing_warning(request: GpuRequest, available: int, shared_with: set[str]) -> str:
    message = (
        f'api "{request.api}": {_n(request.replicas, "replica")} x {_n(request.gpus, "GPU")} '
        f"on {_n(available, 'device')}; devices are shared"
    )
    others = sorted(shared_with - {request.api})
    if others:
        message += " with " + ", ".join(f'api "{api}"' for api in others)
    return message


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


# --------------------------------------------------------------------------- environment


def visible_devices_env(indexes: Sequence[int], inventory: Sequence[GpuDevice] = ()) -> dict[str, str]:
    """Environment that exposes exactly `indexes` (in that order) to a worker.

    CUDA_DEVICE_ORDER=PCI_BUS_ID makes CUDA number devices like NVML does
    (CUDA's default, FASTEST_FIRST, may not). When `inventory` is given, the
    indexes must exist in it, so a stale plan fails loudly instead of
    silently exposing the wrong GPU.
    """
    _check_indexes(indexes, inventory)
    listed = ",".join(str(index) for index in indexes)
    return {
        "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
        "CUDA_VISIBLE_DEVICES": listed,  # "" hides every GPU from CUDA
        "NVIDIA_VISIBLE_DEVICES": listed or NVIDIA_NONE,
    }


def _check_indexes(indexes: Sequence[int], inventory: Sequence[GpuDevice]) -> None:
    _require(all(index >= 0 for index in indexes), f"GPU indexes must be >= 0, got {list(indexes)}")
    _require(len(set(indexes)) == len(indexes), f"duplicate GPU indexes: {list(indexes)}")
    if inventory:
        unknown = sorted(set(indexes) - {device.index for device in inventory})
        _require(not unknown, f"GPU indexes {unknown} are not in the inventory")


def gpu_request(api: ApiSpec, available: int) -> tuple[GpuRequest, str | None]:
    """What an API asks of the GPU plan on a node with ``available`` GPUs, and the note when a
    hint was cut down (the daemon and ``inferd validate`` plan alike)."""
    gpus, note = hinted_gpus(api.gpus_per_replica, available, api.gpu_hint)
    return GpuRequest(api.name, api.replicas, api.processes_per_replica, gpus), note


def hinted_gpus(wanted: int, available: int, hint: bool) -> tuple[int, str | None]:
    """GPUs to ask for, and a note when fewer than ``wanted``. A hint (a RunPod hub.json
    ``gpuCount``) is what the worker was sized for on the platform, not a requirement: on a
    node with fewer GPUs it starts with those, where ``compute.gpu`` in cortex.yaml stays strict."""
    if not hint or wanted <= available:
        return wanted, None
    return available, (f"hub.json asks for {wanted} GPU(s) and this node has {available}: "
                       f"the worker starts with {available}")
