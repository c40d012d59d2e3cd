"""Is a case like the training cases?  Landmark geometry and image statistics against the
training distribution stored with the model (``training_statistics.json``).

Why: a network answers for any input.  Given the other modality's image, a prostate outside
the region it was trained to look at, or a model that never learnt, it still returns three
points, and its own spreads can stay small.  What it cannot fake is that the answer looks
like the training answers: the triangle's side lengths and angles, its orientation relative to
the patient axes, where it sits in the planned crop, and an input that looks like the training
inputs.  Every check that fails says which quantity, its value, the training range and by how much.

All points are world LPS mm; the crop features are computed on the normalised array the
network sees (the same numbers for training cases, read from the preprocessed files).
"""
from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from lmkreg.geometry import ImageGeometry
from lmkreg.trust.flags import PLAUSIBILITY, Flag, scoped_flag

STATISTICS_FILE = "training_statistics.json"

# how far beyond the training range a value may go before it fails: the larger of a share of
# the range, a multiple of the sd, and an absolute floor per kind of quantity (training sets are
# small, so the observed range underestimates the true one)
RANGE_SHARE = 0.5
SD_MULTIPLE = 4.0
ABS_TOLERANCE = {"distance": 4.0, "angle": 12.0, "orientation": 15.0, "offset": 8.0, "crop": 0.35,
                 "fraction": 0.1}
EXTENT_FACTOR = 2.0  # an image more than twice as large (or half as small) as any seen, per axis

# the whole crop's share of exactly-zero voxels (padding beyond the image, outside a TRUS fan)
# says the input is framed unlike training; whether that matters for the answer is decided
# near the landmarks (issue 26: another protocol's tighter field of view pads the crop's edges,
# far from an accurately found gland, and flagged every such case)
CROP_ZERO = "crop fraction exactly zero"
NEAR_ZERO = "fraction exactly zero near the landmarks"
IMAGED_CONSTANT = "largest share of one value inside the image"  # a fan's outside, not padding beyond the image
GLAND_MARGIN_MM = 5.0  # the sphere over the gland: its landmarks' farthest distance from their centroid + this


def _direction_angle_deg(u: np.ndarray, v: np.ndarray) -> float:
    c = float(np.dot(u, v) / (np.linalg.norm(u) * np.linalg.norm(v) + 1e-12))
    return math.degrees(math.acos(max(-1.0, min(1.0, c))))


def landmark_features(points: np.ndarray, names: Sequence[str], grid_centre: Optional[np.ndarray] = None) -> dict:
    """Scalar features of a landmark triangle (points (L, 3) world LPS mm, rows in `names` order),
    plus its unit directions: ``{"scalars": {...}, "directions": {...}}``."""
    p = np.asarray(points, float)
    scalars: dict[str, float] = {}
    for i, j in itertools.combinations(range(len(names)), 2):
        scalars[f"distance {names[i]}-{names[j]} (mm)"] = float(np.linalg.norm(p[i] - p[j]))
    if len(names) == 3:
        for i in range(3):
            a, b = [k for k in range(3) if k != i]
            scalars[f"angle at {names[i]} (deg)"] = _direction_angle_deg(p[a] - p[i], p[b] - p[i])
    directions = {}
    if len(names) >= 2:
        directions[f"direction {names[0]}->{names[1]}"] = (p[1] - p[0]) / (np.linalg.norm(p[1] - p[0]) + 1e-12)
    if len(names) >= 3:
        n = np.cross(p[1] - p[0], p[2] - p[0])
        directions["triangle normal"] = n / (np.linalg.norm(n) + 1e-12)
    out = {"scalars": scalars, "directions": {k: v.tolist() for k, v in directions.items()}}
    if grid_centre is not None:
        out["offset"] = centroid_offset(p, grid_centre).tolist()
    return out


def centroid_offset(points: np.ndarray, grid_centre: np.ndarray) -> np.ndarray:
    """The landmarks' centroid minus the crop's centre (both world LPS mm): where the gland sits
    in the crop, as training statistics store it and the checks compare it."""
    return np.asarray(points, float).mean(0) - np.asarray(grid_centre, float)


def crop_features(array: np.ndarray) -> dict[str, float]:
    """Intensity features of the normalised network input (any shape)."""
    a = np.asarray(array, np.float32).ravel()
    p1, p50, p99 = np.percentile(a, [1, 50, 99])
    return {"crop mean": float(a.mean()), "crop sd": float(a.std()), "crop 1st percentile": float(p1),
            "crop median": float(p50), "crop 99th percentile": float(p99),
            "crop fraction exactly zero": float(np.mean(a == 0))}


