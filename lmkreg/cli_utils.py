"""Shared plumbing for the thin console commands: one way to build a parser (plain help text,
``--version``), one way to report errors, one way to choose a trained model."""
from __future__ import annotations

import argparse
import functools
import json
import re
import sys
from pathlib import Path
from typing import Callable, Optional, Sequence

from lmkreg import __version__
from lmkreg.errors import ConfigurationError, FileError, LmkregError

_MARKUP = re.compile(r"``(.+?)``", re.DOTALL)


def plain(text: Optional[str]) -> Optional[str]:
    """Help text without reStructuredText markup: ``name`` becomes name (users read it in a terminal)."""
    return None if text is None else _MARKUP.sub(r"\1", text)


def version_text(prog: str) -> str:
    return f"{prog} (lmkreg {__version__})"


def make_parser(prog: str, description: Optional[str] = None, epilog: Optional[str] = None,
                raw: bool = True) -> argparse.ArgumentParser:
    """The ArgumentParser every lmkreg command starts from: plain-text description (layout kept when
    `raw`) and ``--version``."""
    # allow_abbrev=False: '--overwrite' must never silently mean '--overwrite-plans' (issue 25)
    parser = argparse.ArgumentParser(prog=prog, description=plain(description), epilog=plain(epilog),
                                     formatter_class=argparse.RawDescriptionHelpFormatter if raw
                                     else argparse.HelpFormatter, allow_abbrev=False)
    add_version(parser)
    return parser


def add_version(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add ``--version`` (prints the command and the lmkreg version, then exits)."""
    parser.add_argument("--version", action="version", version=version_text(parser.prog),
                        help="print the lmkreg version and exit")
    return parser


# ---- options several commands share: one spelling, dest, default and (where it says the same) help text ----

DEVICE_CHOICES = ("cpu", "cuda", "auto")


def add_device_option(parser: argparse.ArgumentParser, help_text: str) -> argparse.Action:
    """``--device cpu|cuda|auto`` (default None: the command picks cuda if available).  The help
    text is the command's own: it says what runs there (training, the networks)."""
    return parser.add_argument("--device", default=None, choices=list(DEVICE_CHOICES), help=help_text)


def add_progress_option(parser: argparse.ArgumentParser) -> argparse.Action:
    """``--no-progress`` (dest no_progress): every command with a progress bar can hide it (issue 25)."""
    return parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def add_strict_option(parser: argparse.ArgumentParser, help_text: str) -> argparse.Action:
    """``--strict`` (dest strict, default False).  The help text says what becomes an error, which
    differs between commands (warnings of a dataset check, results flagged unreliable)."""
    return parser.add_argument("--strict", action="store_true", help=help_text)


# ---- value checks with one message style: "OPTION: VALUE is not ...; give ..." (issue 25) -------

def fold_value(text: str) -> str:
    """A fold: a number 0.. or 'all' (argparse type)."""
    if text == "all" or text.isdigit():
        return text
    raise argparse.ArgumentTypeError(f"{text!r} is not a fold; give a number such as 0 or 'all'")


def positive_int(text: str) -> int:
    """An integer >= 1 (argparse type): --num-parts, --epochs, ..."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number; give 1 or more") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is below 1; give 1 or more")
    return value


def positive_float(text: str) -> float:
    """A finite number > 0 (argparse type): --max-radius and other millimetres."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number; give a number above 0") from None
    if not (0 < value < float("inf")):
        raise argparse.ArgumentTypeError(f"{text!r} is not above 0; give a number above 0")
    return value


def check_unique(parser: argparse.ArgumentParser, option: str, values: Optional[Sequence]) -> None:
    """-f 0 0: a value given twice is a usage error, in the same style as the type checks."""
    if values:
        seen = set()
        for v in values:
            if str(v) in seen:
                parser.error(f"argument {option}: {str(v)!r} is given twice; give each once")
            seen.add(str(v))


def dataset_number(text: str) -> int:
    """A dataset to create: its number (5) or its name (Dataset005_Name) (argparse type)."""
    m = re.fullmatch(r"(?:Dataset)?0*(\d{1,3})(?:_\w+)?", text.strip())
    if not m or not 1 <= int(m.group(1)) <= 999:
        raise argparse.ArgumentTypeError(f"{text!r} is not a dataset; give its number 1-999 or its name "
                                         f"DatasetNNN_Name")
    return int(m.group(1))


