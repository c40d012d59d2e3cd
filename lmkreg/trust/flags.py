"""A flag: one reason not to trust a prediction or a registration, as data.

Every check that raises a flag creates a ``Flag`` with what it measured: which check
(``source``), which landmark (None: the whole case or pair), which signal, its value, the limit
it crossed and the unit, plus the sentence a user reads (``text``, exactly the words lmkreg has
always written).  ``scope`` is what the sentence starts with: the landmark's name, ``case``,
``image`` or ``pair``.

Why fields and not only the sentence: consumers (the end-of-run summary, the pair check's
suspect landmark, the cascade's de-duplication of the blended crops' flags, evaluation) used to
parse the sentences by their prefix and strip their numbers with a regex; a reworded message
silently broke them.  They now read the fields.

In the JSON files the sentences stay where they always were (``"flags": [text, ...]``, so older
readers and people see no change) and the fields go beside them (``"flag_details": [{source,
scope, landmark, signal, value, limit, unit, text}, ...]``, same order).  ``read_flags`` reads
either; a file written before the details gets flags built from the sentences with signal
``unknown``.

This module imports nothing of lmkreg: trust is a leaf.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, MutableMapping, Optional, Sequence

FLAGS_KEY = "flags"
DETAILS_KEY = "flag_details"
UNKNOWN = "unknown"  # signal and source of a flag read from a file that has only its sentence

# the checks that raise flags (Flag.source)
PREDICTOR = "predictor"  # a model's own signals: field of view, heatmap spread, folds, error radius
PLAUSIBILITY = "plausibility"  # landmarks and image against the training statistics
IMAGE = "image_support"  # the source image: outside it, or where it recorded nothing
STAGES = "stage_check"  # a cascade's localizer against its refine stage
PAIR = "pair"  # the pair check of a landmark registration
SURFACE = "surface"  # the surface refinement of a registration
RESCUE = "rescue"  # the surface rescue of a registration
TWO_LANDMARKS = "two_landmarks"  # a registration from two landmarks


def _number(v: Any) -> Optional[float]:
    """A finite float, or None (JSON has no NaN)."""
    if v is None or isinstance(v, bool):
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


@dataclass(frozen=True)
class Flag:
    """One reason not to trust a result (see the module docstring).  ``str(flag)`` is its text."""

    source: str
    landmark: Optional[str]
    signal: str
    value: Optional[float]
    limit: Optional[float]
    text: str
    unit: str = ""
    scope: str = ""  # the text's prefix: the landmark, "case", "image" or "pair" (default: landmark or "case")

    def __post_init__(self) -> None:
        object.__setattr__(self, "value", _number(self.value))
        object.__setattr__(self, "limit", _number(self.limit))
        if not self.scope:
            object.__setattr__(self, "scope", self.landmark or "case")

    def __str__(self) -> str:
        return self.text

    @property
    def key(self) -> tuple[str, Optional[str], str, str]:
        """What makes two flags "the same flag, maybe with other values": scope, landmark,
        signal and source."""
        return (self.scope, self.landmark, self.signal, self.source)

    def concerns(self, landmark: str) -> bool:
        """True when the flag names `landmark` or concerns the whole case (names no landmark)."""
        return self.landmark is None or self.landmark == landmark

    def to_json(self) -> dict:
        return {"source": self.source, "scope": self.scope, "landmark": self.landmark, "signal": self.signal,
                "value": self.value, "limit": self.limit, "unit": self.unit, "text": self.text}

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> "Flag":
        """A flag from its ``flag_details`` entry; a malformed entry raises ValueError."""
        if not isinstance(doc, Mapping) or not isinstance(doc.get("text"), str):
            raise ValueError(f"a flag_details entry must be an object with a 'text', got {doc!r}")
        landmark = doc.get("landmark")
        return cls(source=str(doc.get("source") or UNKNOWN), landmark=landmark if isinstance(landmark, str) else None,
                   signal=str(doc.get("signal") or UNKNOWN), value=doc.get("value"), limit=doc.get("limit"),
                   text=doc["text"], unit=str(doc.get("unit") or ""), scope=str(doc.get("scope") or ""))

    @classmethod
    def from_text(cls, text: str, landmark_names: Iterable[str] = ()) -> "Flag":
        """A flag from its sentence alone (files written before the details): the prefix before
        the first ':' is its landmark when it is one of `landmark_names`, else its scope; the
        signal, value and limit are unknown."""
        prefix, sep, _ = text.partition(":")
        prefix = prefix.strip() if sep else ""
        landmark = prefix if prefix and prefix in set(landmark_names) else None
        return cls(source=UNKNOWN, landmark=landmark, signal=UNKNOWN, value=None, limit=None, text=text,
                   scope=prefix or "case")


def landmark_flag(source: str, landmark: str, signal: str, message: str, value: Any = None, limit: Any = None,
                  unit: str = "") -> Flag:
    """A flag on one landmark; its text is ``"<landmark>: <message>"``."""
    return Flag(source, landmark, signal, value, limit, f"{landmark}: {message}", unit)


def scoped_flag(source: str, scope: str, signal: str, message: str, value: Any = None, limit: Any = None,
                unit: str = "") -> Flag:
    """A flag on the whole case (scope "case" or "image") or pair ("pair"); its text is
    ``"<scope>: <message>"``."""
    return Flag(source, None, signal, value, limit, f"{scope}: {message}", unit, scope)


def flag_texts(flags: Iterable[Flag]) -> list[str]:
    """The sentences, in order: the ``flags`` list of the JSON files."""
    return [f.text for f in flags]


def flag_details(flags: Iterable[Flag]) -> list[dict]:
    """The fields, in order: the ``flag_details`` list of the JSON files."""
    return [f.to_json() for f in flags]


def read_flags(doc: Any, landmark_names: Iterable[str] = ()) -> list[Flag]:
    """The flags of a JSON block holding ``flags`` (and maybe ``flag_details``): an lmkreg
    landmark file's extras or a transform's ``trust``.  Details are used when there is one per
    sentence; otherwise the flags are built from the sentences (``Flag.from_text``)."""
    if not isinstance(doc, Mapping):
        return []
    texts = doc.get(FLAGS_KEY)
    texts = [t for t in texts if isinstance(t, str)] if isinstance(texts, list) else []
    details = doc.get(DETAILS_KEY)
    if isinstance(details, list) and len(details) == len(texts):
        try:
            return [Flag.from_json(d) for d in details]
        except ValueError:
            pass  # written by something else: the sentences are the record
    names = list(landmark_names)
    return [Flag.from_text(t, names) for t in texts]


def add_flags(doc: MutableMapping[str, Any], flags: Sequence[Flag]) -> None:
    """Append `flags` to a JSON block's ``flags`` and ``flag_details`` (new lists: a block copied
    from another keeps the other's lists unchanged).  Details of flags already there but written
    without them are rebuilt from their sentences first, so both lists stay the same length."""
    before = read_flags(doc)
    doc[FLAGS_KEY] = flag_texts(before) + flag_texts(flags)
    doc[DETAILS_KEY] = flag_details(before) + flag_details(flags)


def unique_flags(flags: Iterable[Flag]) -> list[Flag]:
    """One flag per ``key`` (the same check on the same landmark), at the place of its first
    occurrence, as its last occurrence says it."""
    out: dict = {}
    for f in flags:
        out[f.key] = f
    return list(out.values())


__all__ = ["DETAILS_KEY", "FLAGS_KEY", "Flag", "UNKNOWN", "add_flags", "flag_details", "flag_texts",
           "landmark_flag", "read_flags", "scoped_flag", "unique_flags", "PREDICTOR", "PLAUSIBILITY", "IMAGE",
           "STAGES", "PAIR", "SURFACE", "RESCUE", "TWO_LANDMARKS"]
