"""TRUS physics, simplified: probe geometry, probe compression, and B-mode rendering.

The TRUS volume is simulated where ultrasound is formed, on the polar *beam* grid of a
side-firing probe swept about its axis (axis position a, angle phi, depth r), then
scan-converted onto the Cartesian US grid:

* echogenicity per tissue x multiplicative speckle (magnitude of low-pass filtered complex
  Gaussian noise: Rayleigh-distributed and spatially correlated, coarser across the beam);
* bright specular lines where acoustic impedance changes along the beam;
* transmission = exp(-2 * cumulative attenuation along each beam): depth attenuation plus
  acoustic shadows behind bone and calcifications (and enhancement behind urine);
* log compression to 1..255; voxels outside the fan are exactly 0.
"""
from __future__ import annotations

from dataclasses import dataclass
import numpy as np
from scipy import ndimage

from lmkreg.geometry.spaces import ImageGeometry
from lmkreg.phantoms.anatomy import N_TISSUES, Tissue

# per tissue: mean echogenicity (linear amplitude), attenuation (1/mm, one way), acoustic impedance (a.u.)
_US_TABLE = {
    Tissue.FAT: (0.85, 0.010, 1.38),
    Tissue.MUSCLE: (0.22, 0.012, 1.70),
    Tissue.BONE_CORTEX: (2.5, 0.9, 6.0),
    Tissue.BONE_MARROW: (0.8, 0.6, 4.0),
    Tissue.BLADDER_WALL: (0.9, 0.012, 1.65),
    Tissue.URINE: (0.01, 0.0005, 1.52),
    Tissue.RECTAL_WALL: (0.5, 0.012, 1.62),
    Tissue.RECTAL_LUMEN: (0.05, 0.02, 1.0),
    Tissue.PZ: (0.42, 0.009, 1.60),
    Tissue.TZ: (0.20, 0.009, 1.58),
    Tissue.URETHRA: (0.07, 0.006, 1.54),
    Tissue.CALCIFICATION: (4.0, 1.2, 5.0),
    Tissue.CAPSULE: (1.1, 0.012, 1.75),
}
# texture gain (fine, coarse) per tissue: how strongly the smooth random fields modulate echogenicity
_US_TEXTURE = {Tissue.TZ: (0.15, 0.45), Tissue.PZ: (0.08, 0.12), Tissue.FAT: (0.15, 0.2), Tissue.MUSCLE: (0.25, 0.1)}


def _table(column: int) -> np.ndarray:
    out = np.zeros(N_TISSUES, np.float32)
    for t, row in _US_TABLE.items():
        out[t] = row[column]
    return out


ECHO, ATTENUATION, IMPEDANCE = _table(0), _table(1), _table(2)


