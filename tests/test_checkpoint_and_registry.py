"""Checkpoints refuse pickled code; trainers are found by name, including the user's own."""
from __future__ import annotations

import pickle

import pytest
import torch

from lmkreg.errors import ConfigurationError, InputError
from lmkreg.training.checkpoint import load_checkpoint, save_checkpoint
from lmkreg.training.registry import available_trainers, find_trainer
from lmkreg.training.trainers import LandmarkTrainer


class _Evil:
    def __reduce__(self):
        import os

        return (os.system, ("echo pwned > /dev/null",))


def test_checkpoint_round_trip(tmp_path):
    state = {"network": {"w": torch.arange(6.0).reshape(2, 3)}, "epoch": 3, "history": {"val_mre": [2.5, 1.5]}}
    path = save_checkpoint(state, tmp_path / "c.pth")
    back = load_checkpoint(path)
    assert back["epoch"] == 3 and back["history"]["val_mre"] == [2.5, 1.5]
    assert torch.equal(back["network"]["w"], state["network"]["w"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pth"]


def test_checkpoint_with_pickled_code_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"format": "lmkreg-checkpoint-1", "payload": _Evil()}, path)
    with pytest.raises(InputError, match="evil.pth.*pickled code"):
        load_checkpoint(path)


@pytest.mark.parametrize("content", ["foreign", "garbage", "empty"])
def test_checkpoint_that_is_not_ours_is_refused(tmp_path, content):
    path = tmp_path / "other.pth"
    if content == "foreign":
        torch.save({"state_dict": {"w": torch.zeros(2)}}, path)
    elif content == "garbage":
        path.write_bytes(b"\x00\x01 not a checkpoint")
    else:
        path.write_bytes(b"")
    with pytest.raises(InputError, match="other.pth"):
        load_checkpoint(path)


def test_builtin_trainers_are_found():
    names = set(available_trainers())
    assert {"LandmarkTrainer", "LandmarkTrainer_Variance", "LandmarkTrainer_Distance", "DirectRegressionTrainer",
            "HeatmapMatchingTrainer"} <= names
    assert find_trainer("LandmarkTrainer_Variance").regularizer == "variance"


def test_user_trainer_from_a_file_and_from_the_environment(tmp_path, monkeypatch):
    module = tmp_path / "my_trainers.py"
    module.write_text("from lmkreg.training.trainers import LandmarkTrainer_Distance\n\n"
                      "class MyTrainer(LandmarkTrainer_Distance):\n    sigma = 3\n")
    cls = find_trainer("MyTrainer", [str(module)])
    assert issubclass(cls, LandmarkTrainer) and cls.regularizer == "distance"
    monkeypatch.setenv("LMKREG_TRAINER_MODULES", str(module))
    assert find_trainer("MyTrainer").__name__ == "MyTrainer"


def test_unknown_trainer_lists_the_available_ones():
    with pytest.raises(ConfigurationError, match="unknown trainer 'Nope'.*LandmarkTrainer"):
        find_trainer("Nope")
