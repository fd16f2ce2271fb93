"""The container generation's `pod:` block (Cortex v0.36 to v0.42)."""

from __future__ import annotations

import re

from .fields import Block, describe
from .model import ContainerSpec, FrozenMap, PodSpec, ProbeSpec
from .sections import read_compute

_POD_FIELDS = {
    "RealtimeAPI": ("port", "max_concurrency", "max_queue_length", "containers"),
    "AsyncAPI": ("port", "max_concurrency", "containers"),
    "BatchAPI": ("port", "containers"),
    "TaskAPI": ("containers",),
}
CONTAINER_FIELDS = (
    "name", "image", "command", "args", "env", "compute", "readiness_probe", "liveness_probe",
    "pre_stop",
)
PROBE_ACTIONS = ("http_get", "tcp_socket", "exec")
PROBE_FIELDS = PROBE_ACTIONS + (
    "initial_delay_seconds", "timeout_seconds", "period_seconds", "success_threshold",
    "failure_threshold",
)
RESERVED_PORTS = (8888, 15000)  # Cortex's proxy and admin ports, kept reserved for portability
RESERVED_CONTAINER_NAMES = ("dequeuer", "proxy")
DNS1035 = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
_ENV_RESERVED = ("CORTEX_", "KUBEXIT_")


def read_pod(parent: Block, kind: str) -> PodSpec:
    allowed = _POD_FIELDS[kind]
    hints = {key: f"is not supported for {kind}" for key in _POD_FIELDS["RealtimeAPI"] if key not in allowed}
    block = parent.sub("pod", allowed, hints)
    concurrency_cap = 100 if kind == "AsyncAPI" else 30000
    return PodSpec(
        port=read_port(block, "port", 8080),
        max_concurrency=block.integer("max_concurrency", 1, 1, concurrency_cap),
        max_queue_length=block.integer("max_queue_length", 100, 1, 30000),
        containers=_containers(block, kind),
    )


def read_port(block: Block, key: str, default: int, *, required: bool = False) -> int:
    value = block.integer(key, default, 1, 65535, required=required)
    if value in RESERVED_PORTS:
        block.issue(key, f"must not be {value}: ports 8888 and 15000 are reserved")
        return default
    return value


def _containers(pod: Block, kind: str) -> tuple[ContainerSpec, ...]:
    node = pod.node("containers")
    if node is None or node.value is None:
        pod.missing("containers")
        return ()
    if not node.is_seq or not node.value:
        pod.issue("containers", f"must be a non-empty list of containers, got {describe(node.value)}")
        return ()
    seen: dict[str, int] = {}
    result = []
    hints = _container_hints(kind)
    allowed = tuple(f for f in CONTAINER_FIELDS if f not in hints)
    for i, item in enumerate(node.value):
        block = Block(pod.out, item, f"{pod.child('containers')}[{i}]", allowed, item.line, hints)
        result.append(_container(block, kind, seen))
    return tuple(result)


def _container_hints(kind: str) -> dict[str, str]:
    hints = {}
    if kind == "TaskAPI":
        hints["readiness_probe"] = "is not allowed for TaskAPI"
    if kind in ("BatchAPI", "TaskAPI"):
        hints["pre_stop"] = f"is only supported for RealtimeAPI and AsyncAPI, not {kind}"
    return hints


def _container(block: Block, kind: str, seen: dict[str, int]) -> ContainerSpec:
    command_required = kind in ("BatchAPI", "TaskAPI")
    readiness_actions = PROBE_ACTIONS if kind == "RealtimeAPI" else ("http_get", "tcp_socket")
    name = _container_name(block, seen)
    image = block.string("image", "") or ""
    if block.given("image") and not image.strip():
        block.issue("image", "must be an image reference (or leave image out to run the command as a local process)")
    command = block.string_list("command", required=command_required, non_empty=True)
    if not block.given("image") and not block.given("command") and not command_required:
        # inferd runs a container without an image as a local process: it needs its command
        block.out.add(block.line, block.path, "needs an image or a command (without an image, inferd runs "
                                              "the command as a local process)")
    return ContainerSpec(
        name=name,
        image=image,
        command=command,
        args=block.string_list("args"),
        env=block.env("env", _ENV_RESERVED),
        compute=read_compute(block, container=True),
        readiness_probe=_probe(block, "readiness_probe", readiness_actions, kind),
        liveness_probe=_probe(block, "liveness_probe", PROBE_ACTIONS, kind),
        pre_stop=_pre_stop(block),
    )


def _container_name(block: Block, seen: dict[str, int]) -> str:
    name = block.string("name", "", required=True) or ""
    if not name:
        return name
    if not DNS1035.fullmatch(name) or len(name) > 63:
        block.issue("name", "must be lower-case letters, digits and '-', start with a letter, end "
                            f"with a letter or digit, at most 63 characters; got {describe(name)}")
    elif name in RESERVED_CONTAINER_NAMES:
        block.issue("name", f"{describe(name)} is reserved (dequeuer and proxy are Cortex's sidecars)")
    elif name in seen:
        block.issue("name", f"duplicate container name {describe(name)} (first on line {seen[name]})")
    else:
        seen[name] = block.line_of("name")
    return name


def _probe(container: Block, key: str, actions: tuple[str, ...], kind: str) -> ProbeSpec | None:
    if not container.given(key):
        return None
    block = container.sub(key, PROBE_FIELDS)
    chosen = _one_action(block, PROBE_ACTIONS)
    if chosen is not None and chosen not in actions:
        block.issue(chosen, f"is not supported in a {key} for {kind} (use {' or '.join(actions)})")
    return ProbeSpec(
        http_get=_http_get(block) if chosen == "http_get" else None,
        tcp_socket=_tcp_socket(block) if chosen == "tcp_socket" else None,
        exec=_exec(block) if chosen == "exec" else None,
        initial_delay_seconds=block.integer("initial_delay_seconds", 0, 0),
        timeout_seconds=block.integer("timeout_seconds", 1, 0),
        period_seconds=block.integer("period_seconds", 10, 0),
        success_threshold=block.integer("success_threshold", 1, 0),
        failure_threshold=block.integer("failure_threshold", 3, 0),
    )


def _pre_stop(container: Block) -> FrozenMap | None:
    if not container.given("pre_stop"):
        return None
    block = container.sub("pre_stop", ("http_get", "exec"))
    chosen = _one_action(block, ("http_get", "exec"))
    if chosen == "http_get":
        return FrozenMap({"http_get": _http_get(block)})
    if chosen == "exec":
        return FrozenMap({"exec": _exec(block)})
    return None


def _one_action(block: Block, actions: tuple[str, ...]) -> str | None:
    present = [a for a in actions if block.given(a)]
    if len(present) == 1:
        return present[0]
    got = f", got {' and '.join(present)}" if present else ""
    block.out.add(block.line, block.path, f"needs exactly one of {', '.join(actions)}{got}")
    return None


def _http_get(parent: Block) -> FrozenMap:
    block = parent.sub("http_get", ("path", "port"))
    path = block.string("path", "/") or "/"
    if not path.startswith("/"):
        path = "/" + path  # Kubernetes adds the slash too
    return FrozenMap({"path": path, "port": read_port(block, "port", 0, required=True)})


def _tcp_socket(parent: Block) -> FrozenMap:
    block = parent.sub("tcp_socket", ("port",))
    return FrozenMap({"port": read_port(block, "port", 0, required=True)})


def _exec(parent: Block) -> FrozenMap:
    block = parent.sub("exec", ("command",))
    command = block.string_list("command", required=True, non_empty=True) or ()
    return FrozenMap({"command": command})
