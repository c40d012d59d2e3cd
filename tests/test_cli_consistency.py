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


# ---- issue 25: no abbreviations, --no-progress everywhere a bar is drawn, one value-check style ----

@pytest.mark.parametrize("command, module, function", COMMANDS)
def test_no_command_accepts_abbreviated_options(command, module, function, monkeypatch):
    """Why: lmkreg_plan_and_preprocess --overwrite silently meant --overwrite-plans."""
    parser = _parser_of(module, function, monkeypatch)
    assert parser.allow_abbrev is False, command


@pytest.mark.parametrize("command", ["lmkreg_plan_and_preprocess", "lmkreg_register",
                                     "lmkreg_find_best_configuration", "lmkreg_demo"])
def test_the_other_commands_with_progress_bars_can_hide_them(command, monkeypatch):
    module, function = next((m, f) for c, m, f in COMMANDS if c == command)
    parser = _parser_of(module, function, monkeypatch)
    assert any(a.option_strings == ["--no-progress"] for a in parser._actions), command


def test_plan_and_preprocess_overwrite_is_not_overwrite_plans(monkeypatch, capsys):
    parser = _parser_of("lmkreg.run.plan_and_preprocess", "main", monkeypatch)
    monkeypatch.undo()
    with pytest.raises(SystemExit):
        parser.parse_args(["-d", "1", "--overwrite"])
    assert "unrecognized arguments: --overwrite" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["-f", "a"], "argument -f/--folds: 'a' is not a fold"),
    (["-f", "0", "0"], "argument -f/--folds: '0' is given twice"),
    (["--num-parts", "0"], "argument --num-parts: '0' is below 1"),
    (["--max-radius", "-1"], "argument --max-radius: '-1' is not above 0"),
])
def test_predict_values_are_checked_with_one_message_style(argv, message, tmp_path, capsys):
    from lmkreg.run.predict import main as predict_main

    with pytest.raises(SystemExit) as code:
        predict_main(["-i", str(tmp_path), "-o", str(tmp_path / "o"), "-d", "1", "-m", "MR", *argv])
    assert code.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize("command", ["lmkreg_import", "lmkreg_generate_phantoms", "lmkreg_demo"])
def test_dataset_is_a_number_or_a_name_everywhere(command, monkeypatch):
    module, function = next((m, f) for c, m, f in COMMANDS if c == command)
    parser = _parser_of(module, function, monkeypatch)
    action = next(a for a in parser._actions if "-d" in a.option_strings)
    assert action.type("5") == 5 and action.type("Dataset005_Prostate") == 5
    with pytest.raises(argparse.ArgumentTypeError):
        action.type("Prostate")


