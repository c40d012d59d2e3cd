"""Evaluation report: Markdown, CSV and JSON tables and PNG histograms (paper Tables 1-4)."""
from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Optional, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from lmkreg.evaluation.evaluate import TRANSFORM_KEYS, CaseResult, case_rows  # noqa: E402
from lmkreg.io.atomic import atomic_path, atomic_write_json, atomic_write_text  # noqa: E402
from lmkreg.evaluation.predicted_masks import VARIANTS

SRE_BINS_MM = (0, 5, 10, 15, 20, 25, 30, 45, math.inf)  # paper Table 3 thresholds
ROTATION_BINS_DEG = (0, 5, 10, 20, 30, 40, 60, 70, math.inf)  # paper Table 4 thresholds


def histogram(values: Sequence[float], edges: Sequence[float]) -> list[int]:
    """Number of values per bin (lo, hi] (the first bin also takes values <= its lower edge);
    NaN is not counted.  With the paper's thresholds, column "10" of Table 3 counts the cases
    with 5 < SRE <= 10 mm."""
    v = np.asarray([x for x in values if np.isfinite(x)])
    return [int(np.sum((v > lo) & (v <= hi))) if lo > 0 else int(np.sum(v <= hi)) for lo, hi in zip(edges[:-1], edges[1:])]


def _fmt(s: Optional[dict], digits: int = 2) -> str:
    return "n/a" if not s or s.get("n", 0) == 0 else f"{s['mean']:.{digits}f} ± {s['sd']:.{digits}f}"


def _median(s: Optional[dict], digits: int = 2) -> str:
    return "n/a" if not s or s.get("n", 0) == 0 else f"{s['median']:.{digits}f}"


def _bin_labels(edges: Sequence[float]) -> list[str]:
    return [f"≤{hi:g}" if lo == 0 else (f">{lo:g}" if math.isinf(hi) else f"{lo:g}–{hi:g}")
            for lo, hi in zip(edges[:-1], edges[1:])]


def _num(v: float, digits: int = 2) -> str:
    return "n/a" if v is None or not math.isfinite(v) else f"{v:.{digits}f}"


def worst_cases(results: Sequence[CaseResult], n: int) -> list[CaseResult]:
    """The n cases with the largest SRE of the predicted registration (cases without one last,
    ordered by their mean MRE over both modalities)."""
    def key(r: CaseResult) -> tuple:
        sre = r.sre_predicted_mm
        mre = [m for m in (r.mre_mm("MR"), r.mre_mm("US")) if math.isfinite(m)]
        return (0, -sre) if math.isfinite(sre) else (1, -(sum(mre) / len(mre)) if mre else 0.0)
    return sorted(results, key=key)[:max(0, n)]


