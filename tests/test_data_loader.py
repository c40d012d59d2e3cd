"""Data loading: preprocessed cases in memory, reproducible augmented batches from worker
processes, clear errors (not hangs) when a worker dies or gets stuck."""
from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from lmkreg.errors import InputError, LmkregError
from lmkreg.preprocessing.storage import save_array
from lmkreg.training.augmentation import build_augmentation
from lmkreg.training.data import (PreprocessedCases, iterate_batches, load_case, make_train_loader,
                                  make_val_batches)

NAMES = ["apex", "bladder_neck", "posterior_median"]
SHAPE = (16, 20, 24)
SPACING_ZYX = np.array([2.0, 1.0, 1.5])


def write_case(folder: Path, case: str, landmarks: list, seed: int) -> np.ndarray:
    """A preprocessed case as the preprocessor writes it: (1, Z, Y, X) array + JSON metadata."""
    rng = np.random.default_rng(seed)
    image = rng.standard_normal((1, *SHAPE)).astype(np.float32)
    save_array(image, folder / f"{case}.b2nd")
    affine = np.zeros((4, 4))
    affine[0, 2], affine[1, 1], affine[2, 0] = SPACING_ZYX[2], SPACING_ZYX[1], SPACING_ZYX[0]  # (z,y,x) -> (x,y,z)
    affine[:3, 3] = [-10.0, 5.0, 30.0]
    affine[3, 3] = 1.0
    world = [None if p is None else (affine @ np.r_[p, 1.0])[:3].tolist() for p in landmarks]
    meta = {"case": case, "landmark_names": NAMES, "landmarks_voxel_zyx": landmarks, "landmarks_world_lps": world,
            "index_to_world": affine.tolist(), "geometry": {"shape_zyx": list(SHAPE)}}
    (folder / f"{case}.json").write_text(json.dumps(meta))
    return image


@pytest.fixture
def cases(tmp_path) -> PreprocessedCases:
    write_case(tmp_path, "c0", [[5.0, 8.0, 10.0], [8.5, 10.2, 12.7], [10.0, 12.0, 9.0]], 0)
    write_case(tmp_path, "c1", [[6.0, 9.0, 11.0], None, [9.0, 11.0, 13.5]], 1)   # bladder neck missing
    write_case(tmp_path, "c2", [[7.0, 7.0, 12.0], [8.0, 9.0, 10.0], [40.0, 11.0, 11.0]], 2)  # last outside the grid
    return PreprocessedCases(tmp_path, ["c0", "c1", "c2"])


def test_load_case(tmp_path, cases):
    c = load_case(tmp_path, "c0")
    assert c["image"].shape == (1, *SHAPE) and c["image"].dtype == np.float32
    np.testing.assert_allclose(c["spacing"], SPACING_ZYX)
    np.testing.assert_allclose(c["landmarks"][1], [8.5, 10.2, 12.7])
    assert np.isnan(cases.get("c1")["landmarks"][1]).all()
    assert np.isnan(cases.get("c2")["landmarks"][2]).all()  # z = 40 is beyond the 16-slice grid: missing
    assert not np.isnan(cases.get("c2")["landmarks"][:2]).any()
    assert cases.landmark_names == NAMES and len(cases) == 3
    with pytest.raises(InputError, match="missing"):
        load_case(tmp_path, "nope")


def _first(loader) -> dict:
    return next(iter(iterate_batches(loader)))


def _assert_same(a: dict, b: dict) -> None:
    torch.testing.assert_close(a["image"], b["image"], rtol=0, atol=0)
    torch.testing.assert_close(a["landmarks"], b["landmarks"], rtol=0, atol=0, equal_nan=True)
    assert torch.equal(a["present"], b["present"])


def test_loader_in_process_shapes_and_reproducibility(cases):
    aug = build_augmentation("MR")
    a = _first(make_train_loader(cases, 4, aug, 0, seed=3, iterations_per_epoch=2))
    b = _first(make_train_loader(cases, 4, aug, 0, seed=3, iterations_per_epoch=2))
    c = _first(make_train_loader(cases, 4, aug, 0, seed=4, iterations_per_epoch=2))
    assert a["image"].shape == (4, 1, *SHAPE) and a["image"].dtype == torch.float32
    assert a["landmarks"].shape == (4, 3, 3) and a["landmarks"].dtype == torch.float32
    assert a["present"].shape == (4, 3) and a["present"].dtype == torch.bool
    assert torch.equal(a["present"], ~torch.isnan(a["landmarks"]).any(-1))
    _assert_same(a, b)
    assert not torch.equal(a["image"], c["image"])
    batches = list(iterate_batches(make_train_loader(cases, 4, aug, 0, seed=3, iterations_per_epoch=5)))
    assert len(batches) == 5


