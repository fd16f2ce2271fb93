"""Blocks shared by several kinds: compute, autoscaling, update_strategy, networking."""

from __future__ import annotations

import re

from .errors import NOT_ENFORCED
from .fields import Block, describe
from .model import (
    AutoscalingSpec,
    ComputeSpec,
    NetworkingSpec,
    PodSpec,
    UpdateStrategySpec,
)
from .units import parse_quantity

HANDLER_COMPUTE = ("cpu", "gpu", "inf", "mem", "node_groups")
CONTAINER_COMPUTE = ("cpu", "gpu", "inf", "mem", "shm")
NODE_GROUP = re.compile(r"[A-Za-z0-9_-]+")

_SCALING_COMMON = (
    "min_replicas", "max_replicas", "init_replicas", "window", "downscale_stabilization_period",
    "upscale_stabilization_period", "max_downscale_factor", "max_upscale_factor",
    "downscale_tolerance", "upscale_tolerance",
)
HANDLER_AUTOSCALING = _SCALING_COMMON + ("max_replica_concurrency", "target_replica_concurrency")
POD_AUTOSCALING = _SCALING_COMMON + ("target_in_flight",)
_POD_HINTS = {
    "max_replica_concurrency": "is for handler APIs; with pod, use pod.max_concurrency and pod.max_queue_length",
    "target_replica_concurrency": "is for handler APIs; with pod, use autoscaling.target_in_flight",
}
_HANDLER_HINTS = {"target_in_flight": "is for pod APIs; handler APIs use target_replica_concurrency"}
# inferd runs min_replicas replicas and caps each at max_replica_concurrency; the rest steer a
# cluster autoscaler, which a single node does not have.
_HONOURED_SCALING = ("min_replicas", "max_replica_concurrency")

ENDPOINT_CHARS = re.compile(r"[a-zA-Z0-9_\-./]+")
RESERVED_PREFIX = "/-"  # inferd's own routes live under /-/
_SURGE = re.compile(r"(\d+)%?")
# An origin as browsers send it: scheme://host[:port], a name or an IP ([...] for IPv6), no path.
ORIGIN = re.compile(r"([a-z][a-z0-9+.-]*)://([a-z0-9-]+(?:\.[a-z0-9-]+)*|\[[0-9a-f:.]+\])(?::([0-9]{1,5}))?")
ANY_ORIGIN = "*"
DEFAULT_PORTS = {"http": "80", "https": "443"}


def read_compute(parent: Block, *, container: bool) -> ComputeSpec:
    block = parent.sub("compute", CONTAINER_COMPUTE if container else HANDLER_COMPUTE)
    gpu = block.integer("gpu", 0, 0)
    inf = block.integer("inf", 0, 0, 1)
    if gpu > 0 and inf > 0:
        block.issue("inf", "cannot be used together with gpu")
    for key in ("cpu", "mem", "shm"):
        block.ignore(key, NOT_ENFORCED)
    block.ignore("inf", NOT_ENFORCED + " (inferd has no Inferentia support)")
    block.ignore("node_groups", NOT_ENFORCED + " (there is one node)")
    mem = block.quantity("mem", None, "20Mi", '"512Mi" or "1G"')
    shm = block.quantity("shm", None, "0", '"64Mi" or "1Gi"')
    if shm and mem and parse_quantity(shm) > parse_quantity(mem):
        block.issue("shm", f"must not exceed mem ({mem}), got {describe(shm)}")
    return ComputeSpec(
        cpu=block.quantity("cpu", "200m", "20m", '"200m", "1" or "0.5"'),
        gpu=gpu,
        inf=inf,
        mem=mem,
        node_groups=read_node_groups(block),
        shm=shm,
    )


def read_node_groups(block: Block) -> tuple[str, ...] | None:
    return block.string_list("node_groups", non_empty=True, pattern=NODE_GROUP)


