"""Object-store URLs read through fsspec: which package each scheme needs.

Shared by the BatchAPI job sources and multi_model_reloading's model paths, so both name the
same package the same way when it is missing.
"""

from __future__ import annotations

import importlib.util
import re

# fsspec backends a user installs for object stores, by URL scheme
BACKEND_PACKAGES = {"s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs", "abfs": "adlfs"}
URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")


def url_scheme(path: str) -> str | None:
    """``s3`` for ``s3://bucket/x``; None for a plain local path."""
    return path.split("://", 1)[0].lower() if URL.match(path) else None


def backend_need(scheme: str, detail: str = "") -> str:
    """What reading ``scheme://`` paths needs, as told to the user."""
    package = BACKEND_PACKAGES.get(scheme)
    if package:
        return f"the {package} package (pip install {package})"
    return f"an fsspec backend for {scheme}://" + (f" ({detail})" if detail else "")


def missing_backend(scheme: str) -> str | None:
    """The package ``scheme://`` needs when it is not importable here, else None."""
    package = BACKEND_PACKAGES.get(scheme)
    if package is None or importlib.util.find_spec(package) is not None:
        return None
    return package
