"""``inferd`` command line: ``run`` the daemon, ``validate`` a project, ``test`` a RunPod worker."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from inferd import __version__

if TYPE_CHECKING:  # for the annotation only: _client imports it when called, as before
    from inferd.control.client import ControlClient


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="inferd", description="Self-hosted inference server for Cortex projects.")
    parser.add_argument("--version", action="version", version=f"inferd {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run the daemon in the foreground")
    run.add_argument("--project", type=Path, help="project directory holding cortex.yaml (default: .)")
    run.add_argument("--host", help="address to bind (default 127.0.0.1)")
    run.add_argument("--port", type=int, help="HTTP port (default 8888)")
    run.add_argument("--grpc-port", type=int, dest="grpc_port", help="gRPC port (default 8889)")
    run.add_argument("--state-dir", type=Path, dest="state_dir", help="where inferd keeps its state")
    run.add_argument("--config", type=Path, help="daemon settings file (YAML), e.g. config/inferd.yaml")
    run.add_argument("--log-level", dest="log_level", choices=("debug", "info", "warning", "error"))
    run.add_argument("--watch", action="store_true", help="reload when cortex.yaml or a project file changes")

    validate = commands.add_parser("validate", help="check a project's cortex.yaml and exit")
    validate.add_argument("--project", type=Path, default=Path("."), help="project directory (default: .)")

    for name, text in (("status", "show what the running daemon serves"),
                       ("reload", "re-read cortex.yaml and the project files; exit 1 if the reload failed"),
                       ("logs", "show an API's worker log lines")):
        command = commands.add_parser(name, help=text)
        command.add_argument("--socket", type=Path, help="control socket (default: from settings)")
        command.add_argument("--config", type=Path, help="daemon settings file, to find its socket")
        command.add_argument("--state-dir", type=Path, dest="state_dir", help="the daemon's state dir")
        if name == "status":
            command.add_argument("api", nargs="?", default="", help="one API in detail")
            command.add_argument("--json", action="store_true", help="machine-readable output")
        if name == "logs":
            command.add_argument("api")
            command.add_argument("-f", "--follow", action="store_true", help="keep printing new lines")
            command.add_argument("--tail", type=int, default=100, help="recent lines first (default 100)")

    jobs = commands.add_parser("jobs", help="list a BatchAPI's or TaskAPI's recent jobs, or show one job in detail")
    jobs.add_argument("api")
    jobs.add_argument("job_id", nargs="?", default="", help="one job in detail (its error and traceback included)")
    jobs.add_argument("--limit", type=int, default=20, help="how many recent jobs (default 20)")
    jobs.add_argument("--json", action="store_true", help="machine-readable output (GET /<endpoint>'s shapes)")
    for option, dest in (("--socket", "socket"), ("--config", "config"), ("--state-dir", "state_dir")):
        jobs.add_argument(option, dest=dest, type=Path, help="as for inferd status")

    test = commands.add_parser("test", help="run a RunPod worker's .runpod/tests.json or test_input.json; "
                                            "exit 1 if any test fails")
    test.add_argument("directory", nargs="?", type=Path, default=Path("."), help="project directory (default: .)")
    test.add_argument("--api", help="the RunPodAPI to test, when cortex.yaml has several")
    test.add_argument("--log-level", dest="log_level", default="warning", choices=("debug", "info", "warning", "error"),
                      help="inferd's and the worker's log lines on stderr (default warning; info shows the handler's output)")

    install = commands.add_parser("install-service", help="install the systemd unit and default settings")
    install.add_argument("--prefix", type=Path, default=Path("/"), help="root to install under (default /)")
    install.add_argument("--project", type=Path, help="project directory the service will serve")
    return parser


def _run(args: argparse.Namespace) -> int:
    # Workers are exec'd right after fork, so grpc's fork handlers have nothing to protect;
    # left on, they log a line on every worker start.
    os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "0")
    from inferd.daemon import Daemon
    from inferd.logs import configure_logging
    from inferd.settings import SettingsError, load_settings

    flags = {k: getattr(args, k) for k in ("project", "host", "port", "grpc_port", "state_dir", "log_level")}
    try:
        settings = load_settings(args.config, os.environ, flags)
    except SettingsError as exc:
        print(f"inferd: {exc}", file=sys.stderr)
        return 2
    json_output = {"json": True, "console": False}.get(settings.log_format)
    configure_logging(settings.log_level, json_output=json_output, component="daemon")
    try:
        import uvloop

        return uvloop.run(Daemon(settings, watch=args.watch).run())
    except ImportError:
        return asyncio.run(Daemon(settings, watch=args.watch).run())


def _validate(args: argparse.Namespace) -> int:
    from inferd.control.target import validate

    found = validate(args.project)
    for problem in found.problems + found.will_not_start:
        print(problem, file=sys.stderr)
    if found.problems:
        print(found.summary(), file=sys.stderr)
        return 1
    for note in found.ignored:
        print(f"note: {note}")
    if found.valid:
        print(f"{found.config_file}: {len(found.valid)} api(s) valid: {', '.join(found.valid)}")
    if found.will_not_start:
        print(found.summary(), file=sys.stderr)
        return 1
    return 0


def _test(args: argparse.Namespace) -> int:
    os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "0")  # as in _run: it starts worker processes
    from inferd.hubtests import run_tests

    return run_tests(args.directory, args.api, args.log_level)


def _client(args: argparse.Namespace) -> ControlClient:
    from inferd.control.client import ControlClient
    from inferd.settings import load_settings

    path = args.socket
    if path is None:
        path = load_settings(args.config, os.environ, {"state_dir": args.state_dir}).control_socket
    return ControlClient(path)


def _control(args: argparse.Namespace) -> int:
    from inferd.control.client import DaemonNotRunning, NoSuchApi, status_detail, status_table
    from inferd.logs import console_line
    from inferd.settings import SettingsError

    try:
        client = _client(args)
        if args.command == "status":
            reply = client.status(args.api)
            if args.api and not reply.apis:
                print(f"inferd: no api named {args.api!r}", file=sys.stderr)
                return 1
            if args.json:
                print(json.dumps([json.loads(a.detail_json) for a in reply.apis], indent=2))
            else:
                print(status_detail(reply) if args.api else status_table(reply))
            return 0
        if args.command == "jobs":
            return _jobs(client, args)
        if args.command == "reload":
            reply = client.reload()
            print(("reloaded: " if reply.ok else "reload failed: ") + reply.summary,
                  file=sys.stdout if reply.ok else sys.stderr)
            return 0 if reply.ok else 1
        shown = console_line if sys.stdout.isatty() else str  # rendered like the daemon's own lines; JSON when piped
        for line in client.logs(args.api, args.follow, args.tail):
            print(shown(line), flush=True)
        return 0
    except NoSuchApi as exc:
        print(f"inferd: {exc}", file=sys.stderr)
        return 1
    except (DaemonNotRunning, SettingsError) as exc:
        print(f"inferd: {exc}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        return 0


def _jobs(client: ControlClient, args: argparse.Namespace) -> int:
    from inferd.control.jobs_view import job_detail, jobs_table

    report = client.jobs(args.api, args.job_id, args.limit)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(job_detail(report["job"]) if args.job_id else jobs_table(report["jobs"]))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "run":
        return _run(args)
    if args.command == "validate":
        return _validate(args)
    if args.command == "test":
        return _test(args)
    if args.command == "install-service":
        from inferd.service import install_service

        return install_service(args.prefix, args.project)
    return _control(args)
