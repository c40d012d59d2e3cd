"""Paired MR/TRUS phantom cases with ground truth, and whole datasets on disk.

Chain of spaces (all LPS mm):

    patient frame --(+ gland_centre_mr)--> MR world --T (rigid)--> pre-compression US world
                  --compression (smooth, probe push)--> US world (what the TRUS image shows)

Images are made by sampling: each voxel's world point is pulled back to the patient frame
(inverting the compression by fixed-point iteration) and the anatomy is evaluated there.
Landmarks are pushed forward along the same chain, so ``T`` maps MR landmarks onto US
landmarks up to the compression magnitude.
"""
from __future__ import annotations

import contextlib
import json
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import SimpleITK as sitk

from lmkreg.dataset.layout import Dataset, DatasetSpec, dataset_folder_name
from lmkreg.errors import ConfigurationError
from lmkreg.geometry.rigid import RigidTransform
from lmkreg.geometry.spaces import ImageGeometry
from lmkreg.io.atomic import atomic_write_json
from lmkreg.io.images import write_image
from lmkreg.io.landmarks import DEFAULT_LANDMARK_NAMES, LandmarkSet, write_lmkreg_json
from lmkreg.parallel import default_workers, parallel_map
from lmkreg.paths import raw_root
from lmkreg.phantoms.anatomy import GLAND_TISSUES, Anatomy, apply_family_anatomy, place_rectum, sample_anatomy
from lmkreg.phantoms.mr import render_mr, render_mr_signal, tissue_signal
from lmkreg.phantoms.presets import PhantomPreset, get_preset
from lmkreg.phantoms.us import Probe, ProbeCompression, beam_grid, render_beam_image, scan_convert
from lmkreg.io.transform_json import write_rigid_transform
from scipy.spatial.transform import Rotation

E_Y = np.array([0.0, 1.0, 0.0])
E_Z = np.array([0.0, 0.0, 1.0])
PROBE_BEHIND_GRID_MM = 5.0  # probe axis distance from the posterior face of the US grid
CHUNK_POINTS = 600_000


@dataclass(frozen=True)
class Acquisition:
    """The random, non-anatomical part of a case: pose, grids, probe push, flags."""

    rotation: np.ndarray  # R of T (MR world -> US world), rotation about the gland centre
    translation_mm: np.ndarray  # gland-centre displacement of T (|t_i| <= max_translation_mm)
    gland_centre_mr: np.ndarray  # patient-frame origin in MR world
    compression_mm: float
    mr_direction: np.ndarray
    us_direction: np.ndarray
    mr_jitter: np.ndarray
    us_jitter: np.ndarray
    axial_shift_mm: float  # probe + US grid shifted along the probe axis (partial views)
    partial_view: bool
    probe_roll_deg: float = 0.0  # fan turned about the probe axis (gland off-centre in the fan)


@dataclass(frozen=True)
class FamilyDraw:
    """A protocol family's per-case acquisition draws (None for the geometry presets)."""

    mr_spacing_xyz: tuple[float, float, float]
    mr_noise_fraction: float
    mr_contrast: float
    mr_bias_amplitude: float  # max/min of the coil field over the MR volume (1 for the polynomial field)
    endorectal_falloff_mm: float
    surface_lateral_tilt: float
    us_speckle_scale: float
    us_gain_db: float

    def to_json(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}


def sample_family_draw(rng: np.random.Generator, p: PhantomPreset) -> FamilyDraw:
    """The family's acquisition draws, in a fixed order (after its anatomy draws)."""
    fov = p.mr_fov_mm
    inplane = float(rng.uniform(*p.mr_inplane_mm)) if p.mr_inplane_mm else None
    slice_mm = float(rng.uniform(*p.mr_slice_mm)) if p.mr_slice_mm else None
    spacing = (inplane or p.mr_spacing_xyz[0], inplane or p.mr_spacing_xyz[1], slice_mm or p.mr_spacing_xyz[2])
    del fov
    return FamilyDraw(tuple(round(v, 4) for v in spacing), float(rng.uniform(*p.mr_noise_fraction)),  # type: ignore[arg-type]
                      float(rng.uniform(*p.mr_contrast)), float(rng.uniform(*p.mr_bias_amplitude)),
                      float(rng.uniform(12.0, 25.0)), float(rng.uniform(-0.3, 0.3)),
                      float(rng.uniform(*p.us_speckle_scale)), float(rng.uniform(*p.us_gain_db)))


