"""Issue 25: lmkreg_register never pairs files up wrongly, never ignores a Slicer edit, never
replaces files it did not write, and lists unmatched cases.  Each test reproduces a "Why" case
that gave a reliable-looking answer with exit 0 before."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from lmkreg.registration.transform_files import read_transform_record
from lmkreg.io.landmark_files import write_landmarks
from lmkreg.io.landmarks import DEFAULT_LANDMARK_NAMES, LandmarkSet, write_lmkreg_json
from lmkreg.io.provenance import InputRecord, Provenance, add_provenance
from lmkreg.run.register import main as register_main
from lmkreg.registration.landmark_fit import register_landmarks

MR_POINTS = np.array([[10.0, -20.0, 5.0], [14.0, 8.0, 30.0], [-12.0, 3.0, 12.0]])


def _rotation(deg: float) -> np.ndarray:
    a = np.deg2rad(deg)
    return np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])


US_POINTS = MR_POINTS @ _rotation(20).T + [3.0, -7.0, 11.0]


def _write(path: Path, points: np.ndarray, modality: str = None, image_hash: str = None) -> Path:
    write_lmkreg_json(LandmarkSet(dict(zip(DEFAULT_LANDMARK_NAMES, points))), path)
    if modality:
        add_provenance(path, Provenance(modality, InputRecord(f"{path.stem}.nii.gz", [8, 8, 8], [1.0, 1.0, 1.0],
                                                              image_hash or (modality * 32)[:64])))
    return path


def _folders(tmp_path: Path, cases=("c1", "c2"), provenance: bool = False) -> tuple[Path, Path]:
    mr, us = tmp_path / "pred_MR", tmp_path / "pred_US"
    mr.mkdir(), us.mkdir()
    for c in cases:
        _write(mr / f"{c}_MR.json", MR_POINTS, "MR" if provenance else None)
        _write(us / f"{c}_US.json", US_POINTS, "US" if provenance else None)
    return mr, us


def test_mr_folder_given_twice_is_refused(tmp_path, capsys):
    """Why: --mr-dir pred_MR --us-dir pred_MR registered every case to itself, 0 flagged, exit 0."""
    mr, _ = _folders(tmp_path)
    assert register_main(["--mr-dir", str(mr), "--us-dir", str(mr), "-o", str(tmp_path / "reg")]) == 2
    err = capsys.readouterr()
    assert "no case has landmark files in both" in err.err and "its name says MR" in err.out
    assert not (tmp_path / "reg").exists() or not list((tmp_path / "reg").iterdir())
    # files without _MR in their name but predicted as MR: their provenance says so
    plain = tmp_path / "plain"
    plain.mkdir()
    for c in ("c1", "c2"):
        _write(plain / f"{c}.json", MR_POINTS, "MR")
    assert register_main(["--mr-dir", str(plain), "--us-dir", str(plain), "-o", str(tmp_path / "reg2")]) == 2
    assert "its provenance says MR" in capsys.readouterr().out


def test_same_file_as_mr_and_us_is_refused_also_under_strict(tmp_path, capsys):
    f = _write(tmp_path / "case.json", MR_POINTS)
    assert register_main(["--mr", str(f), "--us", str(f), "-o", str(tmp_path / "reg"), "--strict"]) == 2
    assert "same file" in capsys.readouterr().err
    assert not (tmp_path / "reg" / "case_MR_to_US.json").exists()


def test_two_files_of_the_same_image_are_refused(tmp_path, capsys):
    a = _write(tmp_path / "a.json", MR_POINTS, "MR", image_hash="1" * 64)
    b = _write(tmp_path / "b.json", US_POINTS, "US", image_hash="1" * 64)
    assert register_main(["--mr", str(a), "--us", str(b), "-o", str(tmp_path / "reg")]) == 2
    assert "same image" in capsys.readouterr().err


def test_swapped_files_are_refused_by_provenance_and_flagged_by_name(tmp_path, capsys):
    """Why: MR and US files swapped gave the inverse transform, marked reliable."""
    mr = _write(tmp_path / "p1.json", MR_POINTS, "MR")
    us = _write(tmp_path / "p2.json", US_POINTS, "US")
    assert register_main(["--mr", str(us), "--us", str(mr), "-o", str(tmp_path / "reg"), "--name", "p"]) == 2
    assert "swapped" in capsys.readouterr().err
    assert register_main(["--mr", str(mr), "--us", str(us), "-o", str(tmp_path / "reg"), "--name", "p"]) == 0
    # without provenance only the names tell: written, flagged, exit 3 under --strict
    mr_named = _write(tmp_path / "q_MR.json", MR_POINTS)
    us_named = _write(tmp_path / "q_US.json", US_POINTS)
    capsys.readouterr()
    assert register_main(["--mr", str(us_named), "--us", str(mr_named), "-o", str(tmp_path / "reg"), "--name", "q",
                          "--strict"]) == 3
    doc = json.loads((tmp_path / "reg" / "q_MR_to_US.json").read_text())
    assert any("swapped" in f for f in doc["trust"]["flags"])


def test_an_mr_file_in_the_us_folder_is_never_taken_as_us(tmp_path, capsys):
    mr, us = _folders(tmp_path, cases=("c1",))
    _write(us / "c2_MR.json", MR_POINTS)  # an MR file in the US folder
    _write(mr / "c2_MR.json", MR_POINTS)
    rc = register_main(["--mr-dir", str(mr), "--us-dir", str(us), "-o", str(tmp_path / "reg")])
    out = capsys.readouterr()
    assert rc == 0 and "1 file(s) not taken as US: c2_MR.json (its name says MR)" in out.out
    assert not (tmp_path / "reg" / "c2_MR_to_US.json").exists()
    assert "c2 (only in" in out.err  # and c2 is listed as unmatched


def test_edited_mrk_json_beside_the_json_wins_and_is_announced(tmp_path, capsys):
    """Why: a landmark corrected in 3D Slicer (CASE_US.mrk.json) was ignored: CASE_US.json won."""
    mr, us = _folders(tmp_path, cases=("c1",))
    write_landmarks(LandmarkSet(dict(zip(DEFAULT_LANDMARK_NAMES, US_POINTS))), us / "c1_US.mrk.json")
    assert register_main(["--mr-dir", str(mr), "--us-dir", str(us), "-o", str(tmp_path / "reg")]) == 0
    assert "newer" not in capsys.readouterr().out  # the same landmarks: the .json, nothing to say
    edited = US_POINTS.copy()
    edited[0] += [4.0, 0.0, 0.0]
    write_landmarks(LandmarkSet(dict(zip(DEFAULT_LANDMARK_NAMES, edited))), us / "c1_US.mrk.json")
    t = (us / "c1_US.json").stat().st_mtime
    os.utime(us / "c1_US.mrk.json", (t + 60, t + 60))
    assert register_main(["--mr-dir", str(mr), "--us-dir", str(us), "-o", str(tmp_path / "reg")]) == 0
    out = capsys.readouterr().out
    assert "c1_US.mrk.json is newer than c1_US.json" in out and "apex moved 4.0 mm" in out
    expected = register_landmarks(LandmarkSet(dict(zip(DEFAULT_LANDMARK_NAMES, MR_POINTS))),
                                  LandmarkSet(dict(zip(DEFAULT_LANDMARK_NAMES, edited)))).transform
    got = read_transform_record(tmp_path / "reg" / "c1_MR_to_US.json")["used"]
    np.testing.assert_allclose(got.matrix(), expected.matrix(), atol=1e-9)
    # equally new and different: an error naming both
    os.utime(us / "c1_US.json", (t + 60, t + 60))
    assert register_main(["--mr-dir", str(mr), "--us-dir", str(us), "-o", str(tmp_path / "reg")]) == 2
    err = capsys.readouterr().err
    assert "c1_US.json" in err and "c1_US.mrk.json" in err and "equally new" in err


def test_foreign_transform_files_in_the_output_are_not_replaced(tmp_path, capsys):
    """Why: the user's own CASE_MR_to_US.json / .tfm / _MR_in_US.nii.gz were replaced without --overwrite."""
    mr, us = _folders(tmp_path, cases=("c1",))
    out = tmp_path / "reg"
    out.mkdir()
    (out / "c1_MR_to_US.json").write_text('{"my": "own transform"}')
    assert register_main(["--mr-dir", str(mr), "--us-dir", str(us), "-o", str(out)]) == 2
    assert "c1_MR_to_US.json" in capsys.readouterr().err
    assert (out / "c1_MR_to_US.json").read_text() == '{"my": "own transform"}'
    (out / "c1_MR_to_US.json").unlink()
    sitk.WriteTransform(sitk.Euler3DTransform(), str(out / "c1_MR_to_US.tfm"))  # a .tfm of another tool
    assert register_main(["--mr-dir", str(mr), "--us-dir", str(us), "-o", str(out)]) == 2
    assert "c1_MR_to_US.tfm" in capsys.readouterr().err
    assert register_main(["--mr-dir", str(mr), "--us-dir", str(us), "-o", str(out), "--overwrite"]) == 0
    # lmkreg's own files are replaced on a rerun without --overwrite
    assert register_main(["--mr-dir", str(mr), "--us-dir", str(us), "-o", str(out)]) == 0
    # an image resampled by someone else, named like lmkreg's output, in a single-pair run
    img = sitk.GetImageFromArray(np.arange(512, dtype=np.float32).reshape(8, 8, 8))
    sitk.WriteImage(img, str(tmp_path / "us.nii.gz"))
    sitk.WriteImage(img, str(tmp_path / "mr.nii.gz"))
    sitk.WriteImage(img, str(out / "c1_MR_in_US.nii.gz"))
    args = ["--mr", str(mr / "c1_MR.json"), "--us", str(us / "c1_US.json"), "-o", str(out), "--mr-image",
            str(tmp_path / "mr.nii.gz"), "--us-image", str(tmp_path / "us.nii.gz")]
    capsys.readouterr()
    assert register_main(args) == 2
    assert "c1_MR_in_US.nii.gz" in capsys.readouterr().err
    assert register_main(args + ["--overwrite"]) == 0
    assert register_main(args) == 0  # now lmkreg's own


def test_unmatched_cases_are_listed_and_count_under_strict(tmp_path, capsys):
    """Why: a case present on one side only was dropped without a word, also under --strict."""
    mr, us = _folders(tmp_path, cases=("c1", "c2"))
    _write(mr / "c3_MR.json", MR_POINTS)
    args = ["--mr-dir", str(mr), "--us-dir", str(us), "-o", str(tmp_path / "reg")]
    assert register_main(args) == 0
    assert f"c3 (only in {mr})" in capsys.readouterr().err
    assert register_main(args + ["--strict"]) == 3


def test_transform_json_records_both_inputs_provenance(tmp_path):
    mr, us = _folders(tmp_path, cases=("c1",), provenance=True)
    assert register_main(["--mr-dir", str(mr), "--us-dir", str(us), "-o", str(tmp_path / "reg")]) == 0
    doc = json.loads((tmp_path / "reg" / "c1_MR_to_US.json").read_text())
    assert doc["provenance"]["mr"]["modality"] == "MR" and doc["provenance"]["us"]["modality"] == "US"
    assert doc["provenance"]["lmkreg_version"]
