"""Exception types.  Every error a user can cause names the file and the problem."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Union


class LmkregError(Exception):
    """Base class: the CLI turns these into a one-line message and a non-zero exit."""


class InputError(LmkregError):
    """A file given to lmkreg is unreadable, malformed or inconsistent."""

    def __init__(self, path: Optional[Union[str, Path]], problem: str):
        self.path = None if path is None else str(path)
        self.problem = problem
        super().__init__(problem if path is None else f"{path}: {problem}")


class ConfigurationError(LmkregError):
    """An environment variable, plans file or dataset.json is missing or wrong."""


class OutputError(LmkregError):
    """An output could not be written (folder not writable, disk full); nothing was half-written."""

    def __init__(self, path: Optional[Union[str, Path]], problem: str):
        self.path = None if path is None else str(path)
        self.problem = problem
        super().__init__(problem if path is None else f"{path}: {problem}")
