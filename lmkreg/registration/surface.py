"""The accept-or-refuse rule of the surface refinement (issue 17).

The refined transform (lmkreg.registration.icp) replaces the landmark one only if it lowers the
trimmed surface distance and stays within ``max_rotation_deg`` / ``max_shift_mm`` (rotation between
the two, displacement of the MR gland centre) of it; otherwise the landmark transform is kept and
the reason recorded.  A refinement beyond the bound means the surfaces and the landmarks
disagree: the pair is flagged in its ``trust`` block, and the rescue (lmkreg.registration.rescue)
tries each leave-one-landmark-out pose.

All points are world LPS mm: MR points in MR world, US points in US world.  The one call for
masks from anywhere (files, or the predicted masks of a segmentation head) is :func:`refine_on_masks`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np

from lmkreg.geometry.rigid import RigidTransform
from lmkreg.registration.icp import (GlandSurface, MaskLike, SurfaceSamples, SurfaceSettings, gland_surface,
                                     sample_surfaces, transform_change, trimmed_icp, trimmed_surface_distance)
from lmkreg.registration.rescue import SurfaceRescue, rescue_on_surfaces
from lmkreg.trust.flags import SURFACE, Flag, scoped_flag


@dataclass
class SurfaceRefinement:
    """The outcome: both transforms, the surface distances, and whether/why the refined one is used."""

    landmark_transform: RigidTransform
    surface_transform: Optional[RigidTransform]  # the ICP result, also when refused (None if ICP failed)
    accepted: bool
    reason: str
    distance_landmarks_mm: Optional[float]  # trimmed surface distance under the landmark transform
    distance_surface_mm: Optional[float]  # ... under the ICP result (inf: it maps the gland outside the US image)
    rotation_change_deg: Optional[float]
    shift_mm: Optional[float]
    beyond_bound: bool
    iterations: int
    converged: bool
    settings: SurfaceSettings
    mr_surface: str
    us_surface: str
    mr_volume_ml: float
    us_volume_ml: float
    landmark_residuals_mm: dict = field(default_factory=dict)  # per landmark, under the final transform
    border_fraction: dict = field(default_factory=dict)  # per modality: surface share cut by the image border
    rescue: Optional[SurfaceRescue] = None  # tried when the refinement is refused beyond the bound or fails

    @property
    def rescued(self) -> bool:
        """The landmark transform was refused and a leave-one-landmark-out pose on the surfaces used."""
        return not self.accepted and self.rescue is not None and self.rescue.accepted

    @property
    def transform(self) -> RigidTransform:
        """The transform to use: the refined one if accepted, else the landmark one."""
        if self.accepted and self.surface_transform is not None:
            return self.surface_transform
        return self.rescue.transform if self.rescued else self.landmark_transform

    @property
    def flags(self) -> list[Flag]:
        """Trust flags: refusal because the surfaces pull beyond the bound; an accepted rescue."""
        out = []
        if self.beyond_bound:
            out.append(scoped_flag(SURFACE, "pair", "surface_beyond_bound",
                                   f"the gland surfaces disagree with the landmark transform ({self.reason}); check "
                                   f"the landmarks and the masks"))
        if self.rescued:
            out.append(self.rescue.flag)
        return out

    def summary(self) -> str:
        after = "n/a" if self.distance_surface_mm is None else f"{self.distance_surface_mm:.2f}"
        if self.accepted:
            return (f"surface refinement accepted: trimmed surface distance {self.distance_landmarks_mm:.2f} -> "
                    f"{after} mm, {self.rotation_change_deg:.1f} deg / {self.shift_mm:.1f} mm from the landmark "
                    f"transform")
        if self.rescued:
            return (f"surface refinement refused ({self.reason}); rescued: {self.rescue.reason}, surface distance "
                    f"{self.rescue.distance_mm:.2f} mm (pair flagged)")
        tried = f"; rescue refused: {self.rescue.reason}" if self.rescue is not None else ""
        return f"surface refinement refused, landmark transform kept: {self.reason}{tried}"

    def to_json(self) -> dict:
        return {"method": "rigid trimmed point-to-plane ICP, MR surface onto US surface",
                "accepted": self.accepted, "reason": self.reason,
                "transform_used": "surface" if self.accepted else "surface_rescue" if self.rescued else "landmarks",
                "rescue": None if self.rescue is None else self.rescue.to_json(),
                "surface_distance_mm": {"landmarks": _finite(self.distance_landmarks_mm),
                                        "surface": _finite(self.distance_surface_mm),
                                        "measure": f"mean MR-surface-to-US-surface distance over the closest "
                                                   f"{self.settings.trim_fraction:g} of the points"},
                "change_from_landmarks": {"rotation_deg": self.rotation_change_deg,
                                          "gland_centre_shift_mm": self.shift_mm},
                "bound": {"rotation_deg": self.settings.max_rotation_deg,
                          "gland_centre_shift_mm": self.settings.max_shift_mm},
                "iterations": self.iterations, "converged": self.converged, "settings": self.settings.to_json(),
                "mr_mask": self.mr_surface, "us_mask": self.us_surface,
                "gland_volume_ml": {"MR": self.mr_volume_ml, "US": self.us_volume_ml},
                "surface_cut_by_image_border": self.border_fraction,
                "landmark_residuals_mm_final": self.landmark_residuals_mm}


def refine_on_surfaces(landmark_transform: RigidTransform, mr: GlandSurface, us: GlandSurface,
                       settings: SurfaceSettings = SurfaceSettings(),
                       landmarks: Optional[tuple[np.ndarray, np.ndarray]] = None,
                       landmark_names: Optional[Sequence[str]] = None) -> SurfaceRefinement:
    """Refine `landmark_transform` (MR world -> US world) on the two gland surfaces and decide
    whether to use the result (see the module doc).  `landmarks`: (MR points, US points), used as
    weighted pairs when settings.landmark_weight > 0 and for the residuals reported.

    When the refinement is refused beyond the bound (or cannot start) and all three landmarks
    are given, the surfaces and landmarks disagree: one landmark may be wrong, and the rescue
    (lmkreg.registration.rescue) tries each leave-one-out pose; an accepted rescue is used and
    the pair flagged."""
    problem = settings.problem()
    if problem:
        raise ValueError(problem)
    samples = sample_surfaces(mr, us, settings)  # shared by the refinement and the rescue
    result = _refine(landmark_transform, mr, us, settings, landmarks, landmark_names, samples)
    failed_start = result.surface_transform is None
    if result.accepted or not (result.beyond_bound or failed_start) or landmarks is None \
            or landmark_names is None or len(landmark_names) != 3:
        return result
    result.rescue = rescue_on_surfaces(mr, us, landmarks, landmark_names, settings,
                                       source=landmark_transform.source, target=landmark_transform.target,
                                       samples=samples)
    if result.rescued:
        result.landmark_residuals_mm = _residuals(result.transform, landmarks, landmark_names)
    return result


def _refine(landmark_transform: RigidTransform, mr: GlandSurface, us: GlandSurface, settings: SurfaceSettings,
            landmarks: Optional[tuple[np.ndarray, np.ndarray]], landmark_names: Optional[Sequence[str]],
            samples: SurfaceSamples) -> SurfaceRefinement:
    src, tgt, normals = samples.mr_points, samples.us_points, samples.us_normals
    us_gland, fov = us.gland_mesh, us.field_of_view
    try:
        before: Optional[float] = trimmed_surface_distance(src, landmark_transform, us_gland, settings.trim_fraction,
                                                           fov)
    except ValueError as exc:  # the landmark transform puts the gland (almost) outside a partial US view
        before, failure = None, f"the landmark transform maps the MR gland outside the US image ({exc})"
    else:
        failure = None
    common = dict(settings=settings, mr_surface=mr.source, us_surface=us.source, mr_volume_ml=mr.volume_ml,
                  us_volume_ml=us.volume_ml, distance_landmarks_mm=before, landmark_transform=landmark_transform,
                  border_fraction={"MR": mr.border_fraction, "US": us.border_fraction})
    try:
        if failure:
            raise ValueError(failure)
        icp = trimmed_icp(src, tgt, normals, landmark_transform, settings.trim_fraction, settings.max_iterations,
                          landmarks, settings.landmark_weight, fov)
    except (ValueError, np.linalg.LinAlgError) as exc:
        return SurfaceRefinement(surface_transform=None, accepted=False,
                                 reason=str(exc) if failure else f"ICP failed ({exc})",
                                 distance_surface_mm=None, rotation_change_deg=None, shift_mm=None,
                                 beyond_bound=False, iterations=0, converged=False,
                                 landmark_residuals_mm=_residuals(landmark_transform, landmarks, landmark_names),
                                 **common)
    cand = RigidTransform(icp.transform.rotation, icp.transform.translation, landmark_transform.source,
                          landmark_transform.target)
    try:
        after = trimmed_surface_distance(src, cand, us_gland, settings.trim_fraction, fov)
    except ValueError:
        after = math.inf
    rot, shift = transform_change(landmark_transform, cand, mr.centre)
    reasons = []
    if not after < before:  # an infinite `after`: the result maps the gland outside the US image
        reasons.append(f"it does not lower the trimmed surface distance ({before:.2f} mm with the landmarks, "
                       f"{after:.2f} mm refined)")
    beyond = []
    if rot > settings.max_rotation_deg:
        beyond.append(f"it would rotate {rot:.1f} deg from the landmark transform (bound {settings.max_rotation_deg:g} "
                      f"deg)")
    if shift > settings.max_shift_mm:
        beyond.append(f"it would move the gland centre {shift:.1f} mm from the landmark transform (bound "
                      f"{settings.max_shift_mm:g} mm)")
    reasons += beyond
    accepted = not reasons
    reason = ("it lowers the trimmed surface distance and stays within the bound" if accepted
              else "; ".join(reasons))
    final = cand if accepted else landmark_transform
    return SurfaceRefinement(surface_transform=cand, accepted=accepted, reason=reason, distance_surface_mm=after,
                             rotation_change_deg=rot, shift_mm=shift, beyond_bound=bool(beyond),
                             iterations=icp.iterations, converged=icp.converged,
                             landmark_residuals_mm=_residuals(final, landmarks, landmark_names), **common)


def _finite(v: Optional[float]) -> Optional[float]:
    return v if v is not None and math.isfinite(v) else None


def _residuals(t: RigidTransform, landmarks: Optional[tuple[np.ndarray, np.ndarray]],
               names: Optional[Sequence[str]]) -> dict:
    if landmarks is None:
        return {}
    d = np.linalg.norm(t.apply(landmarks[0]) - landmarks[1], axis=1)
    names = list(names) if names is not None else [str(i) for i in range(len(d))]
    return {n: float(v) for n, v in zip(names, d)}


def refine_on_masks(landmark_transform: RigidTransform, mr_mask: MaskLike, us_mask: MaskLike,
                    settings: SurfaceSettings = SurfaceSettings(),
                    landmarks: Optional[tuple[np.ndarray, np.ndarray]] = None,
                    landmark_names: Optional[Sequence[str]] = None) -> SurfaceRefinement:
    """The one call: refine on two prostate masks (files or SimpleITK images, e.g. predicted)."""
    return refine_on_surfaces(landmark_transform, gland_surface(mr_mask), gland_surface(us_mask), settings,
                              landmarks, landmark_names)
