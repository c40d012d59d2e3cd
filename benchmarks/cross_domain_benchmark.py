"""Cross-domain benchmark: leave one protocol family out (issue 27).

Four phantom protocol families (lmkreg/phantoms/presets.py, documentation/phantoms.md) stand in for
scanners, coils and probes a model never saw.  For each held-out family H the training set is the
other families' training cases; the test set is every family's held-out test cases, so one model
gives both numbers:

* cross-domain: test cases of H (a protocol the model never saw, nor did its plan);
* in-domain: test cases of the training families (same protocols, unseen patients).

Each leave-one-family-out dataset is planned and preprocessed on its own training cases only, then
trained per modality on all of them (fold 'all') for a FIXED number of epochs x iterations, so the
result does not depend on how busy the machine is.  Scores come from lmkreg's own API: the
predictor (its landmark JSON with the trust extras), and lmkreg_evaluate's evaluate_cases (radial
errors per landmark, SRE / Dice / rotation of the landmark registration against the ICP
reference, the 90 % error radii and flags).

Variants (``--variants``): ``default`` = the plans' augmentation as planned; ``nnunet_intensity``
= the same plans with the nnU-Net intensity recipe through batchgenerators switched on
(lmkreg.config.augmentation.NNUNET_INTENSITY_RECIPE) instead of lmkreg's own intensity transforms;
``nnunet_scale`` = the plans with nnU-Net's scaling range 0.7-1.4 instead of lmkreg's 0.85-1.15
(a gland up to 1.4x larger or smaller than any in training is seen in training); ``nnunet_scaling`` =
that range drawn for 20 % of the samples, as nnU-Net does (lmkreg scales 50 %).

    python benchmarks/cross_domain_benchmark.py [--train-per-family 12] [--test-per-family 6]
        [--epochs 8] [--iterations 25] [--trainers HeatmapMatchingTrainer LandmarkTrainer_Variance]

Writes benchmarks/results/cross_domain.json (merged: models already trained under --root are only
re-scored) and documentation/benchmark_cross_domain.md.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import lmkreg  # noqa: F401  (first: the OpenMP thread policy must be set before numpy/torch load)
import numpy as np
import torch
from scipy.stats import wilcoxon

from _common import log, use_root  # benchmarks/_common.py (run as a script: on sys.path)

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "cross_domain.json"
REPORT = REPO / "documentation" / "benchmark_cross_domain.md"
FAMILIES = ("family_a_3T_thin_small", "family_b_1.5T_thick_small", "family_c_endorectal_small",
            "family_d_large_gland_small")
POOL_ID = 970  # + family index: each family's generated cases
LOFO_ID = 980  # + held-out index (+ 10 per variant after the first)
VARIANT_OFFSET = {"default": 0, "nnunet_intensity": 10, "nnunet_scale": -20, "nnunet_scaling": -30}
VARIANT_SUFFIX = {"default": "", "nnunet_intensity": "Aug", "nnunet_scale": "Scale", "nnunet_scaling": "Scaling"}
NNUNET_SCALE = [0.7, 1.4]  # nnU-Net's default scaling range (lmkreg's default: 0.85-1.15)
NNUNET_P_SCALE = 0.2  # the share of samples nnU-Net scales (lmkreg's default: 0.5)
MODALITIES = ("MR", "US")
TARGET_RATIO = 1.5
OWN_RUNS: set = set()  # runs this process scored (they replace the file's; the file's others are kept)
TARGET_MRE = {"MR": 1.5, "US": 2.0}
DEFAULT_SEED = 2027


NOTES = """
## Reading (written by hand after the runs of 2026-12-07: trained 15:07-18:41, every row re-predicted at 18:30-18:45; the paper's trainer, the scaling range and the folds 20:08-21:57; the second seed 22:40-00:10)

**Scale, and what limits every number here.** All four families held out, HeatmapMatchingTrainer,
400 optimiser steps per model (8 epochs x 50 iterations of batch 2; the project's minimum for a usable
model) on the held-in families' 36 training cases, 6 test pairs per family, for the default augmentation
and the nnU-Net intensity recipe: `python benchmarks/cross_domain_benchmark.py --root ROOT --epochs 8
--iterations 50 [--variants nnunet_intensity]` (held-out A's default MR model continued a 350-step model
of an interrupted run to 400). Every row was predicted again with the code of commit 7570e88 (single-stage
re-centring; the benchmark predicts anew on every run), without mirror TTA. The 2 cores were shared
(load 3-5); lengths are fixed in steps, so the result does not depend on it. In-domain MRE is 2.4-2.7 mm
MR at this length (the demo's longer-trained models reach about 1.1 mm), so the absolute targets cannot be
met by any family; the ratios and the per-family table are the informative part. The in-domain US mean
includes family D's test cases (9.4-10.6 mm even with D in training): read the per-family table.

**Held out A (3 T, thin slices) and B (1.5 T, thick slices): no domain gap.** A: MR 2.65 mm cross vs
2.69 in-domain, US 2.31. B: MR 2.76 vs 2.74, US 3.25. The plan resamples every family to about 3 x 2 x 2
mm (z, y, x) voxels, so slice thickness is what the network always sees.

**Held out C (endorectal coil: strong bias field): an MR gap on the first seed, and the trust layer does not
see it** (the second seed, below, shows no MR gap for C but a US one: read this paragraph as one draw).
MR 4.98 mm cross vs 2.49 in-domain (ratio 2.00; apex 6.91, posterior median 5.25 mm); US 2.89 mm, no
gap (the coil changes the MR only). Not one of C's MR landmarks was flagged: fold-'all' models have no
calibration cases (no error radius) and C's images pass the plausibility checks. An intensity-trend check
was tried against the trust benchmark's bias fields and dropped (benchmark_log.md: it flagged accurate
thick-slice scans as often).

