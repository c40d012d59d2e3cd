"""Draw documentation/phantom_examples.png: axial and sagittal slices of MR and TRUS phantoms.

Run: python documentation/make_phantom_figure.py [--preset mu_regpro] [--seeds 3 7] [--out PATH]

Slices go through the posterior_median landmark (array z for axial, array x for sagittal).
Landmarks are projected into each slice with the image's own ImageGeometry.world_to_index:
filled markers lie within 2 mm of the slice, hollow ones are further away.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import SimpleITK as sitk  # noqa: E402

from lmkreg.geometry.spaces import ImageGeometry  # noqa: E402
from lmkreg.phantoms.generator import generate_case  # noqa: E402

COLOURS = {"apex": "tab:red", "bladder_neck": "tab:cyan", "posterior_median": "yellow"}


def _draw(ax, image: sitk.Image, landmarks, view: str, centre_index: np.ndarray, title: str) -> None:
    """One slice (view 'axial' = fixed array z, 'sagittal' = fixed array x) with landmarks."""
    geom = ImageGeometry.from_image(image)
    arr = sitk.GetArrayFromImage(image)
    k = int(np.clip(round(centre_index[0 if view == "axial" else 2]), 0, arr.shape[0 if view == "axial" else 2] - 1))
    sl = arr[k] if view == "axial" else arr[:, :, k].T  # sagittal: rows = y, columns = z
    sp = geom.spacing_zyx
    aspect = sp[1] / sp[2] if view == "axial" else sp[1] / sp[0]
    vmax = np.percentile(arr[arr > 0], 99.5) if np.any(arr > 0) else 1
    ax.imshow(sl, cmap="gray", vmin=0, vmax=vmax, aspect=aspect, interpolation="nearest")
    for name, point in landmarks.points.items():
        if point is None:
            continue
        idx = geom.world_to_index(point)
        depth_mm = abs(idx[0 if view == "axial" else 2] - k) * sp[0 if view == "axial" else 2]
        row, col = (idx[1], idx[2]) if view == "axial" else (idx[1], idx[0])
        near = depth_mm <= 2.0
        ax.plot(col, row, "o", ms=6, mfc=COLOURS[name] if near else "none", mec=COLOURS[name], mew=1.5)
    ax.set_title(title, fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])


def make_figure(out: Path, preset: str = "mu_regpro", seeds: tuple[int, ...] = (3, 7)) -> Path:
    """Generate the cases, draw 4 panels per case (MR/US x axial/sagittal), save a PNG."""
    fig, axes = plt.subplots(len(seeds), 4, figsize=(13, 3.4 * len(seeds)))
    axes = np.atleast_2d(axes)
    for row, seed in zip(axes, seeds):
        case = generate_case(seed, preset)
        for j, (mod, image, lms) in enumerate((("MR", case.mr_image, case.mr_landmarks),
                                               ("US", case.us_image, case.us_landmarks))):
            anchor = lms["posterior_median"]
            if anchor is None:
                anchor = next(p for p in lms.points.values() if p is not None)
            centre = ImageGeometry.from_image(image).world_to_index(anchor)
            flags = (" oblique" if (case.mr_oblique if mod == "MR" else case.us_oblique) else "") + \
                    (" partial view" if mod == "US" and case.acquisition.partial_view else "")
            for i, view in enumerate(("axial", "sagittal")):
                _draw(row[2 * j + i], image, lms, view, centre, f"seed {seed} {mod} {view}{flags}")
    handles = [plt.Line2D([], [], marker="o", ls="", color=c, label=n) for n, c in COLOURS.items()]
    fig.legend(handles=handles, loc="lower center", ncol=3, fontsize=9)
    fig.suptitle(f"lmkreg phantoms, preset {preset} (axial: anterior up, left of patient on the right; "
                 "sagittal: anterior up, superior right)", fontsize=9)
    fig.tight_layout(rect=(0, 0.04, 1, 0.97))
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="mu_regpro")
    parser.add_argument("--seeds", type=int, nargs="+", default=[3, 7])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "phantom_examples.png")
    args = parser.parse_args()
    print(make_figure(args.out, args.preset, tuple(args.seeds)))


if __name__ == "__main__":
    main()