def markdown(summary: dict, results: Sequence[CaseResult], names: Sequence[str], title: str,
             missing: Optional[dict[str, str]] = None, failed: Optional[dict[str, str]] = None,
             qc: Optional[dict[str, list[str]]] = None) -> str:
    """The report: MRE (Table 1 style), registration (Table 2), histograms (Tables 3 and 4),
    worst cases with their QC pictures, and the cases that could not be evaluated."""
    n_cases = summary["num_cases"]
    lines = [f"# {title}", "", f"{n_cases} case(s) evaluated"
             + (f"; {len(missing)} without prediction" if missing else "")
             + (f"; {len(failed)} failed" if failed else "") + ".", "",
             "## Landmark detection (MRE, mm)", "",
             "Mean ± sd and median of the radial error (distance between predicted and true landmark, world mm).",
             "", "| landmark | MR mean ± sd | MR median | US mean ± sd | US median |", "|---|---|---|---|---|"]
    for key, label in [("per_case", "MRE per case")] + [(n, n) for n in names] + [("all", "all landmarks pooled")]:
        cells = [f"{_fmt(s)} | {_median(s)}" for s in (summary["mre"][m].get(key) for m in ("MR", "US"))]
        lines.append(f"| {label} | {cells[0]} | {cells[1]} |")
    thresholds = [k for k in summary["mre"]["MR"] if k.startswith("sdr_")]
    lines += ["", "Success detection rate (fraction of landmarks within the radius):", "",
              "| radius | MR | US |", "|---|---|---|"]
    for k in thresholds:
        mr, us = summary["mre"]["MR"][k], summary["mre"]["US"][k]
        lines.append(f"| {k[4:]} | {_num(100 * mr, 1)} % | {_num(100 * us, 1)} % |")
    lines += ["", "## Registration (paper Table 2)", "",
              "Rigid MR→US maps from the predicted and from the true (manual) landmarks, compared with the "
              "ICP reference between the prostate surfaces.", "",
              "| metric | predicted landmarks | manual (true) landmarks |", "|---|---|---|",
              f"| SRE (mm) | {_fmt(summary['sre_predicted_mm'])} | {_fmt(summary['sre_manual_mm'])} |",
              f"| Dice | {_fmt(summary['dice_predicted'])} | {_fmt(summary['dice_manual'])} |",
              f"| residual rotation (deg) | {_fmt(summary['rotation_predicted_deg'], 1)} | "
              f"{_fmt(summary['rotation_manual_deg'], 1)} |", "",
              f"Pairs flagged unreliable by lmkreg_register: {summary.get('pairs_flagged', 0)} of "
              f"{summary['sre_predicted_mm'].get('n', 0)} ({summary.get('pairs_two_landmarks', 0)} of them registered "
              f"from two landmarks, one being wrong or missing); over the pairs not flagged, SRE "
              f"{_fmt(summary.get('unflagged_pairs', {}).get('sre_predicted_mm', {}))} mm, Dice "
              f"{_fmt(summary.get('unflagged_pairs', {}).get('dice_predicted', {}))}, rotation "
              f"{_fmt(summary.get('unflagged_pairs', {}).get('rotation_predicted_deg', {}), 1)} deg.", "",
              f"Dice of the ICP reference map itself: {_fmt(summary['dice_reference'])}; its surface fit "
              f"(mean MR-surface to US-surface distance): {_fmt(summary['reference_fit_mm'])} mm."]
    if summary["icp_vs_true_transform_mm"].get("n", 0):
        lines.append(f"ICP reference vs the phantom's true transform (SRE): {_fmt(summary['icp_vs_true_transform_mm'])} mm.")
    for title_, key_p, key_m, edges, unit in (
            ("SRE histogram (paper Table 3)", "sre_predicted_mm", "sre_manual_mm", SRE_BINS_MM, "mm"),
            ("Residual rotation histogram (paper Table 4)", "rotation_predicted_deg", "rotation_manual_deg",
             ROTATION_BINS_DEG, "deg")):
        labels = _bin_labels(edges)
        lines += ["", f"## {title_}", "", "Number of cases per bin (lower edge excluded, upper edge included).", "",
                  f"| {unit} | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels)]
        for label, key in (("predicted", key_p), ("manual", key_m)):
            counts = histogram([getattr(r, key) for r in results], edges)
            lines.append(f"| {label} | " + " | ".join(map(str, counts)) + " |")
    lines += mask_markdown(summary)
    lines += calibration_markdown(summary.get("calibration"), names)
    if qc:
        lines += ["", "## Worst cases (largest SRE of the predicted registration)", "",
                  "| case | SRE (mm) | rotation (deg) | Dice | MRE MR (mm) | MRE US (mm) | pictures |",
                  "|---|---|---|---|---|---|---|"]
        by_case = {r.case: r for r in results}
        for case, pictures in qc.items():
            r = by_case[case]
            links = " ".join(f"[{Path(p).stem.replace(case + '_', '')}]({p})" for p in pictures)
            lines.append(f"| {case} | {_num(r.sre_predicted_mm)} | {_num(r.rotation_predicted_deg, 1)} | "
                         f"{_num(r.dice_predicted)} | {_num(r.mre_mm('MR'))} | {_num(r.mre_mm('US'))} | {links} |")
    noted = [r for r in results if r.notes]
    if noted:
        lines += ["", "## Notes", ""] + [f"- {r.case}: {'; '.join(r.notes)}" for r in noted]
    if missing or failed:
        lines += ["", "## Not evaluated", ""]
        lines += [f"- {case}: {why}" for case, why in sorted((missing or {}).items())]
        lines += [f"- {case}: failed: {why}" for case, why in sorted((failed or {}).items())]
    return "\n".join(lines) + "\n"


def _worst(s: Optional[dict], digits: int = 2) -> str:
    return "n/a" if not s or s.get("n", 0) == 0 else f"{s['worst']:.{digits}f}"


def mask_markdown(summary: dict) -> list[str]:
    """Segmentation per modality and the three registration rows (predicted masks, issue 17);
    nothing without predicted masks."""

    lines: list[str] = []
    seg = summary.get("segmentation") or {}
    if seg:
        lines += ["", "## Segmentation (predicted prostate masks)", "",
                  "Dice with the true mask; symmetric surface distance between the boundary voxel centres of "
                  "the two masks, world mm, both directions pooled (mean and 95th percentile).", "",
                  "| modality | n | Dice mean ± sd | Dice median | Dice worst | mean distance (mm) median | "
                  "mean distance worst | 95 % distance (mm) median | 95 % distance worst |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for m, b in seg.items():
            d, a, h = b["dice"], b["mean_surface_distance_mm"], b["surface_distance_95_mm"]
            lines.append(f"| {m} | {d.get('n', 0)} | {_fmt(d, 3)} | {_median(d, 3)} | {_worst(d, 3)} | {_median(a)} | "
                         f"{_worst(a)} | {_median(h)} | {_worst(h)} |")
    var = summary.get("registration_variants") or {}
    if var:
        lines += ["", "## Registration variants (predicted landmarks and masks)", "",
                  f"Over the {summary.get('registration_variants_cases', 0)} case(s) with both predicted masks: the "
                  f"transform from the predicted landmarks, and the ones `lmkreg_register --refine surface` gives on "
                  f"the predicted masks (surfaces only; and with the landmarks as extra pairs). Scored against the "
                  f"same ICP reference (true masks) as above; a refused refinement keeps the landmark transform "
                  f"unless the surface rescue (one landmark left out) was accepted.", "",
                  "| transform | SRE (mm) | SRE median | SRE worst | Dice | Dice worst | rotation (deg) | "
                  "rotation worst | refused (beyond bound; rescued) |", "|---|---|---|---|---|---|---|---|---|"]
        for v, label in VARIANTS.items():
            b = var.get(v)
            if not b:
                continue
            refused = "–" if "refused" not in b else f"{b['refused']} ({b['beyond_bound']}; {b.get('rescued', 0)})"
            lines.append(f"| {label} | {_fmt(b['sre_mm'])} | {_median(b['sre_mm'])} | {_worst(b['sre_mm'])} | "
                         f"{_fmt(b['dice'], 3)} | {_worst(b['dice'], 3)} | {_fmt(b['rotation_deg'], 1)} | "
                         f"{_worst(b['rotation_deg'], 1)} | {refused} |")
    return lines


def calibration_markdown(cal: Optional[dict], names: Sequence[str]) -> list[str]:
    """Coverage of the error radii and ROC AUC of the flags (documentation/evaluation.md)."""
    if not cal:
        return []
    t = cal["error_threshold_mm"]
    lines = ["", "## Calibration (how far to trust each result)", "",
             f"Coverage: share of landmarks whose error is within the radius written in their file (the target is "
             f"the radius' stated coverage: 90 %, or n/(n+1) when the model had n < 9 calibration cases; see each "
             f"file's trust block). AUC: area under the ROC curve of the \"unreliable\" flag against "
             f"an error > {t:g} mm (0.5: the flag says nothing; 1: it flags exactly the bad ones; n/a: one class "
             f"is empty).", "",
             "| modality | landmark | n | coverage | median radius (mm) | flagged | error > 5 mm | AUC |",
             "|---|---|---|---|---|---|---|---|"]
    for m in ("MR", "US"):
        for n in list(names) + ["all"]:
            b = cal.get(m, {}).get(n, {})
            cov = b.get("coverage")
            lines.append(f"| {m} | {n} | {b.get('n', 0)} | {'n/a' if cov is None else f'{100 * cov:.1f} %'} | "
                         f"{_num(b.get('median_radius_mm'))} | {b.get('num_flagged', 0)} | "
                         f"{b.get('num_error_above', 0)} | {_num(b.get('auc_flag_vs_error'))} |")
    pr = cal.get("pair", {})
    lines += ["", f"Pair flag of lmkreg_register against SRE > {t:g} mm: {pr.get('num_flagged', 0)} of "
                  f"{pr.get('n', 0)} pairs flagged, {pr.get('num_sre_above', 0)} with SRE > {t:g} mm, AUC "
                  f"{_num(pr.get('auc_flag_vs_sre'))}."]
    return lines


def plot_histograms(results: Sequence[CaseResult], path: Path) -> Path:
    """Bar charts of SRE (Table 3 bins) and residual rotation (Table 4 bins), predicted vs manual."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    for ax, (kp, km, edges, label) in zip(axes, (
            ("sre_predicted_mm", "sre_manual_mm", SRE_BINS_MM, "SRE (mm)"),
            ("rotation_predicted_deg", "rotation_manual_deg", ROTATION_BINS_DEG, "residual rotation (deg)"))):
        x = np.arange(len(edges) - 1)
        ax.bar(x - 0.2, histogram([getattr(r, kp) for r in results], edges), 0.4, label="predicted landmarks")
        ax.bar(x + 0.2, histogram([getattr(r, km) for r in results], edges), 0.4, label="manual landmarks")
        ax.set_xticks(x)
        ax.set_xticklabels(_bin_labels(edges))
        ax.set_xlabel(label)
        ax.set_ylabel("cases")
        ax.yaxis.get_major_locator().set_params(integer=True)
        ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)
    return path


REPORT_FILES = {"markdown": "evaluation.md", "csv": "evaluation.csv", "json": "evaluation.json",
                "histograms": "histograms.png"}


def write_report(results: Sequence[CaseResult], summary: dict, names: Sequence[str], out_dir: Path,
                 title: str = "lmkreg evaluation", missing: Optional[dict[str, str]] = None,
                 failed: Optional[dict[str, str]] = None, qc: Optional[dict[str, list[str]]] = None,
                 extra: Optional[dict] = None) -> dict[str, Path]:
    """evaluation.md, evaluation.csv (one row per case), evaluation.json (summary, cases with their
    transforms, cases not evaluated) and histograms.png in `out_dir`; returns their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = case_rows(results, names)
    buf = io.StringIO()
    if rows:
        w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
        w.writeheader()
        w.writerows([{k: ("" if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}
                     for row in rows])
    paths = {k: out_dir / v for k, v in REPORT_FILES.items()}
    cases = [{**row, "notes": r.notes, **{k: getattr(r, k) for k in TRANSFORM_KEYS},
              **({"segmentation": r.segmentation} if r.segmentation else {}),
              **({"refinement": r.refinement} if r.refinement else {})}
             for row, r in zip(rows, results)]
    doc = {"title": title, **(extra or {}), "summary": summary, "cases": cases,
           "missing_predictions": dict(missing or {}), "failed": dict(failed or {}), "qc": dict(qc or {})}
    atomic_write_text(paths["csv"], buf.getvalue())
    atomic_write_json(paths["json"], json_safe(doc))
    atomic_write_text(paths["markdown"], markdown(summary, results, names, title, missing, failed, qc))
    plot_histograms(results, paths["histograms"])
    return paths


def json_safe(obj):
    """NaN is not JSON: write null instead."""
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


_json_safe = json_safe  # old private name
