"""Refining the landmark MR->US transform on the prostate surfaces (issue 17).

Three landmarks 10-17 mm apart fix the rotation poorly (1.5 mm of landmark error tilts their
triangle by several degrees); the whole gland surface fixes it well.  So the landmark transform
is the start and a rigid ICP between the MR and US gland surfaces refines it:

* surfaces: marching cubes of each mask in index space, mapped to world LPS mm through the
  image's own geometry (``lmkreg.evaluation.metrics.mask_to_mesh``), largest connected
  component only (a stray island of a predicted mask is not prostate);
* partial views: where a mask leaves its image, the faces closing it at the image border are
  a cut, not gland: they are left out, and MR points mapped outside such a US grid get no partner;
* ICP: MR surface points onto the US surface, point-to-plane (residual along the US normal,
  estimated from the neighbouring US samples, not the staircase faces), rigid, *trimmed*: each
  iteration keeps only the closest ``trim_fraction`` of the pairs, so MR surface that the TRUS
  fan did not see (its US mask is cut flat by the fan) does not pull; optionally the landmarks
  as extra point-to-point pairs of a given weight;
* acceptance: the refined transform replaces the landmark one only if it lowers the trimmed
  surface distance and stays within ``max_rotation_deg`` / ``max_shift_mm`` (rotation between
  the two, displacement of the MR gland centre) of it; otherwise the landmark transform is kept
  and the reason recorded.  A refinement beyond the bound means the surfaces and the landmarks
  disagree: the pair is flagged in its ``trust`` block.

All points are world LPS mm: MR points in MR world, US points in US world.

The one call for masks from anywhere (files, or later the predicted masks of a segmentation
head) is :func:`refine_on_masks`.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence, Union

import numpy as np
import SimpleITK as sitk
import trimesh
from scipy import ndimage
from scipy.spatial import cKDTree
from scipy.spatial.transform import Rotation

from lmkreg.errors import InputError
from lmkreg.geometry.rigid import RigidTransform
from lmkreg.geometry.spaces import ImageGeometry

if TYPE_CHECKING:  # pragma: no cover
    from lmkreg.registration.rescue import SurfaceRescue

# -- defaults (named so the plans / CLI can override them) ------------------------------------
DEFAULT_TRIM_FRACTION = 0.8  # share of MR->US pairs kept per iteration (partial TRUS views)
MAX_ROTATION_DEG = 20.0  # the refinement may rotate this far from the landmark transform ...
MAX_SHIFT_MM = 10.0  # ... and move the MR gland centre this far; beyond: surfaces and landmarks disagree
DEFAULT_LANDMARK_WEIGHT = 0.0  # landmarks as extra pairs: weight of their mean squared error vs the surface's
SOURCE_POINTS = 3000  # MR surface points (ICP and the reported distance)
TARGET_POINTS = 30000  # US surface samples for the correspondence search (about 0.4 mm apart on a gland)
MAX_ITERATIONS = 60
NORMAL_NEIGHBOURS = 20  # US samples per normal estimate (about 1.3 mm around a point at 30000 samples)
CONVERGED_STEP_MM = 0.01  # converged when a step moves no kept surface point farther than this

MaskLike = Union[str, Path, sitk.Image]


@dataclass(frozen=True)
class SurfaceSettings:
    """How the surface refinement runs and when it is accepted."""

    trim_fraction: float = DEFAULT_TRIM_FRACTION
    max_rotation_deg: float = MAX_ROTATION_DEG
    max_shift_mm: float = MAX_SHIFT_MM
    landmark_weight: float = DEFAULT_LANDMARK_WEIGHT
    source_points: int = SOURCE_POINTS
    target_points: int = TARGET_POINTS
    max_iterations: int = MAX_ITERATIONS
    seed: int = 0

    def problem(self) -> Optional[str]:
        """Why these settings cannot work, or None."""
        if not 0.1 <= self.trim_fraction <= 1.0:
            return f"trim fraction must be between 0.1 and 1, got {self.trim_fraction}"
        for name in ("max_rotation_deg", "max_shift_mm", "landmark_weight"):
            v = getattr(self, name)
            if not math.isfinite(v) or v < 0:
                return f"{name.replace('_', ' ')} must be a finite, non-negative number, got {v}"
        if self.source_points < 100 or self.target_points < 100 or self.max_iterations < 1:
            return "point counts must be at least 100 and iterations at least 1"
        return None

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


# -- surfaces ----------------------------------------------------------------------------------

@dataclass
class GlandSurface:
    """A prostate surface mesh in the world LPS mm of its image, and where it came from."""

    mesh: trimesh.Trimesh  # closed: where the gland leaves the image, closed by the image border
    source: str  # file name, or a description such as "predicted"
    volume_ml: float
    dropped_voxels: int = 0  # voxels outside the largest connected component
    border_faces: Optional[np.ndarray] = None  # per face: lies on the image border (a cut, not gland)
    geometry: Optional[ImageGeometry] = None  # grid of the mask

    @property
    def field_of_view(self) -> Optional[ImageGeometry]:
        """The mask's grid when the gland leaves it (a partial view), else None: only then does
        a point outside the grid mean 'not seen' rather than 'not gland'."""
        return self.geometry if self.border_fraction > 0 else None

    @property
    def centre(self) -> np.ndarray:
        """Centre of the enclosed volume (world LPS mm)."""
        return np.asarray(self.mesh.center_mass if self.mesh.is_volume else self.mesh.centroid, float)

    @property
    def border_fraction(self) -> float:
        """Share of the surface area lying on the image border (a partial view cut by the field of view)."""
        if self.border_faces is None or not self.border_faces.any():
            return 0.0
        return float(self.mesh.area_faces[self.border_faces].sum() / self.mesh.area)

    @property
    def gland_mesh(self) -> trimesh.Trimesh:
        """The surface without its faces on the image border: only what is really gland boundary."""
        if self.border_faces is None or not self.border_faces.any() or self.border_faces.all():
            return self.mesh
        return self.mesh.submesh([np.flatnonzero(~self.border_faces)], append=True)

    def sample(self, count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """`count` points spread by area over the gland boundary (image-border faces excluded)
        and the outward normal at each."""
        mesh = self.gland_mesh
        points, faces = trimesh.sample.sample_surface(mesh, count, seed=seed)
        return np.asarray(points, float), np.asarray(mesh.face_normals[faces], float)


def largest_component(mask: sitk.Image) -> tuple[sitk.Image, int]:
    """The mask's largest 26-connected foreground component (same grid), and how many
    foreground voxels were dropped."""
    arr = sitk.GetArrayViewFromImage(mask) > 0
    labels, n = ndimage.label(arr, structure=np.ones((3, 3, 3), bool))
    if n <= 1:
        out = sitk.GetImageFromArray(arr.astype(np.uint8))
        out.CopyInformation(mask)
        return out, 0
    sizes = np.bincount(labels.ravel())[1:]
    keep = labels == (int(np.argmax(sizes)) + 1)
    out = sitk.GetImageFromArray(keep.astype(np.uint8))
    out.CopyInformation(mask)
    return out, int(sizes.sum() - sizes.max())


def gland_surface(mask: MaskLike, source: Optional[str] = None) -> GlandSurface:
    """Surface of a prostate mask (an image file or a SimpleITK image; any value > 0 is gland).

    Errors name the file: unreadable, not 3D, or empty."""
    from lmkreg.evaluation.metrics import mask_to_mesh
    from lmkreg.io.images import read_image

    if isinstance(mask, sitk.Image):
        image, name = mask, source or "mask image"
    else:
        image, name = read_image(mask, is_mask=True), source or str(mask)
    if not np.any(sitk.GetArrayViewFromImage(image) > 0):
        raise InputError(name, "mask is empty: no prostate voxel (> 0) to build a surface from")
    kept, dropped = largest_component(image)
    voxel_ml = float(np.prod(image.GetSpacing())) / 1000.0
    volume_ml = float(np.count_nonzero(sitk.GetArrayViewFromImage(kept))) * voxel_ml
    mesh = mask_to_mesh(kept)
    geometry = ImageGeometry.from_image(kept)
    return GlandSurface(mesh, name, volume_ml, dropped, border_faces(mesh, geometry), geometry)


def border_faces(mesh: trimesh.Trimesh, geometry: ImageGeometry, tolerance: float = 1e-3) -> np.ndarray:
    """Per face of a mask's mesh (world LPS mm): True where all its vertices lie on the image
    border, half a voxel outside the outermost voxel centres, where mask_to_mesh closes a gland
    that leaves the image.  Such faces are the field of view, not the gland's boundary."""
    idx = geometry.world_to_index(mesh.vertices)
    hi = np.asarray(geometry.shape_zyx, float) - 0.5
    on_border = np.any((np.abs(idx + 0.5) < tolerance) | (np.abs(idx - hi) < tolerance), axis=1)
    return np.all(on_border[mesh.faces], axis=1)


