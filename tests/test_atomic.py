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


def test_stale_temporaries_of_dead_writers_are_removed_and_live_ones_kept(tmp_path):
    import subprocess
    import sys

    from lmkreg.io.atomic import _owner_tag, remove_stale_temporaries

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = _owner_tag().rsplit("-", 1)[0]
    stale = tmp_path / f".case_US.json.{host}-{dead.pid}.abc123xy.tmp.json"
    live = tmp_path / f".case2_US.json.{_owner_tag()}.abc123xy.tmp.json"
    other_host = tmp_path / f".case3_US.json.otherhost-{dead.pid}.abc123xy.tmp.json"
    user_file = tmp_path / ".hidden_notes.txt"
    for p in (stale, live, other_host, user_file):
        p.write_text("x")
    removed = remove_stale_temporaries(tmp_path)
    assert removed == [stale]
    assert not stale.exists() and live.exists() and other_host.exists() and user_file.exists()


def test_atomic_temporary_names_carry_host_and_pid(tmp_path):
    import os

    from lmkreg.io.atomic import _TEMP_RE, atomic_path

    with atomic_path(tmp_path / "a.mrk.json") as tmp:
        m = _TEMP_RE.match(tmp.name)
        assert m and int(m["pid"]) == os.getpid() and m["target"] == "a.mrk.json"
        assert tmp.name.endswith(".mrk.json")
        tmp.write_text("{}")
    assert (tmp_path / "a.mrk.json").read_text() == "{}"
