"""``inferd test [DIR]``: a RunPod worker's own tests, run through the worker runner the daemon uses.

The tests are RunPod Hub's ``.runpod/tests.json`` (or ``tests.json``)::

    {"tests": [{"name": "basic", "input": {...}, "timeout": 10000}], "config": {"env": [{"key": "K", "value": "V"}]}}

``name`` defaults to ``test <n>``, ``timeout`` (ms) to 60000; ``config.env`` is added to the
worker's environment. Without one, ``test_input.json`` is the single test, a whole job object as
the SDK's local test mode reads it (``{"input": ...}``, ``id`` defaulting to ``local_test``),
under the API's execution timeout.

One worker runs the tests one after the other, as the daemon would run the jobs. A test fails
when its result has an ``error``, when it passes its timeout (its worker is then replaced, as a
hung handler cannot be interrupted) or when the worker dies. Unlike the SDK's local test mode,
a generator handler is iterated: its items are the test's output.

Exit status: 0 all passed, 1 any failed, 2 nothing could be run (no tests, a bad file, no API).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from inferd.gpu import GpuRequest, assign_gpus, hinted_gpus, read_inventory, visible_devices_env
from inferd.jobs.runpod_dispatch import reply_message
from inferd.kinds import get_kind, unsupported_reason
from inferd.kinds.base import ApiRuntime, KindContext
from inferd.logs import configure_logging
from inferd.metrics import Metrics
from inferd.settings import Settings
from inferd.spec import ApiSpec, ProjectSpec, SpecError, load_project
from inferd.spec.runpod import RUNPOD_KIND
from inferd.worker import protocol
from inferd.worker.launch import init_message, worker_slots
from inferd.worker.process import WorkerProcess
from inferd.worker.runners.runpod import JOB_METHOD

HUB_TESTS = (".runpod/tests.json", "tests.json")  # RunPod Hub reads .runpod/ first, as for hub.json
TEST_INPUT = "test_input.json"
DEFAULT_TIMEOUT_MS = 60_000
STOP_TIMEOUT = 5.0  # seconds an idle worker gets to exit before it is killed
CELL_WIDTH = 100
COLUMNS = ("TEST", "RESULT", "TIME", "OUTPUT")
PASSED, FAILED, NOT_RUN, INTERRUPTED = 0, 1, 2, 130
_CLASS_NAME = re.compile(r"<class '(.+)'>")
# the environment keys that pin the worker's GPUs; nothing a test file sets may change them
_GPU_PINNING = frozenset(visible_devices_env(()))


class CannotRun(Exception):
    """Why no test could be run: a missing or malformed test file, no RunPod API, no GPUs."""


@dataclass(frozen=True)
class HubTest:
    name: str
    job: dict[str, Any]  # what the handler receives: {"id", "input", ...}
    timeout_ms: int


@dataclass(frozen=True)
class Suite:
    source: str  # the file the tests came from, relative to the project
    tests: tuple[HubTest, ...]
    env: dict[str, str] = field(default_factory=dict)


@dataclass
class Outcome:
    test: HubTest
    ms: float = 0.0
    items: list[Any] = field(default_factory=list)     # streamed by a generator handler
    progress: list[Any] = field(default_factory=list)  # progress_update values
    result: dict[str, Any] | None = None                # what the SDK would post to job-done
    problem: str | None = None                          # why there is no result (timeout, dead worker)
    details: str = ""                                   # e.g. the worker's traceback when it did not start

    @property
    def passed(self) -> bool:
        return self.result is not None and not self.result.get("error")


# -- the tests ----------------------------------------------------------------------------------

def read_json(path: Path, label: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise CannotRun(f"{label}: cannot read it as JSON: {exc}") from None


def read_suite(root: Path, api: ApiSpec) -> Suite:
    for label in HUB_TESTS:
        if (root / label).is_file():
            return hub_suite(label, read_json(root / label, label))
    if (root / TEST_INPUT).is_file():
        return test_input_suite(read_json(root / TEST_INPUT, TEST_INPUT), api)
    raise CannotRun(f"no tests in {root}: add .runpod/tests.json "
                    '({"tests": [{"name": "basic", "input": {...}, "timeout": 10000}]}) '
                    'or test_input.json ({"input": {...}})')


def hub_suite(label: str, data: Any) -> Suite:
    entries = data.get("tests") if isinstance(data, dict) else None
    if not isinstance(entries, list) or not entries:
        raise CannotRun(f'{label}: expected {{"tests": [{{"name": ..., "input": {{...}}, "timeout": ms}}, ...]}}')
    tests = tuple(hub_test(label, n, entry) for n, entry in enumerate(entries, 1))
    return Suite(label, tests, config_env(label, data.get("config")))


def hub_test(label: str, n: int, entry: Any) -> HubTest:
    where = f"{label}: test {n}"
    if not isinstance(entry, dict) or entry.get("input") is None:
        raise CannotRun(f'{where}: needs an "input", e.g. {{"name": "basic", "input": {{"prompt": "hi"}}}}')
    name = entry.get("name", f"test {n}")
    if not isinstance(name, str) or not name.strip():
        raise CannotRun(f'{where}: "name" must be a non-empty string')
    timeout = entry.get("timeout", DEFAULT_TIMEOUT_MS)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
        raise CannotRun(f'{where}: "timeout" must be a positive number of milliseconds, got {timeout!r}')
    return HubTest(name, {"id": f"test-{n}", "input": entry["input"]}, int(timeout))


def config_env(label: str, config: Any) -> dict[str, str]:
    """``config.env``, RunPod Hub's ``[{"key": ..., "value": ...}]`` list of test variables."""
    entries = config.get("env", []) if isinstance(config, dict) else []
    if not isinstance(entries, list):
        raise CannotRun(f'{label}: config.env must be a list of {{"key": ..., "value": ...}}')
    env = {}
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("key"), str):
            raise CannotRun(f'{label}: config.env entries must look like {{"key": "NAME", "value": "..."}}, got {entry!r}')
        value = entry.get("value", "")
        env[entry["key"]] = value if isinstance(value, str) else json.dumps(value)
    return env