# -- ICP ---------------------------------------------------------------------------------------

@dataclass
class IcpResult:
    transform: RigidTransform  # MR world LPS mm -> US world LPS mm
    iterations: int
    converged: bool


def surface_normals(points: np.ndarray, face_normals: np.ndarray, neighbours: int = NORMAL_NEIGHBOURS) -> np.ndarray:
    """Unit normals of a densely sampled surface from the plane through each point's
    `neighbours` nearest samples (least variance direction), oriented like `face_normals`.

    Marching-cubes faces follow the voxel staircase, so their own normals tilt by tens of degrees
    from the gland's; point-to-plane ICP on them crept for 50+ iterations in tests, on these it
    converges in about 15."""
    _, idx = cKDTree(points).query(points, k=min(neighbours, len(points)))
    nb = points[idx] - points[idx].mean(axis=1, keepdims=True)
    _, vectors = np.linalg.eigh(np.einsum("nki,nkj->nij", nb, nb))
    normals = vectors[:, :, 0]
    return normals * np.where((normals * face_normals).sum(1) < 0, -1.0, 1.0)[:, None]


def _kept(dist: np.ndarray, fraction: float) -> np.ndarray:
    """Indices of the closest `fraction` of the distances (at least 3)."""
    k = max(3, min(len(dist), int(round(fraction * len(dist)))))
    if k >= len(dist):
        return np.arange(len(dist))
    return np.argpartition(dist, k - 1)[:k]


