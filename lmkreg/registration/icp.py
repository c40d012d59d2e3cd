"""Rigid ICP between the MR and US gland surfaces: the maths of the surface refinement (issue 17).

The surfaces, their sampling and the trimmed point-to-plane ICP; whether its result is used is
lmkreg.registration.surface (the accept-or-refuse rule), the command-line options are
lmkreg.run.surface_options.  The reasoning of the whole refinement:

Refining the landmark MR->US transform on the prostate surfaces (issue 17).

Three landmarks 10-17 mm apart fix the rotation poorly (1.5 mm of landmark error tilts their
triangle by several degrees); the whole gland surface fixes it well.  So the landmark transform
is the start and a rigid ICP between the MR and US gland surfaces refines it:

* surfaces: marching cubes of each mask in index space, mapped to world LPS mm through the
  image's own geometry (``lmkreg.geometry.mesh.mask_to_mesh``), largest connected
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

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import numpy as np
import SimpleITK as sitk
import trimesh
from scipy.spatial import cKDTree
from scipy.spatial.transform import Rotation

from lmkreg.errors import InputError
from lmkreg.geometry.masks import largest_component
from lmkreg.geometry.mesh import mask_to_mesh
from lmkreg.geometry.rigid import RigidTransform
from lmkreg.geometry.spaces import ImageGeometry
from lmkreg.io.images import read_image

# -- defaults (named so the plans / CLI can override them) ------------------------------------
DEFAULT_TRIM_FRACTION = 0.8  # share of MR->US pairs kept per iteration (partial TRUS views)
MAX_ROTATION_DEG = 20.0  # the refinement may rotate this far from the landmark transform ...
MAX_SHIFT_MM = 10.0  # ... and move the MR gland centre this far; beyond: surfaces and landmarks disagree
# landmarks as extra pairs: weight of their mean squared error vs the surface's.  0.2 was chosen on the four
# protocol families (benchmarks/surface_weight_benchmark.py, documentation/inference.md): with masks of a
# segmentation network's quality (Dice 0.90-0.93) surfaces alone (0) turned the gland by 12-45 deg on average
DEFAULT_LANDMARK_WEIGHT = 0.2
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


def gland_surface(mask: MaskLike, source: Optional[str] = None) -> GlandSurface:
    """Surface of a prostate mask (an image file or a SimpleITK image; any value > 0 is gland).

    Errors name the file: unreadable, not 3D, or empty."""
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


# -- the point sets ICP runs on ------------------------------------------------------------------


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
