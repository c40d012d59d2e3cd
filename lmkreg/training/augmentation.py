"""Training-time augmentation that moves landmarks exactly with the image.

A *sample* is a plain dict::

    {"image": (C, Z, Y, X) float32, "landmarks": (L, 3) float64 voxel (z, y, x), NaN rows = missing,
     "spacing": (3,) float zyx mm}

and optionally ``"mask"``: a label array (1, Z, Y, X) on the image's grid (or None), which spatial
transforms move with the same map (nearest neighbour) and intensity transforms leave alone.

and every transform is ``transform(sample, rng) -> new sample``.  Transforms never modify their
input arrays, draw all randomness from the ``np.random.Generator`` they are given (so a sample is
reproducible from a seed), and keep any other keys of the dict unchanged.

Spatial transforms work in *physical* millimetres about the grid centre, so a rotation of an
anisotropic grid is a true rotation of the anatomy.  Landmarks are moved analytically by the
inverse of the map used to resample the image, never re-detected; a landmark that leaves the grid
(beyond the outer voxel faces, index < -0.5 or > n - 0.5) becomes NaN, i.e. *missing*, because the
network cannot point outside its grid.  Voxels sampled from outside the input are 0, the value the
preprocessing itself gives to the part of the planned grid the scan does not cover (and, for
ultrasound, the "outside the fan" value).

Intensity transforms with ``keep_zero=True`` leave voxels that are exactly 0 exactly 0, because in
preprocessed ultrasound 0 means "outside the ultrasound fan", not "dark tissue".
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import numpy as np
from batchgenerators.transforms.color_transforms import (BrightnessMultiplicativeTransform,
                                                         ContrastAugmentationTransform, GammaTransform)
from batchgenerators.transforms.noise_transforms import GaussianBlurTransform, GaussianNoiseTransform
from batchgenerators.transforms.resample_transforms import SimulateLowResolutionTransform
from scipy import ndimage

from lmkreg.config.augmentation import augmentation_settings
from lmkreg.errors import ConfigurationError

Sample = dict[str, Any]
Range = tuple[float, float]
Transform = Callable[[Sample, np.random.Generator], Sample]


# ---- helpers --------------------------------------------------------------------------------

def _uniform(rng: np.random.Generator, r: Sequence[float]) -> float:
    lo, hi = float(r[0]), float(r[1])
    return lo if lo == hi else float(rng.uniform(lo, hi))


def _happens(rng: np.random.Generator, p: float) -> bool:
    """Always draws one number, so the stream of draws does not depend on p being 0 or 1."""
    return bool(rng.uniform() < p)


def rotation_matrix_zyx(angles_deg: Sequence[float]) -> np.ndarray:
    """3x3 rotation acting on (z, y, x) vectors: R_z(a0) @ R_y(a1) @ R_x(a2).

    "About z" means about array axis 0 (it turns the y-x plane), and so on; about x (array axis
    2, world left-right) is the sagittal tilt that varies most with a TRUS probe.
    """
    out = np.eye(3)
    for axis, angle in enumerate(angles_deg):
        i, j = [k for k in range(3) if k != axis]
        c, s = np.cos(np.deg2rad(angle)), np.sin(np.deg2rad(angle))
        r = np.eye(3)
        r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
        out = out @ r
    return out


def inside_grid(points_zyx: np.ndarray, shape_zyx: Sequence[int]) -> np.ndarray:
    """True where a continuous index lies within the grid's outer voxel faces."""
    hi = np.asarray(shape_zyx, float) - 0.5
    with np.errstate(invalid="ignore"):
        return np.all((points_zyx >= -0.5) & (points_zyx <= hi), axis=-1)


def _with(sample: Sample, **changes: Any) -> Sample:
    out = dict(sample)
    out.update(changes)
    return out


def _linear_upsampling_matrix(n_fine: int, n_coarse: int) -> np.ndarray:
    """(n_fine, n_coarse) weights of 1D linear interpolation with both grids spanning the same extent."""
    pos = np.linspace(0.0, n_coarse - 1.0, n_fine) if n_coarse > 1 else np.zeros(n_fine)
    lo = np.clip(np.floor(pos).astype(int), 0, max(n_coarse - 2, 0))
    w = pos - lo
    m = np.zeros((n_fine, n_coarse))
    m[np.arange(n_fine), lo] += 1 - w
    if n_coarse > 1:
        m[np.arange(n_fine), lo + 1] += w
    return m


