"""Surface refinement on phantom pairs (issue 17): landmark-only vs surface-refined transform.

No trained model is involved: for every phantom case (seeds 1000.., the µ-RegPro-like preset by
default, partial TRUS views at the preset's rate) the landmark transform is fitted on the true
landmarks with Gaussian noise of --noise-mm per coordinate added on both sides (a stand-in for
predicted landmarks), then refined with ``refine_on_masks`` on the phantom's true gland masks
(default settings).  Both are compared with the phantom's true MR->US map: SRE over 3000 MR
surface points, residual rotation, and Dice of the mapped MR mask with the US mask.  The US
gland is pushed in by the simulated probe, so no rigid map reaches 0 mm.  Nothing is tuned here:
the settings are the module defaults.

    python benchmarks/surface_refinement_benchmark.py --cases 8 --noise-mm 1.5

Writes benchmarks/results/surface_refinement_PRESET.json (--out to change).
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np

from lmkreg.evaluation.metrics import registration_dice, residual_rotation_deg, surface_registration_error
from lmkreg.geometry.mesh import surface_points
from lmkreg.phantoms.generator import generate_case
from lmkreg.geometry.rigid import fit_rigid
from lmkreg.registration.surface import refine_on_surfaces
from lmkreg.registration.icp import SurfaceSettings, gland_surface

REPO = Path(__file__).resolve().parents[1]
NAMES = ["apex", "bladder_neck", "posterior_median"]


def run_case(seed: int, preset: str, noise_mm: float) -> dict:
    case = generate_case(seed, preset)
    mr_lm, us_lm = case.mr_landmarks.to_array(NAMES), case.us_landmarks.to_array(NAMES)
    row: dict = {"seed": seed, "partial_view": bool(case.acquisition.partial_view)}
    ok = np.all(np.isfinite(mr_lm), axis=1) & np.all(np.isfinite(us_lm), axis=1)
    if ok.sum() < 3:
        return {**row, "skipped": f"only {int(ok.sum())} landmarks in both volumes"}
    rng = np.random.default_rng(seed)
    landmark_t = fit_rigid(mr_lm + rng.normal(0, noise_mm, mr_lm.shape), us_lm + rng.normal(0, noise_mm, us_lm.shape))
    mr, us = gland_surface(case.mr_mask, "MR"), gland_surface(case.us_mask, "US")
    t0 = time.perf_counter()
    result = refine_on_surfaces(landmark_t, mr, us, SurfaceSettings())
    seconds = time.perf_counter() - t0
    pts = surface_points(mr.mesh, 3000, seed=seed)
    out = {**row, "accepted": result.accepted, "reason": result.reason, "seconds": seconds,
           "us_surface_cut_by_image_border": us.border_fraction,
           "surface_distance_mm": [result.distance_landmarks_mm, result.distance_surface_mm]}
    for name, t in (("landmarks", landmark_t), ("refined", result.transform)):
        out[name] = {"sre_mm": surface_registration_error(pts, case.transform, t),
                     "rotation_deg": residual_rotation_deg(case.transform, t),
                     "dice": registration_dice(case.mr_mask, case.us_mask, t)}
    return out


def summarise(rows: list[dict]) -> dict:
    done = [r for r in rows if "skipped" not in r]
    out = {"cases": len(rows), "evaluated": len(done), "accepted": sum(r["accepted"] for r in done)}
    for name in ("landmarks", "refined"):
        for key in ("sre_mm", "rotation_deg", "dice"):
            v = np.array([r[name][key] for r in done])
            out[f"{name}_{key}"] = {"median": float(np.median(v)), "mean": float(np.mean(v)),
                                    "max" if key != "dice" else "min": float(v.max() if key != "dice" else v.min())}
    out["refine_seconds_median"] = float(np.median([r["seconds"] for r in done]))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="mu_regpro", help="phantom preset")
    p.add_argument("--cases", type=int, default=8, help="number of phantom cases (seeds 1000, 1001, ...)")
    p.add_argument("--noise-mm", type=float, default=1.5, help="landmark noise per coordinate (mm)")
    p.add_argument("-o", "--out", type=Path, default=None, help="results JSON")
    args = p.parse_args()
    rows = []
    for i in range(args.cases):
        row = run_case(1000 + i, args.preset, args.noise_mm)
        rows.append(row)
        if "skipped" in row:
            print(f"seed {row['seed']}: skipped ({row['skipped']})", flush=True)
            continue
        lm, rf = row["landmarks"], row["refined"]
        print(f"seed {row['seed']}{' partial' if row['partial_view'] else ''}: landmarks SRE {lm['sre_mm']:.2f} mm "
              f"{lm['rotation_deg']:.1f} deg Dice {lm['dice']:.3f} -> refined SRE {rf['sre_mm']:.2f} mm "
              f"{rf['rotation_deg']:.1f} deg Dice {rf['dice']:.3f} ({'accepted' if row['accepted'] else 'refused'}, "
              f"{row['seconds']:.1f} s)", flush=True)
    summary = summarise(rows)
    print(json.dumps(summary, indent=1))
    out = args.out or REPO / "benchmarks" / "results" / f"surface_refinement_{args.preset}.json"
    out.write_text(json.dumps({"preset": args.preset, "noise_mm": args.noise_mm, "machine": platform.platform(),
                               "summary": summary, "cases": rows}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
