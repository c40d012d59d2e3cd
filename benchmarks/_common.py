"""Set-up shared by the phantom benchmarks: a timestamped log, the LMKREG_* folders under one
root, and a phantom dataset generated once, then planned and preprocessed.

Only the standard library is imported at the top, so a benchmark can import lmkreg first (its
OpenMP thread policy must be set before numpy or torch load).
"""
from __future__ import annotations

import os
import time
from pathlib import Path


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def use_root(root: Path) -> None:
    """LMKREG_raw, LMKREG_preprocessed and LMKREG_results of this process: root/raw, root/pre, root/res."""
    for var, sub in (("LMKREG_raw", "raw"), ("LMKREG_preprocessed", "pre"), ("LMKREG_results", "res")):
        os.environ[var] = str(root / sub)


def planned_phantoms(root: Path, dataset_id: int, name: str, n_train: int, n_test: int, preset: str, seed: int,
                     workers: int):
    """The phantom dataset `dataset_id` under root/raw, generated unless it is there with `n_train`
    training and `n_test` test cases, then planned and preprocessed (up-to-date cases are skipped); returns it opened."""
    from lmkreg.dataset.layout import Dataset, dataset_folder_name, open_dataset
    from lmkreg.phantoms.generator import generate_dataset
    from lmkreg.planning.plan_and_preprocess import plan_and_preprocess

    raw = root / "raw"
    folder = raw / dataset_folder_name(dataset_id, name)
    if not (folder / "dataset.json").is_file() or len(Dataset(folder).cases("Ts")) != n_test \
            or len(Dataset(folder).cases("Tr")) != n_train:
        log(f"generating {n_train} + {n_test} phantom pairs")
        generate_dataset(dataset_id, n_train, n_test, name=name, preset=preset, seed=seed, root=raw, overwrite=True,
                         progress=False)
    plan_and_preprocess(str(dataset_id), workers=workers)
    return open_dataset(dataset_id)


def icp_reference(mr_mesh, us_mesh, mr_truth, us_truth, names=None):
    """lmkreg_evaluate's reference transform of one case (MR world LPS mm -> US world LPS mm): ICP
    between the true gland meshes, started from the least-squares fit of the true landmarks (or
    without it when fewer than three are in both files).  `names`: the landmarks to use, default
    the MR file's; the trust and surface-weight benchmarks share it."""
    from lmkreg.errors import InputError
    from lmkreg.evaluation.evaluate import reference_registration
    from lmkreg.registration.landmark_fit import register_landmarks

    names = list(names) if names is not None else list(mr_truth.names)
    common = [n for n in names if mr_truth.points.get(n) is not None and us_truth.points.get(n) is not None]
    try:
        manual = register_landmarks(mr_truth, us_truth, names).transform
    except InputError:  # fewer than three landmarks in both files: ICP from the identity
        manual = None
    ref, _ = reference_registration(mr_mesh, us_mesh, manual, mr_truth.to_array(common), us_truth.to_array(common))
    return ref