**Held out D (80-150 mL glands, whole-pelvis MR, deep 5 MHz TRUS, base cuts): not found.** MR 8.33 mm
(3.5x in-domain), US 33.8 mm. Planned from A-C (20-60 mL glands), the network's field of view is about
98 x 67 x 45 mm MR and 86 x 72 x 50 mm US (z, y, x). Re-centring the crop on an off-centre first answer
(commit 7570e88) brought MR from 11.38 and US from 39.1 mm. A larger field of view at inference does not
close the rest (benchmark_log.md, 2026-12-07 night: 1.5x the crop or a 1.4x coarser grid, on every family;
always: C's MR 4.99 -> 16-43 mm; only on implausible answers: D's US halved but every case still > 5 mm);
4 of D's 6 US answers come out as mirrored triangles: the model does not recognise a gland that large.
What does help is showing such sizes in training (nnU-Net's scaling range, below). The trust layer sees
D: every US landmark and most pairs are flagged; a re-centred answer whose landmarks moved > 5 mm is
flagged for it. Not measured: the cascade's whole-image localizer on these datasets.

**nnU-Net intensity recipe (batchgenerators) vs the default augmentation, 400 steps, one seed.**
Cross-domain MR / US: A 2.65 / 2.31 -> 2.51 / 2.38 mm, B 2.76 / 3.25 -> 2.81 / 3.76, C 4.98 / 2.89 ->
4.69 / 2.64, D 8.33 / 33.8 -> 4.44 / 41.2. In-domain MR / US: A 2.69 / 5.09 -> 2.72 / 5.08, B 2.74 / 4.62 ->
2.64 / 4.70, C 2.49 / 5.50 -> 2.52 / 5.91, D 2.39 / 2.29 -> 2.59 / 2.71. MR cross-domain better in three
families of four (D by half), US cross-domain worse in three of four, in-domain US worse in C and D:
no change that holds for both modalities, on one seed and 6 test pairs per family. Not the default. A
per-modality default (the recipe for MR only) would need a second seed first.

**nnU-Net's scaling range (0.7-1.4 instead of 0.85-1.15), 400 steps, one seed** (`--variants
nnunet_scale`, started with the code of 3d0466e; lmkreg itself is unchanged since 42e6e59, the results file records the HEAD at scoring time). Cross-domain MR / US
(default -> scaling range): A 2.65 / 2.31 -> 2.38 / 2.21, B 2.76 / 3.25 -> 2.69 / 3.52, C 4.98 / 2.89 -> 4.82
/ 2.58, D 8.33 / 33.8 -> 3.95 / 27.2 mm: MR better on all four unseen families (D by half: its large glands
are now within the sizes training shows), US on three of four (B worse by 0.27 mm). In-domain MR / US: A
2.69 / 5.09 -> 2.52 / 4.94, B 2.74 / 4.62 -> 2.61 / 5.08, C 2.49 / 5.50 -> 2.55 / 5.01, D 2.39 / 2.29 ->
2.41 / 2.44. Cross-domain SRE: A 3.15 -> 2.34, B 6.74 -> 7.77, C 4.90 -> 4.62, D 41.7 -> 30.3 mm, but some
in-domain pair sets got worse (family D's pairs under held-out A 7.5 -> 13.4, family B's under held-out C
5.2 -> 10.7 mm; 6 pairs each, one bad pair moves them). The most consistent cross-domain gain measured so
far, on one seed; tested on a second seed and with the accuracy benchmark (next paragraph): not adopted.

**Second seed (stop 34, 2026-12-07 22:40-00:10; `--seed 3027 --root /work/xd3 --variants default nnunet_scale`,
lmkreg code 3711a80, unchanged through 9b21a51).** New phantoms for every family (generator seed 3027 + family) and a new
training seed, the same 400-step protocol; both seeds' rows are in the tables (variant ", seed 3027").
(1) *The default on two seeds*, cross-domain MR / US: A 2.65 / 2.31 and 2.50 / 2.69, B 2.76 / 3.25 and
2.79 / 2.93, C 4.98 / 2.89 and 2.84 / 6.58, D 8.33 / 33.8 and 9.42 / 32.1 mm. C's MR gap of the first seed
(ratio 2.0) is absent on the second (1.09), which shows a US gap instead (1.45): with 6 test pairs per family
and one training per row, a single seed moves a family's cross-domain MRE by up to 2-4 mm, as much as any
variant did. Only A/B's "no gap" and D's failure hold on both seeds. (2) *The scaling range on the second
seed*: cross-domain MR better on 1 of 4 families (B 2.79 -> 2.75; A 2.50 -> 2.85, C 2.84 -> 2.88, D 9.42 ->
19.42), US on 2 (D 32.1 -> 8.55, A 2.69 -> 2.64; B 2.93 -> 3.09, C 6.58 -> 7.06). Paired over both seeds'
48 unseen-family test pairs: MR median change +0.00 mm (p = 0.80), US -0.00 (p = 0.42), SRE -0.34 (p =
0.07). (3) *In-domain, on the accuracy benchmark* (its own generator, 20 epochs; `accuracy_scale.json`):
MR 1.20 -> 1.32, US 1.34 -> 1.67, SRE 1.69 -> 2.09 mm, MR / US worse on 26 / 32 of 40 cases (paired Wilcoxon
p = 0.02 / < 0.001). The decision rule written before these runs (benchmark_log.md) fails on (2) and (3):
**the default stays 0.85-1.15**. The first seed's gain was mostly seed-to-seed variation. What this
benchmark can resolve: a change must show on both seeds and in the paired test; one seed and a family
count are not enough. Swapping test sets between the two seeds' models (benchmark_log.md, stop 34) splits
the spread: for C's MR about half is the training draw and half the 6-case test draw; C's US 6.58 and D's
means are carried by single cases of 24-77 mm. More test cases per family would cut the test half cheaply.

**nnU-Net's scaling as nnU-Net applies it** (`--variants nnunet_scaling`: 0.7-1.4 drawn for 20 % of the
samples; seed 1, held-out C and D so far, 00:23-00:43). Cross-domain MR / US: C 4.98 -> 5.04 / 2.89 -> 2.83,
D 8.33 -> 7.66 / 33.75 -> 34.92 mm (paired over their 12 test pairs: MR p = 0.34, US p = 0.97). In-domain it
costs little (accuracy benchmark MR 1.27, US 1.36 mm against 1.20 / 1.34), but so far it does not help
across domains either; A, B and a second seed are not run.

**The paper's trainer (LandmarkTrainer_Variance: DSNT with the variance regulariser), 400 steps**
(`--trainers LandmarkTrainer_Variance`, started at 42e6e59). Cross-domain MR / US: A 2.80 / 3.20, B 4.19 /
9.00, C 7.58 / 4.97, D 12.46 / 32.35 mm; in-domain MR 3.16-7.38, US 3.58-11.68 mm (HeatmapMatchingTrainer:
2.39-2.74 / 2.29-5.50). Worse in every cell at this length; it needs longer training (the accuracy
benchmark's 20 epochs) to compete, so the best trainer stays HeatmapMatchingTrainer.

**Single fold vs ensemble (held-out C, MR: the family with the MR gap)** (`--held-out 2 --folds 0 1 2 3 4
--modalities MR`, started at bfa1d43; five 400-step folds on 4/5 of the 36 cases each, mirror TTA on; US from
its fold-'all' model). MR cross / in-domain: fold 0 5.09 / 2.37, 5-fold ensemble 4.87 / 2.24, fold 'all'
(no TTA) 4.98 / 2.49 mm: the ensemble is the most accurate, by 0.1-0.2 mm, and the gap remains (ratio
2.17). With the folds' calibration C's MR errors are partly seen: 90 % radii cover 56 % (ensemble) and 67
% (fold 0) of C's landmarks against 98 % in-domain, and 17-22 % of C's MR landmarks are flagged (fold
'all' alone: none, it has no radii); in-domain 0-2 % flagged. A calibration does not transfer to a new
protocol, but a user who trains the folds is warned on part of it.

**Targets (issue 27), best trainer, 400 steps:** cross/in-domain ratio <= 1.5 met for A (0.99 MR, 0.45
US), B (1.01, 0.70) and C's US (0.52); missed for C's MR (2.00, by 0.50x) and D (3.49 MR, 14.7 US). MRE
<= 1.5 mm MR / 2.0 mm US on the unseen family: missed for every family (MR 2.65 / 2.76 / 4.98 / 8.33,
US 2.31 / 3.25 / 2.89 / 33.8 mm). Second seed: ratio met for A, B and C (MR 1.09; US 1.45, just under
the bound: C's US is 6.58 mm against 4.54 in-domain), missed for D (3.14 MR, 10.2 US); MRE missed everywhere. Limits: the training
length (in-domain is no better), D's gland sizes, and one seed's noise (C's gap moves between modalities).

**Trust layer.** The 90 % radius coverage is n/a: fold-'all' models have no calibration cases. The
flag fractions come from the predictions' trust extras, via lmkreg_evaluate.
"""


def run_key(held: int, trainer: str, variant: str, seed: int, *more: str) -> str:
    """Results key: the first seed's rows keep their short keys; another seed (its own phantoms and
    training seed, under its own --root) is a separate row."""
    return "|".join([FAMILIES[held], trainer, variant, *more] + ([f"seed {seed}"] if seed != DEFAULT_SEED else []))


def parse_key(key: str) -> tuple[str, str, str, list[str], int]:
    """run_key's inverse: held-out family, trainer, variant, the other parts (a folds row's label) and
    the seed."""
    fam, trainer, variant, *more = key.split("|")
    seed = int(more.pop()[len("seed "):]) if more and more[-1].startswith("seed ") else DEFAULT_SEED
    return fam, trainer, variant, more, seed


def _key_parts(key: str) -> tuple[str, str, str]:
    """held-out family, trainer and variant of a results key; a folds row's or another seed's variant
    names its folds / seed."""
    fam, trainer, variant, more, seed = parse_key(key)
    return fam, trainer, ", ".join([variant, *more] + ([f"seed {seed}"] if seed != DEFAULT_SEED else []))


def letter(i: int) -> str:
    return "ABCDEFGH"[i]


def _train_fn():
    """lmkreg's train(): the stable function, wherever the package keeps it (issue 28 moves modules)."""
    try:
        from lmkreg.run.train import train
    except ImportError:  # pragma: no cover - before the restructuring (issue 28)
        from lmkreg.training.run import train  # type: ignore[no-redef]
    return train


def _model_folder(dataset_name: str, trainer: str, modality: str) -> Path:
    try:
        from lmkreg.run.train import model_folder
    except ImportError:  # pragma: no cover - before the restructuring (issue 28)
        from lmkreg.training.run import model_folder  # type: ignore[no-redef]
    return model_folder(dataset_name, trainer, modality)


def generate_pools(root: Path, n_train: int, n_test: int, seed: int, workers: int) -> list:
    """One raw dataset per family (its own seed) with n_train + n_test cases; kept when complete."""
    from lmkreg.dataset.layout import Dataset, dataset_folder_name
    from lmkreg.phantoms.generator import generate_dataset

    pools = []
    for i, fam in enumerate(FAMILIES):
        folder = root / "raw" / dataset_folder_name(POOL_ID + i, f"Fam{letter(i)}")
        if not (folder / "dataset.json").is_file() or len(Dataset(folder).cases("Tr")) != n_train \
                or len(Dataset(folder).cases("Ts")) != n_test:
            log(f"generating {n_train} + {n_test} cases of {fam}")
            generate_dataset(POOL_ID + i, n_train, n_test, name=f"Fam{letter(i)}", preset=fam, seed=seed + i,
                             workers=workers, root=root / "raw", overwrite=True, progress=False)
        pools.append(Dataset(folder))
    return pools


def _copy_case(src, dst, case: str, split: str) -> None:
    files = [(src.transform_path(case, split), dst.transform_path(case, split))]
    for m in MODALITIES:
        files += [(src.image_path(case, m, split), dst.image_path(case, m, split)),
                  (src.mask_path(case, m, split), dst.mask_path(case, m, split)),
                  (src.landmarks_path(case, m, split), dst.landmarks_path(case, m, split))]
    for a, b in files:
        if a.is_file() and not b.is_file():
            b.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(a, b)


def variant_override(variant: str, modality: str, augmentation: dict) -> dict:
    """The transforms a variant replaces in one configuration's training.augmentation."""
    from lmkreg.config.augmentation import nnunet_intensity_override
    from lmkreg.config.modality import modality_kind

    if variant == "nnunet_intensity":
        return nnunet_intensity_override(modality_kind(modality))
    if variant == "nnunet_scale":  # one spatial parameter; the others as planned
        return {"spatial": {**(augmentation.get("spatial") or {}), "scale": NNUNET_SCALE}}
    if variant == "nnunet_scaling":  # nnU-Net's range with nnU-Net's probability
        return {"spatial": {**(augmentation.get("spatial") or {}), "scale": NNUNET_SCALE, "p_scale": NNUNET_P_SCALE}}
    raise ValueError(f"unknown variant {variant!r}")


def lofo_dataset(root: Path, pools: list, held: int, variant: str, workers: int):
    """Raw dataset: training = other families' Tr cases, test = every family's Ts cases; planned and
    preprocessed on its own training cases.  The nnunet_intensity variant edits the plans'
    training.augmentation to the nnU-Net recipe (the plans override a user would write)."""
    from lmkreg.dataset.layout import Dataset, DatasetSpec, dataset_folder_name, open_dataset
    from lmkreg.planning.plan_and_preprocess import plan_and_preprocess

    did = LOFO_ID + held + VARIANT_OFFSET[variant]
    name = f"XDomain{letter(held)}{VARIANT_SUFFIX[variant]}"
    folder = root / "raw" / dataset_folder_name(did, name)
    tr = [(p, c) for i, p in enumerate(pools) if i != held for c in p.cases("Tr")]
    ts = [(p, c) for p in pools for c in p.cases("Ts")]
    if not (folder / "dataset.json").is_file():
        spec = DatasetSpec(name=folder.name, num_training=len(tr), num_test=len(ts),
                           description=f"leave-one-family-out: {FAMILIES[held]} held out",
                           extra={"held_out_family": FAMILIES[held], "variant": variant})
        ds = Dataset.create(folder, spec)
        for p, c in tr:
            _copy_case(p, ds, c, "Tr")
        for p, c in ts:
            _copy_case(p, ds, c, "Ts")
    pre = plan_and_preprocess(str(did), workers=workers)
    if variant != "default":  # the override a user writes into plans.json (training.augmentation)
        from lmkreg.io.atomic import atomic_write_json

        plans_file = pre / "plans.json"
        plans = json.loads(plans_file.read_text())
        for cfg in plans["configurations"].values():
            aug = cfg["training"].get("augmentation") or {}
            cfg["training"]["augmentation"] = {**aug, **variant_override(variant, cfg["modality"], aug)}
        atomic_write_json(plans_file, plans)
    return open_dataset(did)


def predict(ds, trainer: str, modality: str, out: Path, folds: tuple[str, ...] = ("all",),
            mirror_tta: bool = False) -> Path:
    """lmkreg JSON (with the trust extras) for every test volume of the modality, predicted anew
    each run (seconds per model): a run after a change to prediction measures that change.
    `folds`: fold 'all' (the default rows) or the cross-validation folds to ensemble."""
    from lmkreg.inference.predictor import LandmarkPredictor
    from lmkreg.io.images import read_image
    from lmkreg.io.landmarks import write_lmkreg_json

    label = "" if tuple(folds) == ("all",) else f"_folds{''.join(folds)}{'_tta' if mirror_tta else ''}"
    pred_dir = out / "pred" / ds.name / f"{trainer}__{modality}{label}"
    predictor = LandmarkPredictor(_model_folder(ds.name, trainer, modality), folds=list(folds), mirror_tta=mirror_tta)
    for case in ds.cases("Ts", modality):
        pred = predictor.predict(read_image(ds.image_path(case, modality, "Ts")))
        write_lmkreg_json(pred.with_extras(), pred_dir / f"{case}_{modality}.json")
    return pred_dir


def family_of(case: str) -> int:
    return "ABCDEFGH".index(case[3])  # FamX_NNN


def summarise(results, names: list[str], held: int) -> dict:
    """Per domain (in / cross): MRE per modality and landmark, SRE, Dice, flags, radius coverage."""
    out: dict = {}
    for domain, pick in (("in_domain", lambda f: f != held), ("cross_domain", lambda f: f == held)):
        rs = [r for r in results if pick(family_of(r.case))]
        d: dict = {"cases": len(rs)}
        for m in MODALITIES:
            per_case = [r.mre_mm(m) for r in rs if m in r.errors_mm]
            per_lm = {n: float(np.nanmean([r.errors_mm[m].get(n, np.nan) for r in rs if m in r.errors_mm]))
                      for n in names}
            radii = [(r.errors_mm[m][n], (r.radii_mm.get(m) or {}).get(n)) for r in rs if m in r.errors_mm
                     for n in names if np.isfinite(r.errors_mm[m].get(n, np.nan))]
            covered = [e <= rad for e, rad in radii if rad is not None]
            flags = [bool((r.flagged.get(m) or {}).get(n)) for r in rs for n in names if m in r.errors_mm]
            d[m] = {"mre_mm": float(np.nanmean(per_case)) if per_case else float("nan"),
                    "sd_mm": float(np.nanstd(per_case, ddof=1)) if len(per_case) > 1 else 0.0,
                    "per_landmark_mm": per_lm,
                    "radius90_coverage": float(np.mean(covered)) if covered else None,
                    "radius_available": len(covered), "landmarks_flagged_fraction": float(np.mean(flags)) if flags else None}
        d["sre_mm"] = float(np.nanmean([r.sre_predicted_mm for r in rs]))
        d["dice"] = float(np.nanmean([r.dice_predicted for r in rs]))
        d["rotation_deg"] = float(np.nanmean([r.rotation_predicted_deg for r in rs]))
        d["pairs_flagged_fraction"] = float(np.mean([bool(r.pair_flagged) for r in rs])) if rs else None
        out[domain] = d
    for m in MODALITIES:
        i, c = out["in_domain"][m]["mre_mm"], out["cross_domain"][m]["mre_mm"]
        out[f"ratio_{m}"] = c / i if i > 0 else float("nan")
    out["ratio_sre"] = out["cross_domain"]["sre_mm"] / out["in_domain"]["sre_mm"]
    # per test pair (paired tests between rows on the same cases): MRE per modality, SRE
    out["per_case"] = {r.case: {**{m: (r.mre_mm(m) if m in r.errors_mm else None) for m in MODALITIES},
                                "sre_mm": float(r.sre_predicted_mm)} for r in results}
    out["per_family"] = {}  # test MRE per family and modality: which in-domain family weighs on the mean
    for f in sorted({family_of(r.case) for r in results}):
        rs = [r for r in results if family_of(r.case) == f]
        out["per_family"][FAMILIES[f]] = {m: float(np.nanmean([np.nanmean([r.errors_mm[m].get(n, np.nan)
                                                                            for n in names]) for r in rs
                                                               if m in r.errors_mm])) for m in MODALITIES}
        out["per_family"][FAMILIES[f]]["sre_mm"] = float(np.nanmean([r.sre_predicted_mm for r in rs]))
    return out


def train_missing(args, ds, trainer: str, modality: str, fold: str, key: str) -> Optional[dict]:
    """Train one fold unless its final checkpoint exists (an interrupted run continues from its last
    epoch: same seed, same length); its seconds and validation summary, or None if it was trained."""
    done = _model_folder(ds.name, trainer, modality) / f"fold_{fold}" / "checkpoint_final.pth"
    if done.is_file():
        return None
    log(f"{key}: training {modality} fold {fold} ({args.epochs} x {args.iterations} iterations)")
    t0 = time.perf_counter()
    s = _train_fn()(str(ds.spec.dataset_id), modality, fold, trainer, num_workers=args.workers, seed=args.seed,
                    num_epochs=args.epochs, iterations_per_epoch=args.iterations, progress_bar=False,
                    resume=(done.parent / "checkpoint_latest.pth").is_file())
    return {"seconds": round(time.perf_counter() - t0, 1),
            "summary": {k: v for k, v in (s or {}).items() if isinstance(v, (int, float, str))}}


def score(args, results: dict, ds, held: int, key: str, preds: dict, started: float,
          modalities: Sequence[str] = MODALITIES, **extra) -> None:
    """Evaluate one row's predictions (lmkreg_evaluate's evaluate_cases), record it under `key`
    with `extra` and save the results file."""
    from lmkreg.evaluation.evaluate import evaluate_cases

    names = ds.spec.landmarks
    log(f"{key}: evaluating {len(ds.cases('Ts'))} test pairs")
    cases, failed = evaluate_cases(ds, ds.cases("Ts"), "Ts", preds, names, workers=args.workers, progress=False)
    summary = summarise(cases, names, held)
    summary.update(failed=failed, **extra, epochs=args.epochs, iterations=args.iterations,
                   n_train_cases=len(ds.cases("Tr")), commit=git_commit())
    results["runs"][key] = summary
    OWN_RUNS.add(key)
    log(f"{key}: " + "; ".join(f"{m} in {summary['in_domain'][m]['mre_mm']:.2f} / cross "
                               f"{summary['cross_domain'][m]['mre_mm']:.2f} mm" for m in modalities))
    save(results, args, started)


def run_folds(args, results: dict, ds, held: int, trainer: str, variant: str, work: Path, started: float) -> None:
    """Single fold vs ensemble (issue 27): train the cross-validation folds of `args.modalities`
    (same length as the fold-'all' rows), then score fold 0 alone and the ensemble of every fold
    given, both with mirror TTA (the configuration whose calibrated radii exist).  The other
    modality's predictions come from its fold-'all' model, so the pair figures mix the two."""
    for m in args.modalities:
        for f in args.folds:
            train_missing(args, ds, trainer, m, f, run_key(held, trainer, variant, args.seed))
    for label, folds in ((f"fold {args.folds[0]}", args.folds[:1]), (f"folds {'-'.join(args.folds)}", args.folds)):
        key = run_key(held, trainer, variant, args.seed, f"{label} (TTA; {'+'.join(args.modalities)})")
        preds = {m: (predict(ds, trainer, m, work, tuple(folds), mirror_tta=True) if m in args.modalities
                     else predict(ds, trainer, m, work)) for m in MODALITIES}
        score(args, results, ds, held, key, preds, started, args.modalities, folds=list(folds))


def git_commit() -> str:
    try:
        return subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train-per-family", type=int, default=12)
    p.add_argument("--test-per-family", type=int, default=6)
    p.add_argument("--epochs", type=int, default=8, help="fixed number of epochs per model (default 8)")
    p.add_argument("--iterations", type=int, default=25, help="fixed iterations per epoch (default 25)")
    p.add_argument("--trainers", nargs="+", default=["HeatmapMatchingTrainer"])
    p.add_argument("--held-out", nargs="+", type=int, default=[0, 1, 2, 3],
                   help="indices of the families to hold out (default all four)")
    p.add_argument("--variants", nargs="+", default=["default"], choices=sorted(VARIANT_OFFSET))
    p.add_argument("--folds", nargs="+", default=["all"],
                   help="'all' (default) or cross-validation folds, e.g. 0 1 2 3 4: fold 0 vs their ensemble")
    p.add_argument("--modalities", nargs="+", default=list(MODALITIES), choices=MODALITIES,
                   help="with --folds: the modalities whose folds are trained (the other uses fold 'all')")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--seed", type=int, default=DEFAULT_SEED,
                   help="phantoms and training; another seed needs its own --root (models are reused by path)")
    p.add_argument("--root", type=Path, default=Path.home() / "lmkreg_xdomain")
    p.add_argument("--report-only", action="store_true", help="rewrite the report from the results file")
    args = p.parse_args()
    use_root(args.root)
    results: dict = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    results.setdefault("runs", {})
    if not args.report_only:
        run(args, results)
    write_report(results)


def run(args, results: dict) -> None:
    started = time.perf_counter()
    pools = generate_pools(args.root, args.train_per_family, args.test_per_family, args.seed, args.workers)
    work = args.root / "outputs"
    for variant in args.variants:
        for held in args.held_out:
            ds = lofo_dataset(args.root, pools, held, variant, args.workers)
            for trainer in args.trainers:
                if args.folds != ["all"]:
                    run_folds(args, results, ds, held, trainer, variant, work, started)
                    continue
                key = run_key(held, trainer, variant, args.seed)
                preds, seconds = {}, {}
                for m in MODALITIES:
                    trained = train_missing(args, ds, trainer, m, "all", key)
                    if trained:
                        seconds[m], seconds[f"{m}_summary"] = trained["seconds"], trained["summary"]
                    preds[m] = predict(ds, trainer, m, work)
                score(args, results, ds, held, key, preds, started,
                      train_seconds=seconds or results["runs"].get(key, {}).get("train_seconds"))
    save(results, args, started)


def save(results: dict, args, started: float) -> None:
    results["families"] = list(FAMILIES)
    results["machine"] = {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
                          "cuda": torch.cuda.is_available()}
    results.setdefault("commands", [])
    cmd = "python benchmarks/cross_domain_benchmark.py " + " ".join(sys.argv[1:])
    if cmd not in results["commands"]:
        results["commands"].append(cmd)
    results["settings"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    results["last_wall_minutes"] = (time.perf_counter() - started) / 60
    # several processes (e.g. --held-out 0 1 and --held-out 2 3) share the file: keep the runs the
    # others saved meanwhile, this process's own runs win
    if RESULTS.is_file():
        on_disk = json.loads(RESULTS.read_text())
        results["runs"] = {**on_disk.get("runs", {}), **{k: v for k, v in results["runs"].items() if k in OWN_RUNS}}
        for c in on_disk.get("commands", []):
            if c not in results["commands"]:
                results["commands"].insert(0, c)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    tmp = RESULTS.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=2, default=str))
    tmp.replace(RESULTS)


def variant_comparison(runs: dict) -> list[str]:
    """Each variant against the default rows of the same trainer and seed, family by family (the
    decision table for a default change: it must hold on every unseen family and on a second seed)."""
    rows: dict = {}
    for key, r in runs.items():
        fam, trainer, variant, more, seed = parse_key(key)
        if not more:  # folds rows: compared in their own rows
            rows[(trainer, seed, variant, fam)] = r
    pairs = sorted({(t, s, v) for t, s, v, _ in rows if v != "default"})
    if not pairs:
        return []
    cols = (("MR cross", "cross_domain", "MR"), ("US cross", "cross_domain", "US"), ("SRE cross", "cross_domain", None),
            ("MR in", "in_domain", "MR"), ("US in", "in_domain", "US"), ("SRE in", "in_domain", None))

    def value(r: dict, domain: str, m: Optional[str]) -> float:
        return r[domain][m]["mre_mm"] if m else r[domain]["sre_mm"]

    L = ["", "## Each variant against the default (same trainer and seed; mm, default -> variant)", "",
         "| trainer | variant | seed | held out | " + " | ".join(c[0] for c in cols) + " |",
         "|---|---|---|---|" + "---|" * len(cols)]
    summary = []
    for t, seed, v in pairs:
        better = {c[0]: [] for c in cols}
        for _, fam, a, b in matched_rows(rows, t, seed, v):
            cells = []
            for name, domain, m in cols:
                x, y = value(a, domain, m), value(b, domain, m)
                better[name].append(y < x)
                cells.append(f"{x:.2f} -> {y:.2f}")
            L.append(f"| {t} | {v} | {seed} | {fam} | " + " | ".join(cells) + " |")
        if better["MR cross"]:
            summary.append(f"- {t}, {v}, seed {seed}: better on " + ", ".join(
                f"{name} {sum(b)}/{len(b)}" for name, b in better.items()) + " held-out families.")
    return L + [""] + summary + paired_tests(rows, pairs)


def matched_rows(rows: dict, trainer: str, seed: int, variant: str):
    """(held-out index, family, default row, variant row) for each family that has both rows."""
    for held, fam in enumerate(FAMILIES):
        a, b = rows.get((trainer, seed, "default", fam)), rows.get((trainer, seed, variant, fam))
        if a is not None and b is not None:
            yield held, fam, a, b


def paired_tests(rows: dict, pairs: list) -> list[str]:
    """Wilcoxon signed-rank test, variant vs default on the same unseen-family test pairs (each
    held-out family's own test cases, pooled over the four families; both seeds pooled when both
    exist): a per-family count says where, this says whether the change is more than noise."""
    L = []
    for v in sorted({p[2] for p in pairs}):
        for t in sorted({p[0] for p in pairs if p[2] == v}):
            seeds = sorted({s for tt, s, vv in pairs if tt == t and vv == v})
            for label, use in [(f"seed {s}", [s]) for s in seeds] + ([("seeds pooled", seeds)] if len(seeds) > 1 else []):
                diffs: dict = {"MR": [], "US": [], "sre_mm": []}
                for seed in use:
                    for held, _, a, b in matched_rows(rows, t, seed, v):
                        if "per_case" not in a or "per_case" not in b:
                            continue
                        for case, x in a["per_case"].items():
                            y = b["per_case"].get(case)
                            if family_of(case) != held or y is None:
                                continue
                            for k in diffs:
                                if x.get(k) is not None and y.get(k) is not None and np.isfinite(x[k]) and np.isfinite(y[k]):
                                    diffs[k].append(y[k] - x[k])
                cells = []
                for k, name in (("MR", "MR MRE"), ("US", "US MRE"), ("sre_mm", "SRE")):
                    d = np.asarray(diffs[k])
                    if len(d) < 6:
                        continue
                    pval = wilcoxon(d).pvalue if np.any(d != 0) else 1.0
                    cells.append(f"{name} median change {np.median(d):+.2f} mm, better on {int(np.sum(d < 0))}/{len(d)}, "
                                 f"p = {pval:.3f}")
                if cells:
                    L.append(f"- {t}, {v}, {label}, cross-domain test pairs (Wilcoxon): " + "; ".join(cells) + ".")
    return ["", "Paired over the unseen families' test pairs:", ""] + L if L else []


def write_report(results: dict) -> None:
    runs = dict(sorted(results.get("runs", {}).items()))  # held-out family, trainer, variant
    s = results.get("settings", {})
    L = ["# Cross-domain benchmark (leave one protocol family out)", "",
         f"Commands: " + "; ".join(f"`{c}`" for c in results.get("commands", [])) + "  ",
         f"Commit of the last run: {next((r['commit'] for r in reversed(list(results.get('runs', {}).values()))), '?')}. "
         f"Machine: {results.get('machine', {}).get('platform')}, {results.get('machine', {}).get('cpus')} CPUs "
         "(shared with other jobs; training length is fixed in epochs x iterations, not in time).", "",
         f"Data: {s.get('train_per_family')} training + {s.get('test_per_family')} test cases per family, "
         f"families {', '.join(results.get('families', []))} (documentation/phantoms.md). Each model: "
         "the table's optimiser steps (epochs x iterations of batch 2), fold 'all' of the held-in families' "
         "training cases; plans made on those cases only.", "",
         "## MRE (mm) per held-out family", "",
         "| held out | trainer | variant | steps | MR in | MR cross | ratio | US in | US cross | ratio | SRE in | "
         "SRE cross | Dice in | Dice cross |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for key, r in runs.items():
        fam, trainer, variant = _key_parts(key)
        i, c = r["in_domain"], r["cross_domain"]
        steps = r["epochs"] * r["iterations"] if r.get("epochs") and r.get("iterations") else "?"
        L.append(f"| {fam} | {trainer} | {variant} | {steps} | {i['MR']['mre_mm']:.2f} | {c['MR']['mre_mm']:.2f} | "
                 f"{r['ratio_MR']:.2f} | {i['US']['mre_mm']:.2f} | {c['US']['mre_mm']:.2f} | {r['ratio_US']:.2f} | "
                 f"{i['sre_mm']:.2f} | {c['sre_mm']:.2f} | {i['dice']:.3f} | {c['dice']:.3f} |")
    L += ["", "## Per landmark, cross-domain (mm)", "", "| held out | trainer | variant | modality | apex | "
          "bladder_neck | posterior_median | flagged | 90 % radius covers |", "|---|---|---|---|---|---|---|---|---|"]
    for key, r in runs.items():
        fam, trainer, variant = _key_parts(key)
        for m in MODALITIES:
            d = r["cross_domain"][m]
            cov = "n/a" if d["radius90_coverage"] is None else f"{d['radius90_coverage']:.0%} of {d['radius_available']}"
            fl = "n/a" if d["landmarks_flagged_fraction"] is None else f"{d['landmarks_flagged_fraction']:.0%}"
            L.append(f"| {fam} | {trainer} | {variant} | {m} | " + " | ".join(
                f"{d['per_landmark_mm'].get(n, float('nan')):.2f}" for n in ("apex", "bladder_neck", "posterior_median"))
                + f" | {fl} | {cov} |")
    L += ["", "## Test MRE per family (mm; * = the held-out family)", "",
          "| held out | trainer | variant | " + " | ".join(f"{f.replace('_small', '')} MR / US" for f in
                                                            results.get("families", [])) + " |",
          "|---|---|---|" + "---|" * len(results.get("families", []))]
    for key, r in runs.items():
        if "per_family" not in r:
            continue
        fam, trainer, variant = _key_parts(key)
        cells = [(f"{'*' if f == fam else ''}{r['per_family'][f]['MR']:.2f} / {r['per_family'][f]['US']:.2f}"
                  if f in r["per_family"] else "–") for f in results.get("families", [])]
        L.append(f"| {fam} | {trainer} | {variant} | " + " | ".join(cells) + " |")
    L += variant_comparison(runs)
    L += ["", "## Targets (issue 27), per held-out family", "",
          f"Cross-domain MRE within {TARGET_RATIO}x in-domain per modality; MRE <= {TARGET_MRE['MR']} mm MR / "
          f"{TARGET_MRE['US']} mm US on the unseen family. 'missed by' = how far over the bound.", "",
          "| held out | trainer | variant | MR ratio | US ratio | MR cross <= 1.5 | US cross <= 2.0 |", "|---|---|---|---|---|---|---|"]

    def verdict(value: float, bound: float, unit: str) -> str:
        return f"met ({value:.2f})" if value <= bound else f"missed by {value - bound:.2f}{unit} ({value:.2f})"

    for key, r in runs.items():
        fam, trainer, variant = _key_parts(key)
        L.append(f"| {fam} | {trainer} | {variant} | {verdict(r['ratio_MR'], TARGET_RATIO, 'x')} | "
                 f"{verdict(r['ratio_US'], TARGET_RATIO, 'x')} | "
                 f"{verdict(r['cross_domain']['MR']['mre_mm'], TARGET_MRE['MR'], ' mm')} | "
                 f"{verdict(r['cross_domain']['US']['mre_mm'], TARGET_MRE['US'], ' mm')} |")
    REPORT.write_text("\n".join(L) + "\n" + NOTES)


if __name__ == "__main__":
    main()