@dataclass(frozen=True)
class Probe:
    """Side-firing TRUS probe in US world LPS mm: a cylinder-sector field of view (the fan).

    A point's probe coordinates are a (along `axis` from `origin`), rho (distance from the
    axis) and phi (angle from the anterior direction -`posterior` towards `lateral`).
    """

    origin: np.ndarray
    axis: np.ndarray  # unit, towards superior
    posterior: np.ndarray  # unit, perpendicular to axis; the fan opens towards -posterior
    radius: float  # transducer surface = fan inner radius
    depth: float  # fan outer radius
    half_angle_deg: float
    a_range: tuple[float, float]

    @property
    def lateral(self) -> np.ndarray:
        return np.cross(self.posterior, self.axis)

    def coordinates(self, points_us: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(a, rho, phi in radians) of US-world LPS points (..., 3)."""
        d = np.asarray(points_us, float) - self.origin
        a = d @ self.axis
        x_ant = -(d @ self.posterior)
        x_lat = d @ self.lateral
        return a, np.hypot(x_ant, x_lat), np.arctan2(x_lat, x_ant)

    def in_fan(self, points_us: np.ndarray) -> np.ndarray:
        """True where US-world LPS points (..., 3) are inside the field of view."""
        a, rho, phi = self.coordinates(points_us)
        return ((rho >= self.radius) & (rho <= self.depth) & (np.abs(phi) <= np.radians(self.half_angle_deg))
                & (a >= self.a_range[0]) & (a <= self.a_range[1]))

    def beam_points(self, a: np.ndarray, phi: np.ndarray, rho: np.ndarray) -> np.ndarray:
        """US-world LPS points of probe coordinates (broadcast arrays) -> (..., 3)."""
        ant = -self.posterior
        return (self.origin + a[..., None] * self.axis
                + rho[..., None] * (np.cos(phi)[..., None] * ant + np.sin(phi)[..., None] * self.lateral))

    def to_json(self) -> dict:
        return {"origin": self.origin.tolist(), "axis": self.axis.tolist(), "posterior": self.posterior.tolist(),
                "radius": self.radius, "depth": self.depth, "half_angle_deg": self.half_angle_deg,
                "a_range": list(self.a_range)}


@dataclass(frozen=True)
class ProbeCompression:
    """Smooth push of tissue away from the probe, in US world LPS mm (pre-deformation -> US).

    displacement(x) = magnitude * w(rho) * push, with push the anterior unit vector and
    w = 1 up to `start` mm from the probe axis, then a Gaussian fall-off of width `falloff`.
    Its Jacobian stays far from singular (magnitude/falloff << 1), so it is invertible.
    """

    axis_point: np.ndarray
    axis: np.ndarray
    push: np.ndarray
    magnitude: float
    start: float
    falloff: float

    def displacement(self, points: np.ndarray) -> np.ndarray:
        """Displacement (..., 3) at pre-deformation US-world LPS points (..., 3)."""
        d = np.asarray(points, float) - self.axis_point
        radial = d - (d @ self.axis)[..., None] * self.axis
        excess = np.clip(np.linalg.norm(radial, axis=-1) - self.start, 0, None)
        w = np.exp(-0.5 * (excess / self.falloff) ** 2)
        return (self.magnitude * w)[..., None] * self.push

    def forward(self, points: np.ndarray) -> np.ndarray:
        """Pre-deformation US-world points -> compressed (imaged) US-world points."""
        return np.asarray(points, float) + self.displacement(points)

    def inverse(self, points: np.ndarray, iterations: int = 8) -> np.ndarray:
        """Imaged US-world points -> pre-deformation points, by fixed-point iteration x = y - u(x)."""
        y = np.asarray(points, float)
        x = y.copy()
        for _ in range(iterations):
            x = y - self.displacement(x)
        return x


def beam_grid(probe: Probe, step: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """1-D sample positions (a, phi, rho) of the beam grid covering the fan exactly."""
    a = _linspace(probe.a_range[0], probe.a_range[1], step)
    rho = _linspace(probe.radius, probe.depth, step)
    half = np.radians(probe.half_angle_deg)
    phi = _linspace(-half, half, step / (0.7 * probe.depth))  # lateral sampling ~ step at 70 % depth
    return a, phi, rho


def _linspace(lo: float, hi: float, step: float) -> np.ndarray:
    return np.linspace(lo, hi, max(2, int(np.ceil((hi - lo) / step)) + 1))


def render_beam_image(labels: np.ndarray, fine: np.ndarray, coarse: np.ndarray, rho: np.ndarray,
                      rng: np.random.Generator, step_mm: float, speckle_scale: float = 1.0,
                      gain_db: float = 0.0) -> np.ndarray:
    """B-mode values (1..255, float32) on the beam grid (a, phi, rho) from tissue labels there.

    `speckle_scale` multiplies the speckle correlation lengths (a lower probe frequency gives
    larger speckle); `gain_db` is the overall gain added before log compression."""
    echo = ECHO[labels] * _texture_gain(labels, fine, coarse)
    speckle = _speckle(labels.shape, rng, step_mm, speckle_scale)
    impedance = ndimage.gaussian_filter1d(IMPEDANCE[labels], 0.6, axis=2)
    specular = np.abs(np.diff(impedance, axis=2, prepend=impedance[..., :1])) / step_mm
    reflect = echo * speckle + 1.5 * specular * (0.5 + 0.5 * speckle)
    mu = ATTENUATION[labels] * step_mm
    transmission = np.exp(-2 * (np.cumsum(mu, axis=2) - 0.5 * mu))  # shadows and depth attenuation
    tgc = np.exp(2 * 0.006 * (rho - rho[0]))[None, None, :]  # time-gain compensation, partial
    amplitude = reflect * transmission * tgc + 0.004 * speckle  # + electronic noise floor
    db = 20 * np.log10(np.maximum(amplitude, 1e-6))
    if gain_db:
        db = db + np.float32(gain_db)
    dynamic_range = 45.0
    return (1 + 254 * np.clip((db + dynamic_range - 9) / dynamic_range, 0, 1)).astype(np.float32)


def _texture_gain(labels: np.ndarray, fine: np.ndarray, coarse: np.ndarray) -> np.ndarray:
    gain = np.ones(labels.shape, np.float32)
    for t, (gf, gc) in _US_TEXTURE.items():
        m = labels == t
        gain[m] = np.clip(1 + gf * fine[m] + gc * np.tanh(1.5 * coarse[m]), 0.2, None)
    return gain


def _speckle(shape: tuple[int, ...], rng: np.random.Generator, step_mm: float, scale: float = 1.0) -> np.ndarray:
    """Unit-mean speckle: two compounded Rayleigh patterns from low-pass filtered complex noise.

    Correlation lengths (Gaussian sigma) ~0.35 mm along the beam, ~0.7 mm across it and
    ~1.0 mm in elevation (along the probe), never below half a beam-grid sample.
    """
    sigma = tuple(max(0.5, s * scale / step_mm) for s in (1.0, 0.7, 0.35))
    power = np.zeros(shape, np.float32)
    for _ in range(2):
        re = ndimage.gaussian_filter(rng.standard_normal(shape, np.float32), sigma)
        im = ndimage.gaussian_filter(rng.standard_normal(shape, np.float32), sigma)
        power += re * re + im * im
    mag = np.sqrt(power)
    return mag / np.float32(mag.mean())


def scan_convert(beam_image: np.ndarray, grid: tuple[np.ndarray, np.ndarray, np.ndarray], probe: Probe,
                 geometry: ImageGeometry) -> np.ndarray:
    """Resample the beam-grid image onto the US voxel grid (z, y, x); exactly 0 outside the fan."""
    a, phi, rho = grid
    world = geometry.voxel_centres_world().reshape(-1, 3)
    inside = probe.in_fan(world)
    pa, prho, pphi = probe.coordinates(world[inside])
    coords = np.stack([(pa - a[0]) / (a[1] - a[0]), (pphi - phi[0]) / (phi[1] - phi[0]),
                       (prho - rho[0]) / (rho[1] - rho[0])])
    out = np.zeros(len(world), np.float32)
    out[inside] = np.maximum(ndimage.map_coordinates(beam_image, coords, order=1, mode="nearest"), 1.0)
    return out.reshape(geometry.shape_zyx)
