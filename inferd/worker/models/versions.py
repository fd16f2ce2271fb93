"""Which models and versions a source holds now (Cortex §3.9): version subdirectories are
integers, the highest is ``latest``; a model without version folders is one version, 1."""

from __future__ import annotations

import re
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Protocol

VERSION = re.compile(r"[0-9]{1,18}")  # bounded: int() of a longer digit string is refused or slow
UNVERSIONED = 1


class Source(Protocol):
    """Where models are read from: a local disk or an object store."""

    def subdirs(self, path: str) -> list[str]:
        """Names of the directories directly under ``path`` ([] when it is gone)."""
        ...

    def fingerprint(self, path: str) -> str:
        """Changes whenever a file under ``path`` does (names, sizes, times or etags)."""
        ...

    def join(self, path: str, name: str) -> str: ...

    def local(self, path: str, fingerprint: str) -> AbstractContextManager[str]:
        """A local directory holding the version's files (downloaded first when remote), kept
        while the ``with`` block (load_model) reads it."""
        ...


@dataclass(frozen=True)
class Found:
    source: Source
    path: str         # the version's directory, in the source's terms
    fingerprint: str  # reloaded when this changes

    def local(self) -> AbstractContextManager[str]:
        return self.source.local(self.path, self.fingerprint)


Roots = dict[str, tuple[Source, str]]  # model name -> where its versions are


def parse_version(value: object) -> int | None:
    """``2``, ``"2"`` -> 2; anything that is not a version number -> None."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value if value >= 0 else None
    text = value if isinstance(value, str) else None
    return int(text) if text is not None and VERSION.fullmatch(text) else None


def model_versions(source: Source, root: str) -> dict[int, Found]:
    names = source.subdirs(root)
    versioned = {int(n): source.join(root, n) for n in names if VERSION.fullmatch(n)}
    if not versioned:
        # no version folders: the directory itself is the one version (empty when it is gone)
        fingerprint = source.fingerprint(root)
        return {UNVERSIONED: Found(source, root, fingerprint)} if fingerprint else {}
    found = {v: Found(source, path, source.fingerprint(path)) for v, path in versioned.items()}
    # an empty version folder is one being made (`mkdir 3 && cp ... 3/`): no version until files come
    return {v: f for v, f in found.items() if f.fingerprint}


def dir_models(source: Source, root: str) -> Roots:
    """``dir`` form: each subdirectory is a model named after it (hidden ones are not)."""
    return {name: (source, source.join(root, name)) for name in source.subdirs(root) if not name.startswith(".")}


def discover(roots: Roots) -> dict[str, dict[int, Found]]:
    """Every model's versions, models with none left out."""
    found = {name: model_versions(source, root) for name, (source, root) in roots.items()}
    return {name: versions for name, versions in found.items() if versions}