def _seen(points: np.ndarray, field_of_view: Optional[ImageGeometry]) -> np.ndarray:
    """Which points (US world) lie inside the US grid (all without a field of view); refuses
    when almost none do (the MR gland mapped outside the US image)."""
    if field_of_view is None:
        return np.ones(len(points), bool)
    seen = field_of_view.contains_world(points, margin=0.0)
    if seen.sum() < max(10, 0.1 * len(points)):
        raise ValueError(f"only {int(seen.sum())} of {len(points)} MR surface points map inside the US image")
    return seen


def _skew(v: np.ndarray) -> np.ndarray:
    """(N, 3) vectors -> (N, 3, 3) cross-product matrices [v]x."""
    z = np.zeros(len(v))
    return np.stack([np.stack([z, -v[:, 2], v[:, 1]], -1), np.stack([v[:, 2], z, -v[:, 0]], -1),
                     np.stack([-v[:, 1], v[:, 0], z], -1)], 1)


def trimmed_icp(mr_points: np.ndarray, us_points: np.ndarray, us_normals: np.ndarray, initial: RigidTransform,
                trim_fraction: float = DEFAULT_TRIM_FRACTION, max_iterations: int = MAX_ITERATIONS,
                landmarks: Optional[tuple[np.ndarray, np.ndarray]] = None, landmark_weight: float = 0.0,
                field_of_view: Optional[ImageGeometry] = None) -> IcpResult:
    """Rigid MR->US transform by trimmed point-to-plane ICP.

    `mr_points` (MR world) are moved onto the surface sampled by `us_points`/`us_normals` (US
    world).  Per iteration each moved MR point is paired with its nearest US sample, only the
    closest `trim_fraction` of pairs are kept, and the linearised least-squares step minimises
    mean((q - p) . n)^2 + landmark_weight * mean ||q_l - p_l||^2 over a small rotation and a
    translation (landmarks: (MR points, US points) in the same worlds).  With `field_of_view` (the
    US grid of a partial view), moved MR points outside it have no partner and are left out."""
    tree = cKDTree(us_points)
    t = initial
    use_landmarks = landmarks is not None and landmark_weight > 0
    converged = False
    it = 0
    for it in range(1, max_iterations + 1):
        p = t.apply(mr_points)
        dist, idx = tree.query(p)
        seen = _seen(p, field_of_view)
        keep = np.flatnonzero(seen)[_kept(dist[seen], trim_fraction)]
        p, q, n = p[keep], us_points[idx[keep]], us_normals[idx[keep]]
        c = p.mean(0)  # the step rotates about the kept points' centre: a well-conditioned system
        a = np.hstack([np.cross(p - c, n), n]) / math.sqrt(len(p))
        b = ((q - p) * n).sum(1) / math.sqrt(len(p))
        if use_landmarks:
            lp, lq = t.apply(landmarks[0]), landmarks[1]
            s = math.sqrt(landmark_weight / len(lp))
            # R (p - c) + c + t ~ p + w x (p - c) + t = p - [p - c]x w + t, stacked per coordinate
            al = np.concatenate([-_skew(lp - c), np.broadcast_to(np.eye(3), (len(lp), 3, 3))], axis=2).reshape(-1, 6)
            a = np.vstack([a, s * al])
            b = np.concatenate([b, s * (lq - lp).ravel()])
        x, *_ = np.linalg.lstsq(a, b, rcond=None)
        if not np.all(np.isfinite(x)):
            raise ValueError("ICP step is not finite")
        r = Rotation.from_rotvec(x[:3]).as_matrix()
        t = RigidTransform(r, c - r @ c + x[3:], t.target, t.target).compose(t)
        if np.max(np.linalg.norm(np.cross(x[:3], p - c) + x[3:], axis=1)) < CONVERGED_STEP_MM:
            converged = True
            break
    return IcpResult(t, it, converged)


