"""Rescuing a pair whose landmark transform is wrong, on the gland surfaces.

When one landmark of a pair is wrong — typically a US apex outside a partial TRUS view, which
the network still places inside the image — the three-point fit turns the gland by tens of
degrees.  The surface refinement (lmkreg.registration.surface) then refuses to move that far:
its bound protects good landmarks from bad masks.  But the two other landmarks are still right.
They fix the gland's axis between them, up to a spin about it, and the gland surface fixes the
spin.  So, for each landmark left out in turn:

1. the two kept landmarks' axis is aligned MR -> US (their midpoints on each other) and the spin
   about it is sampled every ``SPIN_STEP_DEG``;
2. each start is refined by trimmed point-to-plane ICP on the surfaces, with the two kept
   landmarks as weighted pairs (``LANDMARK_WEIGHT``) so that it stays on them;
3. a candidate counts if its kept landmarks stay within ``landmark_limit_mm`` of each other.

The best candidate (lowest trimmed surface distance) is accepted only if

* its trimmed surface distance is at most ``max_distance_mm`` (the surfaces really fit);
* the landmark it left out is really off under it (residual above ``landmark_limit_mm``): else
  no single landmark is wrong and the rescue has nothing to explain;
* no clearly different pose (more than ``AMBIGUOUS_DEG`` away) fits almost as well (within
  ``AMBIGUOUS_RATIO`` or ``AMBIGUOUS_MM`` of its distance): a near-symmetric gland must not be
  guessed.

Otherwise the rescue is refused with the reason.  An accepted rescue is still a flagged pair:
one of its landmarks was wrong and the transform rests on two landmarks and the surfaces.
All points are world LPS mm (MR points in MR world, US points in US world).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np
from scipy.spatial.transform import Rotation

from lmkreg.geometry.rigid import RigidTransform
from lmkreg.registration.icp import (GlandSurface, SurfaceSamples, SurfaceSettings, sample_surfaces,
                                     transform_change, trimmed_icp, trimmed_surface_distance)
from lmkreg.trust.flags import RESCUE, Flag, scoped_flag

SPIN_STEP_DEG = 30.0  # spin starts about the kept landmarks' axis (ICP's basin is wider than +-15 deg)
LANDMARK_WEIGHT = 0.1  # the two kept landmarks as ICP pairs: their mean squared error x this vs the surface's
MAX_DISTANCE_MM = 2.0  # a rescued pose must fit the surfaces this well (trimmed mean distance)
LANDMARK_LIMIT_MM = 5.0  # kept landmarks within this of each other; the left-out one beyond it
AMBIGUOUS_DEG = 10.0  # another pose this far away ...
AMBIGUOUS_RATIO = 1.15  # ... fitting within this factor of the best distance (or AMBIGUOUS_MM of it) makes
AMBIGUOUS_MM = 0.2  # the rescue ambiguous (the absolute margin matters when the best fit is near 0 mm)
ICP_ITERATIONS = 40


@dataclass
class RescueCandidate:
    left_out: str
    spin_deg: float
    transform: RigidTransform
    distance_mm: float
    kept_residuals_mm: dict[str, float]
    left_out_residual_mm: float


@dataclass
class SurfaceRescue:
    """The outcome of a rescue: the transform to use (None when refused) and why."""

    accepted: bool
    reason: str
    transform: Optional[RigidTransform] = None
    left_out: Optional[str] = None
    distance_mm: Optional[float] = None
    kept_residuals_mm: dict[str, float] = field(default_factory=dict)
    left_out_residual_mm: Optional[float] = None
    runner_up: Optional[dict] = None
    candidates: int = 0

    @property
    def flag(self) -> Flag:
        """The pair flag of an accepted rescue (the pair stays unreliable: a landmark was wrong)."""
        return scoped_flag(RESCUE, "pair", "left_out_residual_mm",
                           f"landmark {self.left_out!r} is inconsistent with the other two and the gland surfaces "
                           f"(off by {self.left_out_residual_mm:.1f} mm); transform from the other two landmarks and "
                           f"the surfaces (surface distance {self.distance_mm:.2f} mm): check it",
                           self.left_out_residual_mm, None, "mm")

    def to_json(self) -> dict:
        return {"accepted": self.accepted, "reason": self.reason, "left_out": self.left_out,
                "surface_distance_mm": self.distance_mm, "kept_landmark_residuals_mm": self.kept_residuals_mm,
                "left_out_residual_mm": self.left_out_residual_mm, "runner_up": self.runner_up,
                "candidates": self.candidates,
                **({"matrix": self.transform.to_json().get("matrix")} if self.transform is not None else {})}


def axis_starts(mr_pair: np.ndarray, us_pair: np.ndarray, step_deg: float = SPIN_STEP_DEG
                ) -> list[tuple[float, RigidTransform]]:
    """Rigid starts that put the MR pair's axis on the US pair's (midpoint on midpoint), one
    per spin angle about it: [(spin in degrees, MR world -> US world)]."""
    u = mr_pair[1] - mr_pair[0]
    v = us_pair[1] - us_pair[0]
    if np.linalg.norm(u) < 1e-6 or np.linalg.norm(v) < 1e-6:
        return []
    u, v = u / np.linalg.norm(u), v / np.linalg.norm(v)
    align, _ = Rotation.align_vectors(v[None], u[None])
    mid_mr, mid_us = mr_pair.mean(0), us_pair.mean(0)
    out = []
    for spin in np.arange(0.0, 360.0, step_deg):
        r = (Rotation.from_rotvec(math.radians(spin) * v) * align).as_matrix()
        out.append((float(spin), RigidTransform(r, mid_us - r @ mid_mr)))
    return out


def rescue_on_surfaces(mr: GlandSurface, us: GlandSurface, landmarks: tuple[np.ndarray, np.ndarray],
                       names: Sequence[str], settings: SurfaceSettings = SurfaceSettings(),
                       max_distance_mm: float = MAX_DISTANCE_MM, landmark_limit_mm: float = LANDMARK_LIMIT_MM,
                       source: str = "MR", target: str = "US", samples: Optional[SurfaceSamples] = None
                       ) -> SurfaceRescue:
    """Try every leave-one-landmark-out pose on the surfaces (see the module doc).
    `landmarks`: (MR points (L, 3) MR world, US points (L, 3) US world) in the order of `names`;
    `samples`: the pair's surface samples when the caller has them (else drawn here)."""
    names = list(names)
    p_all, q_all = (np.asarray(a, float) for a in landmarks)
    if len(names) != 3 or p_all.shape != (3, 3) or q_all.shape != (3, 3) or not (
            np.isfinite(p_all).all() and np.isfinite(q_all).all()):
        return SurfaceRescue(False, "the rescue needs all three landmarks in both files")
    samples = sample_surfaces(mr, us, settings) if samples is None else samples
    src, tgt, normals = samples.mr_points, samples.us_points, samples.us_normals
    us_gland, fov = us.gland_mesh, us.field_of_view
    candidates: list[RescueCandidate] = []
    for i, left in enumerate(names):
        kept = [j for j in range(3) if j != i]
        for spin, start in axis_starts(p_all[kept], q_all[kept]):
            try:
                icp = trimmed_icp(src, tgt, normals, start, settings.trim_fraction, ICP_ITERATIONS,
                                  (p_all[kept], q_all[kept]), LANDMARK_WEIGHT, fov)
                t = RigidTransform(icp.transform.rotation, icp.transform.translation, source, target)
                d = trimmed_surface_distance(src, t, us_gland, settings.trim_fraction, fov)
            except (ValueError, np.linalg.LinAlgError):  # a start mapping the gland outside a partial view
                continue
            res = np.linalg.norm(t.apply(p_all) - q_all, axis=1)
            candidates.append(RescueCandidate(left, spin, t, d, {names[j]: float(res[j]) for j in kept},
                                              float(res[i])))
    valid = [c for c in candidates if max(c.kept_residuals_mm.values()) <= landmark_limit_mm
             and math.isfinite(c.distance_mm)]
    if not valid:
        return SurfaceRescue(False, f"no pose keeps two landmarks within {landmark_limit_mm:g} mm and fits the "
                                    f"surfaces", candidates=len(candidates))
    valid.sort(key=lambda c: c.distance_mm)
    best = valid[0]
    centre = mr.centre
    rivals = [c for c in valid[1:] if transform_change(best.transform, c.transform, centre)[0] > AMBIGUOUS_DEG
              and c.distance_mm <= max(AMBIGUOUS_RATIO * best.distance_mm, best.distance_mm + AMBIGUOUS_MM)]
    runner = None
    if rivals:
        rot, _ = transform_change(best.transform, rivals[0].transform, centre)
        runner = {"left_out": rivals[0].left_out, "surface_distance_mm": rivals[0].distance_mm,
                  "rotation_from_best_deg": rot}
    out = dict(transform=best.transform, left_out=best.left_out, distance_mm=best.distance_mm,
               kept_residuals_mm=best.kept_residuals_mm, left_out_residual_mm=best.left_out_residual_mm,
               runner_up=runner, candidates=len(candidates))
    reasons = []
    if best.distance_mm > max_distance_mm:
        reasons.append(f"the best pose fits the surfaces only to {best.distance_mm:.2f} mm (at most "
                       f"{max_distance_mm:g} mm)")
    if best.left_out_residual_mm <= landmark_limit_mm:
        reasons.append(f"the landmark it leaves out ({best.left_out}) is only {best.left_out_residual_mm:.1f} mm off: "
                       f"no single landmark is wrong")
    if runner:
        reasons.append(f"ambiguous: a pose {runner['rotation_from_best_deg']:.0f} deg away fits almost as well "
                       f"({runner['surface_distance_mm']:.2f} against {best.distance_mm:.2f} mm)")
    if reasons:
        return SurfaceRescue(False, "; ".join(reasons), **{**out, "transform": None})
    return SurfaceRescue(True, f"{best.left_out!r} left out: the other two landmarks and the surfaces agree",
                         **out)


__all__ = ["SurfaceRescue", "axis_starts", "rescue_on_surfaces"]
