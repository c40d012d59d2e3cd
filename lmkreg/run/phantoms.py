"""``lmkreg_generate_phantoms``: write a synthetic paired MR/TRUS dataset with ground truth."""
from __future__ import annotations

import argparse
import sys
import time
from typing import Optional, Sequence

from lmkreg.cli_utils import add_progress_option, dataset_number, friendly_errors, make_parser
from lmkreg.errors import ConfigurationError
from lmkreg.paths import raw_root
from lmkreg.phantoms.generator import generate_dataset
from lmkreg.phantoms.presets import FAMILIES, PRESETS


def build_parser() -> argparse.ArgumentParser:
    presets = ", ".join(f"{n} (MR {'x'.join(map(str, p.mr_size_xyz))} @ {p.mr_spacing_xyz} mm, "
                        f"US {'x'.join(map(str, p.us_size_xyz))} @ {p.us_spacing_xyz} mm)" for n, p in PRESETS.items())
    parser = make_parser(
        "lmkreg_generate_phantoms", raw=False,
        description="Generate a synthetic dataset of paired T2-like MR and TRUS volumes with ground truth "
                    "(prostate masks, landmarks apex / bladder_neck / posterior_median in LPS mm, and the true "
                    "rigid MR->US transform) in $LMKREG_raw/DatasetNNN_NAME.",
        epilog=f"Presets: {presets}. Same seed -> identical dataset. See documentation/phantoms.md.")
    parser.add_argument("-d", "--dataset", type=dataset_number, required=True,
                        help="dataset number (1-999) or name (DatasetNNN_Name)")
    parser.add_argument("-n", "--num-train", type=int, required=True, help="number of training cases (imagesTr)")
    parser.add_argument("--num-test", type=int, default=0, help="number of held-out test cases (imagesTs)")
    parser.add_argument("--name", default="Phantom", help="dataset name after DatasetNNN_ (default Phantom)")
    parser.add_argument("--preset", default="mu_regpro", choices=sorted(PRESETS) + ["list"],
                        help="voxel grids and acquisition ranges (default mu_regpro); protocol families: "
                             f"{', '.join(FAMILIES)} (each also as NAME_small); 'list' prints every preset")
    parser.add_argument("--seed", type=int, default=0, help="dataset seed; each case derives its own (default 0)")
    parser.add_argument("--workers", type=int, default=None,
                        help="worker processes (default: min(2, available CPUs))")
    parser.add_argument("--overwrite", action="store_true", help="replace existing case files of this dataset")
    add_progress_option(parser)
    return parser


def describe_presets() -> str:
    """One line per preset: grids, and a protocol family's ranges (documentation/phantoms.md)."""
    lines = []
    for n, p in PRESETS.items():
        line = (f"{n:28s} MR {'x'.join(map(str, p.mr_size_xyz))} @ {p.mr_spacing_xyz} mm, "
                f"US {'x'.join(map(str, p.us_size_xyz))} @ {p.us_spacing_xyz} mm")
        if p.family:
            line += (f"\n{'':28s} family {p.family}: in-plane {p.mr_inplane_mm} mm, slices {p.mr_slice_mm} mm, "
                     f"noise {p.mr_noise_fraction}, {p.mr_bias} bias x{p.mr_bias_amplitude}, gland {p.gland_volume_ml} mL, "
                     f"median lobe {p.median_lobe_fraction:.0%}, calcifications {p.calcifications}, "
                     f"speckle x{p.us_speckle_scale}, gain {p.us_gain_db} dB, depth {p.fan_depth_mm} mm, "
                     f"partial views {p.partial_view_fraction:.0%} ({p.us_sweep_cut} cut), push {p.compression_mm} mm")
        lines.append(line)
    return "\n".join(lines)


def _asks_for_list(argv: Sequence[str]) -> bool:
    return "--preset=list" in argv or any(a == "--preset" and b == "list" for a, b in zip(argv, argv[1:]))


@friendly_errors
def main(argv: Optional[Sequence[str]] = None) -> int:
    if _asks_for_list(list(sys.argv[1:] if argv is None else argv)):
        print(describe_presets())
        return 0
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
