"""A RunPod worker repository with no cortex.yaml, served as one RunPodAPI named after its directory.

The worker file is the one the Dockerfile's CMD/ENTRYPOINT runs, else the first of the usual
names that calls `runpod.serverless.start`. `.runpod/hub.json`, when present, adds a GPU count
(a hint, not a requirement) and environment presets. Files are read as text, never imported.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dotenv import dotenv_values

from .dockerfile import Command, project_candidates, python_command, read_instructions
from .errors import Collector, SpecError, SpecIssue
from .fields import describe
from .model import ApiSpec, ComputeSpec, FrozenMap, HandlerSpec, NetworkingSpec, ProjectSpec, RunPodSpec
from .runpod import RESERVED_ENV, RUNPOD_KIND, runpod_endpoint, workers_spec
from .validate import name_problem

USUAL_NAMES = ("handler.py", "src/handler.py", "rp_handler.py", "src/rp_handler.py", "worker.py", "main.py")
DOCKERFILES = ("Dockerfile", ".runpod/Dockerfile")  # RunPod Hub takes either
HUB_FILES = (".runpod/hub.json", "hub.json")
# `runpod.serverless.start(`, `rp.serverless.start(`, or `from runpod.serverless import start` + `start(`.
_SERVERLESS_START = re.compile(r"serverless\s*\.\s*start\s*\(")
_IMPORTED_START = re.compile(r"from\s+runpod\.serverless\s+import\s[^\n]*\bstart\b")
_BARE_START = re.compile(r"(?<![\w.])start\s*\(")
_NOT_A_NAME = re.compile(r"[^a-z0-9-]+")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True)
class Worker:
    path: str  # project-relative, "/"-separated
    args: tuple[str, ...]
    line: int  # of the runpod.serverless.start call
    found_by: str  # for the note: "named by the CMD on Dockerfile:9" or "found by its name"


@dataclass(frozen=True)
class Hub:
    """What .runpod/hub.json contributes."""

    file: str
    gpus: int | None = None
    env: Mapping[str, str] = field(default_factory=dict)


def discover_runpod(root: Path, missing: str) -> ProjectSpec:
    """`root` served as one RunPodAPI; SpecError saying `missing` when it holds no RunPod worker."""
    misses: list[str] = []
    worker = _from_dockerfile(root, misses) or _by_usual_name(root)
    if worker is None:
        raise SpecError([SpecIssue("cortex.yaml", None, "", _nothing_found(missing, misses))])
    out = Collector(worker.path)
    name = directory_api_name(root, out)
    hub = read_hub(root, out)
    out.raise_if_any()
    env, preset = _presets(root, hub)
    api = ApiSpec(
        name=name,
        kind=RUNPOD_KIND,
        line=worker.line,
        handler=HandlerSpec(path=worker.path, env=FrozenMap(env), args=worker.args),
        compute=ComputeSpec(gpu=hub.gpus or 0) if hub else ComputeSpec(),
        autoscaling=workers_spec(1),
        networking=NetworkingSpec(endpoint=runpod_endpoint(name)),
        runpod=RunPodSpec(),
        gpu_hint=bool(hub and hub.gpus),
    )
    notes = [f"no cortex.yaml: serving RunPod worker {worker.path} ({worker.found_by}) as api {name} "
             f"at {api.networking.endpoint}/run"]
    notes += _hub_notes(hub, env, preset) if hub else []
    return ProjectSpec(project_dir=root, config_file=root / worker.path, apis=(api,), ignored=tuple(notes))


def _nothing_found(missing: str, misses: list[str]) -> str:
    usual = ", ".join(USUAL_NAMES)
    why = "".join(f"; {miss}" for miss in misses)
    return (f"{missing}; nor is this a RunPod worker repository: no Dockerfile CMD runs a Python file "
            f"that calls runpod.serverless.start, and none of {usual} does{why}")


def calls_runpod_start(text: str) -> bool:
    """Whether Python source registers a RunPod handler (read as text, never imported)."""
    if "runpod" not in text:
        return False
    return bool(_SERVERLESS_START.search(text) or (_IMPORTED_START.search(text) and _BARE_START.search(text)))


def _start_line(text: str) -> int:
    match = _SERVERLESS_START.search(text) or _BARE_START.search(text)
    return text.count("\n", 0, match.start()) + 1 if match else 1


def _from_dockerfile(root: Path, misses: list[str]) -> Worker | None:
    for name in DOCKERFILES:
        text = _read_text(root / name)
        if text is None:
            continue
        instructions = read_instructions(text)
        command = python_command(instructions)
        if command is None:
            if any(i.keyword in ("CMD", "ENTRYPOINT") for i in instructions):
                misses.append(f"{name}: its CMD/ENTRYPOINT runs no Python file")
            continue
        where = f"{name}:{command.line}"
        for candidate in project_candidates(command.script, instructions, root):
            source = _project_file(root, candidate)
            if source is None:
                continue
            if calls_runpod_start(source):
                found_by = f"named by the {command.keyword} on {where}"
                return Worker(candidate, command.args, _start_line(source), found_by)
            misses.append(f"{where}: {command.keyword} runs {candidate}, which does not call runpod.serverless.start")
            break
        else:
            misses.append(_not_in_project(where, command))
    return None


def _not_in_project(where: str, command: Command) -> str:
    return f"{where}: {command.keyword} runs {command.script}, which is not in the project directory"


def _by_usual_name(root: Path) -> Worker | None:
    for name in USUAL_NAMES:
        source = _project_file(root, name)
        if source is not None and calls_runpod_start(source):
            return Worker(name, (), _start_line(source), "found by its name")
    return None


def _project_file(root: Path, relative: str) -> str | None:
    """The text of a file inside the project (symlinks resolved), or None."""
    try:
        path = (root / relative).resolve()
    except (OSError, RuntimeError, ValueError):
        return None
    if not path.is_relative_to(root) or not path.is_file():
        return None
    return _read_text(path)


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None


def directory_api_name(root: Path, out: Collector) -> str:
    """The directory's name as an API name: lower-cased, each run of other characters a '-'."""
    name = _NOT_A_NAME.sub("-", root.name.lower()).strip("-")
    problem = name_problem(name)
    if problem is not None:
        out.add(None, "", f"no cortex.yaml, so the API is named after the directory {describe(root.name)}, "
                          f"as {describe(name)}, but an API name {problem}; rename the directory, or write "
                          f"a cortex.yaml with a name and kind: {RUNPOD_KIND}")
    return name


