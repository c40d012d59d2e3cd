"""T2-weighted MR appearance of the procedural anatomy.

Signal per tissue (PZ bright, TZ intermediate and nodular, fat bright, muscle dark, urine
very bright, rectal wall dark, bone with dark cortex), then partial-volume blur (a Gaussian
point-spread function of half a voxel, so thick slices blur more in mm), a smooth
multiplicative bias field (coil sensitivity) and Rician noise (magnitude of complex data).
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from lmkreg.phantoms.anatomy import N_TISSUES, Tissue

_MR_SIGNAL = {
    Tissue.FAT: 720.0, Tissue.MUSCLE: 170.0, Tissue.BONE_CORTEX: 40.0, Tissue.BONE_MARROW: 480.0,
    Tissue.BLADDER_WALL: 190.0, Tissue.URINE: 1000.0, Tissue.RECTAL_WALL: 160.0, Tissue.RECTAL_LUMEN: 60.0,
    Tissue.PZ: 640.0, Tissue.TZ: 360.0, Tissue.URETHRA: 520.0, Tissue.CALCIFICATION: 40.0, Tissue.CAPSULE: 260.0,
}
# texture gain (fine, coarse): BPH nodules make the TZ heterogeneous; fat and PZ vary mildly
_MR_TEXTURE = {Tissue.TZ: (0.10, 0.30), Tissue.PZ: (0.05, 0.08), Tissue.FAT: (0.04, 0.08), Tissue.MUSCLE: (0.08, 0.05)}
SIGNAL = np.zeros(N_TISSUES, np.float32)
for _t, _v in _MR_SIGNAL.items():
    SIGNAL[_t] = _v


def tissue_signal(labels: np.ndarray, fine: np.ndarray, coarse: np.ndarray) -> np.ndarray:
    """Noise-free T2 signal (float32) from tissue labels and the two texture fields (same shape)."""
    img = SIGNAL[labels]
    for t, (gf, gc) in _MR_TEXTURE.items():
        m = labels == t
        img[m] *= np.clip(1 + gf * fine[m] + gc * np.tanh(1.5 * coarse[m]), 0.3, None)
    return img


def bias_field(shape_zyx: tuple[int, int, int], rng: np.random.Generator, strength: float) -> np.ndarray:
    """Smooth multiplicative field exp(quadratic polynomial in normalised voxel coordinates)."""
    axes = [np.linspace(-1, 1, n, dtype=np.float32) for n in shape_zyx]
    z, y, x = np.meshgrid(*axes, indexing="ij", sparse=True)
    terms = [x, y, z, x * x, y * y, z * z, x * y, y * z, x * z]
    log_field = sum(c * t for c, t in zip(rng.normal(0, strength / 2, len(terms)), terms))
    return np.exp(log_field).astype(np.float32)


def render_mr(labels_zyx: np.ndarray, fine: np.ndarray, coarse: np.ndarray, rng: np.random.Generator,
              noise_fraction: float = 0.03, bias_strength: float = 0.25) -> np.ndarray:
    """MR volume (float32, z, y, x) from per-voxel tissue labels and textures on the MR grid."""
    clean = ndimage.gaussian_filter(tissue_signal(labels_zyx, fine, coarse), 0.5)  # partial-volume PSF
    biased = clean * bias_field(labels_zyx.shape, rng, bias_strength)
    sigma = np.float32(noise_fraction * float(np.percentile(biased, 99)))
    real = biased + sigma * rng.standard_normal(biased.shape, np.float32)
    imag = sigma * rng.standard_normal(biased.shape, np.float32)
    return np.hypot(real, imag).astype(np.float32)


def render_mr_signal(signal_zyx: np.ndarray, rng: np.random.Generator, noise_fraction: float, contrast: float,
                     bias: np.ndarray | None, psf_sigma_zyx: tuple[float, float, float] = (0.5, 0.5, 0.5)
                     ) -> np.ndarray:
    """MR volume (float32, z, y, x) of a protocol family from a noise-free signal on the MR grid.

    Contrast about the mean signal (field-strength-like), the point-spread function in voxels
    (0 along z when the signal already is a thick-slice average), the coil's multiplicative
    field, then Rician noise of `noise_fraction` x the 99th percentile (0 = noise-free: the
    magnitude of a real positive signal is the signal itself)."""
    img = signal_zyx.astype(np.float32)
    if contrast != 1.0:
        m = np.float32(img.mean())
        img = np.maximum(m + np.float32(contrast) * (img - m), 1.0)
    img = ndimage.gaussian_filter(img, psf_sigma_zyx)
    if bias is not None:
        img = img * bias
    sigma = np.float32(noise_fraction * float(np.percentile(img, 99)))
    real = img + sigma * rng.standard_normal(img.shape, np.float32)
    imag = sigma * rng.standard_normal(img.shape, np.float32)
    return np.hypot(real, imag).astype(np.float32)