@dataclass
class PhantomCase:
    """One generated case in memory: images, gland masks, landmarks and the true transform."""

    seed: int
    preset: PhantomPreset
    mr_image: sitk.Image
    us_image: sitk.Image
    mr_mask: sitk.Image
    us_mask: sitk.Image
    mr_landmarks: LandmarkSet  # MR world LPS mm
    us_landmarks: LandmarkSet  # US world LPS mm; None where outside the US volume
    transform: RigidTransform  # MR world -> US world
    anatomy: Anatomy
    acquisition: Acquisition
    probe: Probe  # US world
    compression: ProbeCompression  # US world
    family_draw: Optional[FamilyDraw] = None  # protocol families only

    @property
    def mr_oblique(self) -> bool:
        return not np.allclose(self.acquisition.mr_direction, np.eye(3))

    @property
    def us_oblique(self) -> bool:
        return not np.allclose(self.acquisition.us_direction, np.eye(3))

    def mr_to_patient(self, points_mr: np.ndarray) -> np.ndarray:
        """MR world LPS points (..., 3) -> patient frame (gland centre at 0)."""
        return np.asarray(points_mr, float) - self.acquisition.gland_centre_mr

    def us_to_patient(self, points_us: np.ndarray) -> np.ndarray:
        """US world LPS points (..., 3) (compressed, as imaged) -> patient frame."""
        return self.mr_to_patient(self.transform.inverse().apply(self.compression.inverse(points_us)))

    def summary(self) -> dict:
        """Small JSON-able description (flags, missing landmarks) for logs and dataset notes."""
        return {"seed": self.seed, "preset": self.preset.name, "partial_view": self.acquisition.partial_view,
                "mr_oblique": self.mr_oblique, "us_oblique": self.us_oblique,
                "compression_mm": self.acquisition.compression_mm,
                "missing_us_landmarks": self.us_landmarks.missing(),
                "gland_diameters_mm": [round(float(v), 2) for v in self.anatomy.diameters()],
                "probe": self.probe.to_json(),
                **({"gland_volume_ml": round(self.anatomy.volume_ml(), 2), "median_lobe": self.anatomy.lobe_height > 0,
                    "calcifications": int(len(self.anatomy.calc_radii)), "family": self.family_draw.to_json()}
                   if self.family_draw is not None else {})}


# -- random acquisition -------------------------------------------------------------------


def _rotation(angles_deg: Sequence[float]) -> np.ndarray:

    return Rotation.from_euler("xyz", angles_deg, degrees=True).as_matrix()


def _oblique_direction(rng: np.random.Generator, preset: PhantomPreset, force: Optional[bool]) -> np.ndarray:
    """Identity, or (with the preset's probability, or when forced) a rotated voxel grid."""
    oblique = rng.random() < preset.oblique_fraction if force is None else force
    angles = rng.uniform(-preset.max_oblique_deg, preset.max_oblique_deg, 3)
    if oblique and np.max(np.abs(angles)) < 3:  # keep 'oblique' clearly oblique
        angles[0] = 3 * np.sign(angles[0] or 1)
    return _rotation(angles) if oblique else np.eye(3)


