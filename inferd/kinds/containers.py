"""The container-backed form of a kind (``pod.containers``): what the kinds share to run the
user's own web server. RealtimeAPI and AsyncAPI run a pool of ``ContainerReplica``s
(``container_backend``); BatchAPI and TaskAPI start replicas per job (``inferd.containers.jobs``)."""

from __future__ import annotations

import ipaddress

from inferd.containers.engine import find_engine
from inferd.containers.launch import scratch_root
from inferd.containers.replica import ContainerReplica
from inferd.kinds.base import ApiRuntime, KindContext, WorkerLaunch
from inferd.settings import Settings
from inferd.spec import ApiSpec
from inferd.worker.backend import BackendFactory, WorkerBackend


def unrunnable(api: ApiSpec) -> str | None:
    """Why this host cannot run the API's containers: an image with no command needs an engine."""
    assert api.pod is not None
    for i, container in enumerate(api.pod.containers):
        if container.image and container.command is None and find_engine() is None:
            return (f"pod.containers[{i}] ({container.name}): image {container.image} has no command, and no "
                    "container engine (podman or docker) can run images on this host; give the container a "
                    "command to run it as a local process, or install podman or docker")
    return None


def base_url(settings: Settings) -> str:
    """Where a container reaches this daemon's APIs: ``<base>/<api>`` (Cortex's chaining URL)."""
    host = settings.host
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        address = None
    if address is None:
        name = "127.0.0.1" if host in ("", "localhost") else host
    elif address.is_unspecified:
        name = "127.0.0.1" if address.version == 4 else "[::1]"
    else:
        name = str(address) if address.version == 4 else f"[{address}]"
    return f"http://{name}:{settings.port}"


def container_backend(runtime: ApiRuntime, context: KindContext, launch: WorkerLaunch) -> BackendFactory:
    pod = runtime.spec.pod
    assert pod is not None
    api = runtime.name
    url = base_url(context.settings)
    root = scratch_root(context.settings.state_dir)
    engine = find_engine()

    def replica(slot: int) -> WorkerBackend:
        place = launch.slots[slot]
        return ContainerReplica(api, slot, pod, place.env, place.gpus, launch.project_dir, url, root, engine,
                                launch.on_log)

    return replica
