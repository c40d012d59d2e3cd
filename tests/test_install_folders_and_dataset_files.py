"""The installed package and its data files: console scripts, the CI command, the LMKREG_* folders,
dataset.json, the lmkreg landmark JSON and a missing landmark through every landmark format
(requirements of issue 2 that had no test before; references independent of lmkreg)."""
from __future__ import annotations

import json
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest

from lmkreg.dataset.layout import Dataset, DatasetSpec, find_dataset, open_dataset
from lmkreg.errors import ConfigurationError, InputError
from lmkreg.io.landmark_files import read_landmarks, write_landmarks
from lmkreg.io.landmarks import LandmarkSet, write_lmkreg_json
from lmkreg.io.images import write_image

REPO = Path(__file__).resolve().parents[1]


# ==== issue 2: package ============================================================================

ISSUE_SCRIPTS = ("lmkreg_import", "lmkreg_verify_dataset", "lmkreg_generate_phantoms", "lmkreg_plan_and_preprocess")


def test_console_scripts_are_installed_and_answer_help(capsys):
    scripts = {ep.name: ep for ep in metadata.entry_points(group="console_scripts") if ep.name.startswith("lmkreg_")}
    assert set(ISSUE_SCRIPTS) <= set(scripts), sorted(scripts)
    for name in ISSUE_SCRIPTS:
        main = scripts[name].load()
        with pytest.raises(SystemExit) as exc:
            main(["--help"])
        assert exc.value.code == 0
        assert "usage" in capsys.readouterr().out.lower()
    extras = metadata.metadata("lmkreg").get_all("Provides-Extra") or []
    assert "test" in extras


def test_ci_script_pins_the_cpu_torch_and_runs_the_readme_test_command():
    ci = (REPO / ".ci" / "run").read_text()
    assert "torch==2.13.0" in ci and "python -m pytest" in ci
    readme = (REPO / "README.md").read_text()
    assert "python -m pytest" in readme


# ==== issue 2: environment variables and dataset.json =============================================

@pytest.mark.parametrize("value", [None, "", "   "])
def test_lmkreg_folders_default_under_home(monkeypatch, tmp_path, value):
    from lmkreg.paths import preprocessed_root, raw_root, results_root

    monkeypatch.setenv("HOME", str(tmp_path))
    for var in ("LMKREG_raw", "LMKREG_preprocessed", "LMKREG_results"):
        if value is None:
            monkeypatch.delenv(var, raising=False)
        else:
            monkeypatch.setenv(var, value)
    assert raw_root() == tmp_path / "lmkreg_data" / "raw"
    assert preprocessed_root() == tmp_path / "lmkreg_data" / "preprocessed"
    assert results_root() == tmp_path / "lmkreg_data" / "results"


def test_lmkreg_folder_that_is_a_file_is_a_clear_error(monkeypatch, tmp_path):
    from lmkreg.paths import raw_root

    f = tmp_path / "not_a_folder"
    f.write_text("x")
    monkeypatch.setenv("LMKREG_raw", str(f))
    with pytest.raises(ConfigurationError, match=r"LMKREG_raw=.*not_a_folder.*not a folder"):
        raw_root()


def test_missing_dataset_names_the_variable(monkeypatch, tmp_path):
    monkeypatch.setenv("LMKREG_raw", str(tmp_path / "nowhere"))
    with pytest.raises(ConfigurationError, match="no dataset with id 5.*LMKREG_raw"):
        open_dataset(5)


def test_two_datasets_with_one_id_are_refused(tmp_path):
    for name in ("Dataset004_A", "Dataset004_B"):
        Dataset.create(tmp_path / name, DatasetSpec(name=name))
    with pytest.raises(ConfigurationError, match="several datasets with id 4"):
        find_dataset(4, tmp_path)
    assert find_dataset("Dataset004_B", tmp_path) == tmp_path / "Dataset004_B"


