"""Training data: preprocessed cases in memory, augmented batches from background workers.

Reproducibility: sample ``i`` of a loader is drawn from ``np.random.default_rng([seed, i])`` (the
case choice and every augmentation parameter), so a batch depends only on (seed, epoch, position)
and not on how many worker processes made it or in which order they finished.  The trainer
passes a different seed per epoch; re-iterating the same loader continues the index count, so it
gives new (still reproducible) samples rather than repeating the first pass.

A worker process that dies (killed by the OOM killer, a segfault in a library) makes
``iterate_batches`` raise ``LmkregError`` instead of hanging; a worker that hangs hits the
loader's ``timeout``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence, Union

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from lmkreg.errors import InputError, LmkregError
from lmkreg.preprocessing.storage import ARRAY_SUFFIX, load_array
from lmkreg.training.augmentation import build_augmentation, inside_grid

PathLike = Union[str, Path]
Augmentation = Any  # callable (sample, rng) -> sample, e.g. a Compose
DEFAULT_TIMEOUT_S = 300.0  # generous: the first batch includes worker start-up on a busy machine


# ---- cases in memory ------------------------------------------------------------------------

def load_case(folder: PathLike, case: str, with_mask: bool = False) -> dict[str, Any]:
    """One preprocessed case: image (C, Z, Y, X) float32, landmarks (L, 3) voxel (z, y, x) with NaN
    for missing ones, spacing (3,) zyx mm, index_to_world (4, 4), landmark_names, case; with
    `with_mask` also ``mask``: the prostate mask (1, Z, Y, X) uint8 0/1 on the same grid, or None
    when the case has none (lmkreg.training.segmentation).

    Landmarks outside the preprocessed grid are NaN as well: the network cannot point there, so
    for training and validation they count as missing.
    """
    folder = Path(folder)
    meta_path, image_path = folder / f"{case}.json", folder / f"{case}{ARRAY_SUFFIX}"
    for p in (meta_path, image_path):
        if not p.is_file():
            raise InputError(p, f"preprocessed file of case {case!r} is missing; run preprocessing again")
    try:
        meta = json.loads(meta_path.read_text())
        image = np.ascontiguousarray(load_array(image_path), dtype=np.float32)
    except (OSError, ValueError, RuntimeError) as e:
        raise InputError(meta_path, f"cannot read preprocessed case {case!r}: {e}") from e
    if image.ndim == 3:
        image = image[None]
    if image.ndim != 4:
        raise InputError(image_path, f"expected an array (C, Z, Y, X), got shape {image.shape}")
    affine = np.asarray(meta["index_to_world"], float)
    # column j of the index->world matrix is the world step of array axis j: its length is the spacing
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    names = list(meta["landmark_names"])
    voxels = meta["landmarks_voxel_zyx"]
    if len(voxels) != len(names):
        raise InputError(meta_path, f"{len(voxels)} landmark positions for {len(names)} landmark names")
    landmarks = np.array([[np.nan] * 3 if v is None else v for v in voxels], float).reshape(len(names), 3)
    landmarks[~inside_grid(landmarks, image.shape[1:])] = np.nan
    margin = np.asarray(meta.get("crop_margin_zyx", [0, 0, 0]), int)
    if margin.shape != (3,) or np.any(margin < 0) or np.any(2 * margin >= np.asarray(image.shape[1:])):
        raise InputError(meta_path, f"crop_margin_zyx {meta.get('crop_margin_zyx')} does not fit the array "
                                    f"{image.shape[1:]}")
    sample = {"case": case, "image": image, "landmarks": landmarks, "spacing": spacing,
              "index_to_world": affine, "landmark_names": names, "crop_margin": margin}
    if with_mask:
        sample["mask"] = load_mask(folder, case, image.shape)
    return sample


# ---- prostate masks (the segmentation head's targets) ----------------------------------------

def mask_file(folder: Path, case: str) -> Path:
    """Where preprocessing writes a case's prostate mask (on the case's own grid)."""
    return Path(folder) / f"{case}_mask{ARRAY_SUFFIX}"


def load_mask(folder: Path, case: str, image_shape: Sequence[int]) -> Optional[np.ndarray]:
    """The case's mask (1, Z, Y, X) uint8 0/1 (any label > 0 is prostate), None without a file."""
    path = mask_file(folder, case)
    if not path.is_file():
        return None
    try:
        mask = np.asarray(load_array(path))
    except (OSError, ValueError, RuntimeError) as e:
        raise InputError(path, f"cannot read the prostate mask of case {case!r}: {e}") from e
    if mask.ndim == 3:
        mask = mask[None]
    if tuple(mask.shape[1:]) != tuple(image_shape[1:]):
        raise InputError(path, f"mask shape {mask.shape} differs from its image {tuple(image_shape)}; "
                               f"run preprocessing again")
    return np.ascontiguousarray(mask[:1] > 0).astype(np.uint8)


