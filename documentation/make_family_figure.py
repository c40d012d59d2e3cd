"""Draw documentation/figures/phantom_families.png: one `_small` case per protocol family.

    python documentation/make_family_figure.py [--seed 11] [--out documentation/figures/phantom_families.png]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import SimpleITK as sitk  # noqa: E402

from lmkreg.phantoms.generator import generate_case  # noqa: E402
from lmkreg.phantoms.presets import FAMILIES  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seed", type=int, default=11)
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "figures" / "phantom_families.png")
    args = p.parse_args()
    fig, ax = plt.subplots(len(FAMILIES), 4, figsize=(12, 3 * len(FAMILIES)))
    for i, fam in enumerate(FAMILIES):
        case = generate_case(args.seed, f"{fam}_small")
        for j, (image, mask, name) in enumerate(((case.mr_image, case.mr_mask, "MR"),
                                                 (case.us_image, case.us_mask, "US"))):
            a, m = sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(mask)
            kz, _, kx = (int(v) for v in np.argwhere(m).mean(axis=0))
            sx, sy, sz = image.GetSpacing()
            ax[i, 2 * j].imshow(a[kz], cmap="gray", aspect=sy / sx)
            ax[i, 2 * j].contour(m[kz], [0.5], colors="r", linewidths=0.8)
            ax[i, 2 * j + 1].imshow(a[:, :, kx], cmap="gray", origin="lower", aspect=sz / sy)
            ax[i, 2 * j + 1].contour(m[:, :, kx], [0.5], colors="r", linewidths=0.8)
            ax[i, 2 * j].set_title(f"{fam} {name} axial", fontsize=8)
            ax[i, 2 * j + 1].set_title(f"{name} sagittal", fontsize=8)
        for a_ in ax[i]:
            a_.set_xticks([])
            a_.set_yticks([])
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=70)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