def near_landmarks_zero_fraction(array: np.ndarray, grid: ImageGeometry, points: np.ndarray) -> Optional[float]:
    """Share of the network input's voxels that are exactly zero inside the sphere over the
    gland the landmarks outline (centre: their centroid; radius: the farthest landmark's distance
    from it + ``GLAND_MARGIN_MM``).  Voxels of the sphere outside the array count as zero: the
    network did not see them either.  `array`: the input on `grid` (a leading channel axis of
    size 1 allowed); `points` (L, 3) world LPS mm.  None when a landmark is missing."""
    p = np.asarray(points, float)
    if p.ndim != 2 or not len(p) or np.isnan(p).any():
        return None
    a = np.asarray(array)
    a = a.reshape(a.shape[-3:])
    centre = p.mean(0)
    radius = float(np.linalg.norm(p - centre, axis=1).max()) + GLAND_MARGIN_MM
    c = grid.world_to_index(centre)
    s = np.asarray(grid.spacing_zyx, float)
    # the direction matrix is orthonormal: the world sphere is an axis-aligned ellipsoid in index space
    lo, hi = np.floor(c - radius / s).astype(int), np.ceil(c + radius / s).astype(int)
    zz, yy, xx = np.meshgrid(*[np.arange(lo[i], hi[i] + 1) for i in range(3)], indexing="ij")
    idx = np.stack([zz, yy, xx], -1)
    ball = idx[np.sum(((idx - c) * s) ** 2, axis=-1) <= radius ** 2]
    if not len(ball):
        return None
    inside = np.all((ball >= 0) & (ball < np.asarray(a.shape)), axis=1)
    values = a[tuple(ball[inside].T)]
    return float((np.count_nonzero(values == 0) + np.count_nonzero(~inside)) / len(ball))


def imaged_constant_share(array: np.ndarray, grid: ImageGeometry, source: ImageGeometry) -> Optional[float]:
    """Largest share of one single value among the input's voxels whose centres lie inside the
    source image (its extent: half a voxel beyond its outer voxel centres): the constant regions
    the scan itself holds — the outside of a TRUS fan, 0 for a US model, or whatever value another
    modality's normalisation gives it — not the padding beyond a smaller field of view.  An MR
    image's noise makes it near 0.  `array` on `grid` (a leading channel axis of size 1 allowed);
    `source`: the image the input was resampled from.  None when no voxel lies inside it."""
    a = np.asarray(array)
    a = a.reshape(a.shape[-3:])
    idx = np.indices(a.shape, dtype=np.float32).reshape(3, -1).T
    inside = source.contains_world(grid.index_to_world(idx))
    n = int(np.count_nonzero(inside))
    if not n:
        return None
    _, counts = np.unique(a.reshape(-1)[inside], return_counts=True)
    return float(counts.max() / n)


def image_extent_lps(geometry: ImageGeometry) -> np.ndarray:
    """Size (mm) of the image's world bounding box along L, P, S."""
    shape = np.asarray(geometry.shape_zyx, float)
    corners = np.array([[z, y, x] for z in (0, 1) for y in (0, 1) for x in (0, 1)], float) * (shape - 1)
    w = geometry.index_to_world(corners)
    return w.max(0) - w.min(0) + np.abs(geometry.direction_matrix @ np.asarray(geometry.spacing_xyz, float))


def grid_centre_world(grid: ImageGeometry) -> np.ndarray:
    return grid.index_to_world((np.asarray(grid.shape_zyx, float) - 1) / 2)


def _summary(values: Sequence[float]) -> dict:
    v = np.asarray(values, float)
    v = v[np.isfinite(v)]
    if not v.size:
        return {"n": 0}
    return {"n": int(v.size), "min": float(v.min()), "max": float(v.max()), "mean": float(v.mean()),
            "sd": float(v.std(ddof=1)) if v.size > 1 else 0.0}


def _kind(feature: str) -> str:
    if feature.startswith("distance"):
        return "distance"
    if feature.startswith("angle"):
        return "angle"
    return "fraction" if "fraction" in feature or "share" in feature else "crop"


