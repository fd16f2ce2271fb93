"""cortex.yaml's RunPodAPI: a RunPod worker file, `runpod.serverless.start({"handler": ...})`, as an API.

The API answers RunPod's queue routes under networking.endpoint, which defaults to /v2/<name> so
that RunPod clients pointed at http://<inferd>/v2 call /v2/<name>/run unchanged.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from pathlib import Path

from .errors import IMAGE_UNUSED, NOT_ENFORCED
from .fields import Block, describe
from .handler import code_path, read_dependencies, read_python_path
from .model import ApiSpec, AutoscalingSpec, HandlerSpec, RunPodSpec
from .sections import HANDLER_AUTOSCALING, read_compute, read_networking, read_node_groups

RUNPOD_KIND = "RunPodAPI"
API_FIELDS = ("name", "kind", "handler", "compute", "node_groups", "autoscaling", "networking", "runpod")
HANDLER_FIELDS = ("type", "path", "env", "args", "runner", "python_path", "dependencies", "image")
SECTION_FIELDS = ("execution_timeout", "ttl", "run_retention", "runsync_retention", "max_run_body",
                  "max_runsync_body", "api_keys")
RUNNERS = ("direct", "sdk")
# CORTEX_ as for every handler; RUNPOD_WEBHOOK_* would send the SDK to a platform that is not inferd.
RESERVED_ENV = ("CORTEX_", "RUNPOD_WEBHOOK_")
# The SDK's own command-line flags (runpod.serverless.start parses them, spec §1.2): they would
# make the worker test itself or serve its own API instead of taking inferd's jobs.
# The SDK flags that take the worker out of serving jobs (local test mode, its dev server);
# --rp_log_level and --rp_debugger are honoured by both runners and stay allowed.
SDK_VALUE_FLAGS = ("--test_input", "--rp_api_port", "--rp_api_host", "--rp_api_concurrency")
SDK_SWITCHES = ("--rp_serve_api",)

API_HINTS = {
    "pod": f"{RUNPOD_KIND} runs a RunPod worker file (handler.path); it has no pod",
    "update_strategy": f"is not used by {RUNPOD_KIND}",
    "definition": f"is for TaskAPI; {RUNPOD_KIND} uses handler",
    "apis": "is only used by TrafficSplitter",
}
_NOT_USED = f"is not used by {RUNPOD_KIND}: a RunPod worker is a handler(job) function started by runpod.serverless.start"
_HANDLER_HINTS = {
    "protobuf_path": f"is only supported for RealtimeAPI (gRPC), not {RUNPOD_KIND}",
    "server_side_batching": f"is not supported for {RUNPOD_KIND}: a RunPod worker takes jobs one by one "
                            "(or as many at once as its concurrency_modifier allows)",
    "processes_per_replica": f"is not used by {RUNPOD_KIND}: each worker is one process; "
                             "autoscaling.min_replicas sets the number of workers",
    "threads_per_process": f"is not used by {RUNPOD_KIND}: the worker's concurrency_modifier sets "
                           "how many jobs it takes at once",
    "request_timeout": f"is not used by {RUNPOD_KIND}; use runpod.execution_timeout",
    "config": f"is not used by {RUNPOD_KIND}: a RunPod handler receives only the job; pass settings in handler.env",
    "log_level": f"is not used by {RUNPOD_KIND}; set RUNPOD_LOG_LEVEL in handler.env",
    "multi_model_reloading": _NOT_USED,
    "models": _NOT_USED,
    "tensorflow_serving_image": _NOT_USED,
    "shm_size": _NOT_USED,
}
_AUTOSCALING_HINTS = {
    key: f"is not used by {RUNPOD_KIND}: inferd runs autoscaling.min_replicas workers"
    for key in (*HANDLER_AUTOSCALING, "target_in_flight") if key not in ("min_replicas", "max_replicas")
}
_API_KEY = re.compile(r"\S+")
_SIZE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*(|[kKMGT]i?)B?")
_SIZE_UNITS = {"": 1, "k": 10**3, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12,
               "ki": 2**10, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}


def read_runpod_api(block: Block, name: str, root: Path) -> ApiSpec:
    """One `kind: RunPodAPI` entry; its fields were checked against API_FIELDS when `block` was opened."""
    handler = read_runpod_handler(block, root) if block.has("handler") else None
    if handler is None:
        block.missing("handler")
    block.ignore("node_groups", NOT_ENFORCED + " (there is one node)")
    return ApiSpec(
        name=name,
        kind=RUNPOD_KIND,
        line=block.line,
        handler=handler,
        compute=read_compute(block, container=False),
        autoscaling=read_workers(block),
        networking=read_networking(block, name, runpod_endpoint(name)),
        node_groups=read_node_groups(block),
        runpod=read_runpod_section(block),
    )


def runpod_endpoint(name: str) -> str:
    return f"/v2/{name}"


def workers_spec(workers: int) -> AutoscalingSpec:
    """A RunPodAPI's autoscaling: only the worker count means anything on one node."""
    return AutoscalingSpec(min_replicas=workers, init_replicas=workers)


