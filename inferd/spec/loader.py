"""Entry points: read a project's cortex.yaml into a ProjectSpec, or raise SpecError with every problem."""

from __future__ import annotations

import os
from pathlib import Path

from .discover import discover_runpod
from .errors import NOT_ENFORCED, Collector, SpecError, SpecIssue
from .fields import Block, describe
from .handler import read_definition, read_handler
from .model import (
    KINDS,
    ApiSpec,
    AutoscalingSpec,
    ComputeSpec,
    HandlerSpec,
    PodSpec,
    ProjectSpec,
    TrafficTarget,
)
from .pods import read_pod
from .runpod import API_FIELDS as RUNPOD_FIELDS
from .runpod import API_HINTS as RUNPOD_HINTS
from .runpod import RUNPOD_KIND, read_runpod_api
from .sections import (
    read_autoscaling,
    read_compute,
    read_networking,
    read_node_groups,
    read_update_strategy,
)
from .units import parse_quantity
from .validate import Located, check_project, name_problem, read_splits
from .yamlnodes import Node, compose

_SCALED = ("RealtimeAPI", "AsyncAPI")
_FIELDS = {
    "RealtimeAPI": ("name", "kind", "handler", "pod", "compute", "node_groups", "autoscaling",
                    "update_strategy", "networking"),
    "BatchAPI": ("name", "kind", "handler", "pod", "compute", "node_groups", "networking"),
    "TaskAPI": ("name", "kind", "definition", "pod", "compute", "node_groups", "networking"),
    "TrafficSplitter": ("name", "kind", "apis", "networking"),
    RUNPOD_KIND: RUNPOD_FIELDS,
}
_FIELDS["AsyncAPI"] = _FIELDS["RealtimeAPI"]
_ALL_FIELDS = tuple(dict.fromkeys(f for fields in _FIELDS.values() for f in fields))
DEFAULT_CONFIG = "cortex.yaml"
_EXAMPLE = "- name: my-api\n  kind: RealtimeAPI\n  handler:\n    path: handler.py"


def load_project(project_dir: str | os.PathLike[str], config_file: str | os.PathLike[str] = DEFAULT_CONFIG) -> ProjectSpec:
    """Read and validate `project_dir/config_file`; raises SpecError listing every problem.

    With no cortex.yaml, a RunPod worker repository is served as one RunPodAPI (see discover).
    """
    root = Path(project_dir).resolve()
    label = os.fspath(config_file)
    config_path = root / config_file  # an absolute config_file replaces root here
    out = Collector(label)
    if not root.is_dir():
        out.add(None, "", f"project directory {root} not found")
        out.raise_if_any()
    try:
        data = config_path.read_bytes()
    except FileNotFoundError:
        if label == DEFAULT_CONFIG:  # a file named on purpose must exist
            return _without_config(root, f"file not found: {config_path}")
        out.add(None, "", f"file not found: {config_path}")
    except OSError as exc:
        out.add(None, "", f"cannot read {config_path}: {exc.strerror or exc}")
    out.raise_if_any()
    text = _decode(data, out)
    _check_dotenv(root, out)
    return _parse(text, root, config_path, out)


def _without_config(root: Path, missing: str) -> ProjectSpec:
    """A RunPod worker repository served as it is; SpecError saying `missing` when it is not one."""
    project = discover_runpod(root, missing)
    out = Collector(DEFAULT_CONFIG)
    _check_dotenv(root, out)
    out.raise_if_any()
    return project