def distance_to_mesh(points: np.ndarray, mesh: trimesh.Trimesh, neighbours: int = 8) -> np.ndarray:
    """Distance (mm) from each point (N, 3) to the mesh: the closest point on the triangles
    around the point's `neighbours` nearest vertices (trimesh.triangles.closest_point).  On the
    small regular triangles of a marching-cubes mesh that is the true closest point, without
    trimesh.proximity's spatial index (an optional dependency, rtree)."""
    pts = np.asarray(points, float)
    _, vidx = cKDTree(mesh.vertices).query(pts, k=min(neighbours, len(mesh.vertices)))
    candidates = np.asarray(mesh.vertex_faces)[vidx.reshape(len(pts), -1)].reshape(len(pts), -1)
    best = np.full(len(pts), np.inf)
    triangles = mesh.triangles
    for column in candidates.T:
        ok = column >= 0
        if ok.any():
            closest = trimesh.triangles.closest_point(triangles[column[ok]], pts[ok])
            best[ok] = np.minimum(best[ok], np.linalg.norm(closest - pts[ok], axis=1))
    return best


def trimmed_surface_distance(mr_points: np.ndarray, transform: RigidTransform, us_mesh: trimesh.Trimesh,
                             trim_fraction: float = DEFAULT_TRIM_FRACTION,
                             field_of_view: Optional[ImageGeometry] = None) -> float:
    """Mean distance (mm) from the mapped MR surface points (MR world) to the US mesh (US
    world), over the closest `trim_fraction` of the points (of those inside `field_of_view`)."""
    p = transform.apply(mr_points)
    p = p[_seen(p, field_of_view)]
    dist = distance_to_mesh(p, us_mesh)
    return float(np.mean(dist[_kept(dist, trim_fraction)]))


