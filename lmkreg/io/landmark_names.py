"""The team's own landmark names -> lmkreg's: ``--landmark-map Apex=apex BN=bladder_neck``.

Files labelled in 3D Slicer carry whatever names the annotator typed (``Apex``, ``BN``,
``Bladder_Neck``) and Slicer's defaults for stray clicks (``F-1``).  A map renames file labels
to dataset names, compared ignoring upper/lower case; a label equal to a wanted name apart from
case is taken as that name.  Labels neither mapped nor wanted are left as they are, so callers
can list them as ignored.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Optional, Sequence, Union

from lmkreg.errors import ConfigurationError, InputError
from lmkreg.io.landmarks import LandmarkSet

PathLike = Union[str, Path]


def parse_landmark_map(values: Optional[Sequence[str]], option: str = "--landmark-map") -> dict[str, str]:
    """['Apex=apex', 'BN=bladder_neck'] -> {'apex': 'apex', 'bn': 'bladder_neck'} (keys lower case)."""
    out: dict[str, str] = {}
    for value in values or []:
        source, sep, target = value.partition("=")
        source, target = source.strip(), target.strip()
        if not sep or not source or not target:
            raise ConfigurationError(f"{option} {value!r}: expected FILE_NAME=DATASET_NAME, e.g. {option} Apex=apex")
        key = source.lower()
        if key in out and out[key] != target:
            raise ConfigurationError(f"{option}: {source!r} is mapped twice ({out[key]!r} and {target!r}; names are "
                                     f"compared ignoring upper/lower case)")
        out[key] = target
    return out


def rename_landmarks(landmarks: LandmarkSet, mapping: Mapping[str, str], wanted: Sequence[str] = (),
                     source: Optional[PathLike] = None) -> LandmarkSet:
    """`landmarks` with labels renamed by `mapping` (lower-case keys) and, failing that, to the
    wanted name they equal ignoring case.  Two labels becoming one name is an error naming `source`."""
    by_lower = {w.lower(): w for w in wanted}
    points: dict = {}
    origin: dict[str, str] = {}
    for name, point in landmarks.points.items():
        new = mapping.get(name.lower()) or by_lower.get(name.lower()) or name
        if new in points:
            raise InputError(source, f"labels {origin[new]!r} and {name!r} both become landmark {new!r}; keep one "
                                     f"or fix --landmark-map")
        points[new], origin[new] = point, name
    extras = dict(landmarks.extras)
    conf = extras.get("confidence")
    if isinstance(conf, dict):  # per-landmark extras follow their landmark
        extras["confidence"] = {(mapping.get(n.lower()) or by_lower.get(n.lower()) or n): c for n, c in conf.items()}
    return LandmarkSet(points, extras)
