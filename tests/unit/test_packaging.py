from pathlib import Path

from setuptools import find_packages

ROOT = Path(__file__).resolve().parents[2]


def test_every_source_directory_is_an_installed_package() -> None:
    """A directory without __init__.py works from a checkout but is left out of `pip install .`."""
    installed = set(find_packages(str(ROOT), include=["inferd", "inferd.*"]))
    source_dirs = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "inferd").rglob("*.py")
                   if "__pycache__" not in p.parts}
    assert source_dirs <= installed, source_dirs - installed
