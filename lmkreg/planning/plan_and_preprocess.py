"""``lmkreg_plan_and_preprocess -d ID``: fingerprint -> plans -> preprocessed data -> splits.

Output in ``$LMKREG_preprocessed/DatasetNNN_Name/``: ``dataset_fingerprint.json``,
``plans.json``, ``splits_final.json`` and one folder of preprocessed cases per modality.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Optional, Sequence

from lmkreg.config.plans import PLANS_FILE, Configuration, Plans
from lmkreg.config.splits import SPLITS_FILE, load_or_create_splits
from lmkreg.dataset.layout import Dataset, open_dataset
from lmkreg.errors import ConfigurationError
from lmkreg.paths import preprocessed_folder
from lmkreg.planning.fingerprint import compute_fingerprint, save_fingerprint
from lmkreg.planning.planner import Budget
from lmkreg.planning.stages import plan_dataset
from lmkreg.planning.stages import describe_stage
from lmkreg.parallel import parallel_map
from lmkreg.preprocessing.preprocessor import CaseFiles, is_up_to_date, preprocess_case


def plan(dataset: Dataset, budget: Optional[Budget] = None, workers: Optional[int] = None,
         overwrite_plans: bool = False, cascade: Optional[bool] = None) -> Plans:
    """Fingerprint the dataset and write plans.json (an existing, possibly hand-edited plans
    file is kept unless overwrite_plans)."""
    out = preprocessed_folder(dataset)
    plans_path = out / PLANS_FILE
    if plans_path.is_file() and not overwrite_plans:
        print(f"using existing plans {plans_path} (pass --overwrite-plans to plan again)")
        return Plans.load(plans_path)
    start = time.perf_counter()
    fingerprint = compute_fingerprint(dataset, workers)
    save_fingerprint(fingerprint, out)
    n = sum(len(m["cases"]) for m in fingerprint["modalities"].values())
    print(f"fingerprint: {n} image(s) in {time.perf_counter() - start:.1f} s")
    plans = plan_dataset(fingerprint, budget or Budget.default(), cascade)
    plans.save(plans_path)
    return plans


@dataclass(frozen=True)
class _Job:
    files: CaseFiles
    out_dir: Path


def _run_job(job: _Job, conf: Configuration, names: list[str]) -> str:
    if is_up_to_date(job.files, job.out_dir, conf):
        return "skipped"
    preprocess_case(job.files, conf, names, job.out_dir)
    return "done"


def preprocess(dataset: Dataset, plans: Plans, configurations: Optional[Sequence[str]] = None,
               workers: Optional[int] = None, split: str = "Tr") -> dict[str, dict[str, float]]:
    """Preprocess every case of each configuration (default: all of the plans: MR, MR_refine...);
    cases already up to date are skipped.

    Returns per configuration the number of cases done and skipped and the wall time in seconds."""
    counts = {}
    for name in configurations or list(plans.configurations):
        conf = plans.configuration(name)
        out_dir = preprocessed_folder(dataset) / conf.data_identifier
        m = conf.modality  # the dataset's files are named by modality
        jobs = [_Job(CaseFiles(c, dataset.image_path(c, m, split), dataset.mask_path(c, m, split),
                               dataset.landmarks_path(c, m, split)), out_dir)
                for c in dataset.cases(split, m)]
        start = time.perf_counter()
        results = parallel_map(partial(_run_job, conf=conf, names=list(plans.landmarks)), jobs, workers,
                               desc=f"preprocess {name}")
        counts[name] = {"done": results.count("done"), "skipped": results.count("skipped"),
                        "seconds": time.perf_counter() - start}
    return counts


def plan_and_preprocess(dataset_id: str, budget: Optional[Budget] = None, workers: Optional[int] = None,
                        num_folds: int = 5, overwrite_plans: bool = False, skip_preprocessing: bool = False,
                        cascade: Optional[bool] = None) -> Path:
    dataset = open_dataset(dataset_id)
    complete = set.intersection(*[set(dataset.cases("Tr", m)) for m in dataset.spec.modalities])
    if len(complete) < num_folds and not (preprocessed_folder(dataset) / SPLITS_FILE).is_file():
        # refused before the fingerprint, plans or any preprocessing (an existing splits file is reused as is)
        raise ConfigurationError(f"{dataset.folder}: {len(complete)} training case(s) with every modality cannot make "
                                 f"{num_folds} folds; add cases or choose fewer folds (--num-folds)")
    plans = plan(dataset, budget, workers, overwrite_plans, cascade)
    cases = sorted(set.intersection(*[set(dataset.cases("Tr", c.modality)) for c in plans.configurations.values()]))
    load_or_create_splits(preprocessed_folder(dataset), cases, num_folds)
    if not skip_preprocessing:
        for name, c in preprocess(dataset, plans, workers=workers).items():
            rate = f" ({c['done'] / c['seconds']:.2f} cases/s)" if c["done"] and c["seconds"] > 0 else ""
            print(f"{name}: {c['done']} case(s) preprocessed, {c['skipped']} already up to date "
                  f"in {c['seconds']:.1f} s{rate}")
    return preprocessed_folder(dataset)


def describe(plans: Plans) -> str:
    lines = []
    for m, c in plans.configurations.items():
        lines.append(f"{m}: spacing {[round(s, 3) for s in c.spacing_zyx]} mm, input {c.input_size_zyx} voxels "
                     f"(FOV {[round(f, 1) for f in c.field_of_view_mm_zyx]} mm), {len(c.network.strides)} stages, "
                     f"batch {c.batch_size}, est. step {c.estimated_step_seconds:.2f} s")
        if describe_stage(c):
            lines.append(f"    {describe_stage(c)}")
        lines += [f"    note: {n}" for n in c.notes]
    return "\n".join(lines)