def sample_acquisition(rng: np.random.Generator, preset: PhantomPreset, oblique: Optional[bool] = None,
                       partial_view: Optional[bool] = None) -> Acquisition:
    """Random pose, grids and probe push for a case (oblique/partial_view None = random)."""
    rot_max = np.asarray(preset.max_rotation_deg)
    rotation = _rotation(rng.uniform(-rot_max, rot_max))
    translation = rng.uniform(-preset.max_translation_mm, preset.max_translation_mm, 3)
    centre = rng.uniform(-20, 20, 3)
    compression = float(rng.uniform(*preset.compression_mm))
    mr_dir = _oblique_direction(rng, preset, oblique)
    us_dir = _oblique_direction(rng, preset, oblique)
    jit = preset.grid_jitter_mm
    mr_jitter, us_jitter = rng.uniform(-jit, jit, 3), rng.uniform(-jit, jit, 3)
    partial = bool(rng.random() < preset.partial_view_fraction) if partial_view is None else partial_view
    length = preset.us_size_xyz[2] * preset.us_spacing_xyz[2]
    shift = float(rng.choice([-1.0, 1.0]) * rng.uniform(0.25, 0.4) * length) if partial else 0.0
    if preset.us_sweep_cut != "either":  # the probe pushed superiorly loses the apex, inferiorly the base
        shift = abs(shift) if preset.us_sweep_cut == "apex" else -abs(shift)
    # pelvic framing: drawn last, and only by presets that ask, so other presets keep their cases
    if preset.mr_fov_offset_mm > 0:
        mr_jitter = mr_jitter + rng.uniform(-preset.mr_fov_offset_mm, preset.mr_fov_offset_mm, 3)
    roll = 0.0
    if preset.us_offcentre_fraction > 0 and rng.random() < preset.us_offcentre_fraction and not partial:
        roll = float(rng.choice([-1.0, 1.0]) * rng.uniform(*preset.us_offcentre_roll_deg))
        shift = float(rng.choice([-1.0, 1.0]) * rng.uniform(*preset.us_offcentre_shift_fraction) * length)
    return Acquisition(rotation, translation, centre, compression, mr_dir, us_dir, mr_jitter, us_jitter, shift, partial,
                       roll)


def _grid(size_xyz: Sequence[int], spacing_xyz: Sequence[float], centre: np.ndarray,
          direction: np.ndarray) -> ImageGeometry:
    """Voxel grid of the given size/spacing/direction whose centre is the world point `centre`."""
    half = (np.asarray(size_xyz, float) - 1) / 2 * np.asarray(spacing_xyz, float)
    origin = np.asarray(centre, float) - direction @ half
    return ImageGeometry.create(tuple(reversed(size_xyz)), spacing_xyz, origin, direction)


# -- one case -----------------------------------------------------------------------------


def generate_case(seed: int, preset: str | PhantomPreset = "mu_regpro", *, oblique: Optional[bool] = None,
                  partial_view: Optional[bool] = None, mr_only: bool = False) -> PhantomCase:
    """Generate one paired MR/TRUS case in memory; the same seed gives identical arrays.

    `oblique` / `partial_view` force the oblique grids / the partly-in-view gland on or off
    (None: random with the preset's probabilities).
    """
    p = get_preset(preset)
    # a fifth stream for the protocol families: the first four are those of spawn(4), so the
    # geometry presets keep their cases bit for bit
    rng_anat, rng_acq, rng_mr, rng_us, rng_fam = (np.random.default_rng(s)
                                                  for s in np.random.SeedSequence(int(seed)).spawn(5))
    anatomy = sample_anatomy(rng_anat)
    draw = None
    if p.family:
        anatomy = apply_family_anatomy(anatomy, rng_fam, p.gland_volume_ml, p.median_lobe_fraction,
                                       p.median_lobe_height, p.calcifications)
        draw = sample_family_draw(rng_fam, p)
    acq = sample_acquisition(rng_acq, p, oblique, partial_view)
    anatomy, transform, probe, compression = _place_probe(anatomy, acq, p)
    mr_size, mr_spacing = p.mr_size_xyz, p.mr_spacing_xyz
    if draw is not None:  # the family's spacing for this case, over the preset's field of view
        mr_spacing = draw.mr_spacing_xyz
        mr_size = tuple(max(8, int(round(f / s))) for f, s in zip(p.mr_fov_mm, mr_spacing))
    mr_geom = _grid(mr_size, mr_spacing, acq.gland_centre_mr + acq.mr_jitter, acq.mr_direction)
    us_centre = probe.origin - probe.posterior * (p.us_size_xyz[1] * p.us_spacing_xyz[1] / 2 - PROBE_BEHIND_GRID_MM)
    us_geom = _grid(p.us_size_xyz, p.us_spacing_xyz, us_centre + acq.us_jitter, acq.us_direction)
    case = PhantomCase(int(seed), p, None, None, None, None, None, None, transform, anatomy, acq, probe,  # type: ignore[arg-type]
                       compression, draw)
    case.mr_image, case.mr_mask = _make_mr(case, mr_geom, rng_mr) if draw is None else _make_family_mr(case, mr_geom,
                                                                                                      rng_mr)
    if not mr_only:  # mr_only (tests): the US image and mask stay None, the US landmarks are still made
        case.us_image, case.us_mask = _make_us(case, us_geom, rng_us)
    case.mr_landmarks, case.us_landmarks = _make_landmarks(case, mr_geom, us_geom)
    return case


