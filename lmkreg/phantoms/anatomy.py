"""Procedural pelvic anatomy in a patient frame, shared by both modalities.

The patient frame is LPS-aligned millimetres with the gland centre at the origin; MR world
is this frame shifted (``mr_world = patient + gland_centre_mr``).  Every structure is an
implicit function of a point, so MR and TRUS sample the *same* truth at different points.

The gland is star-shaped about its centre: its surface in the gland-frame direction ``u``
is ``rho(u) * u`` with ``rho`` a superellipsoid radius (egg-shaped: narrower towards the
apex, flatter posteriorly) times a smooth, left-right symmetric polynomial perturbation.
Star-shapedness makes the landmarks exact surface points and the inside test one comparison.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from enum import IntEnum

import numpy as np
from scipy.spatial.transform import Rotation

# -- tissues ---------------------------------------------------------------------------


class Tissue(IntEnum):
    """Label of the tissue at a point (uint8 in label arrays)."""

    FAT = 1
    MUSCLE = 2  # obturator internus, levator ani, symphysis disc
    BONE_CORTEX = 3
    BONE_MARROW = 4
    BLADDER_WALL = 5
    URINE = 6
    RECTAL_WALL = 7
    RECTAL_LUMEN = 8
    PZ = 9  # peripheral zone
    TZ = 10  # transition + central zone (inner gland)
    URETHRA = 11
    CALCIFICATION = 12
    CAPSULE = 13  # thin fibromuscular rim of the gland


GLAND_TISSUES = (Tissue.PZ, Tissue.TZ, Tissue.URETHRA, Tissue.CALCIFICATION, Tissue.CAPSULE)
N_TISSUES = max(Tissue) + 1

# gland shape perturbation: monomials u_x^i u_y^j u_z^k, even in x so the gland stays L-R symmetric
_MONOMIALS = np.array([(i, j, k) for i in (0, 2) for j in range(4) for k in range(4) if 1 <= i + j + k <= 3])

CLINICAL_DIAMETERS_MM = {"lr": (35.0, 55.0), "ap": (25.0, 40.0), "cc": (30.0, 50.0)}
CAPSULE_MM = 1.0


@dataclass(frozen=True)
class CosineField:
    """Smooth random texture: sum of plane waves, a deterministic function of position."""

    wavevectors: np.ndarray  # (K, 3) rad/mm
    phases: np.ndarray  # (K,)
    amplitude: float

    @staticmethod
    def sample(rng: np.random.Generator, n: int, wavelength_mm: tuple[float, float]) -> "CosineField":
        dirs = _unit(rng.normal(size=(n, 3)))
        k = 2 * np.pi / rng.uniform(*wavelength_mm, size=n)
        return CosineField(dirs * k[:, None], rng.uniform(0, 2 * np.pi, n), float(np.sqrt(2.0 / n)))

    def __call__(self, points: np.ndarray) -> np.ndarray:
        """Field value (about unit variance) at points (N, 3) of the frame it was sampled in."""
        return (np.cos(points @ self.wavevectors.T + self.phases).sum(axis=1) * self.amplitude).astype(np.float32)


@dataclass(frozen=True)
class Anatomy:
    """Parameters of one synthetic pelvis (patient frame, mm)."""

    # gland (gland frame = patient frame rotated by gland_rotation; columns are gland axes in patient)
    gland_rotation: np.ndarray
    semi_axes: np.ndarray  # (3,) base superellipsoid semi-axes a, b, c (LR, AP, CC)
    exponent: float
    taper: np.ndarray  # (3,): LR and AP width change per unit u_z (apex narrower), CC asymmetry
    posterior_flattening: float  # AP semi-axis shrinks by this fraction towards posterior
    perturbation: np.ndarray  # coefficients of _MONOMIALS
    bound_radius: float  # every gland point is closer to the centre than this
    tz_scale: float
    tz_offset: np.ndarray  # gland frame
    urethra_radius: float
    urethra_bow: float
    calc_centres: np.ndarray  # (K, 3) patient frame
    calc_radii: np.ndarray
    bladder_centre: np.ndarray
    bladder_radii: np.ndarray
    bladder_wall: float
    rectum_point: np.ndarray  # a point on the rectal axis (patient frame)
    rectum_direction: np.ndarray  # unit
    rectum_lumen: float
    rectum_wall: float
    bone_centre_y: float
    bone_radii: np.ndarray  # (2,) inner ellipse of the bony ring (x, y)
    bone_thickness: float
    bone_z: tuple[float, float]
    obturator_thickness: float
    levator_radii: np.ndarray
    levator_centre_y: float
    levator_thickness: float
    fine_texture: CosineField
    coarse_texture: CosineField
    # BPH median lobe (protocol families): a smooth bulge of the surface radius about a gland-frame
    # direction near the bladder neck; height 0 = none (every geometry preset)
    lobe_height: float = 0.0  # fraction of the radius added at the lobe's centre direction
    lobe_direction: tuple[float, float, float] = (0.0, 0.0, 1.0)  # unit, gland frame
    lobe_width: float = 0.06  # in 1 - cos(angle): the bulge falls to 1/e at about 20 degrees

    # -- gland ----------------------------------------------------------------------------

    def gland_radius(self, u: np.ndarray) -> np.ndarray:
        """Distance from the centre to the surface along unit gland-frame directions u (N, 3)."""
        r = _gland_radius(u, self.semi_axes, self.exponent, self.taper, self.posterior_flattening, self.perturbation)
        if self.lobe_height:  # a radial bulge keeps the gland star-shaped, so landmarks stay exact
            r = r * (1 + self.lobe_height * np.exp(-(1 - u @ np.asarray(self.lobe_direction)) / self.lobe_width))
        return r

    def volume_ml(self, n: int = 40_000) -> float:
        """Analytic gland volume in mL: (1/3) * integral of rho(u)^3 over the unit sphere,
        by a dense Fibonacci quadrature (star-shaped body; error well under 0.1 %)."""
        u = fibonacci_sphere(n)
        return float(4 * np.pi / 3 * np.mean(self.gland_radius(u) ** 3) / 1000.0)

    def to_gland_frame(self, points_patient: np.ndarray) -> np.ndarray:
        """Patient-frame points (N, 3) -> gland-frame coordinates (centre at 0)."""
        return np.asarray(points_patient, float) @ self.gland_rotation

    def from_gland_frame(self, q: np.ndarray) -> np.ndarray:
        """Gland-frame coordinates (N, 3) -> patient-frame points."""
        return np.asarray(q, float) @ self.gland_rotation.T

    def gland_level(self, points_patient: np.ndarray) -> np.ndarray:
        """|q| - rho(q/|q|) (mm along the ray; < 0 inside) for patient points (N, 3); NaN far outside."""
        q = self.to_gland_frame(points_patient)
        return _star_level(q, self.gland_radius, self.bound_radius)

    def gland_inside(self, points_patient: np.ndarray) -> np.ndarray:
        """True where patient-frame points (N, 3) are inside the gland (surface included)."""
        level = self.gland_level(points_patient)
        return np.nan_to_num(level, nan=1.0) <= 0

    def surface_points(self, n: int = 4000) -> np.ndarray:
        """n points spread over the gland surface (patient frame)."""
        u = fibonacci_sphere(n)
        return self.from_gland_frame(u * self.gland_radius(u)[:, None])

    def support_point(self, direction_patient: np.ndarray) -> np.ndarray:
        """Gland point furthest along a direction (patient frame): where a flat probe first touches."""
        pts = self.surface_points(6000)
        return pts[np.argmax(pts @ np.asarray(direction_patient, float))]

    # -- landmarks ------------------------------------------------------------------------

    def landmarks(self) -> dict[str, np.ndarray]:
        """The three landmarks in the patient frame, each exactly on the gland surface.

        apex: surface point on the gland's long axis, inferior end; bladder_neck: same,
        superior end (where the gland meets the bladder); posterior_median: where the
        posterior ray from the apex-base midpoint, in the mid-sagittal plane, leaves the gland.
        """
        up = np.array([[0.0, 0.0, 1.0]])
        apex_q = -up[0] * self.gland_radius(-up)[0]
        neck_q = up[0] * self.gland_radius(up)[0]
        mid = (apex_q + neck_q) / 2
        post_q = mid + np.array([0.0, 1.0, 0.0]) * self._exit_distance(mid, np.array([0.0, 1.0, 0.0]))
        return {"apex": self.from_gland_frame(apex_q), "bladder_neck": self.from_gland_frame(neck_q),
                "posterior_median": self.from_gland_frame(post_q)}

    def _exit_distance(self, start_q: np.ndarray, direction_q: np.ndarray) -> float:
        """Distance along a gland-frame ray from an inside point to its first surface crossing."""
        t = np.arange(0.0, self.bound_radius * 2 + 1.0, 0.1)
        level = np.nan_to_num(_star_level(start_q + t[:, None] * direction_q, self.gland_radius, self.bound_radius),
                              nan=1.0)
        first_out = int(np.argmax(level > 0))
        lo, hi = t[first_out - 1], t[first_out]
        for _ in range(50):
            m = (lo + hi) / 2
            if _star_level((start_q + m * direction_q)[None], self.gland_radius, self.bound_radius)[0] > 0:
                hi = m
            else:
                lo = m
        return float(lo)

    # -- whole-pelvis labels --------------------------------------------------------------

    def evaluate(self, points_patient: np.ndarray, chunk: int = 400_000) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Tissue labels (uint8) and fine/coarse textures (float32) at patient points (N, 3)."""
        pts = np.asarray(points_patient, float).reshape(-1, 3)
        labels = np.empty(len(pts), np.uint8)
        fine = np.empty(len(pts), np.float32)
        coarse = np.empty(len(pts), np.float32)
        for s in range(0, len(pts), chunk):
            p = pts[s:s + chunk]
            labels[s:s + chunk] = self._labels(p)
            fine[s:s + chunk] = self.fine_texture(p)
            coarse[s:s + chunk] = self.coarse_texture(p)
        return labels, fine, coarse

    def gland_mask(self, points_patient: np.ndarray, chunk: int = 400_000) -> np.ndarray:
        """Gland membership (bool) at patient points (N, 3), evaluated in chunks."""
        pts = np.asarray(points_patient, float).reshape(-1, 3)
        out = np.empty(len(pts), bool)
        for s in range(0, len(pts), chunk):
            out[s:s + chunk] = self.gland_inside(pts[s:s + chunk])
        return out

    def _labels(self, p: np.ndarray) -> np.ndarray:
        """Paint structures in order of priority (later wins); p is (N, 3) patient frame."""
        lab = np.full(len(p), Tissue.FAT, np.uint8)
        self._paint_pelvic_wall(p, lab)
        self._paint_bladder(p, lab)
        self._paint_rectum(p, lab)
        self._paint_gland(p, lab)
        return lab

    def _paint_pelvic_wall(self, p: np.ndarray, lab: np.ndarray) -> None:
        """Bony ring (pubic symphysis anterior, side walls), obturator internus, levator ani."""
        x, y, z = p[:, 0], p[:, 1] - self.bone_centre_y, p[:, 2]
        d = _ellipse_ray_distance(x, y, *self.bone_radii)
        in_z = (z > self.bone_z[0]) & (z < self.bone_z[1])
        not_posterior = y < 0.35 * self.bone_radii[1]
        bone = (d >= 0) & (d < self.bone_thickness) & in_z & not_posterior
        cortex = bone & ((d < 1.8) | (d > self.bone_thickness - 1.8))
        lab[bone] = Tissue.BONE_MARROW
        lab[cortex] = Tissue.BONE_CORTEX
        lab[bone & (np.abs(x) < 1.5)] = Tissue.MUSCLE  # fibrocartilage disc of the symphysis
        lateral = np.clip((np.abs(x) / self.bone_radii[0] - 0.45) / 0.35, 0, 1)  # muscle thins out medially
        lateral = lateral * np.clip((0.35 * self.bone_radii[1] - y) / 12.0, 0, 1)  # ... and posteriorly
        obturator = ((d < 0) & (d > -self.obturator_thickness * lateral)
                     & (y > -0.5 * self.bone_radii[1]) & in_z & not_posterior)
        lab[obturator] = Tissue.MUSCLE
        c_cc = self.semi_axes[2]
        funnel = np.clip(1 + 0.25 * z / c_cc, 0.6, 1.3)  # the levator funnel narrows inferiorly
        yl = p[:, 1] - self.levator_centre_y
        dl = _ellipse_ray_distance(x / funnel, yl, self.levator_radii[0], self.levator_radii[1])
        levator = ((dl >= 0) & (dl < self.levator_thickness) & (p[:, 1] > -0.3 * self.semi_axes[1])
                   & (z < 0.3 * c_cc) & (z > -c_cc - 25))
        lab[levator] = Tissue.MUSCLE

    def _paint_bladder(self, p: np.ndarray, lab: np.ndarray) -> None:
        v = (p - self.bladder_centre) / self.bladder_radii
        r = np.linalg.norm(v, axis=1)
        wall = r < 1 + self.bladder_wall / float(np.mean(self.bladder_radii))
        lab[wall] = Tissue.BLADDER_WALL
        lab[r < 1] = Tissue.URINE

    def _paint_rectum(self, p: np.ndarray, lab: np.ndarray) -> None:
        d = p - self.rectum_point
        radial = d - np.outer(d @ self.rectum_direction, self.rectum_direction)
        rho = np.linalg.norm(radial, axis=1)
        lab[rho < self.rectum_lumen + self.rectum_wall] = Tissue.RECTAL_WALL
        lab[rho < self.rectum_lumen] = Tissue.RECTAL_LUMEN

    def _paint_gland(self, p: np.ndarray, lab: np.ndarray) -> None:
        q = self.to_gland_frame(p)
        level = np.nan_to_num(_star_level(q, self.gland_radius, self.bound_radius), nan=1.0)
        gland = level <= 0
        if not np.any(gland):
            return
        idx = np.nonzero(gland)[0]
        qg = q[idx]
        out = np.full(len(idx), Tissue.PZ, np.uint8)
        tz_level = np.nan_to_num(_star_level((qg - self.tz_offset) / self.tz_scale, self.gland_radius,
                                             self.bound_radius), nan=1.0)
        out[tz_level <= 0] = Tissue.TZ
        out[self._urethra_distance(qg) < self.urethra_radius] = Tissue.URETHRA
        out[level[idx] > -CAPSULE_MM] = Tissue.CAPSULE
        if len(self.calc_radii):
            pg = p[idx]
            for c, r in zip(self.calc_centres, self.calc_radii):
                out[np.sum((pg - c) ** 2, axis=1) < r * r] = Tissue.CALCIFICATION
        lab[idx] = out

    def _urethra_distance(self, q: np.ndarray) -> np.ndarray:
        """Approximate distance (mm) from gland-frame points to the urethra, a bowed apex-neck curve."""
        up = np.array([[0.0, 0.0, 1.0]])
        z0, z1 = -self.gland_radius(-up)[0], self.gland_radius(up)[0]
        t = np.clip((q[:, 2] - z0) / (z1 - z0), 0.0, 1.0)
        centre_y = -self.urethra_bow * 4 * t * (1 - t)  # bowed anteriorly at mid-gland
        dz = q[:, 2] - (z0 + t * (z1 - z0))
        return np.sqrt(q[:, 0] ** 2 + (q[:, 1] - centre_y) ** 2 + dz ** 2)

    def diameters(self, n: int = 6000) -> np.ndarray:
        """Gland extents (mm) along its own LR, AP and CC axes, from dense surface points."""
        u = fibonacci_sphere(n)
        q = u * self.gland_radius(u)[:, None]
        return q.max(axis=0) - q.min(axis=0)