def transform_change(a: RigidTransform, b: RigidTransform, centre_mr: np.ndarray) -> tuple[float, float]:
    """(rotation angle in degrees between the two maps, distance in mm between where they send
    the MR point `centre_mr`)."""
    rot = RigidTransform(b.rotation @ a.rotation.T, np.zeros(3)).rotation_angle_deg()
    shift = float(np.linalg.norm(a.apply(centre_mr[None])[0] - b.apply(centre_mr[None])[0]))
    return rot, shift


# -- refinement + acceptance ---------------------------------------------------------------------

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
    rescue: Optional["SurfaceRescue"] = None  # tried when the refinement is refused beyond the bound or fails

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
    def flags(self) -> list[str]:
        """Trust flags: refusal because the surfaces pull beyond the bound."""
        out = []
        if self.beyond_bound:
            out.append(f"pair: the gland surfaces disagree with the landmark transform ({self.reason}); check the "
                       f"landmarks and the masks")
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
    from lmkreg.registration.rescue import rescue_on_surfaces

    result.rescue = rescue_on_surfaces(mr, us, landmarks, landmark_names, settings,
                                       source=landmark_transform.source, target=landmark_transform.target,
                                       samples=samples)
    if result.rescued:
        result.landmark_residuals_mm = _residuals(result.transform, landmarks, landmark_names)
    return result


@dataclass(frozen=True)
class SurfaceSamples:
    """The point sets the ICP runs on: MR surface points (MR world) and US surface samples with
    their normals (US world), all LPS mm."""

    mr_points: np.ndarray
    us_points: np.ndarray
    us_normals: np.ndarray


def sample_surfaces(mr: GlandSurface, us: GlandSurface, settings: SurfaceSettings) -> SurfaceSamples:
    """Sample both surfaces once per pair (seeded by the settings), with smooth US normals."""
    src, _ = mr.sample(settings.source_points, settings.seed)
    tgt, normals = us.sample(settings.target_points, settings.seed + 1)
    return SurfaceSamples(src, tgt, surface_normals(tgt, normals))


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


# -- lmkreg_register glue --------------------------------------------------------------------------

REFINE_CHOICES = ("none", "surface")


def add_surface_options(p: argparse.ArgumentParser) -> None:
    """The options of ``lmkreg_register --refine surface``."""
    p.add_argument("--refine", choices=REFINE_CHOICES, default="none",
                   help="surface: refine the landmark transform by rigid ICP between the MR and US prostate "
                        "surfaces (the masks of --mr-mask and --us-mask, or without them the masks predicted with "
                        "the landmarks by a segmentation model); kept only if it lowers the surface distance and "
                        "stays within --max-rotation-deg and --max-shift-mm of the landmark transform")
    p.add_argument("--us-mask", type=Path,
                   help="US prostate mask for --refine surface: a file for one pair, a folder of masks matched "
                        "by case name with --mr-dir/--us-dir (default, with no --mr-mask either: the masks a "
                        "segmentation model predicted, named in each landmark JSON)")
    p.add_argument("--trim-fraction", type=float, default=DEFAULT_TRIM_FRACTION,
                   help=f"--refine surface: share of surface point pairs kept per ICP iteration, the closest "
                        f"ones, so a partial TRUS view does not pull the result (default {DEFAULT_TRIM_FRACTION})")
    p.add_argument("--max-rotation-deg", type=float, default=MAX_ROTATION_DEG,
                   help=f"--refine surface: refuse a refinement rotating more than this many degrees from the "
                        f"landmark transform (default {MAX_ROTATION_DEG:g})")
    p.add_argument("--max-shift-mm", type=float, default=MAX_SHIFT_MM,
                   help=f"--refine surface: refuse a refinement moving the gland centre more than this many mm "
                        f"from the landmark transform (default {MAX_SHIFT_MM:g})")
    p.add_argument("--landmark-weight", type=float, default=DEFAULT_LANDMARK_WEIGHT, metavar="W",
                   help="--refine surface: also fit the landmarks as point pairs; the ICP minimises the mean "
                        "squared surface distance plus W times the mean squared landmark distance (default 0: "
                        "surfaces only; W = 0.1 lets the landmarks pull about a third as hard as the surfaces)")


