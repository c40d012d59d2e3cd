"""Small synthetic datasets for tests: oblique, anisotropic images whose intensity is a known
affine function of the world position, so any interpolated value has an exact reference."""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import pytest

from lmkreg.dataset.layout import Dataset, DatasetSpec, dataset_folder_name
from lmkreg.geometry import ImageGeometry, rotation_direction
from lmkreg.io.images import write_image
from lmkreg.io.landmarks import DEFAULT_LANDMARK_NAMES, LandmarkSet, write_lmkreg_json
from lmkreg.paths import raw_root

RAMP = np.array([0.8, -0.5, 1.3])  # intensity gradient per world mm (L, P, S)


def ramp_value(points_lps: np.ndarray) -> np.ndarray:
    """The toy image intensity at world LPS points: an affine function of position."""
    return 100.0 + np.asarray(points_lps) @ RAMP


def make_toy_dataset(raw_root: Path, n_cases: int = 6, dataset_id: int = 7, modalities: Sequence[str] = ("MR", "US"),
                     shape_zyx=(20, 24, 28), spacing_xyz=(1.5, 1.2, 2.4), seed: int = 0, with_masks: bool = True) -> Dataset:
    """Toy dataset: every case has its own oblique direction and origin; landmarks inside."""
    rng = np.random.default_rng(seed)
    spec = DatasetSpec(name=dataset_folder_name(dataset_id, "Toy"), modalities=list(modalities), num_training=n_cases)
    ds = Dataset.create(Path(raw_root) / spec.name, spec)
    for i in range(n_cases):
        case = f"toy{i:03d}"
        for m in modalities:
            geom = ImageGeometry.create(shape_zyx, spacing_xyz, rng.uniform(-40, 40, 3),
                                        rotation_direction(rng.uniform(-25, 25, 3)))
            world = geom.voxel_centres_world()
            arr = ramp_value(world).astype(np.float32)
            if m == "US":
                arr = np.clip(arr, 1.0, None)  # keep it non-zero: zeros mean 'outside the fan'
            write_image(geom.make_image(arr), ds.image_path(case, m))
            centre_idx = (np.asarray(shape_zyx) - 1) / 2
            idx = centre_idx + rng.uniform(-0.3, 0.3, (3, 3)) * np.asarray(shape_zyx)
            lms = LandmarkSet(dict(zip(DEFAULT_LANDMARK_NAMES, geom.index_to_world(idx))))
            write_lmkreg_json(lms, ds.landmarks_path(case, m))
            if with_masks:
                d = np.linalg.norm((np.indices(shape_zyx).transpose(1, 2, 3, 0) - centre_idx) / np.asarray(shape_zyx),
                                   axis=-1)
                write_image(geom.make_image((d < 0.3).astype(np.uint8)), ds.mask_path(case, m))
    return ds


@contextmanager
def folders_under(root: Path) -> Iterator[dict[str, str]]:
    """LMKREG_raw, LMKREG_preprocessed and LMKREG_results set to root/raw, root/pre and root/res
    for the block: module fixtures build data there (they cannot use a test's monkeypatch).
    Yields the variables, which each test sets again with `use_folders`."""
    env = {"LMKREG_raw": str(root / "raw"), "LMKREG_preprocessed": str(root / "pre"),
           "LMKREG_results": str(root / "res")}
    with pytest.MonkeyPatch.context() as mp:
        use_folders(mp, env)
        yield env


def use_folders(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> None:
    """Point this test's LMKREG_* variables at the folders a module fixture filled."""
    for k, v in env.items():
        monkeypatch.setenv(k, v)


def planned_phantoms(dataset_id: int, n_train: int, n_test: int = 0, *, seed: int, num_folds: int = 5) -> Path:
    """Tiny phantom pairs as dataset `dataset_id` in $LMKREG_raw, planned and preprocessed with
    one worker; returns the preprocessed folder."""
    from lmkreg.phantoms.generator import generate_dataset
    from lmkreg.planning.plan_and_preprocess import plan_and_preprocess

    generate_dataset(dataset_id, n_train, n_test, preset="tiny", seed=seed, workers=1, root=raw_root(), progress=False)
    return plan_and_preprocess(str(dataset_id), workers=1, num_folds=num_folds)


def pelvic_mr_dataset(dataset_id: int, name: str, n_cases: int, first_seed: int) -> Dataset:
    """MR-only pelvic_tiny phantom cases p000.. (seeds first_seed, first_seed+1, ...) written as
    dataset `dataset_id` in $LMKREG_raw: the cascade tests' data (gland far from the frame centre)."""
    from lmkreg.phantoms.generator import generate_case

    spec = DatasetSpec(name=dataset_folder_name(dataset_id, name), modalities=["MR"], num_training=n_cases)
    ds = Dataset.create(raw_root() / spec.name, spec)
    for i in range(n_cases):
        case = generate_case(first_seed + i, "pelvic_tiny", mr_only=True)
        write_image(case.mr_image, ds.image_path(f"p{i:03d}", "MR"))
        write_lmkreg_json(case.mr_landmarks, ds.landmarks_path(f"p{i:03d}", "MR"))
    return ds


def planned_toy_mr_dataset(root: Path, n_cases: int = 5, dataset_id: int = 7) -> tuple[dict, Dataset, Path]:
    """An MR-only toy dataset planned (no preprocessing) under its own LMKREG_* folders in
    `root`: returns those folders as environment variables, the dataset and the
    preprocessed folder holding plans.json.  For module fixtures that build model folders."""
    from lmkreg.planning.plan_and_preprocess import plan_and_preprocess

    with folders_under(root) as env:
        ds = make_toy_dataset(root / "raw", n_cases=n_cases, dataset_id=dataset_id, modalities=("MR",))
        pre = plan_and_preprocess(str(dataset_id), workers=1, skip_preprocessing=True)
    return env, ds, pre
