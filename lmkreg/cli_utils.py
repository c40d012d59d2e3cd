"""Shared plumbing for the thin console commands."""
from __future__ import annotations

import functools
import sys
from typing import Callable, Optional, Sequence

from lmkreg.errors import LmkregError


def friendly_errors(main: Callable[[Optional[Sequence[str]]], int]) -> Callable[[Optional[Sequence[str]]], int]:
    """Turn LmkregError into 'error: <file>: <problem>' on stderr and exit status 2."""

    @functools.wraps(main)
    def wrapper(argv: Optional[Sequence[str]] = None) -> int:
        try:
            return main(argv)
        except LmkregError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130

    return wrapper