def check_modality(results_dataset_folder: Path, modality: str, dataset_modalities: Sequence[str] = ()) -> None:
    """-m mr / -m MRI: an error listing the dataset's modalities (from its dataset.json, or the
    dataset.json of its trained models) instead of "no trained MRI model, train one"."""

    known = list(dataset_modalities)
    if not known:
        for doc in sorted(Path(results_dataset_folder).glob("*__*/dataset.json")):
            try:
                known += [m for m in json.loads(doc.read_text(encoding="utf-8")).get("modalities", []) if m not in known]
            except (OSError, ValueError, AttributeError):
                continue
    if known and modality not in known:
        close = [m for m in known if m.lower() == modality.lower() or modality.upper().startswith(m.upper())]
        raise ConfigurationError(f"-m {modality}: not a modality of {Path(results_dataset_folder).name}; its "
                                 f"modalities are {', '.join(known)}" + (f" (did you mean {close[0]}?)" if close else ""))


def error_line(subject: object, exc: BaseException) -> str:
    """'SUBJECT: problem' without naming the file twice: an lmkreg error about the subject itself
    already starts with its path (an error about another file, e.g. an output, keeps the subject)."""
    if isinstance(exc, FileError) and exc.path is not None and str(exc.path) == str(subject):
        return str(exc)
    return f"{subject}: {exc}"


def friendly_errors(main: Callable[[Optional[Sequence[str]]], int]) -> Callable[[Optional[Sequence[str]]], int]:
    """Turn LmkregError into 'error: <file>: <problem>' on stderr and exit status 2."""

    @functools.wraps(main)
    def wrapper(argv: Optional[Sequence[str]] = None) -> int:
        try:
            return main(argv)
        except LmkregError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130

    return wrapper


def _plans_configuration(model_folder: Path, name: str) -> dict:
    """The configuration `name` of the plans.json a model folder carries ({} when it has none or
    cannot be read: such a folder is not a usable model)."""

    try:
        doc = json.loads((model_folder / "plans.json").read_text(encoding="utf-8"))
        conf = doc["configurations"][name]
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    return conf if isinstance(conf, dict) else {}


def _has_cascade(folder: Path, trainer: str, modality: str) -> bool:
    """True when `trainer` has a refine model folder of `modality` whose plans name a localizer
    configuration that has a model folder too (``TRAINER__MR_refine`` + ``TRAINER__MR_localizer``)."""
    for refine in folder.glob(f"{trainer}__{modality}_*"):
        conf = _plans_configuration(refine, refine.name.partition("__")[2])
        previous = conf.get("previous_stage")
        if (refine.is_dir() and conf.get("stage") == "refine" and conf.get("modality") == modality
                and isinstance(previous, str) and (folder / f"{trainer}__{previous}").is_dir()):
            return True
    return False


def trained_trainers(results_dataset_folder: Path, modality: str, configuration: Optional[str] = None) -> list[str]:
    """Trainer names with a trained model for `modality` in the dataset's results: a model folder
    ``TRAINER__MODALITY`` (single stage) or a cascade (``TRAINER__MODALITY_refine`` and the
    localizer folder its plans name).  `configuration` (as ``lmkreg_predict -c``): 'cascade' (or a
    refine configuration) counts only cascades, another name only folders of that configuration."""
    folder = Path(results_dataset_folder)
    if not folder.is_dir():
        return []
    names = {p.name.partition("__")[0] for p in folder.iterdir() if p.is_dir() and "__" in p.name}
    cascade = configuration in ("cascade", "refine") or (configuration or "").endswith("_refine")
    wanted = None if configuration is None or cascade else configuration
    if wanted is not None and wanted != modality and not wanted.startswith(f"{modality}_"):
        wanted = f"{modality}_{wanted}"
    found = []
    for trainer in sorted(names):
        if wanted is not None:
            ok = (folder / f"{trainer}__{wanted}").is_dir()
        elif cascade:
            ok = _has_cascade(folder, trainer, modality)
        else:
            ok = (folder / f"{trainer}__{modality}").is_dir() or _has_cascade(folder, trainer, modality)
        if ok:
            found.append(trainer)
    return found


def choose_trainer(results_dataset_folder: Path, modality: str, trainer: Optional[str],
                   configuration: Optional[str] = None) -> str:
    """The trainer whose model to use: the one given, else the only one trained for this modality
    (single stage or cascade; see trained_trainers); with several (or none) trained, say which
    exist and how to choose."""
    if trainer:
        return trainer
    found = trained_trainers(results_dataset_folder, modality, configuration)
    if len(found) == 1:
        return found[0]
    if not found:
        what = f"no TRAINER__{modality} folder and no cascade TRAINER__{modality}_localizer + TRAINER__{modality}_refine"
        if configuration:
            what = f"none of configuration {configuration}"
        raise ConfigurationError(f"{results_dataset_folder}: no trained {modality} model ({what}); train one with "
                                 f"lmkreg_train")
    raise ConfigurationError(f"{results_dataset_folder}: {len(found)} trained {modality} models ({', '.join(found)}); "
                             f"choose one with -tr/--trainer (lmkreg_find_best_configuration ranks them)")