# ---- spatial --------------------------------------------------------------------------------

@dataclass
class SpatialTransform:
    """Random rotation, scaling, translation (and optional elastic warp) in physical mm.

    rotation_deg: ranges of angles about the z, y, x array axes (S-I, A-P, L-R).
    scale: zoom of the anatomy, >1 makes it bigger; ``isotropic_scale`` draws one factor.
    translation_mm: shift drawn uniformly in [-t, t] per axis.
    elastic_alpha_mm: RMS displacement per axis of a smooth random field (0 = off), smoothed with
    ``elastic_sigma_mm``; keep alpha well below sigma so the warp stays invertible.
    cval: value of voxels sampled from outside the input (0, see the module docstring).
    """

    rotation_deg: Sequence[Sequence[float]] = ((-15.0, 15.0), (-15.0, 15.0), (-15.0, 15.0))
    scale: Sequence[float] = (0.85, 1.15)
    translation_mm: float = 10.0
    p_rotation: float = 0.5
    p_scale: float = 0.5
    p_translation: float = 0.5
    isotropic_scale: bool = True
    elastic_alpha_mm: float = 0.0
    elastic_sigma_mm: float = 12.0
    p_elastic: float = 0.5
    order: int = 1
    cval: float = 0.0

    def __post_init__(self) -> None:
        if len(self.rotation_deg) != 3 or any(len(r) != 2 for r in self.rotation_deg):
            raise ValueError(f"rotation_deg must be three (lo, hi) ranges about z, y, x, got {self.rotation_deg}")
        if len(self.scale) != 2 or min(self.scale) <= 0:
            raise ValueError(f"scale must be a positive (lo, hi) range, got {self.scale}")

    # -- random parameters -------------------------------------------------------------------

    def draw_affine(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """(A, b) of the sampling map in mm about the grid centre: p_in = A p_out + b."""
        angles = [_uniform(rng, r) for r in self.rotation_deg]
        zoom = [_uniform(rng, self.scale)] * 3 if self.isotropic_scale else [_uniform(rng, self.scale) for _ in range(3)]
        shift = rng.uniform(-self.translation_mm, self.translation_mm, 3)
        a = np.eye(3)
        if _happens(rng, self.p_rotation):
            a = rotation_matrix_zyx(angles)
        if _happens(rng, self.p_scale):
            a = a @ np.diag(1.0 / np.asarray(zoom))
        b = shift if _happens(rng, self.p_translation) else np.zeros(3)
        return a, b

    def draw_displacement(self, rng: np.random.Generator, shape: Sequence[int], spacing: np.ndarray) -> Optional[np.ndarray]:
        """Smooth displacement field (3, Z, Y, X) in output voxels, or None.

        Gaussian noise on a coarse grid (about sigma/2 apart) smoothed there and interpolated
        linearly to the full grid: the same smooth field as filtering full-size noise, ~50x cheaper.
        """
        if self.elastic_alpha_mm <= 0 or not _happens(rng, self.p_elastic):
            return None
        step_vox = np.maximum(self.elastic_sigma_mm / spacing / 2.0, 1.0)
        coarse = [int(np.ceil((n - 1) / s)) + 1 for n, s in zip(shape, step_vox)]
        mats = [_linear_upsampling_matrix(n, c) for n, c in zip(shape, coarse)]
        field = np.empty((3, *shape), np.float32)
        for axis in range(3):
            noise = ndimage.gaussian_filter(rng.standard_normal(coarse), 2.0, mode="reflect")
            noise *= self.elastic_alpha_mm / spacing[axis] / max(float(noise.std()), 1e-12)
            fine = np.einsum("Zz,zyx->Zyx", mats[0], noise)
            fine = np.einsum("Yy,Zyx->ZYx", mats[1], fine)
            field[axis] = np.einsum("Xx,ZYx->ZYX", mats[2], fine)
        return field

    # -- application ---------------------------------------------------------------------------

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        image = sample["image"]
        shape = np.asarray(image.shape[1:])
        spacing = np.asarray(sample["spacing"], float)
        a, b = self.draw_affine(rng)
        displacement = self.draw_displacement(rng, image.shape[1:], spacing)
        if displacement is None and np.allclose(a, np.eye(3)) and not np.any(b):
            return sample
        # voxel form of the map: v_in = M v_out + offset
        centre = (shape - 1) / 2.0
        m = a * spacing[None, :] / spacing[:, None]  # S^-1 A S
        offset = centre + b / spacing - m @ centre
        out = np.empty(image.shape, np.float32)
        if displacement is None:
            for c in range(image.shape[0]):
                ndimage.affine_transform(image[c], m, offset, output=out[c], order=self.order,
                                         mode="constant", cval=self.cval)
        else:
            grid = np.indices(image.shape[1:], dtype=np.float32) + displacement
            coords = np.einsum("ij,j...->i...", m.astype(np.float32), grid) + offset.astype(np.float32)[:, None, None, None]
            for c in range(image.shape[0]):
                ndimage.map_coordinates(image[c], coords, output=out[c], order=self.order, mode="constant", cval=self.cval)
        landmarks = self.move_points(sample["landmarks"], m, offset, displacement)
        landmarks[~inside_grid(landmarks, shape)] = np.nan
        if sample.get("mask") is not None:  # same map, nearest neighbour: a label stays a label
            return _with(sample, image=out, landmarks=landmarks,
                         mask=_resample_mask(sample["mask"], m, offset, displacement))
        return _with(sample, image=out, landmarks=landmarks)

    @staticmethod
    def move_points(points_in: np.ndarray, m: np.ndarray, offset: np.ndarray,
                    displacement: Optional[np.ndarray] = None, iterations: int = 60) -> np.ndarray:
        """Output-grid positions of input points: the inverse of v_in = M (o + d(o)) + offset.

        The affine part is inverted exactly; the elastic part o + d(o) = q by fixed-point iteration
        o <- q - d(o), which converges while the field's gradient is below 1 (a smooth field).
        """
        pts = np.asarray(points_in, float)
        q = np.linalg.solve(m, (pts - offset).T).T
        if displacement is None:
            return q
        o = q.copy()
        ok = ~np.isnan(q).any(axis=1)
        for _ in range(iterations):
            d = np.stack([ndimage.map_coordinates(displacement[k], o[ok].T, order=1, mode="nearest")
                          for k in range(3)], axis=1)
            new = q[ok] - d
            change = np.abs(new - o[ok]).max() if new.size else 0.0
            o[ok] = new
            if change < 1e-7:
                break
        return o


def _resample_mask(mask: np.ndarray, m: np.ndarray, offset: np.ndarray,
                   displacement: Optional[np.ndarray]) -> np.ndarray:
    """A label array (C, Z, Y, X) under the sampling map v_in = M (v_out + d) + offset, order 0
    (0 outside the input, like the image's cval)."""
    out = np.empty(mask.shape, mask.dtype)
    if displacement is None:
        for c in range(mask.shape[0]):
            ndimage.affine_transform(mask[c], m, offset, output=out[c], order=0, mode="constant", cval=0)
        return out
    grid = np.indices(mask.shape[1:], dtype=np.float32) + displacement
    coords = np.einsum("ij,j...->i...", m.astype(np.float32), grid) + offset.astype(np.float32)[:, None, None, None]
    for c in range(mask.shape[0]):
        ndimage.map_coordinates(mask[c], coords, output=out[c], order=0, mode="constant", cval=0)
    return out


@dataclass
class MirrorLeftRight:
    """Flip the array x axis (world left-right).  The three prostate landmarks lie on the
    mid-sagittal plane, so they keep their names; no other axis may be mirrored."""

    p: float = 0.5

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        if not _happens(rng, self.p):
            return sample
        landmarks = np.array(sample["landmarks"], float)
        landmarks[:, 2] = sample["image"].shape[-1] - 1 - landmarks[:, 2]
        out = _with(sample, image=np.ascontiguousarray(sample["image"][..., ::-1]), landmarks=landmarks)
        if sample.get("mask") is not None:
            out["mask"] = np.ascontiguousarray(sample["mask"][..., ::-1])
        return out


@dataclass
class SweepCut:
    """A TRUS sweep that ends inside the gland: everything beyond a plane across the gland's
    long axis becomes 0 ("outside the fan"), with the apex (or the bladder neck) between
    ``beyond_mm[0]`` and ``beyond_mm[1]`` mm beyond it (negative: still just in view).  The
    landmark keeps its true position: the network learns to place a landmark the sweep missed
    from the gland's shape, instead of on the nearest visible structure (measured: case 009's
    apex, 3.2 mm beyond the fan's end, was placed 15-30 mm off; the demo's pair 042 on the
    bladder neck).  The long axis runs through the first two landmarks of the plan (apex and
    bladder neck by default); a sample missing either is left alone.  The mask is left alone
    too: the gland goes on beyond the cut."""

    p: float = 0.2
    beyond_mm: Sequence[float] = (-2.0, 6.0)

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        if not _happens(rng, self.p):
            return sample
        landmarks = np.asarray(sample["landmarks"], float)
        if len(landmarks) < 2 or not np.isfinite(landmarks[:2]).all():
            return sample
        spacing = np.asarray(sample["spacing"], float)
        tip, other = landmarks[:2] * spacing if rng.random() < 0.5 else landmarks[1::-1] * spacing
        axis = tip - other
        if np.linalg.norm(axis) < 1e-6:
            return sample
        normal = axis / np.linalg.norm(axis)
        plane = float((tip - _uniform(rng, self.beyond_mm) * normal) @ normal)
        shape = sample["image"].shape[1:]
        z, y, x = (np.arange(n) * s * c for n, s, c in zip(shape, spacing, normal))
        beyond = (z[:, None, None] + y[None, :, None] + x[None, None, :]) > plane
        image = sample["image"].copy()
        image[:, beyond] = 0.0
        return _with(sample, image=image)


# ---- intensity ------------------------------------------------------------------------------

@dataclass
class _Intensity:
    """Base: apply with probability p; with keep_zero, exact zeros are restored afterwards."""

    p: float = 0.1
    keep_zero: bool = False

    def apply(self, image: np.ndarray, rng: np.random.Generator, spacing: np.ndarray,
              nonzero: Optional[np.ndarray]) -> np.ndarray:
        raise NotImplementedError

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        if not _happens(rng, self.p):
            return sample
        image = sample["image"]
        nonzero = image != 0 if self.keep_zero else None
        out = self.apply(image.astype(np.float32, copy=True), rng, np.asarray(sample["spacing"], float), nonzero)
        out = out.astype(np.float32, copy=False)
        if nonzero is not None:
            out[~nonzero] = 0.0
        return _with(sample, image=out)


@dataclass
class GaussianNoise(_Intensity):
    """Additive white noise, standard deviation drawn from ``std`` (image units)."""

    std: Sequence[float] = (0.0, 0.1)

    def apply(self, image: np.ndarray, rng: np.random.Generator, spacing: np.ndarray,
              nonzero: Optional[np.ndarray]) -> np.ndarray:
        sd = _uniform(rng, self.std)
        image += sd * rng.standard_normal(image.shape, dtype=np.float32)
        return image


@dataclass
class GaussianBlur(_Intensity):
    """Gaussian blur with sigma in mm (so it is isotropic in the anatomy).  With keep_zero it
    is a normalised convolution over the non-zero voxels, so the fan edge is not darkened."""

    sigma_mm: Sequence[float] = (0.5, 1.5)

    def apply(self, image: np.ndarray, rng: np.random.Generator, spacing: np.ndarray,
              nonzero: Optional[np.ndarray]) -> np.ndarray:
        sigma = _uniform(rng, self.sigma_mm) / spacing
        out = np.empty_like(image)
        for c in range(image.shape[0]):
            if nonzero is None:
                ndimage.gaussian_filter(image[c], sigma, output=out[c], mode="nearest")
            else:
                weight = ndimage.gaussian_filter(nonzero[c].astype(np.float32), sigma, mode="nearest")
                ndimage.gaussian_filter(image[c], sigma, output=out[c], mode="nearest")
                np.divide(out[c], weight, out=out[c], where=weight > 1e-6)
        return out


@dataclass
class Gamma(_Intensity):
    """x -> min + (max - min) * ((x - min) / (max - min)) ** gamma, per channel."""

    gamma: Sequence[float] = (0.7, 1.5)

    def apply(self, image: np.ndarray, rng: np.random.Generator, spacing: np.ndarray,
              nonzero: Optional[np.ndarray]) -> np.ndarray:
        g = _uniform(rng, self.gamma)
        for c in range(image.shape[0]):
            lo, hi = float(image[c].min()), float(image[c].max())
            if hi > lo:
                image[c] = lo + (hi - lo) * ((image[c] - lo) / (hi - lo)) ** g
        return image


@dataclass
class Contrast(_Intensity):
    """Scale deviations from the mean (over non-zero voxels with keep_zero) by a factor."""

    factor: Sequence[float] = (0.75, 1.25)

    def apply(self, image: np.ndarray, rng: np.random.Generator, spacing: np.ndarray,
              nonzero: Optional[np.ndarray]) -> np.ndarray:
        f = _uniform(rng, self.factor)
        for c in range(image.shape[0]):
            region = image[c][nonzero[c]] if nonzero is not None else image[c]
            mean = float(region.mean()) if region.size else 0.0
            image[c] = (image[c] - mean) * f + mean
        return image


@dataclass
class Brightness(_Intensity):
    """Multiply by a factor (multiplicative, so 0 stays 0 and the sign of z-scores is kept)."""

    factor: Sequence[float] = (0.75, 1.25)

    def apply(self, image: np.ndarray, rng: np.random.Generator, spacing: np.ndarray,
              nonzero: Optional[np.ndarray]) -> np.ndarray:
        image *= _uniform(rng, self.factor)
        return image


@dataclass
class SpeckleNoise(_Intensity):
    """TRUS speckle: multiply by exp(s n - s^2/2) with n spatially correlated unit noise
    (correlation length ``correlation_mm``), a positive factor of mean 1."""

    std: Sequence[float] = (0.05, 0.25)
    correlation_mm: float = 1.0
    keep_zero: bool = True

    def apply(self, image: np.ndarray, rng: np.random.Generator, spacing: np.ndarray,
              nonzero: Optional[np.ndarray]) -> np.ndarray:
        s = _uniform(rng, self.std)
        noise = rng.standard_normal(image.shape, dtype=np.float32)
        sigma = self.correlation_mm / spacing
        for c in range(image.shape[0]):
            noise[c] = ndimage.gaussian_filter(noise[c], sigma, mode="wrap")
            noise[c] /= max(float(noise[c].std()), 1e-12)
        image *= np.exp(s * noise - 0.5 * s * s)
        return image


@dataclass
class AcousticShadow(_Intensity):
    """TRUS acoustic shadow: behind a strong reflector (calcification, gas) the signal is
    attenuated along the beam.  The probe sits in the rectum, posterior to the prostate, at the
    high end of array y (world P), so sound travels towards decreasing y; the shadow is a band of
    random lateral width (x) and height (z) starting at a random depth and extending to the far
    (anterior) side, multiplied by a random attenuation, with soft edges."""

    attenuation: Sequence[float] = (0.3, 0.7)
    width_mm: Sequence[float] = (4.0, 15.0)
    height_mm: Sequence[float] = (10.0, 40.0)
    edge_mm: float = 1.5
    depth_axis: int = 1
    probe_at_high_index: bool = True
    keep_zero: bool = True

    def apply(self, image: np.ndarray, rng: np.random.Generator, spacing: np.ndarray,
              nonzero: Optional[np.ndarray]) -> np.ndarray:
        shape = image.shape[1:]
        extent = (np.asarray(shape) - 1) * spacing
        factor = _uniform(rng, self.attenuation)
        lateral = [ax for ax in range(3) if ax != self.depth_axis]
        sizes = {lateral[0]: self.height_mm if lateral[0] == 0 else self.width_mm,
                 lateral[1]: self.width_mm if lateral[1] == 2 else self.height_mm}
        profiles = []
        for ax in range(3):
            pos = np.arange(shape[ax]) * spacing[ax]
            if ax == self.depth_axis:
                start = rng.uniform(0.2, 0.8) * extent[ax]
                beyond = (start - pos) if self.probe_at_high_index else (pos - start)
                prof = _soft_step(beyond, self.edge_mm)
            else:
                half = 0.5 * _uniform(rng, sizes[ax])
                centre = rng.uniform(0.0, extent[ax])
                prof = _soft_step(half - np.abs(pos - centre), self.edge_mm)
            shape_b = [1, 1, 1]
            shape_b[ax] = shape[ax]
            profiles.append(prof.reshape(shape_b).astype(np.float32))
        shadow = profiles[0] * profiles[1] * profiles[2]
        image *= (1.0 - (1.0 - factor) * shadow)[None]
        return image


@dataclass
class BiasField(_Intensity):
    """Smooth multiplicative field of a receive coil: image * exp(s * g), g a random quadratic
    polynomial of the normalised (z, y, x) position scaled to max |g| = 1, s drawn from
    ``strength`` (max/min of the field up to exp(2 s)).  batchgenerators has no bias field."""

    strength: Sequence[float] = (0.0, 0.4)

    def apply(self, image: np.ndarray, rng: np.random.Generator, spacing: np.ndarray,
              nonzero: Optional[np.ndarray]) -> np.ndarray:
        s = _uniform(rng, self.strength)
        coeffs = rng.standard_normal(9)
        z, y, x = np.meshgrid(*[np.linspace(-1, 1, n, dtype=np.float32) for n in image.shape[1:]],
                              indexing="ij", sparse=True)
        g = sum(c * t for c, t in zip(coeffs, (x, y, z, x * x, y * y, z * z, x * y, y * z, x * z)))
        g = np.broadcast_to(g, image.shape[1:])
        g = g / max(float(np.abs(g).max()), 1e-12)
        image *= np.exp(np.float32(s) * g)[None]
        return image


# ---- nnU-Net's intensity transforms through batchgenerators ----------------------------------
# batchgenerators draws from NumPy's global RandomState and from Python's `random` module.  Each
# wrapper seeds both from the sample's Generator, calls the batchgenerators transform on a batch of
# one, and restores the caller's states: samples stay reproducible from their seed (whatever else
# the process draws) and nothing outside the sample moves.

def _run_batchgenerators(transform: Any, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """`transform` (a batchgenerators transform, p_per_sample=1) on the (C, Z, Y, X) image."""
    seed = int(rng.integers(0, 2 ** 31 - 1))
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        np.random.seed(seed)
        random.seed(seed)
        out = transform(data=image[None])["data"][0]
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
    return np.asarray(out, np.float32)


@dataclass
class NnGaussianNoise(_Intensity):
    """batchgenerators GaussianNoiseTransform: additive noise, variance drawn from ``variance``."""

    variance: Sequence[float] = (0.0, 0.1)

    def apply(self, image: np.ndarray, rng: np.random.Generator, spacing: np.ndarray,
              nonzero: Optional[np.ndarray]) -> np.ndarray:
        return _run_batchgenerators(GaussianNoiseTransform(tuple(self.variance), p_per_sample=1), image, rng)


@dataclass
class NnGaussianBlur(_Intensity):
    """batchgenerators GaussianBlurTransform: sigma in voxels (nnU-Net: 0.5-1), per channel."""

    sigma_voxels: Sequence[float] = (0.5, 1.0)
    p_per_channel: float = 0.5

    def apply(self, image: np.ndarray, rng: np.random.Generator, spacing: np.ndarray,
              nonzero: Optional[np.ndarray]) -> np.ndarray:
        t = GaussianBlurTransform(tuple(self.sigma_voxels), different_sigma_per_channel=True,
                                  p_per_channel=self.p_per_channel, p_per_sample=1)
        return _run_batchgenerators(t, image, rng)


@dataclass
class NnBrightness(_Intensity):
    """batchgenerators BrightnessMultiplicativeTransform."""

    factor: Sequence[float] = (0.75, 1.25)

    def apply(self, image: np.ndarray, rng: np.random.Generator, spacing: np.ndarray,
              nonzero: Optional[np.ndarray]) -> np.ndarray:
        return _run_batchgenerators(BrightnessMultiplicativeTransform(tuple(self.factor), p_per_sample=1), image,
                                    rng)


@dataclass
class NnContrast(_Intensity):
    """batchgenerators ContrastAugmentationTransform (clipped to the input range if preserve_range)."""

    factor: Sequence[float] = (0.75, 1.25)
    preserve_range: bool = True

    def apply(self, image: np.ndarray, rng: np.random.Generator, spacing: np.ndarray,
              nonzero: Optional[np.ndarray]) -> np.ndarray:
        t = ContrastAugmentationTransform(tuple(self.factor), preserve_range=self.preserve_range, p_per_sample=1)
        return _run_batchgenerators(t, image, rng)


@dataclass
class NnLowResolution(_Intensity):
    """batchgenerators SimulateLowResolutionTransform: down-sample by a zoom in ``zoom`` (nearest),
    up-sample back (cubic), as nnU-Net does; a thick-slice / coarse-scanner look."""

    zoom: Sequence[float] = (0.5, 1.0)
    p_per_channel: float = 0.5

    def apply(self, image: np.ndarray, rng: np.random.Generator, spacing: np.ndarray,
              nonzero: Optional[np.ndarray]) -> np.ndarray:
        t = SimulateLowResolutionTransform(tuple(self.zoom), per_channel=True, p_per_channel=self.p_per_channel,
                                           order_downsample=0, order_upsample=3, p_per_sample=1)
        return _run_batchgenerators(t, image, rng)


@dataclass
class NnGamma(_Intensity):
    """batchgenerators GammaTransform; with probability ``p_inverted`` on the inverted image
    (nnU-Net applies both kinds)."""

    gamma: Sequence[float] = (0.7, 1.5)
    p_inverted: float = 0.27
    retain_stats: bool = True

    def apply(self, image: np.ndarray, rng: np.random.Generator, spacing: np.ndarray,
              nonzero: Optional[np.ndarray]) -> np.ndarray:
        invert = _happens(rng, self.p_inverted)
        t = GammaTransform(tuple(self.gamma), invert_image=invert, per_channel=True, retain_stats=self.retain_stats,
                           p_per_sample=1)
        return _run_batchgenerators(t, image, rng)


def _soft_step(distance_mm: np.ndarray, edge_mm: float) -> np.ndarray:
    """0 -> 1 as distance goes from -edge to +edge (smooth logistic edge)."""
    return 1.0 / (1.0 + np.exp(-4.0 * distance_mm / max(edge_mm, 1e-6)))


# ---- composition and configuration ----------------------------------------------------------

@dataclass
class Compose:
    """Apply transforms in order, all drawing from the same generator."""

    transforms: list[Transform] = field(default_factory=list)

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        for t in self.transforms:
            sample = t(sample, rng)
        return sample


# name (lmkreg.config.augmentation.AUGMENTATIONS, as written in plans.json) -> transform class
TRANSFORMS: dict[str, type] = {
    "spatial": SpatialTransform, "mirror": MirrorLeftRight, "sweep_cut": SweepCut, "speckle": SpeckleNoise,
    "acoustic_shadow": AcousticShadow, "gaussian_blur": GaussianBlur, "brightness": Brightness,
    "contrast": Contrast, "gamma": Gamma, "gaussian_noise": GaussianNoise, "bias_field": BiasField,
    "nn_gaussian_noise": NnGaussianNoise, "nn_gaussian_blur": NnGaussianBlur, "nn_brightness": NnBrightness,
    "nn_contrast": NnContrast, "nn_low_resolution": NnLowResolution, "nn_gamma": NnGamma,
}


def build_augmentation(kind: str, params: Optional[dict] = None) -> Compose:
    """The augmentation pipeline for "MR" or "US" (lmkreg.config.augmentation.DEFAULT_AUGMENTATION),
    with overrides."""
    transforms: list[Transform] = []
    for name, kwargs in augmentation_settings(kind, params).items():
        if kwargs is None:
            continue
        try:
            transforms.append(TRANSFORMS[name](**kwargs))
        except (TypeError, ValueError) as e:
            raise ConfigurationError(f"training.augmentation.{name}: {e}") from e
    return Compose(transforms)


__all__ = ["SpatialTransform", "MirrorLeftRight", "SweepCut", "GaussianNoise", "GaussianBlur", "Gamma", "Contrast",
           "Brightness", "SpeckleNoise", "AcousticShadow", "BiasField", "NnGaussianNoise", "NnGaussianBlur",
           "NnBrightness", "NnContrast", "NnLowResolution", "NnGamma", "Compose", "TRANSFORMS", "build_augmentation",
           "rotation_matrix_zyx", "inside_grid", "Sample"]
