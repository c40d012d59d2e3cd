"""Quality-control pictures a person looks at: landmarks on slices, MR fused on US."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import SimpleITK as sitk  # noqa: E402

from lmkreg.geometry import ImageGeometry, reorient_to_canonical  # noqa: E402
from lmkreg.geometry.rigid import RigidTransform  # noqa: E402
from lmkreg.io.atomic import atomic_path  # noqa: E402
from lmkreg.io.landmarks import LandmarkSet  # noqa: E402
from lmkreg.registration.transform_files import to_sitk_resampling_transform  # noqa: E402

COLOURS = ("tab:red", "tab:green", "tab:blue", "tab:orange", "tab:purple")


def _display(image: sitk.Image) -> tuple[np.ndarray, ImageGeometry]:
    canon = reorient_to_canonical(image)  # array axes ~ S, P, L: slices look the same for every case
    return sitk.GetArrayFromImage(canon).astype(np.float32), ImageGeometry.from_image(canon)


def _window(arr: np.ndarray) -> tuple[float, float]:
    nz = arr[arr != 0]
    v = nz if nz.size else arr.ravel()
    return float(np.percentile(v, 1)), float(np.percentile(v, 99))


def landmark_figure(image: sitk.Image, truth: Optional[LandmarkSet], pred: Optional[LandmarkSet],
                    names: Sequence[str], title: str, path: Path) -> Path:
    """For each landmark: axial and sagittal slices through it, true (o) and predicted (x)."""
    arr, geom = _display(image)
    lo, hi = _window(arr)
    fig, axes = plt.subplots(2, len(names), figsize=(3.2 * len(names), 6.4), squeeze=False)
    for j, n in enumerate(names):
        ref = next((ls[n] for ls in (truth, pred) if ls is not None and ls.points.get(n) is not None), None)
        for i, plane in enumerate(("axial", "sagittal")):
            ax = axes[i, j]
            ax.axis("off")
            if ref is None:
                continue
            k = np.clip(np.rint(geom.world_to_index(ref)), 0, np.array(arr.shape) - 1).astype(int)
            sl = arr[k[0]] if plane == "axial" else arr[:, :, k[2]]
            ax.imshow(sl, cmap="gray", vmin=lo, vmax=hi, origin="lower" if plane == "sagittal" else "upper",
                      aspect=(geom.spacing_zyx[1] / geom.spacing_zyx[2]) if plane == "axial" else
                      (geom.spacing_zyx[0] / geom.spacing_zyx[1]))
            for ls, marker in ((truth, "o"), (pred, "x")):
                if ls is None or ls.points.get(n) is None:
                    continue
                v = geom.world_to_index(ls[n])
                x, y = (v[2], v[1]) if plane == "axial" else (v[1], v[0])
                ax.plot(x, y, marker, color=COLOURS[j % len(COLOURS)], ms=9, mfc="none", mew=2)
            ax.set_title(f"{n} ({plane})", fontsize=9)
    fig.suptitle(f"{title}   o true   x predicted", fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=80, format="png")
    plt.close(fig)
    return path


def fusion_figure(mr: sitk.Image, us: sitk.Image, mr_to_us: RigidTransform, title: str, path: Path,
                  us_mask: Optional[sitk.Image] = None, mr_mask: Optional[sitk.Image] = None) -> Path:
    """MR resampled into US space through the map, in colour over the US (three central slices),
    with the US prostate outline (green) and the mapped MR outline (magenta)."""
    moved = sitk.Resample(mr, us, to_sitk_resampling_transform(mr_to_us), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    us_arr, us_geom = _display(us)
    mr_arr, _ = _display(moved)
    sz, sy, sx = us_geom.spacing_zyx
    masks = []
    if us_mask is not None:
        masks.append((_display(us_mask)[0], "lime"))
    if mr_mask is not None:
        mm = sitk.Resample(mr_mask, us, to_sitk_resampling_transform(mr_to_us), sitk.sitkNearestNeighbor, 0)
        masks.append((_display(mm)[0], "magenta"))
    ulo, uhi = _window(us_arr)
    mlo, mhi = _window(mr_arr)
    centre = np.array(us_arr.shape) // 2
    if us_mask is not None and masks[0][0].any():
        centre = np.round(np.argwhere(masks[0][0] > 0).mean(0)).astype(int)
    fig, axes = plt.subplots(1, 3, figsize=(12, 4.2))
    # (cut, name, pixel aspect = row spacing / column spacing) of the canonical (S, P, L) array
    cuts = [(lambda a: a[centre[0]], "axial", sy / sx), (lambda a: a[:, centre[1]], "coronal", sz / sx),
            (lambda a: a[:, :, centre[2]], "sagittal", sz / sy)]
    for ax, (cut, name, aspect) in zip(axes, cuts):
        ax.imshow(cut(us_arr), cmap="gray", vmin=ulo, vmax=uhi, origin="lower" if name != "axial" else "upper",
                  aspect=aspect)
        m = np.ma.masked_where(cut(mr_arr) == 0, cut(mr_arr))
        ax.imshow(m, cmap="magma", alpha=0.4, vmin=mlo, vmax=mhi, origin="lower" if name != "axial" else "upper",
                  aspect=aspect)
        for arr, colour in masks:
            if cut(arr).any():
                ax.contour(cut(arr) > 0, levels=[0.5], colors=colour, linewidths=1,
                           origin="lower" if name != "axial" else "upper")
        ax.set_title(name)
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=80, format="png")
    plt.close(fig)
    return path