# -- shape helpers ------------------------------------------------------------------------


def _unit(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, float)
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def fibonacci_sphere(n: int) -> np.ndarray:
    """n nearly uniform unit vectors (N, 3), deterministic."""
    i = np.arange(n) + 0.5
    z = 1 - 2 * i / n
    phi = np.pi * (1 + 5 ** 0.5) * i
    s = np.sqrt(1 - z * z)
    return np.stack([s * np.cos(phi), s * np.sin(phi), z], axis=1)


def _gland_radius(u: np.ndarray, axes: np.ndarray, p: float, taper: np.ndarray, flat: float,
                  coeffs: np.ndarray) -> np.ndarray:
    """Egg-shaped superellipsoid radius along unit directions u (N, 3), times a smooth perturbation."""
    ux, uy, uz = u[:, 0], u[:, 1], u[:, 2]
    a = axes[0] * (1 + taper[0] * uz)  # narrower towards the apex (uz < 0)
    b = axes[1] * (1 + taper[1] * uz) * (1 - flat * np.clip(uy, 0, None))  # flatter posterior face
    c = axes[2] * (1 + taper[2] * uz)
    base = (np.abs(ux / a) ** p + np.abs(uy / b) ** p + np.abs(uz / c) ** p) ** (-1.0 / p)
    mono = np.ones((len(u), len(_MONOMIALS)))
    for m, (i, j, k) in enumerate(_MONOMIALS):
        mono[:, m] = ux ** i * uy ** j * uz ** k
    return base * (1 + mono @ coeffs)