def read_autoscaling(parent: Block, kind: str, *, processes: int, threads: int,
                     pod: PodSpec | None) -> AutoscalingSpec:
    fields, hints = (POD_AUTOSCALING, _POD_HINTS) if pod else (HANDLER_AUTOSCALING, _HANDLER_HINTS)
    block = parent.sub("autoscaling", fields, hints)
    for key in fields:
        if key not in _HONOURED_SCALING:
            block.ignore(key, NOT_ENFORCED)
    # Cortex v0.38+ lets pod APIs scale to zero; the handler generation needs at least one replica.
    min_replicas = block.integer("min_replicas", 1, 0 if pod else 1)
    max_replicas = block.integer("max_replicas", 100, 1)
    _check_replica_order(block, min_replicas, max_replicas)
    init_replicas = _init_replicas(block, min_replicas, max_replicas)
    if pod is None:
        max_rc, target = _handler_concurrency(block, kind, processes * threads)
        target_in_flight = None
    else:
        max_rc, target = _pod_concurrency(block, kind, pod)
        target_in_flight = target
    return AutoscalingSpec(
        min_replicas=min_replicas,
        max_replicas=max_replicas,
        init_replicas=init_replicas,
        max_replica_concurrency=max_rc,
        target_replica_concurrency=target,
        window=block.duration("window", 60.0, minimum=10, multiple_of=10),
        downscale_stabilization_period=block.duration("downscale_stabilization_period", 300.0, minimum=0),
        upscale_stabilization_period=block.duration("upscale_stabilization_period", 60.0, minimum=0),
        max_downscale_factor=block.number("max_downscale_factor", 0.75, 0, 1, hi_open=True),
        max_upscale_factor=block.number("max_upscale_factor", 1.5, 1, lo_open=True),
        downscale_tolerance=block.number("downscale_tolerance", 0.05, 0, 1, hi_open=True),
        upscale_tolerance=block.number("upscale_tolerance", 0.05, 0),
        target_in_flight=target_in_flight,
    )


def _check_replica_order(block: Block, min_replicas: int, max_replicas: int) -> None:
    if max_replicas < min_replicas:
        block.issue("max_replicas", f"must be >= min_replicas ({min_replicas}), got {max_replicas}")


def _init_replicas(block: Block, min_replicas: int, max_replicas: int) -> int:
    init = block.integer("init_replicas", min_replicas, 0)
    if block.given("init_replicas") and not min_replicas <= init <= max_replicas:
        block.issue("init_replicas", f"must be between min_replicas ({min_replicas}) and "
                                     f"max_replicas ({max_replicas}), got {init}")
        return min_replicas
    return init


def _handler_concurrency(block: Block, kind: str, parallelism: int) -> tuple[int, float]:
    max_rc = block.integer("max_replica_concurrency", 1024, 1, 30000)
    default_target = 1.0 if kind == "AsyncAPI" else float(parallelism)
    target = block.number("target_replica_concurrency", default_target, 0, lo_open=True)
    if target > max_rc:
        where = "" if block.given("target_replica_concurrency") else \
            " (its default is processes_per_replica * threads_per_process)"
        block.issue("target_replica_concurrency",
                    f"must be <= max_replica_concurrency ({max_rc}), got {target:g}{where}")
    return max_rc, target


def _pod_concurrency(block: Block, kind: str, pod: PodSpec) -> tuple[int, float]:
    """Derive the handler-generation fields from pod.*, so the daemon reads one set of fields.

    A RealtimeAPI pod takes max_concurrency requests plus max_queue_length waiting (then 503);
    an AsyncAPI pod is fed at most max_concurrency at a time from inferd's queue.
    """
    cap = pod.max_concurrency + pod.max_queue_length if kind == "RealtimeAPI" else pod.max_concurrency
    target = block.number("target_in_flight", float(pod.max_concurrency), 0, lo_open=True)
    if kind == "RealtimeAPI" and target > cap:
        block.issue("target_in_flight",
                    f"must be <= pod.max_concurrency + pod.max_queue_length ({cap}), got {target:g}")
    return cap, target