def mask_tensors(sample: dict) -> dict[str, torch.Tensor]:
    """``mask`` (1, Z, Y, X) float32 and ``mask_present`` bool for a sample (zeros/False without one)."""
    m = sample.get("mask")
    if m is None:
        return {"mask": torch.zeros((1, *np.asarray(sample["image"]).shape[1:]), dtype=torch.float32),
                "mask_present": torch.tensor(False)}
    return {"mask": torch.from_numpy(np.ascontiguousarray(m, dtype=np.float32)), "mask_present": torch.tensor(True)}



def crop_sample(sample: dict[str, Any], start_zyx: Sequence[int], shape_zyx: Sequence[int]) -> dict[str, Any]:
    """The box ``start .. start + shape`` of a sample (a view of its image): landmarks in the
    box's voxels (NaN when they fall outside it) and its own index->world affine."""
    start = np.asarray(start_zyx, int)
    image = sample["image"][(slice(None),) + tuple(slice(int(a), int(a) + int(n)) for a, n in zip(start, shape_zyx))]
    landmarks = np.asarray(sample["landmarks"], float) - start
    landmarks[~inside_grid(landmarks, shape_zyx)] = np.nan
    shift = np.eye(4)
    shift[:3, 3] = start
    out = {**sample, "image": image, "landmarks": landmarks, "index_to_world": np.asarray(sample["index_to_world"]) @ shift,
           "crop_margin": np.zeros(3, int)}
    if sample.get("mask") is not None:  # the prostate mask shares the image's grid: same box
        out["mask"] = sample["mask"][(slice(None),) + tuple(slice(int(a), int(a) + int(n)) for a, n in zip(start, shape_zyx))]
    return out


def centre_crop(sample: dict[str, Any]) -> dict[str, Any]:
    """A refine-stage case as the network sees it with an exact localizer: the planned crop
    in the middle of the stored box (the sample itself when it has no margin)."""
    margin = np.asarray(sample.get("crop_margin", (0, 0, 0)), int)
    if not margin.any():
        return sample
    return crop_sample(sample, margin, np.asarray(sample["image"].shape[1:]) - 2 * margin)