@dataclass
class Check:
    """One failed check: what, the value, the allowed range and by how much it misses."""

    what: str
    value: float
    low: float
    high: float
    unit: str = ""

    @property
    def excess(self) -> float:
        return self.low - self.value if self.value < self.low else self.value - self.high

    def message(self) -> str:
        u = f" {self.unit}" if self.unit else ""
        return (f"{self.what} {self.value:.3g}{u} outside the training range widened to {self.low:.3g}..{self.high:.3g}"
                f"{u} (by {self.excess:.3g}{u})")

    @property
    def limit(self) -> float:
        """The end of the allowed range the value lies beyond."""
        return self.low if self.value < self.low else self.high

    def flag(self, scope: str) -> Flag:
        """The flag of this failed check on the whole case ("case") or its image ("image")."""
        return scoped_flag(PLAUSIBILITY, scope, self.what, self.message(), self.value, self.limit, self.unit)


def _range_check(feature: str, value: float, s: dict, unit: str = "") -> Optional[Check]:
    if s.get("n", 0) == 0 or not math.isfinite(value):
        return None
    tol = max(RANGE_SHARE * (s["max"] - s["min"]), SD_MULTIPLE * s["sd"], ABS_TOLERANCE[_kind(feature)])
    lo, hi = s["min"] - tol, s["max"] + tol
    return Check(feature, value, lo, hi, unit) if not lo <= value <= hi else None


@dataclass(frozen=True)
class CentreOffset:
    """The landmarks' centre against the training cases' place for it in the crop: its distance
    (mm) from their mean place (`training_mean_lps`: centre minus grid centre, world LPS mm), the
    largest distance a training case had, and the allowed limit (that largest widened like every
    range here)."""

    distance_mm: float
    training_max_mm: float
    limit_mm: float
    training_mean_lps: np.ndarray

    @property
    def beyond(self) -> bool:
        return self.distance_mm > self.limit_mm