def test_input_suite(job: Any, api: ApiSpec) -> Suite:
    if not isinstance(job, dict) or job.get("input") is None:
        raise CannotRun(f'{TEST_INPUT}: the job has no "input" (expected e.g. {{"input": {{"prompt": "hi"}}}})')
    timeout_s = api.runpod.execution_timeout if api.runpod is not None else DEFAULT_TIMEOUT_MS / 1000
    return Suite(TEST_INPUT, (HubTest(TEST_INPUT, {**job, "id": job.get("id", "local_test")}, int(timeout_s * 1000)),))


# -- the API and its worker ---------------------------------------------------------------------

def runpod_api(project: ProjectSpec, wanted: str | None) -> ApiSpec:
    apis = [api for api in project.apis if api.kind == RUNPOD_KIND]
    names = ", ".join(api.name for api in apis)
    if wanted is not None:
        for api in apis:
            if api.name == wanted:
                return api
        raise CannotRun(f"no RunPodAPI named {wanted!r} in {project.config_file}" + (f" (there are: {names})" if apis else ""))
    if not apis:
        raise CannotRun(f"{project.config_file} has no RunPodAPI to test")
    if len(apis) > 1:
        raise CannotRun(f"{project.config_file} has several RunPodAPIs ({names}): choose one with --api NAME")
    return apis[0]


def worker_gpus(api: ApiSpec) -> tuple[int, ...]:
    """The GPUs the daemon would give one worker of ``api`` on this machine, by its own rules."""
    inventory = read_inventory()
    wanted, note = hinted_gpus(api.gpus_per_replica, len(inventory), api.gpu_hint)
    if note is not None:
        print(f"note: {note}", file=sys.stderr)
    plan = assign_gpus(inventory, [GpuRequest(api.name, 1, 1, wanted)])
    if api.name in plan.errors:
        raise CannotRun(f"api {api.name}: {plan.errors[api.name]}")
    return plan.devices[api.name][0]