def read_update_strategy(parent: Block) -> UpdateStrategySpec:
    block = parent.sub("update_strategy", ("max_surge", "max_unavailable"))
    for key in ("max_surge", "max_unavailable"):
        block.ignore(key, NOT_ENFORCED)
    surge = _surge_value(block, "max_surge")
    unavailable = _surge_value(block, "max_unavailable")
    if surge.rstrip("%") == "0" and unavailable.rstrip("%") == "0":
        block.issue("max_unavailable", "max_surge and max_unavailable cannot both be 0")
    return UpdateStrategySpec(max_surge=surge, max_unavailable=unavailable)


def _surge_value(block: Block, key: str) -> str:
    if not block.given(key):
        return "25%"
    value = block.raw(key)
    text = str(value) if isinstance(value, int) and not isinstance(value, bool) else value
    match = _SURGE.fullmatch(text) if isinstance(text, str) else None
    if match is None or (text.endswith("%") and int(match[1]) > 100):
        block.issue(key, f'must be an integer >= 0 or a percentage "0%" to "100%", got {describe(value)}')
        return "25%"
    return text


def read_networking(parent: Block, name: str, default_endpoint: str | None = None) -> NetworkingSpec:
    """`default_endpoint` when none is written: RunPodAPI's is /v2/<name>, the others' /<name>."""
    block = parent.sub("networking", ("endpoint", "allow_origins"))
    raw = block.string("endpoint")
    endpoint = None if raw is None else normalise_endpoint(block, raw)
    fallback = default_endpoint or f"/{name}"
    return NetworkingSpec(endpoint=endpoint or fallback, allow_origins=read_allow_origins(block))


def read_allow_origins(block: Block) -> tuple[str, ...]:
    """inferd's own field: the browser origins whose pages may read the API's replies (CORS)."""
    node = block.node("allow_origins")
    if node is None or node.value is None:
        return ()
    if not node.is_seq:
        block.issue("allow_origins", f'must be a list of origins like ["https://app.example.com"], '
                                     f"got {describe(node.value)}")
        return ()
    origins = []
    for i, item in enumerate(node.value):
        origin = normalise_origin(item.value)
        if origin is None:
            block.out.add(item.line, f"{block.child('allow_origins')}[{i}]",
                          f'must be an origin "scheme://host[:port]" like "https://app.example.com" '
                          f'(no path, no trailing "/"), or "*", got {describe(item.value)}')
            continue
        origins.append(origin)
    if ANY_ORIGIN in origins and len(set(origins)) > 1:
        block.issue("allow_origins", '"*" allows every origin: list it alone, or list origins without it')
    return tuple(dict.fromkeys(origins))


def normalise_origin(value: object) -> str | None:
    """`value` as a browser writes it in its Origin header, or None when it is not an origin.

    Browsers send scheme and host in lowercase and leave out a default port, so an origin
    written otherwise in cortex.yaml would never match.
    """
    if value == ANY_ORIGIN:
        return ANY_ORIGIN
    match = ORIGIN.fullmatch(value.lower()) if isinstance(value, str) else None
    if match is None:
        return None
    scheme, host, port = match.groups()
    if port is not None and not 0 < int(port) < 65536:
        return None
    if port is None or port == DEFAULT_PORTS.get(scheme):
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{port}"


def normalise_endpoint(block: Block, raw: str) -> str | None:
    """`raw` with one leading and no trailing "/", or None after reporting why it is invalid."""
    if not raw:
        block.issue("endpoint", "must not be empty")
        return None
    if not ENDPOINT_CHARS.fullmatch(raw):
        block.issue("endpoint", f"may contain only letters, digits, '_', '-', '.' and '/', got {describe(raw)}")
        return None
    if "//" in raw:
        block.issue("endpoint", f"must not contain '//', got {describe(raw)}")
        return None
    endpoint = "/" + raw.strip("/")
    if endpoint == "/":
        block.issue("endpoint", "cannot be / alone")
        return None
    if len(endpoint) > 1000:
        block.issue("endpoint", f"must be at most 1000 characters, got {len(endpoint)}")
        return None
    if endpoint == RESERVED_PREFIX or endpoint.startswith(RESERVED_PREFIX + "/"):
        block.issue("endpoint",
                    f"must not start with /-/: inferd reserves it for its own routes, got {describe(raw)}")
        return None
    return endpoint