def _place_probe(anatomy: Anatomy, acq: Acquisition, p: PhantomPreset
                 ) -> tuple[Anatomy, RigidTransform, Probe, ProbeCompression]:
    """Rectum along the probe, the rigid T, and the probe and its push in US world.

    US world is the probe's world: the probe axis is US +z (superior) and the fan opens
    anteriorly.  So the rectum, in the patient frame, runs along R^T e_z.
    """
    r, c = acq.rotation, acq.gland_centre_mr
    transform = RigidTransform(r, c + acq.translation_mm - r @ c)
    posterior_us = r @ E_Y - (r @ E_Y @ E_Z) * E_Z
    posterior_us /= np.linalg.norm(posterior_us)
    lumen = p.probe_radius_mm - acq.compression_mm  # the probe dilates the rectum by the push
    anatomy = place_rectum(anatomy, r.T @ E_Z, r.T @ posterior_us, lumen)
    axis_point = transform.apply(c + anatomy.rectum_point)
    gland_us = transform.apply(c)
    origin = axis_point + ((gland_us - axis_point) @ E_Z + acq.axial_shift_mm) * E_Z
    half_len = p.fan_length_fraction * p.us_size_xyz[2] * p.us_spacing_xyz[2] / 2
    imaging_posterior = posterior_us
    if acq.probe_roll_deg:  # the fan turned about the probe axis; the push stays where the probe touches
        a = np.deg2rad(acq.probe_roll_deg)
        imaging_posterior = np.cos(a) * posterior_us + np.sin(a) * np.cross(E_Z, posterior_us)
    probe = Probe(origin, E_Z.copy(), imaging_posterior, p.probe_radius_mm, p.fan_depth_mm, p.fan_half_angle_deg,
                  (-half_len, half_len))
    compression = ProbeCompression(axis_point, E_Z.copy(), -posterior_us, acq.compression_mm, lumen,
                                   p.compression_falloff_mm)
    return anatomy, transform, probe, compression


