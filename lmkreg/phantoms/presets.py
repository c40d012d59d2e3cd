"""Geometry presets of the phantom generator, as data.

A preset fixes the voxel grids of both modalities, the TRUS fan and the random ranges of
the acquisition (pose, probe compression, oblique grids, partial views).  Anatomy ranges
are not here: the same anatomy model serves every preset, only the sampling changes.

Sizes are (x, y, z) = (left-right, anterior-posterior, cranio-caudal) in voxels, spacings
in millimetres in the same order, exactly as ``sitk.Image.GetSize()/GetSpacing()``.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from lmkreg.errors import ConfigurationError


@dataclass(frozen=True)
class PhantomPreset:
    """Everything about a phantom case that is acquisition, not anatomy."""

    name: str
    mr_size_xyz: tuple[int, int, int]
    mr_spacing_xyz: tuple[float, float, float]
    us_size_xyz: tuple[int, int, int]
    us_spacing_xyz: tuple[float, float, float]
    us_scan_step_mm: float  # sampling of the polar (beam) grid where speckle is simulated
    probe_radius_mm: float = 10.0  # transducer surface = inner radius of the fan
    fan_depth_mm: float = 58.0  # outer radius of the fan, measured from the probe axis
    fan_half_angle_deg: float = 60.0  # sector half-opening in the plane across the probe
    fan_length_fraction: float = 0.85  # fan length along the probe / US grid z extent
    compression_mm: tuple[float, float] = (1.5, 4.0)  # probe push of the gland (range)
    compression_falloff_mm: float = 15.0  # how far into tissue the push reaches (Gaussian sigma)
    max_rotation_deg: tuple[float, float, float] = (30.0, 10.0, 10.0)  # about L, P, S
    max_translation_mm: float = 15.0
    oblique_fraction: float = 0.3  # per modality: chance of a rotated (oblique) voxel grid
    max_oblique_deg: float = 15.0
    partial_view_fraction: float = 0.12  # chance that the probe sees only part of the gland
    grid_jitter_mm: float = 4.0
    # framing like a diagnostic pelvic scan: the MR grid centre lies up to this far from the
    # gland along each axis (on top of grid_jitter_mm)
    mr_fov_offset_mm: float = 0.0
    # TRUS sweeps that hold the gland off-centre or near the fan border: in this fraction of
    # cases the probe is rolled about its axis and shifted along it
    us_offcentre_fraction: float = 0.0
    us_offcentre_roll_deg: tuple[float, float] = (15.0, 30.0)
    us_offcentre_shift_fraction: tuple[float, float] = (0.1, 0.25)  # of the US grid length

    def to_json(self) -> dict:
        return asdict(self)


PRESETS: dict[str, PhantomPreset] = {
    # close to the muRegPro challenge data: 0.8 mm isotropic, small volumes, a few s per case
    "mu_regpro": PhantomPreset(
        name="mu_regpro",
        mr_size_xyz=(128, 128, 120), mr_spacing_xyz=(0.8, 0.8, 0.8),
        us_size_xyz=(118, 81, 88), us_spacing_xyz=(0.8, 0.8, 0.8),
        us_scan_step_mm=0.6),
    # the geometry of the paper: anisotropic MR, fine isotropic TRUS
    "paper": PhantomPreset(
        name="paper",
        mr_size_xyz=(256, 256, 128), mr_spacing_xyz=(0.5, 0.5, 1.0),
        us_size_xyz=(256, 256, 256), us_spacing_xyz=(0.4, 0.4, 0.4),
        us_scan_step_mm=0.5, fan_depth_mm=95.0),
    # a diagnostic pelvic scan: MR 240 x 240 x 160 mm (thin in-plane, 2.5 mm slices) with the
    # gland anywhere within +-35 mm of the image centre; TRUS as mu_regpro, with the fan rolled
    # and shifted so the gland sits off-centre or near the border in 30 % of the cases
    "pelvic": PhantomPreset(
        name="pelvic",
        mr_size_xyz=(256, 256, 64), mr_spacing_xyz=(0.9375, 0.9375, 2.5),
        us_size_xyz=(118, 81, 88), us_spacing_xyz=(0.8, 0.8, 0.8),
        us_scan_step_mm=0.6, mr_fov_offset_mm=31.0, us_offcentre_fraction=0.3),
    # the pelvic framing at the tiny preset's cost, for tests of the cascade
    "pelvic_tiny": PhantomPreset(
        name="pelvic_tiny",
        mr_size_xyz=(48, 48, 48), mr_spacing_xyz=(3.0, 3.0, 3.0),
        us_size_xyz=(52, 36, 40), us_spacing_xyz=(1.8, 1.8, 1.8),
        us_scan_step_mm=1.2, mr_fov_offset_mm=26.0, us_offcentre_fraction=0.3),
    # coarse and fast, for the tests of the whole project (not for training real models)
    "tiny": PhantomPreset(
        name="tiny",
        mr_size_xyz=(56, 56, 52), mr_spacing_xyz=(1.8, 1.8, 1.8),
        us_size_xyz=(52, 36, 40), us_spacing_xyz=(1.8, 1.8, 1.8),
        us_scan_step_mm=1.2),
}


def get_preset(preset: str | PhantomPreset) -> PhantomPreset:
    """The preset called `preset` (or `preset` itself); ConfigurationError if unknown."""
    if isinstance(preset, PhantomPreset):
        return preset
    try:
        return PRESETS[preset]
    except KeyError:
        raise ConfigurationError(f"unknown phantom preset {preset!r}; choose one of {sorted(PRESETS)}") from None