def worker_factory(project: ProjectSpec, api: ApiSpec, test_env: dict[str, str]) -> Callable[[], WorkerProcess]:
    """New workers for ``api``, started as the daemon starts them (its kind's runner and options,
    the same init frame and environment), plus the test file's variables."""
    kind = get_kind(api.kind)
    reason = unsupported_reason(api)
    if kind is None or reason is not None:
        raise CannotRun(f"api {api.name}: {reason}")
    settings = Settings()
    context = KindContext(settings, Metrics(), None, settings.state_dir)  # no store: only the runner is asked for
    planned = kind.runner(ApiRuntime(api, "", kind, None), context)
    if planned is None:
        raise CannotRun(f"api {api.name}: a {api.kind} has no worker to test")
    runner, options = planned
    init = init_message(project, api, runner, options, settings.max_body_size)
    slot = worker_slots(os.environ, project, api, [worker_gpus(api)])[0]
    env = {**slot.env, **{k: v for k, v in test_env.items() if k not in _GPU_PINNING}}
    return lambda: WorkerProcess(api.name, 0, init, env, str(project.project_dir), slot.gpus, lambda metric: None)


async def shut_down(worker: WorkerProcess) -> None:
    await worker.stop(STOP_TIMEOUT)
    await worker.wait_exit()


class WorkerDidNotStart(Exception):
    def __init__(self, error: str, traceback: str) -> None:
        super().__init__(f"the worker did not start: {error}")
        self.traceback = traceback


async def start_worker(new_worker: Callable[[], WorkerProcess]) -> WorkerProcess:
    worker = new_worker()
    await worker.start()
    if await worker.wait_ready():
        return worker
    await shut_down(worker)
    raise WorkerDidNotStart(worker.error or "it exited before it was ready", worker.init_traceback or "")


# -- running ------------------------------------------------------------------------------------

async def run_suite(new_worker: Callable[[], WorkerProcess], tests: Sequence[HubTest]) -> list[Outcome]:
    """Every test, in order, on one worker; a new one after a test that left it unusable."""
    outcomes: list[Outcome] = []
    worker: WorkerProcess | None = None
    did_not_start = False
    try:
        for test in tests:
            if did_not_start:
                outcomes.append(Outcome(test, problem="not run: the worker did not start"))
                continue
            if worker is None or worker.state != "ready":
                if worker is not None:
                    await shut_down(worker)
                    worker = None
                try:
                    worker = await start_worker(new_worker)
                except WorkerDidNotStart as exc:  # reported in full once; the file will not load any better
                    did_not_start = True
                    outcomes.append(Outcome(test, problem=str(exc), details=exc.traceback))
                    continue
            outcome = await run_test(worker, test)
            outcomes.append(outcome)
            if outcome.result is not None and outcome.result.get("stopPod"):
                await shut_down(worker)  # refresh_worker: the daemon gives the next job a fresh worker too
                worker = None
    finally:
        if worker is not None:
            await shut_down(worker)
    return outcomes


async def run_test(worker: WorkerProcess, test: HubTest) -> Outcome:
    outcome = Outcome(test)
    started = time.perf_counter()
    job = protocol.Open(0, str(test.job["id"]), JOB_METHOD, body=json.dumps(test.job).encode())
    stream = worker.open_stream(job)
    try:
        async with asyncio.timeout(test.timeout_ms / 1000):
            async for body in stream.messages():
                collect(outcome, reply_message(body))
    except TimeoutError:
        outcome.problem = f"timed out after {test.timeout_ms} ms"
        # a sync handler cannot be interrupted: its worker goes, the next test gets a new one
        worker.abort(f"test {test.name!r} {outcome.problem}")
    outcome.ms = (time.perf_counter() - started) * 1000
    if outcome.result is None and outcome.problem is None:
        outcome.problem = (stream.end.details if stream.end else "") or "the worker ended the job without a result"
    return outcome


def collect(outcome: Outcome, message: dict[str, Any]) -> None:
    """One frame of the runner's wire contract (inferd.worker.runners.runpod)."""
    if "stream" in message:
        outcome.items.append(message["stream"])
    elif "progress" in message:
        outcome.progress.append(message["progress"])
    elif "result" in message:
        outcome.result = dict(message["result"])


# -- the report ---------------------------------------------------------------------------------