class TrainingStatistics:
    """The training distribution of landmark geometry, crop intensities and image extents for
    one modality, and of the true landmarks' MR->US rigid-fit residuals of the training pairs."""

    def __init__(self, doc: dict):
        self.doc = doc

    @property
    def names(self) -> list[str]:
        return list(self.doc["landmark_names"])

    @staticmethod
    def load(model_folder: Path) -> Optional["TrainingStatistics"]:
        path = Path(model_folder) / STATISTICS_FILE
        if not path.is_file():
            return None
        return TrainingStatistics(json.loads(path.read_text(encoding="utf-8")))

    def pair_residuals(self) -> Optional[dict]:
        return self.doc.get("pair_rms_residual_mm")

    def pair_rotation(self) -> Optional[dict]:
        """The training pairs' rotations of this modality's world into the other's (older files: None)."""
        return self.doc.get("pair_rotation")

    def check_landmarks(self, points: np.ndarray, grid_centre: Optional[np.ndarray] = None) -> list[Flag]:
        """Failed landmark-geometry checks ("case: ..." flags); `points` (L, 3) world LPS in ``names`` order."""
        if np.isnan(points).any():
            return []
        f = landmark_features(points, self.names)  # the centre offset: centre_offset below
        problems = []
        for k, v in f["scalars"].items():
            c = _range_check(k, v, self.doc["landmarks"]["scalars"].get(k, {"n": 0}),
                             "mm" if k.startswith("distance") else "deg")
            if c:
                problems.append(c.flag("case"))
        for k, v in f["directions"].items():
            ref = self.doc["landmarks"]["directions"].get(k)
            if not ref:
                continue
            angle = _direction_angle_deg(np.asarray(v), np.asarray(ref["mean"]))
            limit = ref["max_angle_deg"] + max(RANGE_SHARE * ref["max_angle_deg"], ABS_TOLERANCE["orientation"])
            if angle > limit:
                problems.append(scoped_flag(PLAUSIBILITY, "case", k,
                                            f"{k} turned {angle:.0f} deg from the training mean (training at most "
                                            f"{ref['max_angle_deg']:.0f} deg, allowed {limit:.0f} deg; by "
                                            f"{angle - limit:.0f} deg)", angle, limit, "deg"))
        off = self.centre_offset(points, grid_centre)
        if off is not None and off.beyond:
            problems.append(scoped_flag(PLAUSIBILITY, "case", "landmark_centre_offset_mm",
                                        f"landmarks' centre {off.distance_mm:.1f} mm from where training cases had it "
                                        f"in the crop (training at most {off.training_max_mm:.1f} mm, allowed "
                                        f"{off.limit_mm:.1f} mm; by {off.distance_mm - off.limit_mm:.1f} mm)",
                                        off.distance_mm, off.limit_mm, "mm"))
        return problems

    def centre_offset(self, points: np.ndarray, grid_centre: Optional[np.ndarray]) -> Optional["CentreOffset"]:
        """How far the landmarks' centre lies from where the training cases had it in their crop
        (`points` (L, 3) and `grid_centre` world LPS mm); None without the training figure, a grid
        centre or a complete set of landmarks."""
        off = self.doc["landmarks"].get("offset")
        p = np.asarray(points, float)
        if not off or grid_centre is None or np.isnan(p).any():
            return None
        d = float(np.linalg.norm(centroid_offset(p, grid_centre) - np.asarray(off["mean"])))
        limit = off["max_distance_mm"] + max(RANGE_SHARE * off["max_distance_mm"], ABS_TOLERANCE["offset"])
        return CentreOffset(d, float(off["max_distance_mm"]), float(limit), np.asarray(off["mean"], float))

    def check_image(self, crop: dict[str, float], extent_lps: Optional[np.ndarray] = None,
                    near_landmarks_zero: Optional[float] = None, imaged_constant: Optional[float] = None) -> list[Flag]:
        """Failed image checks ("image: ..." flags): crop intensity features and the image's extent
        per world axis.

        A whole-crop zero share above training is judged by its consequence when the input's two
        padding figures and their training ranges are known (``image.padding``): a constant region
        inside the image itself beyond training (`imaged_constant`, ``imaged_constant_share``: a
        fan where the model knows none — the other modality) is flagged; zeros beyond the image (a
        smaller field of view) are flagged only when they reach the gland the predicted landmarks outline
        (`near_landmarks_zero`, ``near_landmarks_zero_fraction``), else they are no flag.  A share
        below training, a missing figure, or statistics that predate the ranges: flagged as before."""
        problems = []
        pad = self.doc["image"].get("padding") or {}
        near_range, imaged_range = pad.get(NEAR_ZERO, {"n": 0}), pad.get(IMAGED_CONSTANT, {"n": 0})
        for k, v in crop.items():
            c = _range_check(k, v, self.doc["image"]["crop"].get(k, {"n": 0}))
            if not c:
                continue
            if (k == CROP_ZERO and c.value > c.high and near_landmarks_zero is not None
                    and imaged_constant is not None and near_range.get("n", 0) and imaged_range.get("n", 0)):
                whole = f"(whole crop {v:.3g}, training range widened to {c.low:.3g}..{c.high:.3g})"
                inside = _range_check(IMAGED_CONSTANT, imaged_constant, imaged_range)
                near = _range_check(NEAR_ZERO, near_landmarks_zero, near_range)
                if inside:
                    problems.append(scoped_flag(PLAUSIBILITY, "image", IMAGED_CONSTANT,
                                                f"{inside.message()}: a constant region inside the image itself (the "
                                                f"outside of an ultrasound fan?), not padding beyond it {whole}",
                                                inside.value, inside.limit))
                elif near:
                    problems.append(scoped_flag(PLAUSIBILITY, "image", NEAR_ZERO,
                                                f"{near.message()}: the padding reaches the gland the landmarks "
                                                f"outline {whole}", near.value, near.limit))
                # else: padding beyond a smaller field of view, away from the gland: no consequence
                continue
            problems.append(c.flag("image"))
        ext = self.doc["image"].get("extent_lps_mm")
        if extent_lps is not None and ext:
            for axis, v, s in zip("LPS", extent_lps, ext):
                if s.get("n", 0) and v > EXTENT_FACTOR * s["max"]:
                    problems.append(scoped_flag(PLAUSIBILITY, "image", f"extent_{axis}_mm",
                                                f"extent along {axis} {v:.0f} mm is {v / s['max']:.1f}x the largest "
                                                f"seen in training ({s['max']:.0f} mm)", v, EXTENT_FACTOR * s["max"],
                                                "mm"))
                elif s.get("n", 0) and v < s["min"] / EXTENT_FACTOR:
                    problems.append(scoped_flag(PLAUSIBILITY, "image", f"extent_{axis}_mm",
                                                f"extent along {axis} {v:.0f} mm is {s['min'] / v:.1f}x smaller than "
                                                f"the smallest seen in training ({s['min']:.0f} mm)", v,
                                                s["min"] / EXTENT_FACTOR, "mm"))
        return problems


