"""``inferd install-service``: put the systemd unit and default settings in place (from a clone)."""

from __future__ import annotations

import shutil
import sys
from importlib import resources
from pathlib import Path

UNIT = "inferd.service"


def _bundled(name: str) -> str:
    return resources.files("inferd").joinpath("data", name).read_text()


def install_service(prefix: Path, project: Path | None) -> int:
    """Writes /etc/systemd/system/inferd.service, /etc/inferd/inferd.yaml (if absent) and
    /etc/default/inferd (if absent) under ``prefix``, pointing ExecStart at this install."""
    exe = shutil.which("inferd") or f"{sys.executable} -m inferd"
    unit = _bundled(UNIT).replace("/usr/local/bin/inferd", exe)
    targets = {
        prefix / "etc/systemd/system" / UNIT: (unit, True),
        prefix / "etc/inferd/inferd.yaml": (_settings(project), False),
        prefix / "etc/default/inferd": (_bundled("inferd.default"), False),
    }
    for path, (text, replace) in targets.items():
        if path.exists() and not replace:
            print(f"kept {path} (exists)")
            continue
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
        path.write_text(text)
        path.chmod(0o644)
        print(f"wrote {path}")
    print("now: systemctl daemon-reload && systemctl enable --now inferd")
    return 0


def _settings(project: Path | None) -> str:
    text = _bundled("inferd.yaml")
    if project is not None:
        text = text.replace("/srv/inferd/project", str(project.resolve()))
    return text