def _star_level(q: np.ndarray, radius_fn, bound: float) -> np.ndarray:
    """|q| - radius(q/|q|) for star-shaped bodies; NaN (= clearly outside) beyond `bound`."""
    q = np.atleast_2d(q)
    r = np.linalg.norm(q, axis=1)
    out = np.full(len(q), np.nan)
    near = r < bound
    if np.any(near):
        rn = r[near]
        u = q[near] / np.maximum(rn, 1e-9)[:, None]
        u[rn < 1e-9] = (0.0, 0.0, 1.0)
        out[near] = rn - radius_fn(u)
    return out


def _ellipse_ray_distance(x: np.ndarray, y: np.ndarray, ax: float, ay: float) -> np.ndarray:
    """Signed distance (mm, > 0 outside) from the centred ellipse, measured along the ray from its centre."""
    r = np.sqrt(x * x + y * y)
    s = np.sqrt((x / ax) ** 2 + (y / ay) ** 2)
    return r * (1 - 1 / np.maximum(s, 1e-9))


# -- sampling -----------------------------------------------------------------------------


def _rotation(angles_deg: np.ndarray) -> np.ndarray:

    return Rotation.from_euler("xyz", angles_deg, degrees=True).as_matrix()


def _calibrate_semi_axes(shape_kwargs: dict, targets: np.ndarray, iterations: int = 4) -> np.ndarray:
    """Semi-axes whose perturbed, tapered gland has the target diameters (LR, AP, CC)."""
    axes = targets / 2
    u = fibonacci_sphere(3000)
    for _ in range(iterations):
        q = u * _gland_radius(u, axes, **shape_kwargs)[:, None]
        axes = axes * targets / (q.max(axis=0) - q.min(axis=0))
    return axes