@dataclass
class SurfaceRequest:
    """What ``--refine surface`` asked for: the mask files or folders (None: each case's predicted
    masks, named by its landmark JSON's ``prostate`` entry) and the settings."""

    mr_mask: Optional[Path]
    us_mask: Optional[Path]
    settings: SurfaceSettings
    folders: bool
    images: dict = field(default_factory=dict)  # case -> {modality: sitk.Image}: masks in memory (one shot)

    @property
    def predicted(self) -> bool:
        """True when the masks come from the predictions, not from --mr-mask/--us-mask."""
        return self.mr_mask is None or self.us_mask is None

    def masks_for(self, case: str, mr_landmarks_file: Optional[Path] = None,
                  us_landmarks_file: Optional[Path] = None) -> tuple[MaskLike, MaskLike]:
        """The MR and US masks of a case: the user's files (folders: matched by case name like
        landmark files), else the predicted masks (in memory, or named by the landmark JSONs).
        Raises MissingMask saying why a predicted one is not there."""
        if not self.predicted:
            if not self.folders:
                return self.mr_mask, self.us_mask
            return _mask_in_folder(self.mr_mask, case), _mask_in_folder(self.us_mask, case)
        from lmkreg.registration.predicted_masks import find_predicted_mask

        found, missing = [], []
        for modality, landmarks_file in (("MR", mr_landmarks_file), ("US", us_landmarks_file)):
            image = self.images.get(case, {}).get(modality)
            if image is not None:
                found.append(image)
                continue
            why = f"no {modality} landmark file" if landmarks_file is None else None
            mask = None
            if landmarks_file is not None:
                mask, why = find_predicted_mask(landmarks_file)
            if mask is None:
                missing.append(f"{modality}: {why}")
            found.append(mask)
        if missing:
            raise MissingMask("; ".join(missing))
        return found[0], found[1]

    def refine_pair(self, reg, doc: dict, mr_landmarks, us_landmarks, case: str,
                    mr_file: Optional[Path] = None, us_file: Optional[Path] = None):
        """Refine one registered pair in place of its landmark transform: returns the registration
        with the transform to use and the JSON document with both transforms and the outcome.
        Predicted masks that are missing or unusable keep the landmark transform, with the reason."""
        from lmkreg.registration.transform_files import refinement_fields

        names = list(reg.names)
        landmarks = (mr_landmarks.to_array(names), us_landmarks.to_array(names))
        try:
            mr_mask, us_mask = self.masks_for(case, mr_file, us_file)
            if self.predicted:  # a predicted mask may be empty: the case keeps its landmark transform
                mr_mask, us_mask = (m if isinstance(m, sitk.Image) else Path(m) for m in (mr_mask, us_mask))
                result = refine_on_surfaces(reg.transform, gland_surface(mr_mask, _source(mr_mask, "MR")),
                                            gland_surface(us_mask, _source(us_mask, "US")), self.settings,
                                            landmarks, names)
            else:
                result = refine_on_masks(reg.transform, mr_mask, us_mask, self.settings, landmarks, names)
        except MissingMask as exc:
            return reg, self._not_refined(reg, doc, case, f"no predicted prostate mask ({exc})")
        except InputError as exc:
            if not self.predicted:
                raise
            return reg, self._not_refined(reg, doc, case, f"predicted prostate mask unusable ({exc})")
        trust = reg.trust if isinstance(reg.trust, dict) else {}
        trust["surface"] = {"accepted": result.accepted, "reason": result.reason,
                            "surface_distance_mm": result.distance_surface_mm if result.accepted
                            else result.rescue.distance_mm if result.rescued else result.distance_landmarks_mm,
                            "notes": ["rms_residual_mm and uncertainty describe the landmark transform, not the "
                                      f"{'refined' if result.accepted else 'rescued'} one in use"]
                            if result.accepted or result.rescued else []}
        if result.rescued:
            trust["surface"]["rescue"] = result.rescue.reason
        from lmkreg.trust.verdict import surface_distance_limit, surface_verdict  # issue 26: verdict from the surfaces

        trust = surface_verdict(trust, result.accepted, result.distance_surface_mm if result.accepted else
                                None if result.beyond_bound or result.rescued else result.distance_landmarks_mm,
                                (result.rotation_change_deg, result.shift_mm), result.landmark_residuals_mm,
                                surface_distance_limit(mr_landmarks, us_landmarks))
        if result.flags:
            trust.setdefault("flags", []).extend(result.flags)
            trust["reliable"] = False
        reg.trust = trust
        doc = {**doc, **result.transform.to_json(), **refinement_fields(result), "trust": trust}
        print(f"{case}: {result.summary()}")
        return dataclasses.replace(reg, transform=result.transform), doc

    def _not_refined(self, reg, doc: dict, case: str, reason: str) -> dict:
        """The document of a pair that could not be refined: the landmark transform in use, the
        same keys as a refused refinement, and why (not a failure of the case, not a trust flag:
        the landmark transform is as trustworthy as without --refine)."""
        from lmkreg.registration.transform_files import not_refined_fields

        trust = reg.trust if isinstance(reg.trust, dict) else {}
        trust["surface"] = {"accepted": False, "reason": reason, "surface_distance_mm": None, "not_done": True,
                            "notes": []}
        reg.trust = trust
        print(f"{case}: surface refinement not done, landmark transform kept: {reason}")
        return {**doc, **not_refined_fields(reg.transform, reason, self.settings), "trust": trust}


