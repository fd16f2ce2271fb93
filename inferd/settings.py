"""The daemon's own settings: defaults < config/inferd.yaml < INFERD_* environment < flags.

These say where inferd listens and keeps its state; what it serves comes from the project's
cortex.yaml (``inferd.spec``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import yaml


class SettingsError(Exception):
    """A setting has the wrong type or range; the message names where it came from."""


@dataclass(frozen=True)
class Settings:
    project: Path = Path(".")
    host: str = "127.0.0.1"
    port: int = 8888
    grpc_port: int = 8889
    state_dir: Path = Path("~/.local/state/inferd")
    runtime_dir: Path = Path("")   # control socket; default $RUNTIME_DIRECTORY or <state_dir>/run
    max_body_size: int = 20 * 1024 * 1024
    max_header_size: int = 64 * 1024      # request line and headers of one request; beyond it 431
    header_timeout: float = 10.0           # seconds a client gets to send request line and headers
    body_timeout: float = 30.0             # seconds a request body may stall between two reads
    keepalive_timeout: float = 5.0         # seconds an idle keep-alive connection stays open
    max_connections: int = 1000            # open HTTP connections; beyond it new ones get 503 and are closed
    allowed_hosts: str = ""                # comma-separated Host names accepted besides loopback; "*" accepts any
    runpod_api_keys: str = ""              # comma-separated keys RunPodAPIs accept in Authorization; "" accepts any
    shutdown_grace_period: float = 30.0
    ready_wait: float = 30.0
    worker_liveness_timeout: float = 30.0  # a worker silent to heartbeats this long is killed and replaced
    log_level: str = "info"
    log_format: str = "auto"  # auto | json | console
    async_retention_days: float = 7.0      # AsyncAPI jobs and results are deleted after this
    async_max_queue_length: int = 10000    # per AsyncAPI; beyond it submissions get 503
    async_sweep_interval: float = 3600.0   # seconds between retention sweeps
    max_job_workers: int = 64              # workers one BatchAPI job may ask for; beyond it the submission gets 400

    def resolved(self) -> Settings:
        state_dir = self.state_dir.expanduser().resolve()
        runtime_dir = self.runtime_dir if str(self.runtime_dir) not in ("", ".") else state_dir / "run"
        return replace(self, project=self.project.expanduser().resolve(), state_dir=state_dir,
                       runtime_dir=runtime_dir.expanduser().resolve())

    @property
    def control_socket(self) -> Path:
        return self.runtime_dir / "control.sock"


def _default_state_dir(environ: Mapping[str, str]) -> Path:
    # systemd's StateDirectory= hands us $STATE_DIRECTORY; outside systemd, stay in $HOME.
    return Path(environ.get("STATE_DIRECTORY", "~/.local/state/inferd").split(":")[0])


def _coerce(name: str, value: Any, kind: type, origin: str) -> Any:
    try:
        if kind is Path:
            return Path(str(value))
        if kind is int and not isinstance(value, bool):
            return int(value)
        if kind is float and not isinstance(value, bool):
            return float(value)
        if kind is str:
            return str(value)
    except (TypeError, ValueError):
        pass
    raise SettingsError(f"{origin}: {name}: expected {kind.__name__}, got {value!r}")


def _types() -> dict[str, type]:
    return {f.name: {"Path": Path, "int": int, "float": float, "str": str}[str(f.type)] for f in fields(Settings)}


def _apply(base: Settings, values: Mapping[str, Any], origin: str) -> Settings:
    types = _types()
    changes = {}
    for name, value in values.items():
        if name not in types:
            raise SettingsError(f"{origin}: unknown setting {name!r}; known: {', '.join(sorted(types))}")
        changes[name] = _coerce(name, value, types[name], origin)
    return replace(base, **changes)


def _from_file(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise SettingsError(f"{path}: {exc}") from None
    if not isinstance(data, dict):
        raise SettingsError(f"{path}: expected a mapping of settings")
    return data


def _from_env(environ: Mapping[str, str]) -> dict[str, str]:
    names = _types()
    found = {}
    for key, value in environ.items():
        if key.startswith("INFERD_") and key[7:].lower() in names:
            found[key[7:].lower()] = value
    return found


def _check(settings: Settings) -> Settings:
    for name in ("port", "grpc_port"):
        value = getattr(settings, name)
        if not 0 <= value <= 65535:
            raise SettingsError(f"{name}: must be a port number 0-65535, got {value}")
    if settings.max_body_size < 1:
        raise SettingsError(f"max_body_size: must be >= 1 byte, got {settings.max_body_size}")
    if settings.max_header_size < 1024:
        raise SettingsError(f"max_header_size: must be >= 1024 bytes, got {settings.max_header_size}")
    for name in ("header_timeout", "body_timeout", "keepalive_timeout"):
        if getattr(settings, name) <= 0:
            raise SettingsError(f"{name}: must be > 0 seconds, got {getattr(settings, name)}")
    if settings.max_connections < 1:
        raise SettingsError(f"max_connections: must be >= 1, got {settings.max_connections}")
    if settings.worker_liveness_timeout <= 0:
        raise SettingsError(f"worker_liveness_timeout: must be > 0 seconds, got {settings.worker_liveness_timeout}")
    if settings.async_retention_days <= 0 or settings.async_sweep_interval <= 0:
        raise SettingsError("async_retention_days and async_sweep_interval must be > 0")
    if settings.async_max_queue_length < 1:
        raise SettingsError(f"async_max_queue_length: must be >= 1, got {settings.async_max_queue_length}")
    if settings.max_job_workers < 1:
        raise SettingsError(f"max_job_workers: must be >= 1, got {settings.max_job_workers}")
    if settings.log_format not in ("auto", "json", "console"):
        raise SettingsError(f"log_format: must be auto, json or console, got {settings.log_format!r}")
    return settings


def load_settings(config_file: Path | None, environ: Mapping[str, str], flags: Mapping[str, Any]) -> Settings:
    """``flags`` holds only the options given on the command line (None means not given)."""
    runtime = environ.get("RUNTIME_DIRECTORY", "").split(":")[0]  # systemd's RuntimeDirectory=
    settings = Settings(state_dir=_default_state_dir(environ), runtime_dir=Path(runtime))
    env_file = environ.get("INFERD_CONFIG")
    path = config_file or (Path(env_file) if env_file else None)
    if path is not None:
        if not path.is_file():
            raise SettingsError(f"{path}: config file not found")
        settings = _apply(settings, _from_file(path), str(path))
    settings = _apply(settings, _from_env(environ), "environment")
    settings = _apply(settings, {k: v for k, v in flags.items() if v is not None}, "command line")
    return _check(settings).resolved()