def jittered_crop(sample: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
    """The planned crop at a random whole-voxel offset of up to the stored margin per axis: the
    refine stage's training input, whose centre is off by as much as the localizer may be."""
    margin = np.asarray(sample.get("crop_margin", (0, 0, 0)), int)
    if not margin.any():
        return sample
    offset = rng.integers(-margin, margin + 1)
    return crop_sample(sample, margin + offset, np.asarray(sample["image"].shape[1:]) - 2 * margin)


class PreprocessedCases:
    """All listed cases of one preprocessed folder, loaded into memory once (they are small:
    one planned grid each).  Worker processes inherit them instead of re-reading the files.

    Refine-stage cases are stored with a margin around the planned crop: ``get`` and indexing
    give the centred crop (validation), ``full`` the whole stored box (training draws a
    jittered crop from it, see ``jittered_crop``)."""

    def __init__(self, folder: PathLike, cases: Sequence[str], with_masks: bool = False):
        self.folder = Path(folder)
        self.cases = list(cases)
        self._full = {c: load_case(self.folder, c, with_masks) for c in self.cases}
        self._data = {c: centre_crop(s) for c, s in self._full.items()}
        self.crop_offsets = None  # refine stage: where training crops sit (lmkreg.training.stage_offsets)
        shapes = {(self._full[c]["image"].shape, tuple(self._full[c]["crop_margin"])) for c in self.cases}
        if len(shapes) > 1:
            raise InputError(self.folder, f"preprocessed cases have different array shapes {sorted(shapes)}; "
                                          "they must all be on the planned grid")
        names = {tuple(self._data[c]["landmark_names"]) for c in self.cases}
        if len(names) > 1:
            raise InputError(self.folder, f"preprocessed cases have different landmark lists {sorted(names)}")
        self.landmark_names = list(next(iter(names))) if names else []

    def __len__(self) -> int:
        return len(self.cases)

    def get(self, case: str) -> dict[str, Any]:
        """The stored sample of `case` (do not modify its arrays in place)."""
        return self._data[case]

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self._data[self.cases[index]]

    def full(self, index: int) -> dict[str, Any]:
        """The whole stored sample of case number `index` (with its crop margin, if any)."""
        return self._full[self.cases[index]]


# ---- torch side -----------------------------------------------------------------------------

def to_tensors(sample: dict[str, Any]) -> dict[str, Any]:
    """Tensors for the network: image float32, landmarks float32 voxel zyx (NaN = missing), present bool."""
    landmarks = np.asarray(sample["landmarks"], np.float32)
    out = {"image": torch.from_numpy(np.ascontiguousarray(sample["image"], dtype=np.float32)),
           "landmarks": torch.from_numpy(landmarks),
           "present": torch.from_numpy(~np.isnan(landmarks).any(axis=1)),
           "case": sample.get("case", "")}
    if "mask" in sample:  # loaded for a segmentation trainer: zeros and mask_present False when missing
        out.update(mask_tensors(sample))
    return out


class AugmentedSamples(Dataset):
    """Item i: a random case, augmented, both drawn from np.random.default_rng([seed, i])."""

    def __init__(self, cases: PreprocessedCases, augmentation: Optional[Augmentation], seed: int):
        if len(cases) == 0:
            raise LmkregError(f"no training cases in {cases.folder}")
        self.cases = cases
        self.augmentation = augmentation
        self.seed = int(seed)

    def rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, int(index)])

    def __getitem__(self, index: int) -> dict[str, Any]:
        rng = self.rng(index)
        sample = self.cases.full(int(rng.integers(len(self.cases))))
        offsets = getattr(self.cases, "crop_offsets", None)  # the localizer's measured error, if any
        sample = offsets.crop(sample, rng) if offsets is not None else jittered_crop(sample, rng)  # no margin: no draw
        if self.augmentation is not None:
            sample = self.augmentation(sample, rng)
        return to_tensors(sample)


class EpochIndexSampler(Sampler[int]):
    """Sample indices for one epoch of `n_batches` batches, continuing from the previous pass.

    Distributed training: the global batch ``k`` holds indices ``k*B*W .. (k+1)*B*W - 1`` of one
    sample sequence (``B`` per-process batch, ``W`` processes); process ``rank`` takes its slice
    ``rank*B .. (rank+1)*B - 1`` of it.  The W processes together therefore see exactly the
    samples a single process with batch ``B*W`` would see, which makes a torchrun job reproduce
    the single-process run (gradients are averaged across processes).
    """

    def __init__(self, n_batches: int, batch_size: int, rank: int = 0, world_size: int = 1):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} must be in [0, {world_size})")
        self.n_batches, self.batch_size = int(n_batches), int(batch_size)
        self.rank, self.world_size = int(rank), int(world_size)
        self.passes = 0

    def __len__(self) -> int:
        return self.n_batches * self.batch_size

    def __iter__(self) -> Iterator[int]:
        global_batch = self.batch_size * self.world_size
        start = self.passes * self.n_batches * global_batch + self.rank * self.batch_size
        self.passes += 1
        return iter([start + k * global_batch + j for k in range(self.n_batches) for j in range(self.batch_size)])


def worker_init_fn(worker_id: int) -> None:
    """One thread per worker (the workers already run in parallel) and numpy's legacy global
    generator seeded from torch's per-worker seed, for any library code that still uses it.
    Our own randomness never uses it: it comes from the per-sample generator."""
    torch.set_num_threads(1)
    np.random.seed(torch.initial_seed() % 2 ** 32)


