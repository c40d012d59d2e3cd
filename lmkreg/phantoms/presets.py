"""Geometry presets of the phantom generator, as data.

A preset fixes the voxel grids of both modalities, the TRUS fan and the random ranges of
the acquisition (pose, probe compression, oblique grids, partial views).  Anatomy ranges
are not here: the same anatomy model serves every preset, only the sampling changes.

Sizes are (x, y, z) = (left-right, anterior-posterior, cranio-caudal) in voxels, spacings
in millimetres in the same order, exactly as ``sitk.Image.GetSize()/GetSpacing()``.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional

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
    # -- protocol families (documentation/phantoms.md, "Protocol families").  Every default below
    # keeps the geometry presets above exactly as they were: a family's draws come from a fifth
    # random stream of the case seed, which the geometry presets never touch.
    family: str = ""  # the protocol family ("" = a geometry preset without family knobs)
    mr_inplane_mm: Optional[tuple[float, float]] = None  # per-case in-plane (x, y) spacing; the FOV is kept
    mr_slice_mm: Optional[tuple[float, float]] = None  # per-case slice thickness (z spacing); the FOV is kept
    mr_slice_profile_samples: int = 1  # > 1: thick-slice partial volume, the mean of this many sub-slices
    mr_noise_fraction: tuple[float, float] = (0.03, 0.03)  # Rician sigma / 99th percentile of the signal
    mr_contrast: tuple[float, float] = (1.0, 1.0)  # tissue contrast about the mean signal (field strength)
    mr_bias: str = "polynomial"  # "polynomial" (random quadratic, the old field), "surface", "endorectal"
    mr_bias_amplitude: tuple[float, float] = (1.0, 1.0)  # surface/endorectal: max/min of the field in the volume
    gland_volume_ml: Optional[tuple[float, float]] = None  # analytic gland volume, drawn uniformly
    median_lobe_fraction: float = 0.0  # chance of a BPH median lobe bulging into the bladder
    median_lobe_height: tuple[float, float] = (0.15, 0.30)  # its bulge, a fraction of the gland radius
    calcifications: Optional[tuple[int, int]] = None  # count range (inclusive); None = the anatomy's 0-4
    us_speckle_scale: tuple[float, float] = (1.0, 1.0)  # speckle size factor (lower probe frequency: larger)
    us_gain_db: tuple[float, float] = (0.0, 0.0)  # overall gain added before log compression
    us_sweep_cut: str = "either"  # partial views cut the "apex", the "base" or "either"

    def to_json(self) -> dict:
        return asdict(self)

    @property
    def mr_fov_mm(self) -> tuple[float, float, float]:
        """Field of view of the MR grid (x, y, z) in mm: kept when a family draws its spacing."""
        return tuple(float(n * s) for n, s in zip(self.mr_size_xyz, self.mr_spacing_xyz))  # type: ignore[return-value]


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

# -- protocol families --------------------------------------------------------------------
# Each family exists twice: at a scanner's resolution (documentation, figures, a GPU user's
# benchmark) and as "<family>_small", the same protocol at a coarser in-plane grid for the CPU
# cross-domain benchmark and the tests.  Ranges are documented in documentation/phantoms.md.
_FAMILY_A = dict(  # 3 T, thin slices, phased-array surface coil, tight crop, small glands
    family="family_a_3T_thin", mr_slice_profile_samples=1, mr_noise_fraction=(0.015, 0.025), mr_contrast=(1.0, 1.15),
    mr_bias="surface", mr_bias_amplitude=(1.2, 1.6), gland_volume_ml=(20.0, 45.0), median_lobe_fraction=0.0,
    calcifications=(0, 2), us_speckle_scale=(0.75, 0.9), us_gain_db=(-3.0, 3.0), fan_depth_mm=50.0,
    compression_mm=(1.5, 4.0), partial_view_fraction=0.1, us_sweep_cut="either")
_FAMILY_B = dict(  # 1.5 T, thick slices with partial volume, more noise, lower contrast
    family="family_b_1.5T_thick", mr_slice_profile_samples=5, mr_noise_fraction=(0.05, 0.08), mr_contrast=(0.8, 0.95),
    mr_bias="surface", mr_bias_amplitude=(1.3, 2.0), gland_volume_ml=(30.0, 60.0), median_lobe_fraction=0.15,
    calcifications=(0, 4), us_speckle_scale=(1.0, 1.2), us_gain_db=(-6.0, 0.0), fan_depth_mm=58.0,
    compression_mm=(2.0, 5.0), partial_view_fraction=0.25, us_sweep_cut="apex")
_FAMILY_C = dict(  # endorectal coil: strong signal fall-off from the rectum, 3 mm slices, firm probe push
    family="family_c_endorectal", mr_slice_profile_samples=3, mr_noise_fraction=(0.02, 0.04), mr_contrast=(1.0, 1.2),
    mr_bias="endorectal", mr_bias_amplitude=(3.0, 8.0), gland_volume_ml=(25.0, 60.0), median_lobe_fraction=0.1,
    calcifications=(0, 3), us_speckle_scale=(0.8, 0.95), us_gain_db=(0.0, 6.0), fan_depth_mm=55.0,
    compression_mm=(3.0, 6.0), partial_view_fraction=0.1, us_sweep_cut="either")
_FAMILY_D = dict(  # BPH: large glands with median lobes and calcifications, whole-pelvis FOV, deep low-frequency TRUS
    family="family_d_large_gland", mr_slice_profile_samples=3, mr_noise_fraction=(0.03, 0.05), mr_contrast=(0.9, 1.05),
    mr_bias="surface", mr_bias_amplitude=(1.3, 1.8), gland_volume_ml=(80.0, 150.0), median_lobe_fraction=0.7,
    calcifications=(2, 8), us_speckle_scale=(1.3, 1.6), us_gain_db=(-3.0, 3.0), fan_depth_mm=80.0,
    compression_mm=(1.5, 4.0), partial_view_fraction=0.35, us_sweep_cut="base", mr_fov_offset_mm=30.0)


def _family(name: str, knobs: dict, mr_fov_mm: tuple[float, float, float], inplane: tuple[float, float],
            slices: tuple[float, float], us_fov_mm: tuple[float, float, float], us_mm: float,
            scan_step_mm: float) -> PhantomPreset:
    """A family preset: nominal grids at the middle of the spacing ranges, FOVs in mm."""
    mid_in, mid_sl = round(sum(inplane) / 2, 4), round(sum(slices) / 2, 4)
    mr_size = (round(mr_fov_mm[0] / mid_in), round(mr_fov_mm[1] / mid_in), round(mr_fov_mm[2] / mid_sl))
    us_size = tuple(round(f / us_mm) for f in us_fov_mm)
    return PhantomPreset(name=name, mr_size_xyz=mr_size, mr_spacing_xyz=(mid_in, mid_in, mid_sl),
                         us_size_xyz=us_size, us_spacing_xyz=(us_mm,) * 3, us_scan_step_mm=scan_step_mm,
                         mr_inplane_mm=inplane, mr_slice_mm=slices, **knobs)  # type: ignore[arg-type]


FAMILY_PRESETS: dict[str, PhantomPreset] = {
    "family_a_3T_thin": _family("family_a_3T_thin", _FAMILY_A, (120, 120, 84), (0.35, 0.45), (1.0, 1.2),
                                (94, 65, 72), 0.5, 0.4),
    "family_b_1.5T_thick": _family("family_b_1.5T_thick", _FAMILY_B, (180, 180, 96), (0.6, 0.9), (3.6, 4.5),
                                   (94, 65, 72), 0.6, 0.5),
    "family_c_endorectal": _family("family_c_endorectal", _FAMILY_C, (120, 120, 84), (0.3, 0.5), (2.7, 3.3),
                                   (94, 65, 72), 0.5, 0.4),
    "family_d_large_gland": _family("family_d_large_gland", _FAMILY_D, (260, 260, 150), (0.8, 1.0), (2.0, 3.0),
                                    (150, 95, 110), 0.6, 0.5),
    # the CPU scale: coarser in-plane grids (and thin slices at 1.5 mm), same protocol otherwise
    "family_a_3T_thin_small": _family("family_a_3T_thin_small", _FAMILY_A, (96, 96, 80), (1.2, 1.4), (1.4, 1.6),
                                      (94, 65, 72), 1.8, 1.2),
    "family_b_1.5T_thick_small": _family("family_b_1.5T_thick_small", _FAMILY_B, (130, 130, 90), (1.8, 2.2),
                                         (3.6, 4.5), (94, 65, 72), 1.8, 1.2),
    "family_c_endorectal_small": _family("family_c_endorectal_small", _FAMILY_C, (96, 96, 80), (1.2, 1.5),
                                         (2.7, 3.3), (94, 65, 72), 1.8, 1.2),
    "family_d_large_gland_small": _family("family_d_large_gland_small", _FAMILY_D, (180, 180, 130), (2.0, 2.4),
                                          (2.0, 3.0), (130, 90, 100), 2.0, 1.4),
}
FAMILIES: tuple[str, ...] = ("family_a_3T_thin", "family_b_1.5T_thick", "family_c_endorectal", "family_d_large_gland")
PRESETS.update(FAMILY_PRESETS)


def get_preset(preset: str | PhantomPreset) -> PhantomPreset:
    """The preset called `preset` (or `preset` itself); ConfigurationError if unknown."""
    if isinstance(preset, PhantomPreset):
        return preset
    try:
        return PRESETS[preset]
    except KeyError:
        raise ConfigurationError(f"unknown phantom preset {preset!r}; choose one of {sorted(PRESETS)}") from None