def _true_landmarks(meta: dict) -> np.ndarray:
    """A preprocessed case's true landmarks (L, 3) world LPS mm from its ``CASE.json``; NaN rows
    where one is missing."""
    return np.array([p if p is not None else [np.nan] * 3 for p in meta["landmarks_world_lps"]], float)


def padding_statistics(cases: Sequence[tuple[dict, np.ndarray]]) -> dict:
    """``{NEAR_ZERO: summary, IMAGED_CONSTANT: summary}`` of the training cases: the zero share near
    their true landmarks and the largest one-value share inside their source image, each on the
    stored array's own grid (a refine box's margin included: both are placed in world space).  `cases` as for
    ``training_statistics``."""
    near, imaged = [], []
    for meta, array in cases:
        grid = ImageGeometry.from_json(meta["geometry"])
        v = near_landmarks_zero_fraction(array, grid, _true_landmarks(meta))
        if v is not None:
            near.append(v)
        w = imaged_constant_share(array, grid, ImageGeometry.from_json(meta["source_geometry"]))
        if w is not None:
            imaged.append(w)
    return {NEAR_ZERO: _summary(near), IMAGED_CONSTANT: _summary(imaged)}


def training_statistics(modality: str, names: Sequence[str], cases: Sequence[tuple[dict, np.ndarray]],
                        pair_rms_mm: Sequence[float], pair_rotation: Optional[dict]) -> dict:
    """The document of ``training_statistics.json`` from plain data: per training case its
    preprocessed metadata (the ``CASE.json`` next to the array: grid, source geometry, world
    landmarks, crop margin) and its stored crop array; the training pairs' landmark-fit RMS
    residuals (mm) and their rotation prior document (``RotationPrior.to_json``, or None).
    Reading those files is lmkreg.run.calibrate.write_training_statistics."""
    scalars: dict[str, list[float]] = {}
    directions: dict[str, list[np.ndarray]] = {}
    offsets, crops, extents = [], {}, []
    for meta, array in cases:
        grid = ImageGeometry.from_json(meta["geometry"])
        extents.append(image_extent_lps(ImageGeometry.from_json(meta["source_geometry"])))
        m = meta.get("crop_margin_zyx") or [0, 0, 0]
        array = array[..., m[0]:array.shape[-3] - m[0], m[1]:array.shape[-2] - m[1], m[2]:array.shape[-1] - m[2]]
        for k, v in crop_features(array).items():  # a refine box without its margin: the crop the network sees
            crops.setdefault(k, []).append(v)
        pts = _true_landmarks(meta)
        if np.isnan(pts).any():
            continue
        f = landmark_features(pts, names, grid_centre_world(grid))
        for k, v in f["scalars"].items():
            scalars.setdefault(k, []).append(v)
        for k, v in f["directions"].items():
            directions.setdefault(k, []).append(np.asarray(v))
        offsets.append(np.asarray(f["offset"]))
    dir_doc = {}
    for k, vs in directions.items():
        mean = np.mean(vs, 0)
        mean /= np.linalg.norm(mean) + 1e-12
        dir_doc[k] = {"mean": mean.tolist(), "max_angle_deg": max(_direction_angle_deg(v, mean) for v in vs)}
    off_doc = None
    if offsets:
        m = np.mean(offsets, 0)
        off_doc = {"mean": m.tolist(), "max_distance_mm": float(max(np.linalg.norm(o - m) for o in offsets))}
    pair_doc = None
    if len(pair_rms_mm):
        r = np.asarray(pair_rms_mm)
        pair_doc = {**_summary(r), "p95": float(np.percentile(r, 95)), "median": float(np.median(r))}
    ext = np.asarray(extents) if extents else np.zeros((0, 3))
    return {"modality": modality, "landmark_names": list(names), "num_cases": len(cases),
            "landmarks": {"scalars": {k: _summary(v) for k, v in scalars.items()}, "directions": dir_doc,
                          "offset": off_doc},
            "image": {"crop": {k: _summary(v) for k, v in crops.items()},
                      "padding": padding_statistics(cases),
                      "extent_lps_mm": [_summary(ext[:, i]) for i in range(3)] if len(ext) else None},
            "pair_rms_residual_mm": pair_doc, "pair_rotation": pair_rotation}
