"""Issue 25: a DICOM slice file that cannot be read is an error naming it (before: 39 of 40 slices
read, the volume predicted, the file never named); a gap names the missing positions; ITK's
warnings stay off the terminal."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from lmkreg.errors import InputError
from lmkreg.io.dicom import find_series, read_dicom_series

REALDATA = Path(__file__).resolve().parents[2] / "shared" / "realdata" / "prostate_mr_dicom"
needs_real = pytest.mark.skipif(not REALDATA.is_dir(), reason=f"real DICOM examination not found at {REALDATA}")


def _copy(tmp_path: Path) -> tuple[Path, list[str]]:
    series = tmp_path / "t2_axial_3mm"
    shutil.copytree(REALDATA / "t2_axial_3mm", series)
    for f in series.iterdir():
        f.chmod(0o644)
    files = list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(series)))  # SimpleITK's reading order
    return series, files


@needs_real
@pytest.mark.parametrize("keep_bytes", [100, 1000, 200000])
def test_truncated_first_slice_is_an_error_naming_the_file(tmp_path, keep_bytes):
    series, files = _copy(tmp_path)
    first = Path(files[0])
    first.write_bytes(first.read_bytes()[:keep_bytes])
    # the reference: SimpleITK's series reader silently leaves the file out
    assert len(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(series))) == len(files) - 1
    with pytest.raises(InputError) as err:
        read_dicom_series(series)
    assert first.name in str(err.value) and "cannot be read" in str(err.value)


@needs_real
def test_truncated_slice_fails_the_prediction_of_that_case_by_name(tmp_path, capsys):
    from lmkreg.run.predict import FolderReport, list_images  # noqa: F401  (import check)
    from lmkreg.io.inputs import find_input_images

    series, files = _copy(tmp_path)
    Path(files[0]).write_bytes(Path(files[0]).read_bytes()[:1000])
    [image] = find_input_images(series)
    with pytest.raises(InputError, match=Path(files[0]).name):
        image.read()


@needs_real
def test_missing_middle_slice_names_the_gap_and_its_neighbours(tmp_path):
    series, files = _copy(tmp_path)
    reader = sitk.ImageFileReader()
    positions = []
    for f in files:
        reader.SetFileName(f)
        reader.ReadImageInformation()
        positions.append([float(v) for v in reader.GetMetaData("0020|0032").split("\\")])
    Path(files[20]).unlink()
    normal = np.cross(*np.asarray([float(v) for v in reader.GetMetaData("0020|0037").split("\\")]).reshape(2, 3))
    missing = float(np.asarray(positions[20]) @ normal)
    with pytest.raises(InputError) as err:
        read_dicom_series(series)
    msg = str(err.value)
    assert "not evenly spaced" in msg and f"missing slice(s) at {missing:.1f} mm" in msg
    assert Path(files[19]).name in msg and Path(files[21]).name in msg


def test_itk_warnings_stay_off_the_terminal(tmp_path, capfd):
    (tmp_path / "notes.txt").write_text("not DICOM")
    assert find_series(tmp_path) == []
    assert "GDCMSeriesFileNames" not in capfd.readouterr().err
