"""Draw documentation/coordinates.png: an oblique, anisotropic voxel grid in the LPS world.

Run: python documentation/figures/make_coordinates_figure.py
"""
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from lmkreg.geometry import ImageGeometry, rotation_direction  # noqa: E402


def main() -> None:
    # an axial-ish slice (z index 0) of a grid rotated 25 degrees about S, spacing x 2 mm, y 1 mm
    geom = ImageGeometry.create((1, 5, 4), (3.0, 2.0, 3.0), (14.0, 7.0, 0.0), rotation_direction((0, 0, 25)))
    fig, ax = plt.subplots(figsize=(7, 6))
    for j in range(5):
        for i in range(4):
            centre = geom.index_to_world(np.array([0.0, j, i]))
            corners = geom.index_to_world(np.array([[0, j + dj, i + di] for dj, di in
                                                    [(-.5, -.5), (-.5, .5), (.5, .5), (.5, -.5), (-.5, -.5)]]))
            ax.plot(corners[:, 0], corners[:, 1], color="0.7", lw=0.8)
            ax.plot(*centre[:2], "o", color="tab:blue", ms=3)
    o = geom.index_to_world(np.zeros(3))
    ax.annotate("voxel [z=0, y=0, x=0]\n= origin", o[:2], xytext=(o[0] + 4, o[1] - 5),
                arrowprops=dict(arrowstyle="->"), fontsize=9)
    for axis, name, col, offset in [((0, 0, 1), "array x (i) = D[:,0]·spacing_x", "tab:red", (1.0, -1.5)),
                                    ((0, 1, 0), "array y (j) = D[:,1]·spacing_y", "tab:green", (-13.5, 1.0))]:
        tip = geom.index_to_world(np.array(axis, float))
        ax.annotate("", tip[:2], o[:2], arrowprops=dict(arrowstyle="-|>", color=col, lw=2))
        ax.text(tip[0] + offset[0], tip[1] + offset[1], name, color=col, fontsize=9)
    ax.annotate("", (6, 0), (0, 0), arrowprops=dict(arrowstyle="-|>", lw=2))
    ax.annotate("", (0, 6), (0, 0), arrowprops=dict(arrowstyle="-|>", lw=2))
    ax.text(6.3, -0.4, "+x = patient Left (L)")
    ax.text(-0.5, 6.4, "+y = patient Posterior (P)")
    ax.text(-1, -1.8, "world origin (0, 0, 0) LPS mm;  +z = Superior (out of page)")
    lm = geom.index_to_world(np.array([0.0, 2.3, 1.6]))
    ax.plot(*lm[:2], "*", color="tab:orange", ms=14)
    ax.annotate("landmark: a world point (x, y, z) in LPS mm,\ninside = continuous voxel (z, y, x) = (0, 2.3, 1.6)",
                lm[:2], xytext=(15, 23), color="tab:orange", fontsize=9, arrowprops=dict(arrowstyle="->", color="tab:orange"))
    ax.set_aspect("equal")
    ax.set_xlim(-3, 36)
    ax.set_ylim(-3, 25)
    ax.set_xlabel("world x (mm, L)")
    ax.set_ylabel("world y (mm, P)")
    ax.set_title("world = origin + D · diag(spacing) · (x, y, z) index")
    out = Path(__file__).resolve().parents[1] / "coordinates.png"
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    print(out)


if __name__ == "__main__":
    main()