def test_loader_with_workers_matches_in_process(cases):
    """Same seed -> same batches, whether made by 2 worker processes or in this process."""
    aug = build_augmentation("US")
    loader_a = make_train_loader(cases, 3, aug, 2, seed=11, iterations_per_epoch=4, timeout=60)
    loader_b = make_train_loader(cases, 3, aug, 2, seed=11, iterations_per_epoch=4, timeout=60)
    batches_a = list(iterate_batches(loader_a))
    batches_b = list(iterate_batches(loader_b))
    serial = list(iterate_batches(make_train_loader(cases, 3, aug, 0, seed=11, iterations_per_epoch=4)))
    assert len(batches_a) == len(batches_b) == 4
    for x, y, z in zip(batches_a, batches_b, serial):
        _assert_same(x, y)
        _assert_same(x, z)
    # a second pass over the same (persistent-worker) loader draws new samples, reproducibly
    again = list(iterate_batches(loader_a))
    assert not torch.equal(again[0]["image"], batches_a[0]["image"])
    _assert_same(again[0], next(iter(iterate_batches(_second_pass(cases, aug)))))


def _second_pass(cases, aug):
    loader = make_train_loader(cases, 3, aug, 0, seed=11, iterations_per_epoch=4)
    list(iterate_batches(loader))
    return loader


def test_present_mask_for_a_missing_landmark(tmp_path):
    write_case(tmp_path, "m", [[6.0, 9.0, 11.0], None, [9.0, 11.0, 13.5]], 5)
    one = PreprocessedCases(tmp_path, ["m"])
    batch = _first(make_train_loader(one, 2, None, 0, seed=0, iterations_per_epoch=1))
    assert batch["present"].tolist() == [[True, False, True]] * 2
    np.testing.assert_allclose(batch["landmarks"][0, 0].numpy(), [6.0, 9.0, 11.0])
    assert torch.isnan(batch["landmarks"][:, 1]).all()
    aug = build_augmentation("MR", {"spatial": {"p_rotation": 1.0, "p_scale": 1.0, "p_translation": 1.0}})
    batch = _first(make_train_loader(one, 8, aug, 0, seed=1, iterations_per_epoch=1))
    assert not batch["present"][:, 1].any()
    assert torch.equal(batch["present"], ~torch.isnan(batch["landmarks"]).any(-1))


def test_val_batches_are_unaugmented_and_ordered(cases):
    batches = list(make_val_batches(cases, 2))
    assert [b["case"] for b in batches] == [["c0", "c1"], ["c2"]]
    assert batches[0]["image"].shape == (2, 1, *SHAPE)
    np.testing.assert_array_equal(batches[1]["image"][0].numpy(), cases.get("c2")["image"])
    assert batches[0]["present"].tolist() == [[True, True, True], [True, False, True]]
    assert batches[1]["present"].tolist() == [[True, True, False]]


class DiesInWorker(Dataset):
    """Kills its own worker process, as the OOM killer would."""

    def __len__(self) -> int:
        return 100

    def __getitem__(self, i: int) -> torch.Tensor:
        if torch.utils.data.get_worker_info() is not None:
            os.kill(os.getpid(), signal.SIGKILL)
        return torch.zeros(1)


class HangsInWorker(Dataset):
    def __len__(self) -> int:
        return 100

    def __getitem__(self, i: int) -> torch.Tensor:
        time.sleep(30)
        return torch.zeros(1)


def test_dead_worker_raises_clear_error_quickly(cases):
    loader = make_train_loader(cases, 2, None, 1, seed=0, iterations_per_epoch=5, timeout=60, dataset=DiesInWorker())
    start = time.monotonic()
    with pytest.raises(LmkregError, match="data loader worker died"):
        for _ in iterate_batches(loader):
            pass
    assert time.monotonic() - start < 15


def test_stuck_worker_hits_the_timeout(cases):
    loader = make_train_loader(cases, 2, None, 1, seed=0, iterations_per_epoch=5, timeout=1.0,
                               dataset=HangsInWorker())
    start = time.monotonic()
    with pytest.raises(LmkregError, match="timed out"):
        list(iterate_batches(loader))
    assert time.monotonic() - start < 15


def test_distributed_shards_reassemble_the_single_process_batches():
    """Two processes with batch B each see exactly the samples of one process with batch 2B."""
    from lmkreg.training.data import EpochIndexSampler

    single = EpochIndexSampler(n_batches=3, batch_size=4)
    ranks = [EpochIndexSampler(n_batches=3, batch_size=2, rank=r, world_size=2) for r in range(2)]
    for _ in range(2):  # two epochs: the second continues the sequence in both set-ups
        s = list(single)
        parts = [list(r) for r in ranks]
        for k in range(3):
            assert parts[0][2 * k:2 * k + 2] + parts[1][2 * k:2 * k + 2] == s[4 * k:4 * k + 4]
    assert len(set(s)) == 12 and min(s) == 12