def read_hub(root: Path, out: Collector) -> Hub | None:
    """The GPU count and environment presets in .runpod/hub.json (RunPod Hub's listing file)."""
    for name in HUB_FILES:
        text = _project_file(root, name)
        if text is not None:
            return _parse_hub(name, text, out)
    return None


def _parse_hub(name: str, text: str, out: Collector) -> Hub:
    hub_out = Collector(name, out.issues)  # same list: issues name the hub file
    try:
        data = json.loads(text)
    except ValueError as exc:
        line = exc.lineno if isinstance(exc, json.JSONDecodeError) else None
        hub_out.add(line, "", f"not valid JSON: {exc}")
        return Hub(name)
    config = data.get("config") if isinstance(data, dict) else None
    if config is None:
        return Hub(name)
    if not isinstance(config, dict):
        hub_out.add(_line_of(text, '"config"'), "config", f"must be an object, got {_json_kind(config)}")
        return Hub(name)
    return Hub(name, _hub_gpus(config, text, hub_out), _hub_env(config, text, hub_out))


def _hub_gpus(config: dict[str, Any], text: str, out: Collector) -> int | None:
    if config.get("runsOn") == "CPU":
        return 0
    count = config.get("gpuCount")
    if count is None:
        return 1 if config.get("runsOn") == "GPU" else None  # the Hub's default is one GPU
    if not isinstance(count, int) or isinstance(count, bool) or count < 0:
        out.add(_line_of(text, '"gpuCount"'), "config.gpuCount", f"must be an integer >= 0, got {json.dumps(count)}")
        return None
    return count


def _hub_env(config: dict[str, Any], text: str, out: Collector) -> dict[str, str]:
    """config.env: [{"key": K, "value": V}] or [{"key": K, "input": {"default": V, ...}}]."""
    presets = config.get("env")
    if presets is None:
        return {}
    line = _line_of(text, '"env"')
    if not isinstance(presets, list):
        out.add(line, "config.env", f"must be a list of {{key, value}} or {{key, input}}, got {_json_kind(presets)}")
        return {}
    env = {}
    for i, preset in enumerate(presets):
        key = preset.get("key") if isinstance(preset, dict) else None
        if not isinstance(key, str) or not _ENV_NAME.fullmatch(key):
            out.add(line, f"config.env[{i}].key", f"must be a variable name, got {json.dumps(key)}")
            continue
        value = _preset_value(preset)
        if value is not None and not key.startswith(RESERVED_ENV):
            env[key] = value
    return env


def _preset_value(preset: dict[str, Any]) -> str | None:
    """The preset's value as the variable's text; None when it has none (an empty default sets nothing)."""
    source = preset.get("input")
    value = preset["value"] if "value" in preset else source.get("default") if isinstance(source, dict) else None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, str) and value:
        return value
    return None


def _presets(root: Path, hub: Hub | None) -> tuple[dict[str, str], list[str]]:
    """(handler.env, names kept from elsewhere): presets are defaults, so a variable already set in
    inferd's environment or the project's .env keeps its value."""
    if hub is None:
        return {}, []
    dotenv = dotenv_values(root / ".env") if (root / ".env").is_file() else {}
    kept = [key for key in hub.env if key in os.environ or dotenv.get(key) is not None]
    return {k: v for k, v in hub.env.items() if k not in kept}, kept


def _hub_notes(hub: Hub, env: Mapping[str, str], kept: list[str]) -> list[str]:
    notes = []
    if hub.gpus:
        notes.append(f"{hub.file}: gpuCount {hub.gpus} is a hint: on a node with fewer GPUs the worker "
                     "starts with those there are")
    if env:
        notes.append(f"{hub.file}: environment presets set for the worker: {', '.join(env)}")
    if kept:
        notes.append(f"{hub.file}: presets not applied, already set in the environment or .env: {', '.join(kept)}")
    return notes


def _line_of(text: str, needle: str) -> int | None:
    at = text.find(needle)
    return None if at < 0 else text.count("\n", 0, at) + 1


def _json_kind(value: Any) -> str:
    return describe(value) if not isinstance(value, (dict, list)) else ("an object" if isinstance(value, dict) else "a list")