def error_text(error: Any) -> tuple[str, str]:
    """(one line, in full) for a result's error: the SDK's JSON exception shape reads as
    ``Type: message`` and its traceback; anything else as it is."""
    if not isinstance(error, str):
        return json.dumps(error), json.dumps(error, indent=2)
    try:
        info = json.loads(error)
    except ValueError:
        info = None
    if isinstance(info, dict) and "error_type" in info and "error_message" in info:
        kind = _CLASS_NAME.fullmatch(str(info["error_type"]))
        summary = f"{kind.group(1) if kind else info['error_type']}: {info['error_message']}"
        return summary, str(info.get("error_traceback") or summary).rstrip()
    return error, error


def output_cell(outcome: Outcome) -> str:
    result = outcome.result or {}
    if outcome.problem is not None:
        text = outcome.problem
    elif result.get("error"):
        text = error_text(result["error"])[0]
    elif outcome.items:
        text = f"stream: {json.dumps(outcome.items)}"
    elif "output" in result:
        text = json.dumps(result["output"])
    else:
        text = "(no output)"
    return one_line(text)


def one_line(text: str, width: int = CELL_WIDTH) -> str:
    lines = text.strip().splitlines()
    line = lines[0].rstrip() if lines else ""
    if len(line) > width or len(lines) > 1:
        return line[:width - 3] + "..."
    return line


def table(outcomes: Sequence[Outcome]) -> str:
    rows = [(o.test.name, "PASS" if o.passed else "FAIL", f"{o.ms:.0f} ms", output_cell(o)) for o in outcomes]
    widths = [max(len(cell) for cell in column) for column in zip(COLUMNS, *rows, strict=False)]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
                     for row in (COLUMNS, *rows))


def failure_report(outcome: Outcome) -> str:
    """All a failed test left: why, its traceback, its items, progress and output."""
    result = outcome.result or {}
    lines = [f"--- FAIL: {outcome.test.name} ({outcome.ms:.0f} ms)"]
    if outcome.problem is not None:
        lines.append(outcome.problem)
    if outcome.details:
        lines.append(outcome.details.rstrip())
    if result.get("error"):
        lines.append(error_text(result["error"])[1])
    if outcome.items:
        lines.append("stream: " + json.dumps(outcome.items, indent=2))
    if outcome.progress:
        lines.append("progress: " + json.dumps(outcome.progress, indent=2))
    if "output" in result:
        lines.append("output: " + json.dumps(result["output"], indent=2))
    return "\n".join(lines)


def report(suite: Suite, outcomes: Sequence[Outcome]) -> str:
    failed = [o for o in outcomes if not o.passed]
    parts = [table(outcomes), *(failure_report(o) for o in failed)]
    parts.append(f"{len(outcomes) - len(failed)} passed, {len(failed)} failed ({suite.source})")
    return "\n\n".join(parts)


# -- the command --------------------------------------------------------------------------------

def log_to_stderr(level: str) -> None:
    """inferd's and the worker's log lines go to stderr: stdout is the report's. Rendered for a
    person, which also makes workers' JSON events pass through this level filter."""
    with contextlib.redirect_stdout(sys.stderr):  # configure_logging writes to the stdout it finds
        configure_logging(level, json_output=False)


def run_tests(directory: Path, api_name: str | None = None, log_level: str = "warning") -> int:
    """``inferd test``: exit status 0 all passed, 1 any failed, 2 nothing could be run."""
    log_to_stderr(log_level)
    try:
        project = load_project(directory)
        api = runpod_api(project, api_name)
        suite = read_suite(project.project_dir, api)
        new_worker = worker_factory(project, api, suite.env)
    except (SpecError, CannotRun) as exc:
        print(f"inferd test: {exc}", file=sys.stderr)
        return NOT_RUN
    assert api.handler is not None
    print(f"running {len(suite.tests)} test(s) from {suite.source} on {api.handler.path} (api {api.name})", flush=True)
    try:
        outcomes = asyncio.run(run_suite(new_worker, suite.tests))
    except KeyboardInterrupt:  # the worker is already stopped: run_suite's cleanup ran on the way out
        print("inferd test: interrupted", file=sys.stderr)
        return INTERRUPTED
    print(report(suite, outcomes))
    return PASSED if all(o.passed for o in outcomes) else FAILED