def sample_anatomy(rng: np.random.Generator) -> Anatomy:
    """A random pelvis with a gland of clinical size (LR 35-55, AP 25-40, CC 30-50 mm)."""
    targets = np.array([rng.uniform(38, 52), rng.uniform(27, 38), rng.uniform(32, 48)])
    shape = dict(p=float(rng.uniform(2.0, 2.6)),
                 taper=np.array([rng.uniform(0.08, 0.22), rng.uniform(0.0, 0.12), rng.uniform(-0.05, 0.08)]),
                 flat=float(rng.uniform(0.0, 0.15)),
                 coeffs=rng.normal(0, 0.03, len(_MONOMIALS)))
    axes = _calibrate_semi_axes(shape, targets)
    u = fibonacci_sphere(3000)
    bound = float(_gland_radius(u, axes, **shape).max() * 1.1 + 1.0)
    rotation = _rotation(np.array([rng.uniform(-12, 8), rng.uniform(-4, 4), rng.uniform(-4, 4)]))
    a, b, c = axes
    fine = CosineField.sample(rng, 12, (3.0, 8.0))
    coarse = CosineField.sample(rng, 10, (9.0, 25.0))
    anat = Anatomy(
        gland_rotation=rotation, semi_axes=axes, exponent=shape["p"], taper=shape["taper"],
        posterior_flattening=shape["flat"], perturbation=shape["coeffs"], bound_radius=bound,
        tz_scale=float(rng.uniform(0.5, 0.72)), tz_offset=np.array([0.0, -0.12 * b, 0.1 * c]),
        urethra_radius=float(rng.uniform(2.0, 3.2)), urethra_bow=float(rng.uniform(1.5, 5.0)),
        calc_centres=np.zeros((0, 3)), calc_radii=np.zeros(0),
        bladder_centre=np.zeros(3), bladder_radii=np.array([rng.uniform(25, 40), rng.uniform(20, 32),
                                                            rng.uniform(20, 32)]),
        bladder_wall=float(rng.uniform(2.5, 4.0)),
        rectum_point=np.array([0.0, b + 10.0, 0.0]), rectum_direction=np.array([0.0, 0.0, 1.0]),
        rectum_lumen=7.0, rectum_wall=float(rng.uniform(3.0, 5.0)),
        bone_centre_y=float(rng.uniform(0, 8)), bone_radii=np.array([a + rng.uniform(20, 28), b + rng.uniform(24, 32)]),
        bone_thickness=float(rng.uniform(9, 14)), bone_z=(-c - rng.uniform(5, 12), c + rng.uniform(20, 35)),
        obturator_thickness=float(rng.uniform(9, 14)),
        levator_radii=np.array([a + rng.uniform(4, 8), b + rng.uniform(16, 22)]),
        levator_centre_y=float(b * rng.uniform(0.3, 0.6)), levator_thickness=float(rng.uniform(4, 6.5)),
        fine_texture=fine, coarse_texture=coarse)
    anat = replace(anat, calc_centres=_sample_calcifications(anat, rng, int(rng.integers(0, 5))))
    anat = replace(anat, calc_radii=rng.uniform(0.9, 2.0, len(anat.calc_centres)))
    neck = anat.landmarks()["bladder_neck"]
    centre = neck + np.array([0.0, rng.uniform(-6, 2), anat.bladder_radii[2] + 0.5 * anat.bladder_wall])
    return replace(anat, bladder_centre=centre)


