"""``inferd test [DIR]`` as a RunPod worker's author meets it: the worker's own
``.runpod/tests.json`` (or ``test_input.json``) run through the real runner, a pass/fail table,
and the exit status a CI job reads."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.conftest import PROJECTS

RUNPOD = PROJECTS / "runpod"


def inferd_test(*args: str | Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("INFERD_")}
    return subprocess.run([sys.executable, "-m", "inferd", "test", *map(str, args)], capture_output=True, text=True,
                          timeout=120, env=env)


def worker_project(tmp_path: Path, worker: str, tests: list[dict[str, Any]] | None = None) -> Path:
    """A RunPod worker repository: ``worker`` (from tests/projects/runpod) as handler.py, and
    ``tests`` as its .runpod/tests.json."""
    project = tmp_path / "worker"
    project.mkdir()
    shutil.copy(RUNPOD / worker, project / "handler.py")
    if tests is not None:
        (project / ".runpod").mkdir()
        (project / ".runpod" / "tests.json").write_text(json.dumps({"tests": tests}))
    return project


def table(stdout: str) -> dict[str, tuple[str, str]]:
    """The printed table: test name -> (PASS/FAIL, output cell)."""
    lines = stdout.splitlines()
    start = next(n for n, line in enumerate(lines) if line.split() == ["TEST", "RESULT", "TIME", "OUTPUT"])
    rows = {}
    for line in lines[start + 1:]:
        if not line.strip():
            break
        name, result, _time, *output = re.split(r"\s{2,}", line)
        rows[name] = (result, output[0] if output else "")
    return rows


def processes_in(directory: Path) -> list[int]:
    """Processes whose working directory is ``directory`` (workers run in their project)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and Path(os.readlink(entry / "cwd")) == directory:
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def test_all_tests_passing_print_each_output_and_exit_0(tmp_path: Path) -> None:
    project = worker_project(tmp_path, "sync.py", [{"name": "echo", "input": {"prompt": "hi"}, "timeout": 30000},
                                                   {"input": {"return": [1, 2]}}])
    done = inferd_test(project)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = table(done.stdout)
    assert rows["echo"][0] == "PASS" and '"input": {"prompt": "hi"}' in rows["echo"][1]
    assert rows["test 2"] == ("PASS", "[1, 2]")  # no name: numbered
    assert all(len(output) <= 100 for _, output in rows.values())  # one line each, cut
    assert done.stdout.rstrip().endswith("2 passed, 0 failed (.runpod/tests.json)")
    assert processes_in(project) == []


def test_a_handler_that_raises_fails_its_test_with_the_error_and_exit_1(tmp_path: Path) -> None:
    project = tmp_path / "apis"
    project.mkdir()
    for name in ("sync.py", "raises.py"):
        shutil.copy(RUNPOD / name, project / name)
    (project / "cortex.yaml").write_text("- name: echo\n  kind: RunPodAPI\n  handler:\n    path: sync.py\n"
                                         "- name: raises\n  kind: RunPodAPI\n  handler:\n    path: raises.py\n")
    (project / "test_input.json").write_text(json.dumps({"input": {"name": "Ada"}}))

    several = inferd_test(project)
    assert several.returncode == 2
    assert "several RunPodAPIs (echo, raises): choose one with --api NAME" in several.stderr

    done = inferd_test(project, "--api", "raises")
    assert done.returncode == 1, done.stdout + done.stderr
    assert table(done.stdout)["test_input.json"] == ("FAIL", "ValueError: cannot handle Ada")
    details = done.stdout.split("--- FAIL: test_input.json", 1)[1]
    assert "Traceback (most recent call last)" in details and "raise ValueError" in details
    assert done.stdout.rstrip().endswith("0 passed, 1 failed (test_input.json)")


def test_a_generators_items_are_its_output_and_one_that_breaks_fails(tmp_path: Path) -> None:
    project = worker_project(tmp_path, "generator.py", [{"name": "three", "input": {"count": 3}},
                                                        {"name": "breaks", "input": {"raise_at": 1}}])
    done = inferd_test(project)
    assert done.returncode == 1, done.stdout + done.stderr
    rows = table(done.stdout)
    assert rows["three"] == ("PASS", 'stream: ["item 0", "item 1", "item 2"]')
    assert rows["breaks"][0] == "FAIL" and rows["breaks"][1].startswith("handler: generator broke")
    details = done.stdout.split("--- FAIL: breaks", 1)[1]
    assert "RuntimeError: generator broke" in details and '"item 0"' in details  # what it streamed first
    assert "--- FAIL: three" not in done.stdout


def test_a_test_past_its_timeout_fails_and_the_next_runs_on_a_new_worker(tmp_path: Path) -> None:
    project = worker_project(tmp_path, "sync.py", [{"name": "slow", "input": {"sleep": 60}, "timeout": 1000},
                                                   {"name": "after", "input": {"prompt": "still here"}}])
    started = time.monotonic()
    done = inferd_test(project)
    assert done.returncode == 1, done.stdout + done.stderr
    assert time.monotonic() - started < 40  # the sleeping handler was not waited for
    rows = table(done.stdout)
    assert rows["slow"] == ("FAIL", "timed out after 1000 ms")
    assert rows["after"][0] == "PASS" and "still here" in rows["after"][1]
    assert processes_in(project) == []


def test_test_input_json_is_the_one_test_without_tests_json(tmp_path: Path) -> None:
    project = worker_project(tmp_path, "sync.py")
    (project / "test_input.json").write_text(json.dumps({"input": {"prompt": "hi"}}))
    done = inferd_test(project)
    assert done.returncode == 0, done.stdout + done.stderr
    result, output = table(done.stdout)["test_input.json"]
    assert result == "PASS" and output.startswith('{"id": "local_test"')  # the SDK's default job id


def test_without_tests_nothing_runs_and_it_exits_2(tmp_path: Path) -> None:
    project = worker_project(tmp_path, "sync.py")
    done = inferd_test(project)
    assert done.returncode == 2
    assert done.stdout == ""
    assert "no tests in" in done.stderr and ".runpod/tests.json" in done.stderr and "test_input.json" in done.stderr
