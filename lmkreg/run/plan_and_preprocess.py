"""``lmkreg_plan_and_preprocess``: the command line of lmkreg.planning.plan_and_preprocess (its
help text is that module's docstring)."""
from __future__ import annotations

import sys
from typing import Optional, Sequence

import lmkreg.planning.plan_and_preprocess as planning_module
from lmkreg.cli_utils import add_progress_option, friendly_errors, make_parser
from lmkreg.config.plans import PLANS_FILE, Plans
from lmkreg.errors import ConfigurationError
from lmkreg.parallel import hide_progress
from lmkreg.planning.plan_and_preprocess import describe, plan_and_preprocess
from lmkreg.planning.planner import Budget
from lmkreg.threads import configure_threads


@friendly_errors
def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = make_parser("lmkreg_plan_and_preprocess", planning_module.__doc__)
    parser.add_argument("-d", "--dataset", required=True, help="dataset id (e.g. 1) or name (Dataset001_Phantom)")
    parser.add_argument("--budget", default=None,
                        help="'cpu' or a GPU memory size in GB (default: cpu unless a CUDA device is present)")
    parser.add_argument("--workers", type=int, default=None, help="processes (default: available cores)")
    parser.add_argument("--num-folds", type=int, default=5, help="number of cross-validation folds (default 5)")
    parser.add_argument("--overwrite-plans", action="store_true", help="plan again even if plans.json exists")
    parser.add_argument("--plan-only", action="store_true", help="write plans and splits, do not preprocess")
    add_progress_option(parser)
    parser.add_argument("--cascade", choices=["auto", "yes", "no"], default="auto",
                        help="plan a localizer and refine stage per modality besides the single stage: auto (where "
                             "the framing varies or a crop allows a finer spacing), yes or no (default auto)")
    args = parser.parse_args(argv)
    if args.no_progress:  # issue 25: every command with a progress bar can hide it
        hide_progress()
    configure_threads()  # noqa: E702  (threads from the free cores)
    try:
        budget = Budget.parse(args.budget) if args.budget else None
    except ValueError as exc:
        raise ConfigurationError(str(exc)) from None
    cascade = {"auto": None, "yes": True, "no": False}[args.cascade]
    out = plan_and_preprocess(args.dataset, budget, args.workers, args.num_folds, args.overwrite_plans, args.plan_only,
                              cascade)
    print(describe(Plans.load(out / PLANS_FILE)))
    print(f"plans and preprocessed data in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