def test_dataset_json_names_modalities_landmarks_and_file_ending(tmp_path, oblique_geometry, rng):
    """A dataset with its own modality names, landmark names and file ending is honoured."""
    spec = DatasetSpec(name="Dataset021_Own", modalities=["T2", "TRUS"], landmarks=["base", "tip"],
                       file_ending=".nrrd")
    ds = Dataset.create(tmp_path / spec.name, spec)
    stored = json.loads((ds.folder / "dataset.json").read_text())
    assert (stored["modalities"], stored["landmarks"], stored["file_ending"]) == (["T2", "TRUS"], ["base", "tip"],
                                                                                  ".nrrd")
    arr = rng.normal(size=oblique_geometry.shape_zyx).astype(np.float32)
    for case in ("k2", "k1"):
        for m in spec.modalities:
            write_image(oblique_geometry.make_image(arr), ds.image_path(case, m))
    (ds.folder / "imagesTr" / "k3_T2.nii.gz").parent.mkdir(exist_ok=True)
    write_image(oblique_geometry.make_image(arr), ds.folder / "imagesTr" / "k3_T2.nii.gz")  # other ending
    again = Dataset(ds.folder)
    assert again.cases("Tr") == ["k1", "k2"]
    assert again.image_path("k1", "TRUS").name == "k1_TRUS.nrrd"
    assert again.landmarks_path("k1", "T2").name == "k1_T2.json"
    with pytest.raises(ConfigurationError, match="unknown modality 'US'"):
        again.image_path("k1", "US")


@pytest.mark.parametrize("edit, message", [
    (lambda d: d.pop("landmarks"), r"missing key\(s\) \['landmarks'\]"),
    (lambda d: d.update(modality=["MR"]), r"unknown key\(s\) \['modality'\]"),
    (lambda d: d.update(name="MyData"), "must look like 'Dataset001_Name'"),
    (lambda d: d.update(file_ending="nii.gz"), "file_ending"),
    (lambda d: d.update(landmarks=["apex", "apex"]), "unique"),
    (lambda d: d.update(modalities=["MR", "../US"]), "unsafe"),
])
def test_broken_dataset_json_names_the_file_and_the_key(tmp_path, edit, message):
    ds = Dataset.create(tmp_path / "Dataset022_Broken", DatasetSpec(name="Dataset022_Broken"))
    path = ds.folder / "dataset.json"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))
    with pytest.raises(InputError, match=message) as info:
        Dataset(ds.folder)
    assert str(path) in str(info.value)


def test_dataset_json_that_is_not_json_names_the_file(tmp_path):
    folder = tmp_path / "Dataset023_X"
    folder.mkdir()
    (folder / "dataset.json").write_text("{name: ")
    with pytest.raises(InputError, match=r"dataset\.json.*not valid JSON"):
        Dataset(folder)


# ==== issue 2: landmark formats ====================================================================

def test_lmkreg_json_on_disk_is_exactly_the_documented_document(tmp_path):
    f = tmp_path / "c_MR.json"
    write_lmkreg_json(LandmarkSet({"apex": [1.5, -2.0, 3.25], "bladder_neck": None, "posterior_median": [0, 0, 1]}), f)
    assert json.loads(f.read_text()) == {"coordinate_system": "LPS", "units": "mm",
                                         "landmarks": {"apex": [1.5, -2.0, 3.25], "bladder_neck": None,
                                                       "posterior_median": [0.0, 0.0, 1.0]}}
    hand = tmp_path / "hand.json"
    hand.write_text('{"coordinate_system": "LPS", "units": "mm", '
                    '"landmarks": {"posterior_median": [4, 5, 6], "apex": null, "bladder_neck": [1, 2, 3]}}')
    got = read_landmarks(hand, ["apex", "bladder_neck", "posterior_median"])
    assert got["apex"] is None
    np.testing.assert_array_equal(got["bladder_neck"], [1, 2, 3])
    np.testing.assert_array_equal(got["posterior_median"], [4, 5, 6])


def test_a_missing_landmark_survives_a_chain_through_every_format(tmp_path):
    """json -> mrk.json -> fcsv -> json: positions exact, the missing one still missing, by name."""
    start = LandmarkSet({"apex": [10.125, -3.5, 7.0], "bladder_neck": None, "posterior_median": [-1.0, 22.75, 0.5]})
    current = start
    for i, suffix in enumerate((".json", ".mrk.json", ".fcsv", ".json")):
        f = tmp_path / f"step{i}{suffix}"
        write_landmarks(current, f)
        current = read_landmarks(f, ["posterior_median", "bladder_neck", "apex"])  # another order each time
        current = current.select(["apex", "bladder_neck", "posterior_median"])
    assert current.equals(start, atol=1e-9) and current.missing() == ["bladder_neck"]