def test_unicode_case_name_from_the_file_does_not_blame_name(tmp_path, capsys):
    """Why: --mr 'Pätient 1_MR.json' failed with '--name: unsafe case id' though --name was not given."""
    from lmkreg.io.landmarks import LandmarkSet, write_lmkreg_json
    from lmkreg.run.register import main as register_main

    points = {"apex": [0.0, 0.0, 0.0], "bladder_neck": [30.0, 0.0, 0.0], "posterior_median": [0.0, 20.0, 5.0]}
    mr, us = tmp_path / "Pätient 1_MR.json", tmp_path / "Pätient 1_US.json"
    for f in (mr, us):
        write_lmkreg_json(LandmarkSet(points), f)
    assert register_main(["--mr", str(mr), "--us", str(us), "-o", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "--name:" not in err and "Pätient 1_MR.json" in err and "give --name" in err
    assert register_main(["--mr", str(mr), "--us", str(us), "-o", str(tmp_path / "o"), "--name", "p1"]) == 0


def test_modality_typo_lists_the_datasets_modalities(tmp_path, monkeypatch):
    from lmkreg.cli_utils import check_modality
    from lmkreg.errors import ConfigurationError

    model = tmp_path / "Dataset001_X" / "LandmarkTrainer__MR"
    model.mkdir(parents=True)
    (model / "dataset.json").write_text('{"name": "Dataset001_X", "modalities": ["MR", "US"]}')
    for typo in ("mr", "MRI"):
        with pytest.raises(ConfigurationError, match=r"-m %s: .*modalities are MR, US \(did you mean MR\?\)" % typo):
            check_modality(tmp_path / "Dataset001_X", typo)
    check_modality(tmp_path / "Dataset001_X", "US")


@pytest.mark.parametrize("module, argv", [("lmkreg.run.train", ["-f", "0"]),
                                          ("lmkreg.run.find_best_configuration", []),
                                          ("lmkreg.run.predict", ["-i", "in", "-o", "out"])])
@pytest.mark.parametrize("typo", ["mr", "MRI"])
def test_every_command_with_m_lists_the_datasets_modalities(module, argv, typo, tmp_path, monkeypatch, capsys):
    """Why: lmkreg_train -m MRI listed the plans' configurations (or left TRAINER__MRI/ behind) and
    find_best_configuration -m mr found "no trainer": every -m names the dataset's own modalities."""
    raw, results = tmp_path / "raw", tmp_path / "results"
    (raw / "Dataset042_Typo").mkdir(parents=True)
    results.mkdir()
    (raw / "Dataset042_Typo" / "dataset.json").write_text(
        '{"name": "Dataset042_Typo", "modalities": ["MR", "US"], "landmarks": ["base", "apex"], '
        '"file_ending": ".nii.gz"}')
    monkeypatch.setenv("LMKREG_raw", str(raw))
    monkeypatch.setenv("LMKREG_results", str(results))
    monkeypatch.setenv("LMKREG_preprocessed", str(tmp_path / "pre"))
    main = importlib.import_module(module).main
    assert main(["-d", "42", "-m", typo] + argv) == 2
    err = capsys.readouterr().err
    assert f"-m {typo}: not a modality of Dataset042_Typo; its modalities are MR, US (did you mean MR?)" in err
    assert not any(results.rglob("*")), "a refused -m must leave nothing behind"


def test_strict_help_is_the_same_in_predict_register_and_evaluate(monkeypatch):
    from lmkreg.trust.summary import STRICT_HELP
    for module in ("lmkreg.run.predict", "lmkreg.run.register", "lmkreg.run.evaluate"):
        parser = _parser_of(module, "main", monkeypatch)
        helps = [a.help for a in parser._actions if a.option_strings == ["--strict"]]
        assert helps == [STRICT_HELP], module


def test_demo_no_progress_reaches_the_bars_the_demo_turns_on(tmp_path, monkeypatch):
    """Why: lmkreg_demo --no-progress still drew the phantom and training bars (passed on explicitly)."""
    import types
    import lmkreg.parallel
    import lmkreg.run.demo as demo

    monkeypatch.setenv("LMKREG_raw", str(tmp_path / "raw"))
    monkeypatch.delenv("TQDM_DISABLE", raising=False)  # hide_progress sets it: restored after the test
    monkeypatch.setitem(lmkreg.parallel._HIDDEN, "progress", False)
    seen = {}

    class Stop(Exception):
        pass

    def fake_generate(*args, progress=True, **kwargs):
        seen["phantoms"] = progress
        return tmp_path / "ds"

    def fake_train(*args, progress_bar=True, **kwargs):
        seen["training"] = progress_bar
        raise Stop

    monkeypatch.setattr(demo, "configure_threads", lambda workers: types.SimpleNamespace(describe=lambda: ""))
    monkeypatch.setattr(demo, "generate_dataset", fake_generate)
    monkeypatch.setattr(demo, "Dataset", lambda folder: None)
    monkeypatch.setattr(demo, "plan_and_preprocess", lambda *a, **k: tmp_path)
    monkeypatch.setattr(demo, "Plans", types.SimpleNamespace(load=lambda path: None))
    monkeypatch.setattr(demo, "describe", lambda plans: "")
    monkeypatch.setattr(demo, "train", fake_train)
    with pytest.raises(Stop):
        demo.main(["--quick", "--no-progress", "-o", str(tmp_path / "out"), "-d", "977"])
    assert seen == {"phantoms": False, "training": False}
    with pytest.raises(Stop):
        demo.main(["--quick", "-o", str(tmp_path / "out"), "-d", "977"])
    assert seen == {"phantoms": True, "training": True}


# --device, --no-progress and --strict as each command had them before cli_utils' add_*_option
# helpers, written out: the commands that have each, its destination, default, value given, choices and
# help text (the texts of --device and of verify's --strict differ on purpose: they say what the option does there)
_STRICT_RESULTS = ("exit with status 3 when any result is flagged unreliable (flagged results are still written and "
                   "listed; without this option they do not change the exit status)")
_SHARED_OPTIONS = {
    "--device": {
        "lmkreg_train": ("where training runs (default: cuda if available)", "cuda"),
        "lmkreg_predict": ("where the networks run (default: cuda if available)", "cuda"),
        "lmkreg_demo": ("where to train (default: cuda if available, else cpu)", "cuda"),
    },
    "--no-progress": {command: ("hide the progress bar", True) for command, _, _ in COMMANDS},
    "--strict": {
        "lmkreg_verify_dataset": ("treat warnings as errors (exit 1)", True),
        "lmkreg_predict": (_STRICT_RESULTS, True),
        "lmkreg_register": (_STRICT_RESULTS, True),
        "lmkreg_evaluate": (_STRICT_RESULTS, True),
    },
}
_SHARED_SHAPE = {"--device": ("device", None, ["cpu", "cuda", "auto"]), "--no-progress": ("no_progress", False, None),
                 "--strict": ("strict", False, None)}


@pytest.mark.parametrize("command, module, function", COMMANDS)
def test_shared_options_keep_their_destination_default_and_help(command, module, function, monkeypatch):
    parser = _parser_of(module, function, monkeypatch)
    monkeypatch.undo()
    # parse only the shared options: the command's own required options are switched off on this parser
    for action in parser._actions:
        action.required = False
    for group in parser._mutually_exclusive_groups:
        group.required = False
    defaults, argv, expected = parser.parse_args([]), [], {}
    for option, users in _SHARED_OPTIONS.items():
        actions = [a for a in parser._actions if option in a.option_strings]
        if command not in users:
            assert not actions, f"{command} gained {option}"
            continue
        (action,) = actions
        dest, default, choices = _SHARED_SHAPE[option]
        help_text, given = users[command]
        assert (action.option_strings, action.dest, action.default, action.choices, action.help, action.required) \
            == ([option], dest, default, choices, help_text, False), (command, option)
        assert getattr(defaults, dest) == default and type(getattr(defaults, dest)) is type(default), (command, option)
        argv += [option] + ([] if given is True else [given])
        expected[dest] = given
    parsed = vars(parser.parse_args(argv))
    assert {dest: parsed[dest] for dest in expected} == expected, command
    if command in _SHARED_OPTIONS["--device"]:  # the choices are still checked
        with pytest.raises(SystemExit):
            parser.parse_args(["--device", "gpu"])