def _grid_map(geometry: ImageGeometry, fn: Callable[[np.ndarray], tuple[np.ndarray, ...]],
              dtypes: Sequence[type]) -> list[np.ndarray]:
    """Evaluate fn(world LPS points (N, 3)) over all voxel centres, in z-slabs to bound memory."""
    nz, ny, nx = geometry.shape_zyx
    per_slab = max(1, CHUNK_POINTS // (ny * nx))
    outs = [np.empty(geometry.shape_zyx, d) for d in dtypes]
    jj, ii = np.meshgrid(np.arange(ny, dtype=float), np.arange(nx, dtype=float), indexing="ij")
    for k0 in range(0, nz, per_slab):
        kk = np.arange(k0, min(nz, k0 + per_slab), dtype=float)
        idx = np.stack(np.broadcast_arrays(kk[:, None, None], jj[None], ii[None]), axis=-1)
        results = fn(geometry.index_to_world(idx).reshape(-1, 3))
        for out, res in zip(outs, results):
            out[k0:k0 + len(kk)] = res.reshape(len(kk), ny, nx)
    return outs


def _make_mr(case: PhantomCase, geom: ImageGeometry, rng: np.random.Generator) -> tuple[sitk.Image, sitk.Image]:
    """T2-like MR image and its gland mask on the MR grid."""
    labels, fine, coarse = _grid_map(geom, lambda w: case.anatomy.evaluate(case.mr_to_patient(w)),
                                     (np.uint8, np.float32, np.float32))
    image = render_mr(labels, fine, coarse, rng)
    mask = np.isin(labels, GLAND_TISSUES).astype(np.uint8)
    return geom.make_image(image), geom.make_image(mask)


def _make_family_mr(case: PhantomCase, geom: ImageGeometry, rng: np.random.Generator
                    ) -> tuple[sitk.Image, sitk.Image]:
    """A family's MR: thick-slice partial volume (mean signal of sub-slices across each slice),
    contrast, coil bias field and noise; the mask is the analytic inside test at voxel centres."""
    p, draw = case.preset, case.family_draw
    assert draw is not None
    k = max(1, int(p.mr_slice_profile_samples))
    slice_step = np.asarray(geom.direction, float).reshape(3, 3)[:, 2] * geom.spacing_xyz[2]  # world vector of one slice
    signal = np.zeros(geom.shape_zyx, np.float32)
    for j in range(k):
        offset = slice_step * ((j + 0.5) / k - 0.5)
        labels, fine, coarse = _grid_map(geom, lambda w: case.anatomy.evaluate(case.mr_to_patient(w + offset)),
                                         (np.uint8, np.float32, np.float32))
        signal += tissue_signal(labels, fine, coarse) / k
    bias = coil_bias_field(case, geom)
    image = render_mr_signal(signal, rng, draw.mr_noise_fraction, draw.mr_contrast, bias,
                             psf_sigma_zyx=(0.0 if k > 1 else 0.5, 0.5, 0.5))
    (mask,) = _grid_map(geom, lambda w: (case.anatomy.gland_mask(case.mr_to_patient(w)),), (np.uint8,))
    return geom.make_image(image), geom.make_image(mask)


def coil_bias_field(case: PhantomCase, geom: ImageGeometry) -> Optional[np.ndarray]:
    """The family's multiplicative coil field on the MR grid (z, y, x), or None (no field).

    Surface (phased-array) coil: sensitivity rises towards the anterior and posterior body
    surfaces, quadratic in the patient's AP position, with a small random left-right tilt.
    Endorectal coil: exp(-distance from the rectal axis / fall-off), bright next to the
    rectum.  Either way the log-field is scaled so that max/min over the volume is exactly the
    drawn amplitude (documentation/phantoms.md), and centred to geometric mean 1.
    """
    p, draw = case.preset, case.family_draw
    if draw is None or p.mr_bias == "none" or draw.mr_bias_amplitude <= 1.0:
        return None
    anat = case.anatomy

    def shape(w: np.ndarray) -> tuple[np.ndarray]:
        x = case.mr_to_patient(w)
        if p.mr_bias == "endorectal":
            d = x - anat.rectum_point
            radial = d - np.outer(d @ anat.rectum_direction, anat.rectum_direction)
            return (np.exp(-np.linalg.norm(radial, axis=1) / draw.endorectal_falloff_mm),)
        if p.mr_bias == "surface":
            return ((x[:, 1] / 60.0) ** 2 + draw.surface_lateral_tilt * x[:, 0] / 60.0,)
        raise ConfigurationError(f"preset {p.name}: unknown mr_bias {p.mr_bias!r} (polynomial, surface, endorectal)")

    if p.mr_bias == "polynomial":
        return None
    (g,) = _grid_map(geom, shape, (np.float64,))
    span = float(g.max() - g.min())
    log_f = np.log(draw.mr_bias_amplitude) * (g - g.min()) / (span if span > 0 else 1.0)
    return np.exp(log_f - log_f.mean()).astype(np.float32)


def _make_us(case: PhantomCase, geom: ImageGeometry, rng: np.random.Generator) -> tuple[sitk.Image, sitk.Image]:
    """TRUS image (simulated on the beam grid, scan-converted) and its gland mask on the US grid."""
    step = case.preset.us_scan_step_mm
    grid = beam_grid(case.probe, step)
    a, phi, rho = np.meshgrid(*grid, indexing="ij")
    points = case.probe.beam_points(a, phi, rho).reshape(-1, 3)
    labels, fine, coarse = case.anatomy.evaluate(case.us_to_patient(points))
    shape = a.shape
    draw = case.family_draw
    extra = {} if draw is None else {"speckle_scale": draw.us_speckle_scale, "gain_db": draw.us_gain_db}
    beam = render_beam_image(labels.reshape(shape), fine.reshape(shape), coarse.reshape(shape), grid[2], rng, step,
                             **extra)
    image = np.zeros(geom.shape_zyx, np.float32)
    slab = _slabs(geom)
    for k0, k1 in slab:
        sub = _sub_geometry(geom, k0, k1)
        image[k0:k1] = scan_convert(beam, grid, case.probe, sub)
    (mask,) = _grid_map(geom, lambda w: (case.anatomy.gland_mask(case.us_to_patient(w)),), (np.uint8,))
    return geom.make_image(image), geom.make_image(mask)


def _slabs(geom: ImageGeometry) -> list[tuple[int, int]]:
    nz, ny, nx = geom.shape_zyx
    per = max(1, CHUNK_POINTS // (ny * nx))
    return [(k, min(nz, k + per)) for k in range(0, nz, per)]


def _sub_geometry(geom: ImageGeometry, k0: int, k1: int) -> ImageGeometry:
    """The z-slab k0..k1-1 of a grid, as a grid of its own."""
    origin = geom.index_to_world(np.array([float(k0), 0.0, 0.0]))
    return ImageGeometry.create((k1 - k0,) + tuple(geom.shape_zyx[1:]), geom.spacing_xyz, origin, geom.direction)


def _make_landmarks(case: PhantomCase, mr_geom: ImageGeometry, us_geom: ImageGeometry
                    ) -> tuple[LandmarkSet, LandmarkSet]:
    """MR landmarks = patient landmarks + gland centre; US = compression(T(MR)), None outside the volume."""
    truth = case.anatomy.landmarks()
    mr, us = {}, {}
    for name in DEFAULT_LANDMARK_NAMES:
        x = truth[name] + case.acquisition.gland_centre_mr
        y = case.compression.forward(case.transform.apply(x))
        mr[name] = x if mr_geom.contains_world(x) else None
        us[name] = y if us_geom.contains_world(y) else None
    return LandmarkSet(mr), LandmarkSet(us)


# -- datasets -----------------------------------------------------------------------------


def case_seed(dataset_seed: int, case_index: int) -> int:
    """Seed of case `case_index` of a dataset: independent of worker order and of other cases."""
    return int(np.random.SeedSequence([int(dataset_seed), int(case_index)]).generate_state(1, np.uint32)[0])


def case_id(name: str, case_index: int) -> str:
    return f"{name}_{case_index:03d}"


@dataclass(frozen=True)
class _Job:
    folder: str
    case: str
    split: str
    seed: int
    preset: str
    single_thread_blas: bool = False


def _case_files(ds: Dataset, case: str, split: str) -> list[Path]:
    files = [ds.transform_path(case, split)]
    for m in ("MR", "US"):
        files += [ds.image_path(case, m, split), ds.mask_path(case, m, split), ds.landmarks_path(case, m, split)]
    return files


def _run_job(job: _Job) -> dict:
    """Generate one case and write its 7 files (runs in a worker process)."""
    start = time.perf_counter()
    with _blas_threads(1 if job.single_thread_blas else None):
        case = generate_case(job.seed, job.preset)
    write_case(case, Dataset(job.folder), job.case, job.split)
    return {"case": job.case, "split": job.split, **case.summary(), "seconds": round(time.perf_counter() - start, 2)}


def _blas_threads(limit: Optional[int]):
    """Cap BLAS threads (parallel case workers would otherwise oversubscribe the cores: 2x slower)."""
    try:
        from threadpoolctl import threadpool_limits  # lazy: optional speed-up, guarded by ImportError
    except ImportError:  # optional: only a speed-up
        return contextlib.nullcontext()
    return threadpool_limits(limits=limit, user_api="blas") if limit else contextlib.nullcontext()


def write_case(case: PhantomCase, ds: Dataset, case_name: str, split: str = "Tr") -> None:
    """Write a case's images, masks, landmarks and transform into the dataset layout."""
    for modality, image, mask, lms in (("MR", case.mr_image, case.mr_mask, case.mr_landmarks),
                                       ("US", case.us_image, case.us_mask, case.us_landmarks)):
        write_image(image, ds.image_path(case_name, modality, split))
        write_image(mask, ds.mask_path(case_name, modality, split))
        write_lmkreg_json(lms, ds.landmarks_path(case_name, modality, split))
    write_rigid_transform(case.transform, ds.transform_path(case_name, split))


def generate_dataset(dataset_id: int, n_train: int, n_test: int = 0, name: str = "Phantom",
                     preset: str = "mu_regpro", seed: int = 0, workers: Optional[int] = None, *,
                     overwrite: bool = False, root: Optional[Path] = None, progress: bool = True) -> Path:
    """Write DatasetNNN_name (in `root`, default $LMKREG_raw) with n_train + n_test phantom cases.

    Refuses to touch another dataset with the same number, and to replace existing case
    files unless `overwrite`.  Returns the dataset folder.
    """
    if not isinstance(preset, str):
        raise ConfigurationError("generate_dataset needs a preset name (workers look it up by name)")
    p = get_preset(preset)
    if n_train < 0 or n_test < 0 or n_train + n_test == 0:
        raise ConfigurationError(f"need at least one case (got {n_train} training, {n_test} test)")
    base = Path(root) if root is not None else raw_root()
    folder = base / dataset_folder_name(dataset_id, name)
    _check_no_other_dataset(base, dataset_id, folder.name)
    spec = DatasetSpec(name=folder.name, modalities=["MR", "US"], landmarks=list(DEFAULT_LANDMARK_NAMES),
                       file_ending=".nii.gz", num_training=n_train, num_test=n_test,
                       description=f"Synthetic paired MR/TRUS phantoms, preset {p.name}, seed {seed}",
                       extra={"generator": "lmkreg.phantoms", "preset": p.name, "seed": int(seed)})
    spec.validate()
    workers = min(2, default_workers()) if workers is None else max(1, int(workers))
    parallel = workers > 1 and n_train + n_test > 1
    jobs = [_Job(str(folder), case_id(name, i), "Tr" if i < n_train else "Ts", case_seed(seed, i), p.name, parallel)
            for i in range(n_train + n_test)]
    if folder.exists() and not overwrite:
        _refuse_existing_cases(folder, spec, jobs)
    ds = Dataset.create(folder, spec)
    results = parallel_map(_run_job, jobs, workers=workers, desc=f"phantoms {folder.name}",
                           disable_progress=not progress)
    stale = sorted(set(ds.cases("Tr") + ds.cases("Ts")) - {j.case for j in jobs})
    if stale:
        warnings.warn(f"{ds.folder} also holds {len(stale)} older case(s) not generated now (e.g. {stale[0]}); "
                      "dataset.json counts only the new ones", stacklevel=2)
    atomic_write_json(ds.folder / "phantom_cases.json", {"preset": p.to_json(), "dataset_seed": int(seed),
                                                         "cases": results})
    return ds.folder


def _check_no_other_dataset(base: Path, dataset_id: int, folder_name: str) -> None:
    """Refuse when the dataset number is taken by a differently named dataset."""
    prefix = dataset_folder_name(dataset_id, "")
    others = sorted(q.name for q in base.glob(prefix + "*") if q.is_dir() and q.name != folder_name) \
        if base.is_dir() else []
    if others:
        raise ConfigurationError(f"dataset id {int(dataset_id)} is already used by {others[0]} in {base}; "
                                 f"choose another -d or the same --name")


def _refuse_existing_cases(folder: Path, spec: DatasetSpec, jobs: list[_Job]) -> None:
    """Raise if a file that would be written already exists (never overwrite silently)."""
    probe_ds = Dataset.__new__(Dataset)  # path arithmetic only; dataset.json may not exist yet
    probe_ds.folder, probe_ds.spec = folder, spec
    existing = [f for j in jobs for f in _case_files(probe_ds, j.case, j.split) if f.exists()]
    if existing:
        raise ConfigurationError(f"{len(existing)} case file(s) already exist in {folder} (e.g. {existing[0]}); "
                                 "use --overwrite (overwrite=True) to replace them")


def load_summary(folder: Path) -> dict:
    """The per-case notes written next to dataset.json (flags, seeds, timings)."""
    return json.loads((Path(folder) / "phantom_cases.json").read_text(encoding="utf-8"))
