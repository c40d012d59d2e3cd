"""Every console command (setup.py) agrees on option spellings, has --version, plain help texts
and a help text for every option (issue 15)."""
from __future__ import annotations

import argparse
import importlib
import re
from pathlib import Path

import pytest

import lmkreg

SETUP = Path(__file__).resolve().parents[1] / "setup.py"
ENTRY = re.compile(r'"(lmkreg_\w+)=([\w.]+):(\w+)"')
COMMANDS = ENTRY.findall(SETUP.read_text())

# the one spelling of each shared option (documented in the developers' guide)
STANDARD = {"dataset": ("-d", "--dataset"), "modality": ("-m", "--modality"), "trainer": ("-tr", "--trainer"),
            "folds": ("-f", "--folds"), "input": ("-i", "--input"), "output": ("-o", "--output"),
            "workers": ("--workers",), "device": ("--device",), "no-progress": ("--no-progress",),
            "strict": ("--strict",), "overwrite": ("--overwrite",), "configuration": ("-c", "--configuration")}
WRONG = {"-j", "--dataset-id", "--dataset_id", "--num-workers", "--trainers", "--fold", "--progress"}


class _Parsed(Exception):
    def __init__(self, parser):
        self.parser = parser


def _parser_of(module: str, function: str, monkeypatch) -> argparse.ArgumentParser:
    """The ArgumentParser a command builds: stop it at parse_args and take the parser."""
    def capture(self, args=None, namespace=None):
        raise _Parsed(self)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", capture)
    main = getattr(importlib.import_module(module), function)
    with pytest.raises(_Parsed) as got:
        getattr(main, "__wrapped__", main)([])
    return got.value.parser


def test_setup_lists_the_commands():
    assert len(COMMANDS) == 10


@pytest.mark.parametrize("command, module, function", COMMANDS)
def test_command_help_and_spellings(command, module, function, monkeypatch, capsys):
    parser = _parser_of(module, function, monkeypatch)
    monkeypatch.undo()
    assert parser.prog == command
    help_text = parser.format_help()
    assert "``" not in help_text, f"{command}: reStructuredText markup in --help"
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction) or action.help == argparse.SUPPRESS:
            continue
        assert action.help and action.help.strip(), f"{command}: {action.option_strings or action.dest} has no help"
        longs = [o for o in action.option_strings if o.startswith("--")]
        for o in longs:
            assert o == o.lower() and "_" not in o, f"{command}: {o} is not kebab-case"
        assert not set(action.option_strings) & WRONG, f"{command}: {action.option_strings}"
        for name, spelling in STANDARD.items():
            if f"--{name}" in action.option_strings or (spelling[0] in action.option_strings and len(spelling) > 1):
                assert tuple(action.option_strings) == spelling, f"{command}: {action.option_strings} != {spelling}"
        if "--device" in action.option_strings:
            assert set(action.choices) == {"cpu", "cuda", "auto"}
    # --version prints the command and the package version
    with pytest.raises(SystemExit) as code:
        parser.parse_args(["--version"])
    assert code.value.code == 0
    assert f"lmkreg {lmkreg.__version__}" in capsys.readouterr().out


@pytest.mark.parametrize("command", ["lmkreg_predict", "lmkreg_train", "lmkreg_import", "lmkreg_evaluate",
                                     "lmkreg_generate_phantoms", "lmkreg_verify_dataset"])
def test_long_running_commands_can_hide_the_progress_bar(command, monkeypatch):
    module, function = next((m, f) for c, m, f in COMMANDS if c == command)
    parser = _parser_of(module, function, monkeypatch)
    assert any("--no-progress" in a.option_strings for a in parser._actions), command


@pytest.mark.parametrize("command", ["lmkreg_predict", "lmkreg_train", "lmkreg_import", "lmkreg_verify_dataset",
                                     "lmkreg_evaluate", "lmkreg_plan_and_preprocess", "lmkreg_generate_phantoms",
                                     "lmkreg_find_best_configuration", "lmkreg_demo"])
def test_dataset_is_d_dataset_everywhere(command, monkeypatch):
    module, function = next((m, f) for c, m, f in COMMANDS if c == command)
    parser = _parser_of(module, function, monkeypatch)
    assert any(tuple(a.option_strings) == ("-d", "--dataset") for a in parser._actions), command
    positional = [a.dest for a in parser._actions if not a.option_strings and a.help != argparse.SUPPRESS]
    assert "dataset" not in positional
