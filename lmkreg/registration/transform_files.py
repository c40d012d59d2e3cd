"""Writing the rigid MR->US transform for other tools.

* JSON (``RigidTransform.save``): the 4x4 matrix mapping MR world LPS mm to US world LPS mm.
* ITK ``.tfm`` (this module): ITK and 3D Slicer store *resampling* transforms, which map
  points of the fixed/output space to the moving/input space.  So the file holds the
  US->MR map: ``sitk.ReadTransform(f).TransformPoint(us_point)`` gives the MR point, and
  ``sitk.Resample(mr_image, us_image, sitk.ReadTransform(f))`` shows the MR in US space.  In 3D
  Slicer, load the file and place the MR volume under it to see MR aligned with the US.
"""
from __future__ import annotations

from pathlib import Path
from typing import Union

import numpy as np
import SimpleITK as sitk

from lmkreg.errors import InputError, OutputError
from lmkreg.geometry.rigid import RigidTransform
from lmkreg.io.atomic import atomic_path
import json

PathLike = Union[str, Path]


def to_sitk_resampling_transform(mr_to_us: RigidTransform) -> sitk.Euler3DTransform:
    """SimpleITK transform mapping US world points to MR world points (for sitk.Resample)."""
    inv = mr_to_us.inverse()
    t = sitk.Euler3DTransform()
    t.SetMatrix(tuple(float(v) for v in inv.rotation.ravel()), 1e-6)
    t.SetTranslation(tuple(float(v) for v in inv.translation))
    return t


def write_itk_transform(mr_to_us: RigidTransform, path: PathLike) -> Path:
    """Write the ITK .tfm (US->MR resampling direction, see module doc), atomically."""
    p = Path(path)
    try:
        with atomic_path(p) as tmp:
            sitk.WriteTransform(to_sitk_resampling_transform(mr_to_us), str(tmp))
    except (RuntimeError, OSError) as exc:
        raise OutputError(p, f"could not write transform ({str(exc).strip().splitlines()[-1]})") from None
    return p


def read_itk_transform(path: PathLike, source: str = "MR", target: str = "US") -> RigidTransform:
    """Read a rigid .tfm (US->MR resampling direction) back as the MR->US RigidTransform.

    The matrix is recovered by probing the transform at the origin and along each axis, so any
    ITK rigid or affine representation reads the same way; a non-rigid one is refused.
    """
    p = Path(path)
    try:
        t = sitk.ReadTransform(str(p))
    except RuntimeError:
        raise InputError(p, "not a readable ITK transform file") from None
    origin = np.array(t.TransformPoint((0.0, 0.0, 0.0)))
    m = np.eye(4)
    m[:3, :3] = np.array([np.array(t.TransformPoint(tuple(e))) - origin for e in np.eye(3)]).T
    m[:3, 3] = origin
    try:
        us_to_mr = RigidTransform.from_matrix(m, target, source)
    except ValueError:
        raise InputError(p, "transform is not rigid (rotation + translation)") from None
    return us_to_mr.inverse()


# -- surface refinement (issue 17): both transforms in one transform JSON ----------------------

def refinement_fields(result) -> dict:
    """Fields a transform JSON gains from ``lmkreg_register --refine surface`` (a
    lmkreg.registration.surface.SurfaceRefinement): the top-level ``matrix`` stays the transform
    to use; ``landmark_transform`` and ``surface_transform`` (the ICP result, also when refused)
    keep both, and ``surface_refinement`` says whether the refined one was accepted and why."""
    return {"transform_source": "surface" if result.accepted else "surface_rescue" if getattr(result, "rescued", False)
            else "landmarks",
            "landmark_transform": result.landmark_transform.to_json(),
            "surface_transform": None if result.surface_transform is None else result.surface_transform.to_json(),
            "surface_refinement": result.to_json()}


def not_refined_fields(landmark_transform: RigidTransform, reason: str, settings) -> dict:
    """Fields of a transform JSON whose surface refinement could not run (e.g. no predicted
    mask): the same keys as a refused refinement, the landmark transform in use, and why."""
    return {"transform_source": "landmarks", "landmark_transform": landmark_transform.to_json(),
            "surface_transform": None,
            "surface_refinement": {"accepted": False, "reason": reason, "transform_used": "landmarks",
                                   "surface_distance_mm": {"landmarks": None, "surface": None},
                                   "settings": settings.to_json()}}


def read_transform_record(path: PathLike) -> dict[str, RigidTransform]:
    """The transforms of an lmkreg transform JSON: ``used`` (the top-level matrix) and, when the
    file comes from a surface refinement, ``landmarks`` and ``surface`` (each MR -> US)."""

    p = Path(path)
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(p, "file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(p, f"not valid JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise InputError(p, "a transform JSON must hold an object")
    out = {"used": RigidTransform.from_json(doc, p)}
    for key, name in (("landmark_transform", "landmarks"), ("surface_transform", "surface")):
        if isinstance(doc.get(key), dict):
            out[name] = RigidTransform.from_json(doc[key], p)
    return out