def read_runpod_handler(parent: Block, root: Path) -> HandlerSpec:
    block = parent.sub("handler", HANDLER_FIELDS, _HANDLER_HINTS)
    block.string("type", "python", choices=("python",))
    block.ignore("image", IMAGE_UNUSED)
    return HandlerSpec(
        path=code_path(block, root),
        dependencies=read_dependencies(block),
        python_path=read_python_path(block, root),
        image=block.string("image"),
        env=block.env("env", RESERVED_ENV),
        args=_args(block),
        runner=block.string("runner", "direct", choices=RUNNERS) or "direct",
    )


def _args(block: Block) -> tuple[str, ...]:
    args = block.string_list("args") or ()
    node = block.node("args")
    items = node.value if node is not None and node.is_seq else []
    for i, item in enumerate(items):
        if isinstance(item.value, str) and is_sdk_flag(item.value):
            block.out.add(item.line, f"{block.child('args')}[{i}]",
                          f"{describe(item.value)} is the RunPod SDK's own flag: inferd serves the API "
                          "and feeds the worker its jobs, so leave it out")
    return args


def is_sdk_flag(arg: str) -> bool:
    flag = arg.split("=", 1)[0]
    return flag in SDK_VALUE_FLAGS or flag in SDK_SWITCHES


def read_workers(parent: Block) -> AutoscalingSpec:
    block = parent.sub("autoscaling", ("min_replicas", "max_replicas"), _AUTOSCALING_HINTS)
    block.ignore("max_replicas", NOT_ENFORCED)
    workers = block.integer("min_replicas", 1, 1)
    most = block.integer("max_replicas", 100, 1)
    if most < workers:
        block.issue("max_replicas", f"must be >= min_replicas ({workers}), got {most}")
    return workers_spec(workers)


def read_runpod_section(parent: Block) -> RunPodSpec:
    block = parent.sub("runpod", SECTION_FIELDS)
    default = RunPodSpec()
    return RunPodSpec(
        execution_timeout=block.duration("execution_timeout", default.execution_timeout, positive=True),
        ttl=block.duration("ttl", default.ttl, positive=True),
        run_retention=block.duration("run_retention", default.run_retention, minimum=0),
        runsync_retention=block.duration("runsync_retention", default.runsync_retention, minimum=0),
        max_run_body=_size(block, "max_run_body", default.max_run_body),
        max_runsync_body=_size(block, "max_runsync_body", default.max_runsync_body),
        api_keys=block.string_list("api_keys", pattern=_API_KEY) or (),
    )


def _size(block: Block, key: str, default: int) -> int:
    """Bytes, written as a number of bytes or a size like "10MB", "10Mi" or "512k"."""
    value = block.raw(key)
    if value is None:
        return default
    size = parse_size(value)
    if size is None or size < 1:
        block.issue(key, f'must be a size like "10MB", "10Mi" or a number of bytes >= 1, got {describe(value)}')
        return default
    return size


def parse_size(value: object) -> int | None:
    """Bytes in `value` (an integer, or a decimal number with an SI or binary suffix), else None."""
    if isinstance(value, bool):  # YAML true is no size
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value) if value.is_integer() else None
    match = _SIZE.fullmatch(value.strip()) if isinstance(value, str) else None
    if match is None:
        return None
    try:
        return int(Decimal(match[1]) * _SIZE_UNITS[match[2]])
    except InvalidOperation:
        return None
