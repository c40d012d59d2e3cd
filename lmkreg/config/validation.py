"""Checks of hand-edited JSON (``plans.json``): keys, types and ranges, each failure naming the
file and the dotted path of the offending key, so a person can find and fix it."""
from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Iterable, Union

from lmkreg.errors import ConfigurationError

PathLike = Union[str, Path]


class Validator:
    """Checks keys and types, failing with the dotted path of the offending key."""

    def __init__(self, source: PathLike):
        self.source = source

    def fail(self, key: str, problem: str) -> None:
        raise ConfigurationError(f"{self.source}: key '{key}' {problem}")

    def mapping(self, obj: Any, where: str) -> None:
        if not isinstance(obj, dict):
            self.fail(where or "<top level>", "must be a JSON object")

    def known_keys(self, obj: dict, known: Iterable[str], where: str) -> None:
        """Refuse a key that is not in `known`, suggesting the nearest known one (a typo such as
        lr_warmup_step would otherwise be silently ignored and its default used)."""
        known = list(known)
        for key in obj:
            if key not in known:
                near = difflib.get_close_matches(key, known, n=1)
                hint = f" (did you mean {near[0]}?)" if near else ""
                self.fail(f"{where}.{key}" if where else key,
                          f"is not a known key{hint}; known: {', '.join(sorted(known))}")

    def key(self, obj: dict, key: str, kind: type, where: str = "") -> Any:
        path = f"{where}.{key}" if where else key
        if key not in obj:
            self.fail(path, "is missing")
        value = obj[key]
        ok = isinstance(value, kind) and not (kind in (int, float) and isinstance(value, bool))
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            ok = True
        if not ok:
            self.fail(path, f"must be of type {kind.__name__}, got {value!r}")
        return value

    def vector(self, obj: dict, key: str, where: str, kind: type = float, positive: bool = True) -> list:
        value = self.key(obj, key, list, where)
        good = len(value) == 3 and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in value)
        if kind is int:
            good = good and all(isinstance(x, int) for x in value)
        if good and positive:
            good = all(x > 0 for x in value)
        if not good:
            self.fail(f"{where}.{key}", f"must be 3 {'positive ' if positive else ''}{kind.__name__}s "
                                        f"in (z, y, x) order, got {value!r}")
        return [kind(x) for x in value]
