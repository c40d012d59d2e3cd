"""``lmkreg_generate_phantoms``: write a synthetic paired MR/TRUS dataset with ground truth."""
from __future__ import annotations

import argparse
import time
from typing import Optional, Sequence

from lmkreg.cli_utils import friendly_errors, make_parser
from lmkreg.paths import raw_root
from lmkreg.phantoms.presets import PRESETS
from lmkreg.errors import ConfigurationError
from lmkreg.phantoms.generator import generate_dataset


def build_parser() -> argparse.ArgumentParser:
    presets = ", ".join(f"{n} (MR {'x'.join(map(str, p.mr_size_xyz))} @ {p.mr_spacing_xyz} mm, "
                        f"US {'x'.join(map(str, p.us_size_xyz))} @ {p.us_spacing_xyz} mm)" for n, p in PRESETS.items())
    parser = make_parser(
        "lmkreg_generate_phantoms", raw=False,
        description="Generate a synthetic dataset of paired T2-like MR and TRUS volumes with ground truth "
                    "(prostate masks, landmarks apex / bladder_neck / posterior_median in LPS mm, and the true "
                    "rigid MR->US transform) in $LMKREG_raw/DatasetNNN_NAME.",
        epilog=f"Presets: {presets}. Same seed -> identical dataset. See documentation/phantoms.md.")
    parser.add_argument("-d", "--dataset", type=int, required=True, help="dataset number (1-999)")
    parser.add_argument("-n", "--num-train", type=int, required=True, help="number of training cases (imagesTr)")
    parser.add_argument("--num-test", type=int, default=0, help="number of held-out test cases (imagesTs)")
    parser.add_argument("--name", default="Phantom", help="dataset name after DatasetNNN_ (default Phantom)")
    parser.add_argument("--preset", default="mu_regpro", choices=sorted(PRESETS),
                        help="voxel grids and acquisition ranges (default mu_regpro)")
    parser.add_argument("--seed", type=int, default=0, help="dataset seed; each case derives its own (default 0)")
    parser.add_argument("--workers", type=int, default=None,
                        help="worker processes (default: min(2, available CPUs))")
    parser.add_argument("--overwrite", action="store_true", help="replace existing case files of this dataset")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser


@friendly_errors
def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)

    if not 0 < args.dataset < 1000:
        raise ConfigurationError(f"dataset id must be 1-999, got {args.dataset}")
    if args.seed < 0:
        raise ConfigurationError(f"seed must be >= 0, got {args.seed}")
    start = time.perf_counter()
    folder = generate_dataset(args.dataset, args.num_train, args.num_test, name=args.name, preset=args.preset,
                              seed=args.seed, workers=args.workers, overwrite=args.overwrite, root=raw_root(),
                              progress=not args.no_progress)
    n = args.num_train + args.num_test
    print(f"wrote {n} phantom case(s) ({args.num_train} training, {args.num_test} test, preset {args.preset}) "
          f"in {time.perf_counter() - start:.1f} s to {folder}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
