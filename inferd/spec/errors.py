"""Spec problems: one `SpecIssue` per problem, all of them raised together as a `SpecError`."""

from __future__ import annotations

from dataclasses import dataclass, field

# Reasons given in ProjectSpec.ignored for fields that are accepted but mean nothing on one node.
NOT_ENFORCED = "accepted, not enforced on a single node"
NOT_INSTALLED = "not installed by inferd; install it into inferd's environment yourself"
IMAGE_UNUSED = "accepted, not used: inferd runs the handler in its own Python environment"


@dataclass(frozen=True)
class SpecIssue:
    """One problem in a config file, located by file, line and field path."""

    file: str
    line: int | None
    path: str
    message: str

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        if self.path:
            return f"{where}: {self.path}: {self.message}"
        return f"{where}: {self.message}"


class SpecError(Exception):
    """Raised with every problem found in a config file, not just the first."""

    def __init__(self, issues: tuple[SpecIssue, ...] | list[SpecIssue]):
        self.issues: tuple[SpecIssue, ...] = tuple(issues)
        super().__init__("\n".join(str(issue) for issue in self.issues))

    def __str__(self) -> str:
        return "\n".join(str(issue) for issue in self.issues)

    def __reduce__(self) -> tuple[type[SpecError], tuple[tuple[SpecIssue, ...]]]:
        return (SpecError, (self.issues,))


@dataclass
class Collector:
    """Accumulates issues and ignored-field notes while one file is checked."""

    file: str
    issues: list[SpecIssue] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)

    def add(self, line: int | None, path: str, message: str) -> None:
        self.issues.append(SpecIssue(self.file, line, path, message))

    def ignore(self, path: str, reason: str) -> None:
        note = f"{path}: {reason}"
        if note not in self.ignored:
            self.ignored.append(note)

    def raise_if_any(self) -> None:
        if self.issues:
            # File order reads best; issues found by cross-API checks come last otherwise.
            ordered = sorted(self.issues, key=lambda i: -1 if i.line is None else i.line)
            raise SpecError(ordered)
