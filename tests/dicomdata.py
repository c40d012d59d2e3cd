"""Write synthetic DICOM series for tests (one file per slice, positions and orientation tagged)."""
from __future__ import annotations

import locale
import time
from pathlib import Path
from typing import Optional

import numpy as np
import SimpleITK as sitk

REALDATA = Path(__file__).resolve().parents[1].parent / "shared" / "realdata" / "prostate_mr_dicom"


def write_dicom_series(image: sitk.Image, folder: Path, uid: str, description: str = "T2 axial",
                       study_uid: str = "1.2.826.0.1.3680043.2.1125.1", shuffle_names: bool = True,
                       skip_slice: Optional[int] = None) -> list[Path]:
    """Write `image` (3D, int16) as a DICOM series: every slice with ImagePositionPatient (its first
    voxel's world LPS point) and ImageOrientationPatient (the first two direction columns).  File
    names are shuffled so that the reader must order slices by position, not by name."""
    saved_locale = locale.setlocale(locale.LC_ALL)  # GDCM's writer sets the C locale for the whole process
    try:
        return _write(image, folder, uid, description, study_uid, shuffle_names, skip_slice)
    finally:
        locale.setlocale(locale.LC_ALL, saved_locale)


def _write(image, folder, uid, description, study_uid, shuffle_names, skip_slice) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    image = sitk.Cast(image, sitk.sitkInt16)
    d = image.GetDirection()
    orientation = "\\".join(f"{v:.10f}" for v in (d[0], d[3], d[6], d[1], d[4], d[7]))
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    n = image.GetSize()[2]
    order = np.random.default_rng(len(uid)).permutation(n) if shuffle_names else np.arange(n)
    written = []
    for k in range(n):
        if k == skip_slice:
            continue
        sl = image[:, :, k]
        pos = image.TransformIndexToPhysicalPoint((0, 0, k))
        tags = {
            "0008|0060": "MR", "0008|0008": "ORIGINAL\\PRIMARY\\AXIAL", "0008|103e": description,
            "0010|0010": "Phantom^Test", "0010|0020": "PHANTOM01",
            "0020|000d": study_uid, "0020|000e": uid, "0020|0013": str(k + 1),
            "0020|0032": "\\".join(f"{v:.6f}" for v in pos), "0020|0037": orientation,
            "0018|0050": f"{image.GetSpacing()[2]:.6f}",
            "0008|0018": f"{uid}.{k + 1}", "0008|0016": "1.2.840.10008.5.1.4.1.1.4",
            "0008|0020": time.strftime("%Y%m%d"),
        }
        for key, value in tags.items():
            sl.SetMetaData(key, value)
        path = folder / f"S{uid.rsplit('.', 1)[-1]}_IM{int(order[k]):04d}.dcm"
        writer.SetFileName(str(path))
        writer.Execute(sl)
        written.append(path)
    return written
