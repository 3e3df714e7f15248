"""Errors that carry one located entry per problem, so a user sees every mistake at once."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Location:
    """Where a value came from: a file (or ``<dict>``) and a 1-based line, when known."""

    file: str
    line: int | None = None

    def __str__(self) -> str:
        return f"{self.file}:{self.line}" if self.line is not None else self.file


@dataclass(frozen=True)
class Problem:
    """One mistake: where it is, which field, and what is wrong."""

    location: Location
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.location}: {self.path or '<root>'}: {self.message}"

    def as_dict(self) -> dict[str, object]:
        """A JSON-ready form, for editors and CI."""
        return {
            "file": self.location.file,
            "line": self.location.line,
            "path": self.path,
            "message": self.message,
        }


class RuleError(ValueError):
    """Rule files or a plan that cannot be used; ``str()`` is one ``file:line: field: message`` per problem."""

    def __init__(self, problems: Iterable[Problem]) -> None:
        self.problems: tuple[Problem, ...] = tuple(problems)
        super().__init__("\n".join(str(p) for p in self.problems))

    @classmethod
    def single(cls, location: Location, path: str, message: str) -> RuleError:
        """An error with exactly one problem."""
        return cls([Problem(location, path, message)])


class PluginError(RuntimeError):
    """A plugin that failed to load or raised inside a hook (named with its distribution and version)."""