def make_train_loader(cases: PreprocessedCases, batch_size: int, augmentation: Optional[Augmentation],
                      num_workers: int, seed: int, iterations_per_epoch: int, pin_memory: bool = False,
                      timeout: float = DEFAULT_TIMEOUT_S, dataset: Optional[Dataset] = None,
                      rank: int = 0, world_size: int = 1) -> DataLoader:
    """DataLoader of `iterations_per_epoch` augmented batches.

    num_workers > 0: persistent background worker processes and a `timeout` (seconds) per batch;
    num_workers = 0: everything in this process (tests, debugging).  `dataset` replaces the
    augmented-sample dataset (tests).  `rank`/`world_size`: this process's share of each global
    batch under torchrun (see EpochIndexSampler); every process passes the same `seed`.  Iterate it with `iterate_batches` for clear errors.
    """
    if batch_size < 1 or iterations_per_epoch < 1 or num_workers < 0:
        raise ValueError(f"batch_size {batch_size}, iterations_per_epoch {iterations_per_epoch} must be >= 1 "
                         f"and num_workers {num_workers} >= 0")
    ds = dataset if dataset is not None else AugmentedSamples(cases, augmentation, seed)
    workers = num_workers > 0
    return DataLoader(ds, batch_size=batch_size, sampler=EpochIndexSampler(iterations_per_epoch, batch_size, rank, world_size),
                      num_workers=num_workers, pin_memory=pin_memory, drop_last=False,
                      persistent_workers=workers, timeout=timeout if workers else 0,
                      worker_init_fn=worker_init_fn if workers else None,
                      prefetch_factor=2 if workers else None)


WORKER_FAILURES = ("DataLoader worker", "exited unexpectedly", "killed by signal")


def iterate_batches(loader: DataLoader) -> Iterator[dict[str, Any]]:
    """Batches of `loader`; a dead or hung worker becomes LmkregError instead of a hang or an
    obscure RuntimeError, and the remaining workers are shut down.

    Caveat: torch reports a dead worker from a SIGCHLD handler, which can also fire while the
    caller is busy with a batch; then torch's own RuntimeError surfaces from the caller's code.
    """
    iterator = iter(loader)
    while True:
        try:
            batch = next(iterator)
        except StopIteration:
            return
        except RuntimeError as e:
            text = str(e)
            if "timed out" in text:
                _shutdown(iterator)
                raise LmkregError(f"data loader timed out: no batch within {loader.timeout:g} s from "
                                  f"{loader.num_workers} worker process(es); a worker may be stuck ({text})") from e
            if any(s in text for s in WORKER_FAILURES):
                _shutdown(iterator)
                raise LmkregError(f"data loader worker died: {text}. Often the machine ran out of memory "
                                  f"(fewer workers with --workers, or a smaller batch, may help)") from e
            raise
        yield batch


def _shutdown(iterator: Any) -> None:
    """Stop the workers of a failed iterator now rather than at garbage collection."""
    stop = getattr(iterator, "_shutdown_workers", None)
    if callable(stop):
        try:
            stop()
        except Exception:  # best effort: the original error matters more
            pass


def make_val_batches(cases: PreprocessedCases, batch_size: int) -> Iterator[dict[str, Any]]:
    """Unaugmented batches of the cases in their listed order (the last one may be smaller)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    for start in range(0, len(cases), batch_size):
        items = [to_tensors(cases[i]) for i in range(start, min(start + batch_size, len(cases)))]
        batch = {"image": torch.stack([t["image"] for t in items]),
                 "landmarks": torch.stack([t["landmarks"] for t in items]),
                 "present": torch.stack([t["present"] for t in items]),
                 "case": [t["case"] for t in items]}
        for key in ("mask", "mask_present"):
            if key in items[0]:
                batch[key] = torch.stack([t[key] for t in items])
        yield batch


__all__ = ["load_case", "crop_sample", "centre_crop", "jittered_crop", "PreprocessedCases", "AugmentedSamples", "make_train_loader", "iterate_batches",
           "make_val_batches", "build_augmentation", "to_tensors", "worker_init_fn"]
