"""What limits the residual rotation of a three-landmark registration? An analysis of the
accuracy benchmark's results, not a new experiment: nothing is trained or tuned here.

Three landmarks fix a rotation through their triangle.  A landmark error e at distance h from
the line through the other two tilts the fitted frame by about atan(e / h), so the residual
rotation of a case should grow with its landmark error and shrink with the smallest height of
its triangle.  This script reads the per-case results of ``accuracy_benchmark.py`` and the
benchmark dataset's true landmarks, and measures how well that simple lever-arm model explains
the residual rotations (Spearman correlation), case by case.

    python benchmarks/rotation_analysis.py --root /tmp/lmkreg_bench [--results benchmarks/results/accuracy.json]

Writes benchmarks/results/rotation_analysis.json and documentation/benchmark_rotation.md (for
``--results .../accuracy_NAME.json``: rotation_analysis_NAME.json, benchmark_rotation_NAME.md).
"""
from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path

import lmkreg  # noqa: F401  (first: the OpenMP thread policy must be set before numpy/torch load)
import numpy as np
from scipy.stats import spearmanr

REPO = Path(__file__).resolve().parents[1]
DATASET_ID = 960  # the accuracy benchmark's dataset


def smallest_triangle_height(points: np.ndarray) -> float:
    """Smallest altitude (mm) of the triangle of three world points (3, 3): 2 * area / longest side."""
    a, b, c = np.asarray(points, float)
    area2 = np.linalg.norm(np.cross(b - a, c - a))
    longest = max(np.linalg.norm(b - a), np.linalg.norm(c - b), np.linalg.norm(a - c))
    return float(area2 / longest)


def lever_arm_rotation_deg(landmark_error_mm: float, height_mm: float) -> float:
    """Rotation (degrees) caused by moving one vertex by `landmark_error_mm` across its lever arm."""
    return math.degrees(math.atan2(landmark_error_mm, height_mm))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", type=Path, required=True, help="the accuracy benchmark's --root (holds raw/)")
    p.add_argument("--results", type=Path, default=REPO / "benchmarks" / "results" / "accuracy.json")
    args = p.parse_args()
    os.environ["LMKREG_raw"] = str(args.root / "raw")
    from lmkreg.dataset.layout import open_dataset
    from lmkreg.io.landmark_files import read_landmarks

    results = json.loads(args.results.read_text())
    ds = open_dataset(DATASET_ID)
    names = ds.spec.landmarks
    heights = {}
    for case in ds.cases("Ts"):
        h = [smallest_triangle_height(read_landmarks(ds.landmarks_path(case, m, "Ts")).to_array(names))
             for m in ("MR", "US")]
        heights[case] = min(h)

    out: dict = {"results": str(args.results), "heights_mm": heights, "trainers": {}}
    lines = ["# What limits the residual rotation (analysis of the accuracy benchmark)", "",
             f"Source: `{args.results.relative_to(REPO) if args.results.is_relative_to(REPO) else args.results}` "
             "and the benchmark dataset's true landmarks. Command: "
             "`python benchmarks/rotation_analysis.py --root <benchmark root>`.", "",
             "Three landmarks fix the rotation through their triangle. h is the smallest height of a case's "
             "triangle (the smaller of MR and US). The lever-arm estimate is atan(e / h) with e the root sum "
             "square of the case's MR and US mean radial errors. ρ is the Spearman correlation across test "
             "cases.", "",
             f"Triangle height h over the {len(heights)} test cases: median {np.median(list(heights.values())):.1f} "
             f"mm, range {min(heights.values()):.1f}–{max(heights.values()):.1f} mm.", "",
             "| landmarks from | ρ(rotation, lever-arm estimate) | ρ(rotation, 1/h) | ρ(rotation, e) | "
             "cases ≥ 10°: rotation / estimate / h (mm) |", "|---|---|---|---|---|"]
    for trainer, reg in results["registration"].items():
        per_case = reg["per_case"]
        mre = results["trainers"][trainer]
        rows = []
        for case, v in per_case.items():
            if case not in heights or not math.isfinite(v["rotation_predicted_deg"]):
                continue
            e = math.hypot(mre["MR"]["per_case_mre_mm"][case], mre["US"]["per_case_mre_mm"][case])
            rows.append((case, v["rotation_predicted_deg"], lever_arm_rotation_deg(e, heights[case]),
                         heights[case], e))
        rot, est, h, e = (np.array([r[i] for r in rows]) for i in (1, 2, 3, 4))
        rho_est, p_est = spearmanr(rot, est)
        rho_h, _ = spearmanr(rot, 1 / h)
        rho_e, _ = spearmanr(rot, e)
        big = sorted((r for r in rows if r[1] >= 10), key=lambda r: -r[1])
        out["trainers"][trainer] = {
            "spearman_rotation_vs_estimate": float(rho_est), "p": float(p_est),
            "spearman_rotation_vs_inverse_height": float(rho_h), "spearman_rotation_vs_error": float(rho_e),
            "cases_ge_10deg": [{"case": c, "rotation_deg": r, "estimate_deg": s, "height_mm": hh, "error_mm": ee}
                               for c, r, s, hh, ee in big]}
        listed = "; ".join(f"{r:.1f}° / {s:.1f}° / {hh:.1f}" for _, r, s, hh, _ in big[:4])
        more = f" (+{len(big) - 4} more)" if len(big) > 4 else ""
        lines.append(f"| {trainer} | {rho_est:.2f} (p = {p_est:.2g}) | {rho_h:.2f} | {rho_e:.2f} | "
                     f"{len(big)}: {listed or '–'}{more} |")
    # accuracy.json -> rotation_analysis.json; accuracy_NAME.json -> rotation_analysis_NAME.json
    suffix = args.results.stem[len("accuracy"):] if args.results.stem.startswith("accuracy") else f"_{args.results.stem}"
    target = REPO / "benchmarks" / "results" / f"rotation_analysis{suffix}.json"
    target.write_text(json.dumps(out, indent=2))
    (REPO / "documentation" / f"benchmark_rotation{suffix}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
