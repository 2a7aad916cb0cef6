"""The errors a user can cause and fix, apart from everything else.

A ``UserError`` is shown as its message alone (by ``kic`` commands and by the
pipeline steps): bad parameters, unusable data, a missing file, a URI that
cannot be reached. Any other exception is a bug in kic or in a library under
it, and keeps its traceback so that it can be reported and fixed.
"""

from __future__ import annotations

import dataclasses
from typing import Any


class UserError(Exception):
    """Something the user can fix; its message says what and how."""


@dataclasses.dataclass(frozen=True)
class Problem:
    """One thing wrong with one parameter: its name, the bad value, what is valid."""

    name: str
    value: Any
    expected: str

    def __str__(self) -> str:
        return f"{self.name}={self.value!r}: {self.expected}"


class ParameterError(UserError, ValueError):
    """Every problem found in a set of parameters, reported at once."""

    what = "parameters"

    def __init__(self, problems: list[Problem]):
        self.problems = list(problems)
        lines = "\n".join(f"  - {problem}" for problem in self.problems)
        noun = "problem" if len(self.problems) == 1 else "problems"
        super().__init__(f"invalid {self.what} ({len(self.problems)} {noun}):\n{lines}")


class DataError(UserError, ValueError):
    """Images, a prepared dataset or a model that cannot be used as given."""


class SourceError(DataError):
    """A source of images that cannot be used as given: missing, empty, unreadable, badly named classes."""


class NotFoundError(UserError, FileNotFoundError):
    """A file, folder, object or bucket that does not exist."""


class UnreachableError(UserError, OSError):
    """A URI that exists, perhaps, but cannot be reached: no permission, no
    credentials, no network."""


class MissingDependencyError(UserError, ImportError):
    """An optional extra that the command needs is not installed; the message names it."""
