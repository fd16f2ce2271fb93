"""``inferd install-service``: put the systemd unit and default settings in place (from a clone)."""

from __future__ import annotations

import re
import shutil
import sys
from importlib import resources
from pathlib import Path

UNIT = "inferd.service"
PLACEHOLDER_PROJECT = Path("/srv/inferd/project")


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
    """The bundled settings with an absolute ``project:``: the checkout's relative one would be
    read from the service's working directory. Without --project, a placeholder to edit."""
    target = project.resolve() if project is not None else PLACEHOLDER_PROJECT
    # the value is replaced in place; its comment keeps its column (and at least one space before it)
    return re.sub(r"^project: \S+ *", lambda found: f"project: {target} ".ljust(len(found.group(0))),
                  _bundled("inferd.yaml"), count=1, flags=re.MULTILINE)