def _sample_calcifications(anat: Anatomy, rng: np.random.Generator, n: int) -> np.ndarray:
    """n calcification centres inside the inner 75 % of the gland (patient frame)."""
    out: list[np.ndarray] = []
    while len(out) < n:
        q = rng.uniform(-1, 1, 3) * anat.semi_axes
        if _star_level(q[None] / 0.75, anat.gland_radius, anat.bound_radius)[0] <= 0:
            out.append(anat.from_gland_frame(q[None])[0])
    return np.array(out).reshape(-1, 3)


def place_rectum(anat: Anatomy, direction: np.ndarray, posterior: np.ndarray, lumen_mm: float) -> Anatomy:
    """Put the rectum (and so the probe axis) along `direction`, touching the gland's posterior face.

    The rectal wall's outer surface touches the gland at its support point in the
    `posterior` direction (both unit patient-frame vectors, orthogonal), so the tube never
    cuts into the gland.
    """
    d, n = _unit(direction), _unit(posterior)
    support = anat.support_point(n)
    point = support + n * (lumen_mm + anat.rectum_wall)
    return replace(anat, rectum_point=point, rectum_direction=d, rectum_lumen=float(lumen_mm))


def apply_family_anatomy(anat: Anatomy, rng: np.random.Generator, volume_ml: tuple[float, float] | None,
                         lobe_fraction: float, lobe_height: tuple[float, float],
                         calcifications: tuple[int, int] | None) -> Anatomy:
    """A protocol family's anatomy from a sampled one: BPH median lobe, gland volume, calcifications.

    The gland is scaled about its centre so its analytic volume is drawn uniformly in
    `volume_ml`; the pelvic ring, levator and zone offsets grow with it so they keep clear of
    the gland, and the bladder is moved onto the new bladder neck.  Draws from `rng` (the
    family's own stream) in a fixed order, whichever knobs are set.
    """
    old_neck = anat.landmarks()["bladder_neck"]
    bladder_offset = anat.bladder_centre - old_neck
    lobe = rng.random() < lobe_fraction
    height = float(rng.uniform(*lobe_height))
    direction = _unit(np.array([0.0, rng.uniform(0.25, 0.45), 1.0]))  # superior, tilted posterior
    if lobe:
        anat = replace(anat, lobe_height=height, lobe_direction=tuple(float(v) for v in direction))
    target = float(rng.uniform(*volume_ml)) if volume_ml else None
    if target is not None:
        s = (target / anat.volume_ml()) ** (1 / 3)
        a, b, c = anat.semi_axes
        anat = replace(anat, semi_axes=anat.semi_axes * s, tz_offset=anat.tz_offset * s,
                       calc_centres=anat.calc_centres * s,
                       bone_radii=anat.bone_radii + (s - 1) * np.array([a, b]),
                       bone_z=(anat.bone_z[0] - (s - 1) * c, anat.bone_z[1] + (s - 1) * c),
                       levator_radii=anat.levator_radii + (s - 1) * np.array([a, b]),
                       levator_centre_y=anat.levator_centre_y * s)
    u = fibonacci_sphere(3000)
    anat = replace(anat, bound_radius=float(anat.gland_radius(u).max() * 1.1 + 1.0))
    if calcifications is not None:
        n = int(rng.integers(calcifications[0], calcifications[1] + 1))
        anat = replace(anat, calc_centres=_sample_calcifications(anat, rng, n))
        anat = replace(anat, calc_radii=rng.uniform(0.9, 2.0, n))
    return replace(anat, bladder_centre=anat.landmarks()["bladder_neck"] + bladder_offset)
