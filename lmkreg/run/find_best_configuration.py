"""``lmkreg_find_best_configuration``: the command line of lmkreg.evaluation.model_selection (its
help text is that module's docstring)."""
from __future__ import annotations

import sys
from typing import Optional, Sequence

import lmkreg.evaluation.model_selection as model_selection
from lmkreg.cli_utils import add_progress_option, friendly_errors, make_parser
from lmkreg.dataset.layout import check_dataset_modality
from lmkreg.evaluation.model_selection import FOLDS, find_best_configuration, format_p
from lmkreg.parallel import hide_progress


@friendly_errors
def main(argv: Optional[Sequence[str]] = None) -> int:
    p = make_parser("lmkreg_find_best_configuration", model_selection.__doc__)
    p.add_argument("-d", "--dataset", required=True, help="dataset id or name")
    p.add_argument("-m", "--modality", required=True, help="modality, e.g. MR or US")
    p.add_argument("-tr", "--trainer", dest="trainers", nargs="+", default=None,
                   help="trainers to compare (default: every trained TRAINER__MODALITY folder)")
    p.add_argument("-f", "--folds", nargs="+", type=int, default=list(FOLDS),
                   help="folds that must all be present (default 0 1 2 3 4)")
    add_progress_option(p)
    args = p.parse_args(argv)
    if args.no_progress:  # issue 25: every command with a progress bar can hide it
        hide_progress()
    check_dataset_modality(args.dataset, args.modality)  # -m mr lists the dataset's modalities
    doc = find_best_configuration(args.dataset, args.modality, args.trainers, args.folds)
    for trainer, why in doc["incomplete"].items():
        print(f"skipped {trainer}: {why}", file=sys.stderr)
    if not doc["best_trainer"]:
        print(f"error: no trainer of {doc['dataset']} {args.modality} has complete cross-validation results "
              f"for folds {' '.join(map(str, doc['folds']))}", file=sys.stderr)
        return 1
    width = max(len(s["trainer"]) for s in doc["ranking"])
    print(f"{doc['dataset']} {args.modality}, folds {' '.join(map(str, doc['folds']))}:")
    for s in doc["ranking"]:
        pv = f"  p vs best {format_p(s['p_vs_best'])}" if "p_vs_best" in s else ""
        print(f"  {s['rank']}. {s['trainer']:<{width}}  MRE {s['mre_mm']:.2f} ± {s['sd_mm']:.2f} mm "
              f"({s['num_cases']} cases){pv}")
    print(f"best: {doc['best_trainer']}")
    print("wrote " + " and ".join(doc["files"]))
    print(f"predict with:\n  {doc['predict_command']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
