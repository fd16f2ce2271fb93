"""``inferd`` command line: ``run`` the daemon, ``validate`` a project."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

from inferd import __version__


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

    validate = commands.add_parser("validate", help="check a project's cortex.yaml and exit")
    validate.add_argument("--project", type=Path, default=Path("."), help="project directory (default: .)")
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

        return uvloop.run(Daemon(settings).run())
    except ImportError:
        return asyncio.run(Daemon(settings).run())


def _validate(args: argparse.Namespace) -> int:
    import tempfile

    from inferd.grpc.services import compile_project
    from inferd.spec import SpecError, load_project

    try:
        project = load_project(args.project)
        with tempfile.TemporaryDirectory(prefix="inferd-validate-") as cache:
            compile_project(project, Path(cache))
    except SpecError as exc:
        for issue in exc.issues:
            print(issue, file=sys.stderr)
        print(f"{len(exc.issues)} problem(s) found", file=sys.stderr)
        return 1
    for note in project.ignored:
        print(f"note: {note}")
    print(f"{project.config_file}: {len(project.apis)} api(s) valid: {', '.join(a.name for a in project.apis)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "run":
        return _run(args)
    return _validate(args)
