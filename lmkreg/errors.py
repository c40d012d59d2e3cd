"""Exception types.  Every error a user can cause names the file and the problem."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Union


class LmkregError(Exception):
    """Base class: the CLI turns these into a one-line message and a non-zero exit."""


class FileError(LmkregError):
    """A problem with one file: the message is 'path: problem'."""

    def __init__(self, path: Optional[Union[str, Path]], problem: str):
        self.path = None if path is None else str(path)
        self.problem = problem
        super().__init__(problem if path is None else f"{path}: {problem}")

    def __reduce__(self):  # picklable, so an error in a worker process reaches the user intact
        return type(self), (self.path, self.problem)


class InputError(FileError):
    """A file given to lmkreg is unreadable, malformed or inconsistent."""


class ConfigurationError(LmkregError):
    """An environment variable, plans file or dataset.json is missing or wrong."""


class OutputError(FileError):
    """An output could not be written (folder not writable, disk full); nothing was half-written."""
