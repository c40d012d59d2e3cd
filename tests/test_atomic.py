"""Atomic outputs: a full disk or an unwritable folder never leaves a partial file or loses the old one."""
from __future__ import annotations

import json
import os

import pytest

from lmkreg.errors import OutputError
from lmkreg.io.atomic import atomic_write_json, atomic_write_text


def test_disk_full_keeps_the_previous_json_and_leaves_no_temporary_file(tmp_path, monkeypatch):
    target = tmp_path / "case_US.json"
    atomic_write_json(target, {"version": 1})

    def full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OutputError, match=r"case_US\.json.*No space left on device"):
        atomic_write_json(target, {"version": 2})
    monkeypatch.undo()
    assert json.loads(target.read_text()) == {"version": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["case_US.json"]


def test_a_file_where_a_folder_should_be_is_named(tmp_path):
    blocker = tmp_path / "out"
    blocker.write_text("I am a file")
    with pytest.raises(OutputError, match="out/x.json"):
        atomic_write_json(blocker / "x.json", {})
    assert blocker.read_text() == "I am a file"


def test_errors_survive_pickling_between_processes():
    """Errors raised in worker processes (parallel preprocessing) must reach the user intact."""
    import pickle

    from lmkreg.errors import InputError

    for err in (InputError("/data/a.nii.gz", "image is constant"), OutputError("/out/x.json", "disk full")):
        back = pickle.loads(pickle.dumps(err))
        assert type(back) is type(err) and str(back) == str(err) and back.path == err.path