def _decode(data: bytes, out: Collector) -> str:
    """The file as text, newlines translated as text mode would; a bad byte is reported at its line."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line_start = data.rfind(b"\n", 0, exc.start) + 1
        hint = "; it looks like UTF-16" if data.startswith((b"\xff\xfe", b"\xfe\xff")) else ""
        out.add(data.count(b"\n", 0, exc.start) + 1, "",
                f"not UTF-8 text: byte 0x{data[exc.start]:02x} in column {exc.start - line_start + 1} "
                f"({exc.reason}){hint}; save the file as UTF-8")
        raise SpecError(out.issues) from None
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _check_dotenv(root: Path, out: Collector) -> None:
    # Workers read .env (inferd.worker.launch); like the handler, proto and python_path, it must
    # not lead out of the project through a symlink.
    path = root / ".env"
    if not path.is_symlink():
        return
    try:
        target = path.resolve()
    except (OSError, RuntimeError):  # a symlink loop
        out.issues.append(SpecIssue(".env", None, "", "is a symlink that cannot be resolved (a loop?)"))
        return
    if not target.is_relative_to(root):
        out.issues.append(SpecIssue(".env", None, "", f"must stay inside the project directory, got a "
                                                      f"symlink to {target}; copy the file into the project"))


def parse_apis(text: str, project_dir: Path, file_label: str = "cortex.yaml") -> ProjectSpec:
    """Validate cortex.yaml text as if it were `project_dir/file_label`."""
    root = Path(project_dir).resolve()
    return _parse(text, root, root / file_label, Collector(file_label))


def _parse(text: str, root: Path, config_path: Path, out: Collector) -> ProjectSpec:
    tree = compose(text, out)
    if tree is None:
        if not out.issues:
            out.add(1, "", f"the file is empty; it must be a list of APIs, for example:\n{_EXAMPLE}")
        out.raise_if_any()
        raise AssertionError("unreachable: there is at least one issue")
    entries = _entries(out, tree)
    located = [item for i, node in enumerate(entries) if (item := _read_api(out, node, i, root))]
    check_project(out, located)
    out.raise_if_any()
    return ProjectSpec(
        project_dir=root,
        config_file=config_path.absolute(),
        apis=tuple(item.api for item in located),
        ignored=tuple(out.ignored),
    )


def _entries(out: Collector, tree: Node) -> list[Node]:
    if tree.is_seq:
        if not tree.value:
            out.add(tree.line, "", "the list of APIs is empty")
        entries: list[Node] = tree.value
        return entries
    if tree.is_map:
        out.add(tree.line, "", "must be a list of APIs, not a single mapping: put \"- \" before the "
                               "first key (e.g. \"- name: my-api\") and indent the rest of the API")
    else:
        out.add(tree.line, "", f"must be a list of APIs, got {describe(tree.value)}")
    return []


def _read_api(out: Collector, node: Node, index: int, root: Path) -> Located | None:
    path = f"apis[{index}]"
    kind_value = node.value.get("kind") if node.is_map else None
    kind = kind_value.value if kind_value is not None and kind_value.value in KINDS else None
    block = Block(out, node, path, _allowed(node, kind), node.line, _hints(node, kind))
    if not node.is_map:
        return None
    name = _name(block)
    kind = _kind(block)  # the value read above, now checked; None once reported
    if kind is None:
        return None
    targets: list[tuple[TrafficTarget, int, str]] = []
    if kind == "TrafficSplitter":
        splits, targets = read_splits(block)
        api = ApiSpec(name=name, kind=kind, line=block.line, networking=read_networking(block, name),
                      traffic_splits=splits)
    elif kind == RUNPOD_KIND:
        api = read_runpod_api(block, name, root)
    else:
        api = _workload(block, kind, name, root)
    return Located(api, path, block.line_of("name"), block.line_at("networking", "endpoint"), targets)


def _allowed(node: Node, kind: str | None) -> tuple[str, ...]:
    if kind is None:
        return _ALL_FIELDS
    fields = _FIELDS[kind]
    if _pod_only(node, kind):
        return tuple(f for f in fields if f != "compute")  # pods set compute per container
    return fields


def _pod_only(node: Node, kind: str) -> bool:
    code_key = "definition" if kind == "TaskAPI" else "handler"
    return kind not in ("TrafficSplitter", RUNPOD_KIND) and node.is_map and "pod" in node.value and code_key not in node.value


def _hints(node: Node, kind: str | None) -> dict[str, str]:
    if kind is None:
        return {}
    if kind == RUNPOD_KIND:
        return dict(RUNPOD_HINTS)
    hints = {"runpod": f"is only used by {RUNPOD_KIND}"}
    if _pod_only(node, kind):
        hints["compute"] = "with pod, compute goes inside each container (pod.containers[*].compute)"
    if kind not in _SCALED:
        for key in ("autoscaling", "update_strategy"):
            hints[key] = "is only supported for RealtimeAPI and AsyncAPI"
        hints["autoscaling"] += f" ({RUNPOD_KIND} takes autoscaling.min_replicas)"
    if kind == "TaskAPI":
        hints["handler"] = "TaskAPI uses definition (or pod), not handler"
    elif kind != "TrafficSplitter":
        hints["definition"] = f"is for TaskAPI; {kind} uses handler (or pod)"
    if kind != "TrafficSplitter":
        hints["apis"] = "is only used by TrafficSplitter"
    return hints


def _name(block: Block) -> str:
    name = block.string("name", "", required=True) or ""
    problem = name_problem(name) if name else None
    if problem is not None:
        block.issue("name", problem)
    return name


def _kind(block: Block) -> str | None:
    value = block.raw("kind")
    for kind in KINDS:
        if isinstance(value, str) and value != kind and value.lower() == kind.lower():
            block.issue("kind", f'must be {describe(kind)} (kind is case-sensitive), got {describe(value)}')
            return None
    return block.string("kind", None, required=True, choices=KINDS)


def _workload(block: Block, kind: str, name: str, root: Path) -> ApiSpec:
    code_key = "definition" if kind == "TaskAPI" else "handler"
    _check_generation(block, kind, code_key)
    handler = definition = pod = None
    if block.has(code_key) or not block.has("pod"):
        if kind == "TaskAPI":
            definition = read_definition(block, root) if block.has(code_key) else None
        else:
            handler = read_handler(block, kind, root) if block.has(code_key) else None
        compute = read_compute(block, container=False)
    else:
        pod = read_pod(block, kind)
        compute = _pod_compute(pod)
    if handler is not None:
        _check_handler_compute(block, handler.processes_per_replica, handler.shm_size, compute)
    block.ignore("node_groups", NOT_ENFORCED + " (there is one node)")
    scaled = kind in _SCALED
    return ApiSpec(
        name=name,
        kind=kind,
        line=block.line,
        handler=handler,
        definition=definition,
        pod=pod,
        compute=compute,
        autoscaling=_autoscaling(block, kind, handler, pod) if scaled else None,
        update_strategy=read_update_strategy(block) if scaled else None,
        networking=read_networking(block, name),
        node_groups=read_node_groups(block),
    )


def _autoscaling(block: Block, kind: str, handler: HandlerSpec | None, pod: PodSpec | None) -> AutoscalingSpec:
    processes = handler.processes_per_replica if handler else 1
    threads = handler.threads_per_process if handler else 1
    return read_autoscaling(block, kind, processes=processes, threads=threads, pod=pod)


def _check_generation(block: Block, kind: str, code_key: str) -> None:
    if kind == "TrafficSplitter":
        return
    if block.has(code_key) and block.has("pod"):
        block.issue("pod", f"use either {code_key} (handler generation) or pod (container generation), "
                           "not both")
    elif not block.has(code_key) and not block.has("pod"):
        block.out.add(block.line, block.path, f"{kind} needs either {code_key} or pod")


def _pod_compute(pod: PodSpec) -> ComputeSpec:
    """One replica's needs: GPUs add up across containers; cpu and mem are informational."""
    first = pod.containers[0].compute if pod.containers else ComputeSpec()
    return ComputeSpec(
        cpu=first.cpu,
        gpu=sum(c.compute.gpu for c in pod.containers),
        inf=sum(c.compute.inf for c in pod.containers),
        mem=first.mem,
        shm=first.shm,
    )


def _check_handler_compute(block: Block, processes: int, shm_size: str | None, compute: ComputeSpec) -> None:
    if compute.inf and (4 * compute.inf) % processes:
        block.issue_at(("compute", "inf"), f"with inf: {compute.inf}, processes_per_replica "
                                           f"({processes}) must divide {4 * compute.inf}")
    if shm_size and compute.mem and parse_quantity(shm_size) > parse_quantity(compute.mem):
        block.issue_at(("handler", "shm_size"),
                       f"must not exceed compute.mem ({compute.mem}), got {describe(shm_size)}")