class MissingMask(Exception):
    """A case has no (usable) predicted mask: the message says which and why."""


def _source(mask: MaskLike, modality: str) -> str:
    return f"predicted {modality} mask (in memory)" if isinstance(mask, sitk.Image) else str(mask)


def _mask_in_folder(folder: Path, case: str) -> Path:
    from lmkreg.io.atomic import split_suffix
    from lmkreg.io.images import is_image_file
    from lmkreg.registration.cli import CASE_SUFFIX

    found = [f for f in sorted(folder.iterdir()) if f.is_file() and is_image_file(f)
             and CASE_SUFFIX.sub("", split_suffix(f)[0]) == case]
    if not found:
        raise InputError(folder, f"no mask of case {case!r} (expected e.g. {case}.nii.gz or {case}_US.nii.gz)")
    if len(found) > 1:
        raise InputError(folder, f"several masks of case {case!r} ({', '.join(f.name for f in found)}); "
                                 f"keep one")
    return found[0]


def surface_request(args: argparse.Namespace, parser: argparse.ArgumentParser) -> Optional[SurfaceRequest]:
    """Check the surface options of a parsed command line (before any output); None without
    ``--refine surface``.  Without --mr-mask and --us-mask the masks are the predicted ones."""
    if args.refine != "surface":
        if args.us_mask is not None:
            parser.error("--us-mask is used by --refine surface only")
        return None
    if (args.mr_mask is None) != (args.us_mask is None):
        parser.error("--refine surface: give both --mr-mask and --us-mask, or neither (then each case's predicted "
                     "masks, named in its landmark JSON by lmkreg_predict with a segmentation model, are used)")
    settings = SurfaceSettings(args.trim_fraction, args.max_rotation_deg, args.max_shift_mm, args.landmark_weight)
    problem = settings.problem()
    if problem:
        parser.error(f"--refine surface: {problem}")
    folders = args.mr_dir is not None or args.us_dir is not None
    if args.mr_mask is None:
        return SurfaceRequest(None, None, settings, folders)
    for opt, path in (("--mr-mask", args.mr_mask), ("--us-mask", args.us_mask)):
        if folders and not path.is_dir():
            parser.error(f"{opt} {path}: with --mr-dir/--us-dir give a folder of masks (matched by case name)")
        if not folders and not path.is_file():
            parser.error(f"{opt} {path}: give the mask file of this pair (folders go with --mr-dir/--us-dir)")
    return SurfaceRequest(args.mr_mask, args.us_mask, settings, folders)
